"""Train a class-conditioned improved DDPM on a manifest (one or many processes via accelerate).

  accelerate launch gen/train.py --config configs/gen/tiny.yaml --data data/split/train.csv
  accelerate launch gen/train.py --config configs/gen/thesis.yaml --data data/split/manifest.csv \\
      --split train --subset 1000 --run_dir runs/ddpm-1k
  accelerate launch gen/train.py --config configs/gen/thesis.yaml --data ... --run_dir runs/ddpm-1k --resume latest

Writes RUN/{config.json, provenance.json, classes.json, stats.jsonl, log.txt, samples/, checkpoints/step-NNNNNNN/}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from gen.config import ConfigError, parse_config  # noqa: E402
from gen.data.manifest import ManifestError  # noqa: E402
from gen.model import preset_table  # noqa: E402
from gen.training import TrainConfig, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainConfig, argv, description=__doc__, epilog="UNet presets (σ learned, 4 classes):\n" + preset_table())
    from accelerate import PartialState

    try:
        train(cfg)
    except (ConfigError, ManifestError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    state = PartialState()
    state.wait_for_everyone()
    from accelerate import Accelerator

    Accelerator().end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
