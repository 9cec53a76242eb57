"""Run a whole study (the thesis' experiment grid) from one YAML, cached and resumable.

  python pipelines/study.py --config configs/study/quick.yaml [--out DIR]
  python pipelines/study.py --config configs/study/quick.yaml --dry-run          # graph + commands
  python pipelines/study.py --config configs/study/quick.yaml --only clf-real    # a subset of stages
  python pipelines/study.py --config configs/study/quick.yaml --from sample-n400  # from a stage on

Every stage is a subprocess through its own CLI writing STUDY/runs/<stage>/; STUDY/study.json
records the graph, status, timings and run directories; STUDY/logs/<stage>.log holds each
stage's output. Re-running skips finished stages whose config and inputs are unchanged.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from gen.config import ConfigError, parse_config, to_dict  # noqa: E402
from gen.io import write_json  # noqa: E402
from gen.rundir import provenance  # noqa: E402
from pipelines.config import StudyConfig  # noqa: E402
from pipelines.graph import build_graph  # noqa: E402
from pipelines.stages import Runner, StageFailed, select  # noqa: E402


def study_dir(cfg: StudyConfig) -> Path:
    """STUDY dir: --out, else runs/study-<name> under the repo."""
    return Path(cfg.out) if cfg.out else REPO / "runs" / f"study-{cfg.name}"


def _argv(argv: list[str] | None) -> tuple[list[str], bool]:
    """Map `--from` to the `start` key; pull out --dry-run so that it prints the graph, not only the config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = ["--start" if a == "--from" else a.replace("--from=", "--start=", 1) for a in argv]
    dry = "--dry-run" in argv
    return [a for a in argv if a != "--dry-run"], dry


def main(argv: list[str] | None = None) -> int:
    args, dry_run = _argv(argv)
    cfg = parse_config(StudyConfig, args, description=__doc__)
    out = study_dir(cfg)
    # Relative paths in the study config resolve from the repo root, as the stage CLIs run there.
    stages = build_graph(cfg, out.resolve())
    try:
        names = select(stages, cfg.only or None, cfg.start or None)
    except ValueError as e:
        print(f"study.py: error: {e}", file=sys.stderr)
        return 2
    if cfg.list_stages:
        print("\n".join(s.name for s in stages))
        return 0
    if dry_run:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip())
        print(f"\n# study dir: {out}\n# {len(names)} of {len(stages)} stage(s) selected, in order:")
        Runner(out, stages, {}, echo=print).run(names, dry_run=True)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", to_dict(cfg))
    prov = provenance(seed=cfg.dataset.seed)
    write_json(out / "provenance.json", prov)
    header = {"name": cfg.name, "study_dir": str(out.resolve()), "config": to_dict(cfg), "provenance": prov}
    t0 = time.perf_counter()
    try:
        # Data stages first; then the graph is rebuilt, since the split decides the subset files.
        data = [n for n in names if n.startswith("data-")]
        ran = Runner(out, stages, header).run(data) if data else 0
        stages = build_graph(cfg, out.resolve())
        runner = Runner(out, stages, header)
        ran += runner.run([n for n in names if n not in data])
    except (StageFailed, FileNotFoundError) as e:
        print(f"study.py: error: {e}", file=sys.stderr)
        print("study.py: finished stages are kept; fix the problem and re-run the same command to resume.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("study.py: interrupted; re-run the same command to resume.", file=sys.stderr)
        return 130
    runner.header["last_run_seconds"] = round(time.perf_counter() - t0, 1)
    runner.save()
    print(f"study: {ran} stage(s) ran, {len(names) - ran} cached, in {time.perf_counter() - t0:.1f} s; "
          f"{out / 'study.json'}")
    if (out / "report.html").is_file():
        print(f"report: {(out / 'report.html').resolve()}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:  # raised by checks outside parse_config (e.g. stage selection)
        print(f"study.py: error: {e}", file=sys.stderr)
        sys.exit(2)
