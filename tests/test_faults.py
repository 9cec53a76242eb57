"""Fault injection: hostile manifests, bomb and corrupt images, unwritable outputs, file modes, kills.

Every case asserts its outcome: a clean one-line error naming the file (exit 2, no traceback),
a skipped-and-named file, or, after SIGKILL at seeded random points, a resume whose outputs are
byte-identical to an uninterrupted run's with nothing left over.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import PYTHON, REPO, run_cli
from echosynth.gen.core.io import save_npz, save_png, write_json, write_text
from echosynth.gen.data.build import build_phantom, build_splits
from echosynth.gen.data.manifest import read_manifest

PREPARE = "gen/prepare.py"


def _clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, no traceback, and every needle in stderr."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """A 60-image phantom at 32 px (in-process, single worker)."""
    out = tmp_path_factory.mktemp("faults") / "data"
    build_phantom(out, n=60, size=32, seed=0, workers=1, progress=False)
    return out


# ----------------------------------------------------------------------------------------------
# Bad manifests through the CLI


def test_bad_manifests_give_one_line_naming_the_file(small_data, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    _clean_error(run_cli([PYTHON, PREPARE, "split", "--manifest", str(empty), "--out", str(tmp_path / "a")], check=False),
                 f"{empty}: the manifest is empty (0 bytes)")
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\x00\xff\xfe garbage \x00\n\x81\x82")
    _clean_error(run_cli([PYTHON, PREPARE, "split", "--manifest", str(garbage), "--out", str(tmp_path / "b")], check=False),
                 str(garbage))
    # A row escaping the data set: refused by line, and no output written.
    df = pd.read_csv(small_data / "manifest.csv", dtype=str, keep_default_na=False)
    df.loc[10, "path"] = "../../../../tmp/outside_secret.png"
    hostile = small_data.parent / "hostile" / "manifest.csv"
    hostile.parent.mkdir()
    df.to_csv(hostile, index=False)
    proc = run_cli([PYTHON, PREPARE, "split", "--manifest", str(hostile), "--out", str(tmp_path / "c")], check=False)
    _clean_error(proc, "row 12 (../../../../tmp/outside_secret.png): path leaves the manifest's directory",
                 "--allow_outside_paths")
    assert not (tmp_path / "c" / "manifest.csv").exists()


def test_gen_train_verify_names_a_changed_image(small_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    df = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    victim = data / df["path"][7]
    save_png(victim, np.zeros((32, 32), np.uint8))  # changed after the manifest was written
    from echosynth.gen.data.manifest import ManifestError
    from echosynth.gen.diffusion.loop import load_training_data
    from echosynth.gen.diffusion.settings import TrainConfig

    cfg = TrainConfig(data=str(data / "manifest.csv"), verify=True)
    with pytest.raises(ManifestError, match=rf"manifest.csv: line 9 \({df['path'][7]}\): sha1 mismatch"):
        load_training_data(cfg)
    cfg.verify = False
    assert len(load_training_data(cfg)) == 60  # the check is opt-in: the cost is one read of every image


def test_classify_verify_names_a_changed_image(small_data, tmp_path):
    from echosynth.classify.settings import ClassifierTrainConfig
    from echosynth.classify.train import load_data
    from echosynth.gen.data.manifest import ManifestError

    data, split = tmp_path / "data", tmp_path / "split"
    shutil.copytree(small_data, data)  # the split's rows point into it: change a copy, not the shared fixture
    build_splits(data / "manifest.csv", split, subsets=[20], seed=0)
    val = pd.read_csv(split / "val.csv", dtype=str, keep_default_na=False)
    save_png(split / val["path"][1], np.zeros((32, 32), np.uint8))
    cfg = ClassifierTrainConfig(train=f"real:{split / 'train.csv'}", val=str(split / "val.csv"), image_size=32, verify=True,
                      workers=1, progress=False)
    with pytest.raises(ManifestError, match=r"val.csv: line 3 \(.*\): sha1 mismatch"):
        load_data(cfg)


# ----------------------------------------------------------------------------------------------
# Hostile and corrupt images


def _bomb(path: Path, side: int = 20000) -> None:
    from test_manifest import bomb_png

    bomb_png(path, side)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory) -> Path:
    """A randomly initialised Madani classifier saved as classify/train.py saves one (predict needs no training)."""
    from safetensors.torch import save_file

    from echosynth.classify.models import build_classifier, model_info

    run = tmp_path_factory.mktemp("clf") / "seed-0"
    classes = ["A2C", "A4C", "PLAX", "PSAX"]
    model = build_classifier("madani", len(classes), 32, 1, grade_head=False)
    write_json(run / "model.json", model_info("madani", classes, 32))
    (run / "checkpoints").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "checkpoints" / "best.safetensors"))
    return run


def test_predict_skips_and_names_corrupt_images(small_data, classifier_run, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    good = sorted((small_data / "images").rglob("*.png"))[:5]
    for i, p in enumerate(good):
        shutil.copy(p, folder / f"ok{i}.png")
    data = good[0].read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "text.png").write_text("not an image\n")
    _bomb(folder / "bomb.png")
    out = tmp_path / "pred.csv"
    proc = run_cli([PYTHON, "classify/predict.py", "--model", str(classifier_run), "--images", str(folder),
                    "--out", str(out)])
    df = pd.read_csv(out)
    assert sorted(Path(p).name for p in df["path"]) == [f"ok{i}.png" for i in range(5)]
    for name in ("truncated.png", "text.png", "bomb.png"):
        assert f"skipped an unreadable image: {folder / name}" in proc.stderr
    assert "decompression bomb" in proc.stderr and "skipped 3 of 8 image(s)" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing readable at all: a clean error.
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_text("nope")
    _clean_error(run_cli([PYTHON, "classify/predict.py", "--model", str(classifier_run), "--images", str(only_bad)],
                         check=False), "none of the 1 image(s) could be read", str(only_bad / "x.png"))


def test_bomb_in_a_manifest_is_named_by_the_data_layer(small_data, tmp_path):
    from echosynth.gen.data.dataset import ManifestDataset
    from echosynth.gen.data.manifest import ManifestError

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    m = read_manifest(data / "manifest.csv")
    _bomb(m.abspath(3))
    ds = ManifestDataset(data / "manifest.csv", size=32)
    with pytest.raises(ManifestError, match=rf"{m.df['path'][3]}: refused as a possible decompression bomb"):
        ds[3]
    with pytest.raises(ManifestError, match="decompression bomb"):
        ManifestDataset(data / "manifest.csv", size=32, preload=True)


# ----------------------------------------------------------------------------------------------
# Unwritable outputs


def _drop_dac_override() -> None:
    # Root ignores permission bits through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: drop them from
    # the bounding set, so that the exec'd child is root without them (prctl PR_CAPBSET_DROP).
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_unprivileged(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
                          preexec_fn=_drop_dac_override if os.geteuid() == 0 else None)


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        probe = _run_unprivileged([PYTHON, "-c", f"open({str(d / 'x')!r}, 'w')"])
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot run a child without permission overrides here: {e}")
    if "PermissionError" not in probe.stderr:
        pytest.skip("a read-only directory is writable here (permission checks overridden)")
    yield d
    d.chmod(0o755)


def test_read_only_output_directories_give_one_line(small_data, read_only_dir, classifier_run):
    ro = read_only_dir
    cases = [
        ([PREPARE, "phantom", "--out", str(ro / "p"), "--n", "8", "--size", "16", "--workers", "1"], ro / "p"),
        ([PREPARE, "split", "--manifest", str(small_data / "manifest.csv"), "--out", str(ro / "s"), "--subsets", "10"],
         ro / "s"),
        (["classify/predict.py", "--model", str(classifier_run), "--images", str(small_data / "images" / "camus"),
          "--out", str(ro / "pred.csv")], ro),
    ]
    for args, where in cases:
        proc = _run_unprivileged([PYTHON, *args])
        _clean_error(proc, "permission denied", "choose a writable --out")
        assert str(where) in proc.stderr
        assert len([line for line in proc.stderr.splitlines() if "error" in line]) == 1


# ----------------------------------------------------------------------------------------------
# File modes: shareable outputs under umask 022


def test_outputs_get_the_umask_mode(tmp_path):
    from echosynth.gen.core.checkpoint import save_checkpoint
    from echosynth.gen.core.io import write_bytes
    from echosynth.gen.data.manifest import write_manifest

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "report.json", {"a": 1})
        write_text(tmp_path / "log.txt", "x")
        write_bytes(tmp_path / "b.bin", b"x")
        save_png(tmp_path / "img.png", np.zeros((4, 4), np.uint8))
        save_npz(tmp_path / "samples.npz", images=np.zeros((1, 4, 4), np.uint8))
        df = pd.DataFrame({c: ["x"] for c in ("path", "view", "source", "patient_id", "split", "frame", "quality", "sha1")})
        write_manifest(df, tmp_path / "manifest.csv")
        import torch
        from safetensors.torch import save_file

        from echosynth.gen.core.io import atomic_path

        with atomic_path(tmp_path / "weights.safetensors") as tmp:  # a writer that makes its own 0600 file
            save_file({"w": torch.zeros(2)}, str(tmp))
        ck = save_checkpoint(tmp_path / "run", 5, model={"w": torch.zeros(2)}, ema={"w": torch.zeros(2)},
                             optimizer={"state": {}, "param_groups": []}, scheduler={}, state={})
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"report.json", "img.png", "samples.npz", "manifest.csv", "model.safetensors",
                                           "state.json", "weights.safetensors"}
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
        for d in [ck, ck.parent]:
            assert stat.S_IMODE(d.stat().st_mode) == 0o755, d
        os.umask(0o027)  # a group-shared lab setting is followed too
        write_json(tmp_path / "group.json", {})
        assert stat.S_IMODE((tmp_path / "group.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------------------------
# SIGKILL at seeded random points: resume gives identical outputs


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while not path.exists() and proc.poll() is None:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.005)
    return time.monotonic()


def _kill_and_resume(args: list[str], out: Path, reference: dict[str, bytes], kills: int, boot_s: float,
                     work_s: float, rng: random.Random) -> list[str]:
    """Kill the command `kills` times at random points of its work phase, then let it finish; check the tree."""
    outcomes = []
    left = work_s  # work the next attempt still has to do (a resumed run skips what is done)
    for _ in range(kills):
        proc = _start(args)
        t0 = time.monotonic()
        try:
            # Start-up (imports) took boot_s in the reference run, then the work phase work_s. Kill after most of
            # the start-up and within the first 60% of the work left, so that the kill lands mid-run even when
            # the machine runs faster than during the reference run (a busy CI machine swings both ways).
            time.sleep(0.8 * boot_s + rng.uniform(0.05, 0.6) * left)
            kids = _children(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            left = max(left - max(time.monotonic() - t0 - boot_s, 0.0), 0.2 * work_s)
            outcomes.append({0: "finished", -signal.SIGKILL: "killed"}.get(proc.returncode, f"exit {proc.returncode}"))
            deadline = time.monotonic() + 15
            while any(_alive(k) for k in kids) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(_alive(k) for k in kids), "worker processes outlived their killed parent"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # nothing of this attempt may keep writing
            except ProcessLookupError:
                pass
    final = subprocess.run([PYTHON, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    if final.returncode == 2 and "already exists" in final.stderr:
        outcomes.append("already complete")  # the last kill came after the run had finished
    else:
        assert final.returncode == 0, final.stderr[-3000:]
    got = _tree(out)
    assert sorted(got) == sorted(reference), set(got) ^ set(reference)
    assert [k for k in reference if got[k] != reference[k]] == []
    return outcomes


@pytest.mark.timeout(900)
def test_prepare_phantom_and_split_survive_sigkill(tmp_path):
    rng = random.Random(20261201)  # fixed seed: the same kill points on every run of this test
    n, size = "600", "32"  # about 3 s of rendering on 2 idle cores: kills land mid-run
    ref = tmp_path / "ref"
    phantom = [PREPARE, "phantom", "--out", str(ref / "data"), "--n", n, "--size", size, "--workers", "2"]
    t0 = time.monotonic()
    proc = _start(phantom)
    t_start = _wait_for(ref / "data" / ".prepare.json", proc)  # the work phase starts with the settings marker
    assert proc.wait(300) == 0, proc.stderr.read()
    phantom_boot, phantom_work = t_start - t0, time.monotonic() - t_start
    split = [PREPARE, "split", "--manifest", str(ref / "data" / "manifest.csv"), "--out", str(ref / "split"),
             "--subsets", "200,400"]
    t0 = time.monotonic()
    proc = _start(split)
    t_start = _wait_for(ref / "split" / ".prepare.json", proc)
    assert proc.wait(300) == 0, proc.stderr.read()
    split_boot, split_work = t_start - t0, time.monotonic() - t_start
    read_manifest(ref / "split" / "train_200.csv", check_sha1=True)

    k = tmp_path / "killed"
    outcomes = _kill_and_resume([*phantom[:3], str(k / "data"), *phantom[4:]], k / "data", _tree(ref / "data"),
                                kills=3, boot_s=phantom_boot, work_s=phantom_work, rng=rng)
    outcomes += _kill_and_resume([*split[:3], str(k / "data" / "manifest.csv"), "--out", str(k / "split"), *split[6:]],
                                 k / "split", _tree(ref / "split"), kills=3, boot_s=split_boot, work_s=split_work,
                                 rng=rng)
    assert outcomes.count("killed") >= 2, outcomes  # kills must land mid-run, or this tests nothing
    assert not list(k.rglob(".*.tmp")) and not (k / "data" / ".prepare.json").exists()
    print(f"kill outcomes: {outcomes}; work phases {phantom_work:.2f} s / {split_work:.2f} s", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Outputs kept out of git

# Every output the README's quick starts and the default settings write inside the repository.
DEFAULT_OUTPUTS = [
    "runs/00000-ddpm-tiny-phantom/checkpoints/step-0000050/model.safetensors",  # gen/train.py --out runs (default)
    "runs/00003-classify-vgg16-view-real/seed-0/predictions_val.csv",  # classify/train.py --out runs (default)
    "runs/study-quick/report.html",  # pipelines/study.py default study directory
    "data/phantom/manifest.csv", "data/phantom/images/tmed2/A4C/000000.png", "data/phantom-split/train_1000.csv",
    "data/tmed2/manifest.csv", "samples/ddpm-tiny/samples.npz", "samples/ddpm-tiny/images/A4C/000000.png",
    "eval/fidelity/fidelity.json", "eval/privacy/privacy.json", "eval/embed/embed.json",
    "surveys/pilot/answer_key.json", "surveys/pilot/responses.sqlite", "surveys/pilot/responses.sqlite-wal",
    "surveys/pilot/images/0a1b2c.png", "reports/survey/answers.csv", "reports/survey/participants.csv",
    "predictions.csv", "demo/report.html",
    "somewhere/else/answer_key.json", "somewhere/else/responses.sqlite",  # private survey files anywhere
]
SOURCES = ["reports/build.py", "reports/render.py", "gen/data/manifest.py", "evaluate/fidelity.py",
           "evaluate/survey/app.py", "configs/study/quick.yaml", "docs/survey.md", "benchmarks/results/x.json"]


def test_every_default_output_is_ignored_and_no_source_is():
    from echosynth.gen.core.io import git_unignored

    if subprocess.run(["git", "rev-parse"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    check = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, capture_output=True, text=True,
                           input="\n".join(DEFAULT_OUTPUTS + SOURCES) + "\n")
    ignored = set(check.stdout.split())
    assert [p for p in DEFAULT_OUTPUTS if p not in ignored] == []
    assert [p for p in SOURCES if p in ignored] == []
    assert git_unignored(REPO / "surveys" / "pilot") is None and git_unignored(REPO / "reports" / "survey") is None
    assert git_unignored(REPO / "reports" / "new_section.py") == REPO.resolve()
