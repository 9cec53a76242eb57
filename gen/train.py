"""Train a class-conditioned improved DDPM on a manifest (one or many processes via accelerate).

  accelerate launch gen/train.py --config configs/gen/tiny.yaml --data data/split/train.csv
  accelerate launch gen/train.py --config configs/gen/thesis.yaml --data data/split/manifest.csv \\
      --split train --subset 1000 --run_dir runs/ddpm-1k
  accelerate launch gen/train.py --config configs/gen/thesis.yaml --data ... --run_dir runs/ddpm-1k --resume latest

Writes RUN/{config.json, provenance.json, classes.json, stats.jsonl, log.txt, samples/, checkpoints/step-NNNNNNN/}.
Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and prints the command that continues.
"""

from __future__ import annotations

import os
import sys

from echosynth.gen.core.config import ConfigError, parse_config, run_script
from echosynth.gen.core.launcher import GracefulStop, Interrupted
from echosynth.gen.diffusion.presets import preset_summary
from echosynth.gen.diffusion.settings import TrainConfig


def main(argv: list[str] | None = None) -> int:
    """Parse (without torch: --help and config errors answer at once), then train."""
    cfg = parse_config(TrainConfig, argv, description=__doc__,
                       epilog="UNet presets (parameter counts: the run's log.txt, or echosynth.gen.diffusion.unet.preset_table()):\n"
                              + preset_summary())
    # after parsing: --help and config errors answer without torch
    from echosynth.gen.core.checkpoint import CheckpointError
    from echosynth.gen.data.manifest import ManifestError
    from echosynth.gen.diffusion.trainer import train

    main_process = os.environ.get("RANK", "0") == "0"
    with GracefulStop() as stop:
        try:
            train(cfg, stop=stop)
        except Interrupted as e:
            if main_process:
                print(e, file=sys.stderr, flush=True)
            return e.exit_code
        except (ConfigError, ManifestError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
            if main_process:
                print(f"train.py: error: {e}", file=sys.stderr, flush=True)
            return 2
    from accelerate import Accelerator

    accelerator = Accelerator()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    run_script(main)
