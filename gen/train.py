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

from gen.config import ConfigError, parse_config, run_script
from gen.configs import TrainConfig
from gen.launcher import GracefulStop, Interrupted
from gen.presets import preset_summary


def main(argv: list[str] | None = None) -> int:
    """Parse (without torch: --help and config errors answer at once), then train."""
    cfg = parse_config(TrainConfig, argv, description=__doc__,
                       epilog="UNet presets (parameter counts: the run's log.txt, or gen.model.preset_table()):\n"
                              + preset_summary())
    # after parsing: --help and config errors answer without torch
    from gen.checkpoint import CheckpointError
    from gen.data.manifest import ManifestError
    from gen.training import train

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
