"""Train a class-conditioned improved DDPM on a manifest (one or many processes via accelerate).

  accelerate launch gen/train.py --config configs/gen/tiny.yaml --data data/split/train.csv
  accelerate launch gen/train.py --config configs/gen/thesis.yaml --data data/split/manifest.csv \\
      --split train --subset 1000 --run_dir runs/ddpm-1k
  accelerate launch gen/train.py --config configs/gen/thesis.yaml --data ... --run_dir runs/ddpm-1k --resume latest

Writes RUN/{config.json, provenance.json, classes.json, stats.jsonl, log.txt, samples/, checkpoints/step-NNNNNNN/}.
Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and prints the command that continues.
"""

from __future__ import annotations

from echosynth.gen.core.config import parse_config
from echosynth.gen.core.launcher import GracefulStop
from echosynth.gen.core.script import run_script, user_errors
from echosynth.gen.diffusion.presets import preset_summary
from echosynth.gen.diffusion.settings import TrainConfig


@user_errors("train.py", FileExistsError, FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    """Parse (without torch: --help and config errors answer at once), then train."""
    cfg = parse_config(TrainConfig, argv, description=__doc__,
                       epilog="UNet presets (parameter counts: the run's log.txt, or echosynth.gen.diffusion.unet.preset_table()):\n"
                              + preset_summary())
    # after parsing: --help and config errors answer without torch
    from echosynth.gen.diffusion.loop import train

    with GracefulStop() as stop:  # the config, manifest and checkpoint errors are ValueErrors
        train(cfg, stop=stop)
    from accelerate import Accelerator

    accelerator = Accelerator()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    run_script(main)
