"""Run a whole study (the thesis' experiment grid) from one YAML, cached, resumable and concurrent.

  python pipelines/study.py --config configs/study/quick.yaml [--out DIR] [--jobs N]
  python pipelines/study.py --config configs/study/quick.yaml --dry-run          # checks + schedule + commands
  python pipelines/study.py --config configs/study/quick.yaml --only clf-real    # a subset of stages
  python pipelines/study.py --config configs/study/quick.yaml --from sample-n400  # from a stage on

Every stage is a subprocess through its own CLI writing STUDY/runs/<stage>/; STUDY/study.json
records the graph, status, timings and run directories; STUDY/logs/<stage>.log holds each
stage's command and output. Re-running skips finished stages whose config and inputs are
unchanged. Stages whose deps are done run `--jobs` at a time (default: cores // threads).
Each stage's settings are a typed section of the study YAML (`ddpm.train`, `classify.train`,
`evaluate.fidelity`, ...), checked when the study loads; each stage reads its resolved config from
STUDY/configs/<stage>.json (`--config`), and its cache key hashes that config. One study.py per
study directory (STUDY/.lock); Ctrl-C or `kill PID` stops it and every stage it started.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from echosynth.gen.core.config import parse_config, to_dict
from echosynth.gen.core.io import write_json
from echosynth.gen.core.rundir import provenance
from echosynth.gen.core.script import run_script, user_errors
from echosynth.pipelines.checks import StageConfigError, check_stages
from echosynth.pipelines.config import StudyConfig
from echosynth.pipelines.executor import ExecutorError, LocalExecutor, default_jobs
from echosynth.pipelines.graph import GraphBuilder
from echosynth.pipelines.progress import Progress, load_history
from echosynth.pipelines.slurm import (
    SlurmExecutor,
    check_config,
    cluster_info,
    dry_run_lines,
    status_table,
    unrunnable,
)
from echosynth.pipelines.stages import Runner, StageFailed, StudyLock, StudyLocked, select

REPO = Path(__file__).resolve().parent.parent


def study_dir(cfg: StudyConfig) -> Path:
    """STUDY dir: --out, else runs/study-<name> under the repo."""
    return Path(cfg.out) if cfg.out else REPO / "runs" / f"study-{cfg.name}"


def build_graph(cfg: StudyConfig, out: Path) -> tuple[list, bool]:
    """The stage graph, and whether it assumed the subset files' names (the split does not exist yet)."""
    builder = GraphBuilder(cfg, out)
    return builder.build(), builder.assumed_split


