"""Sample a balanced (or explicitly counted) class-conditional synthetic set from a diffusion run.

  accelerate launch gen/sample.py --run runs/00000-ddpm-tiny --per_class 100 --sampling_steps 100 --out samples/tiny
  accelerate launch --multi_gpu --num_processes 4 gen/sample.py --run RUN --counts A2C=8000,PSAX=8000 \\
      --sampler ddim --sampling_steps 50 --guidance 1.5 --out samples/run-ddim50

Writes DIR/{samples.npz, images/<class>/<index>.png, manifest.csv, sample.json}; each image has
its own seed, so the result is the same for any number of processes. Rerun to resume.
A damaged newest checkpoint is skipped with a warning naming the file; weights with nan/inf are refused.
"""

from __future__ import annotations

from echosynth.gen.core.config import parse_config
from echosynth.gen.core.script import run_script, user_errors
from echosynth.gen.diffusion.settings import SampleConfig


@user_errors("sample.py", FileExistsError, FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    """Parse (without torch), then sample."""
    cfg = parse_config(SampleConfig, argv, description=__doc__)
    # after parsing: --help and config errors answer without torch
    from accelerate import PartialState

    from echosynth.gen.diffusion.synthesis import sample_to_dir

    out = sample_to_dir(cfg)
    state = PartialState()
    if state.is_main_process:
        print(f"wrote {out}/samples.npz, manifest.csv, images/")
    state.wait_for_everyone()
    from accelerate import Accelerator

    Accelerator().end_training()
    return 0


if __name__ == "__main__":
    run_script(main)