def _argv(argv: list[str] | None) -> tuple[list[str], bool]:
    """Map `--from` to the `start` key; pull out --dry-run so that it prints the graph, not only the config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = ["--start" if a == "--from" else a.replace("--from=", "--start=", 1) for a in argv]
    dry = "--dry-run" in argv
    return [a for a in argv if a != "--dry-run"], dry


def _sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # `kill PID` stops the stages as Ctrl-C does


def _check_cluster(stages, names: list[str], cfg: StudyConfig, dry_run: bool) -> int:
    """Check each selected stage's Slurm request against sinfo's nodes: 2 (after naming each one that no
    node can satisfy), else 0. A cluster that cannot be asked is a note, not an error."""
    try:
        cluster = cluster_info()
    except (RuntimeError, OSError, ValueError) as e:
        print(f"# slurm: requests not checked against the cluster's nodes: {e}",
              file=sys.stdout if dry_run else sys.stderr)
        return 0
    bad = unrunnable(stages, names, cfg.slurm, cluster)
    if bad:
        print(f"study.py: error: {len(bad)} Slurm request(s) no node of this cluster can satisfy; nothing was "
              "submitted:\n" + "\n".join(f"- {line}" for line in bad), file=sys.stderr)
        return 2
    if dry_run:
        print(f"# slurm: every request fits a node of the cluster (largest: {cluster.largest()})")
    return 0


@user_errors("study.py")  # a ConfigError from checks outside parse_config (e.g. the Slurm settings) is one line
def main(argv: list[str] | None = None) -> int:
    args, dry_run = _argv(argv)
    cfg = parse_config(StudyConfig, args, description=__doc__)
    out = study_dir(cfg)
    jobs = cfg.jobs or default_jobs(cfg.threads)
    # Relative paths in the study config resolve from the repo root, as the stage CLIs run there.
    stages, assumed = build_graph(cfg, out.resolve())
    try:
        names = select(stages, cfg.only or None, cfg.start or None)
    except ValueError as e:
        print(f"study.py: error: {e}", file=sys.stderr)
        return 2
    if cfg.list_stages:
        print("\n".join(s.name for s in stages))
        return 0
    if cfg.status:
        print(status_table(out))
        return 0
    if cfg.executor == "slurm":
        check_config(cfg.slurm)
        jobs = cfg.slurm.max_jobs
    try:
        checked = check_stages([s for s in stages if s.name in set(names)])
    except StageConfigError as e:
        print(f"study.py: error: a stage would refuse its settings:\n{e}", file=sys.stderr)
        return 2
    if dry_run:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip())
        print(f"\n# study dir: {out}\n# settings of {checked} stage(s) checked by their CLIs' config checks"
              f"\n# {len(names)} of {len(stages)} stage(s) selected, {jobs} at a time (--jobs):")
        Runner(out, stages, {}, echo=print).run(names, dry_run=True)
        if cfg.executor == "slurm":
            print("\n" + "\n".join(dry_run_lines(stages, names, cfg.slurm, out)))
            return _check_cluster(stages, names, cfg, dry_run=True)
        return 0
    old_handler = signal.signal(signal.SIGTERM, _sigterm)
    try:
        lock = StudyLock(out).acquire()
    except StudyLocked as e:
        signal.signal(signal.SIGTERM, old_handler)
        print(f"study.py: error: {e}", file=sys.stderr)
        return 2
    progress = Progress(names, load_history(out / "timings.jsonl"), jobs)
    if cfg.executor == "slurm":
        try:
            executor = SlurmExecutor(out, cfg.slurm, cancel_on_exit=cfg.cancel_on_exit, echo=progress.echo)
        except (RuntimeError, ImportError) as e:
            lock.release()
            signal.signal(signal.SIGTERM, old_handler)
            print(f"study.py: error: {e}", file=sys.stderr)
            return 2
        if cfg.slurm.check_nodes and _check_cluster(stages, names, cfg, dry_run=False):
            lock.release()
            signal.signal(signal.SIGTERM, old_handler)
            return 2
    else:
        executor = LocalExecutor(jobs, keep_fds=(lock.fd,))
    t0 = time.perf_counter()
    try:
        write_json(out / "config.json", to_dict(cfg))
        prov = provenance(seed=cfg.dataset.seed)
        write_json(out / "provenance.json", prov)
        header = {"name": cfg.name, "study_dir": str(out.resolve()), "config": to_dict(cfg), "provenance": prov,
                  "jobs": jobs}
        kw = dict(echo=progress.echo, executor=executor, progress=progress)
        # Data stages first. The split decides the subset files: a graph built before it existed is built
        # again (a study's first run), one built on the split is used as it is.
        data = [n for n in names if n.startswith("data-")]
        ran = Runner(out, stages, header, **kw).run(data) if data else 0
        if assumed:
            stages, _ = build_graph(cfg, out.resolve())
            check_stages(stages)
        rest = [s.name for s in stages if s.name in set(select(stages, cfg.only or None, cfg.start or None))
                and s.name not in data]
        progress.add(rest)
        runner = Runner(out, stages, header, **kw)
        ran += runner.run(rest)
        runner.header["last_run_seconds"] = round(time.perf_counter() - t0, 1)
        runner.save()
    except ExecutorError as e:  # e.g. a Slurm job that can never start: one message, no traceback
        progress.close()
        print(f"study.py: error: {e}", file=sys.stderr)
        print("study.py: finished stages are kept; fix the setting and re-run the same command to resume.",
              file=sys.stderr)
        return 1
    except (StageFailed, StageConfigError, FileNotFoundError) as e:
        progress.close()
        print(f"study.py: error: {e}", file=sys.stderr)
        print("study.py: finished stages are kept; fix the problem and re-run the same command to resume.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        if getattr(executor, "detached", None):
            print("study.py: interrupted; its Slurm jobs go on. Re-run the same command to wait for them and resume.",
                  file=sys.stderr)
        else:
            print("study.py: interrupted; every stage it started was stopped. Re-run the same command to resume.",
                  file=sys.stderr)
        return 130
    finally:
        executor.close()
        lock.release()
        signal.signal(signal.SIGTERM, old_handler)
    progress.close()
    total = len(progress.names)
    print(f"study: {ran} stage(s) ran, {total - ran} cached, in {time.perf_counter() - t0:.1f} s "
          f"({jobs} at a time); {out / 'study.json'}")
    if (out / "report.html").is_file():
        print(f"report: {(out / 'report.html').resolve()}")
    return 0


if __name__ == "__main__":
    run_script(main)
