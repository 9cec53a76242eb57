"""gen/train.py through `accelerate launch` on CPU: files, falling loss, exact resume, 2 processes, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import PYTHON, accelerate_cmd, run_cli
from echosynth.gen.core.checkpoint import list_checkpoints
from echosynth.gen.core.config import ConfigError, build, to_dict
from echosynth.gen.core.io import read_jsonl
from echosynth.gen.data.manifest import ManifestError
from echosynth.gen.diffusion.loop import (
    TrainConfig,
    batch_plan,
    check_resume_compatible,
    global_batch_indices,
    load_training_data,
    resolve_resume,
)
from echosynth.gen.train import main as train_main

ENV = {"OMP_NUM_THREADS": "1"}  # OpenMP spinning makes tiny steps 10x slower on a busy 2-core machine
STEPS = 12


def train_args(split_dir, run_dir, steps=STEPS, *extra):
    return ["--config", "configs/gen/tiny.yaml", "--data", str(split_dir / "train.csv"), "--run_dir", str(run_dir),
            "--model.image_size", "16", "--diffusion.num_timesteps", "100", "--steps", str(steps),
            "--global_batch", "8", "--lr", "0.001", "--warmup_steps", "2", "--log_every", "1",
            "--checkpoint_every", "6", "--keep_last", "5", "--sample_every", "6", "--sample_per_class", "2",
            "--sampling_steps", "4", "--ema_decay", "0.9", *extra]


@pytest.fixture(scope="module", params=["no", "bf16"])
def run_a(request, split_dir, tmp_path_factory):
    """An uninterrupted 12-step run on one process, in fp32 and in bf16 (the script's flag beats the launcher's)."""
    run = tmp_path_factory.mktemp("train") / f"a-{request.param}"
    run_cli(accelerate_cmd("gen/train.py", 1) + train_args(split_dir, run, STEPS, "--mixed_precision", request.param), env=ENV)
    return run


def precision(run) -> list[str]:
    """The --mixed_precision flag a run was trained with."""
    return ["--mixed_precision", json.loads((run / "config.json").read_text())["mixed_precision"]]


def losses(run):
    return {r["step"]: r["loss"] for r in read_jsonl(run / "stats.jsonl")}


def test_run_writes_expected_files_and_lowers_the_loss(run_a):
    for name in ("config.json", "provenance.json", "classes.json", "stats.jsonl", "log.txt"):
        assert (run_a / name).is_file(), name
    assert json.loads((run_a / "classes.json").read_text()) == ["A2C", "A4C", "PLAX", "PSAX"]
    assert list_checkpoints(run_a) == [6, 12]
    ck = run_a / "checkpoints" / "step-0000012"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json",
                 "scheduler.json", "state.json"):
        assert (ck / name).is_file(), name
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == 12 and {"python", "numpy", "torch"} <= set(state["rng"])
    assert (run_a / "samples" / "step-0000006.png").is_file() and (run_a / "samples" / "step-0000012.png").is_file()
    recs = read_jsonl(run_a / "stats.jsonl")
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    keys = {"loss", "mse", "vb", "loss_q0", "loss_q1", "loss_q2", "loss_q3", "grad_norm", "lr", "images_per_s"}
    assert keys <= set(recs[0])
    assert recs[0]["lr"] == pytest.approx(0.001 / 2) and recs[-1]["lr"] == pytest.approx(0.001)  # warm-up
    first, last = np.mean([r["loss"] for r in recs[:3]]), np.mean([r["loss"] for r in recs[-3:]])
    assert last < 0.7 * first, (first, last)
    assert all(r["loss"] == pytest.approx(r["mse"] + 0.001 * 100 * r["vb"]) for r in recs)


def test_resume_retraces_the_uninterrupted_run(run_a, split_dir, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(run_a, b)
    shutil.rmtree(b / "checkpoints" / "step-0000012")  # as if killed after step 12's stats, before its checkpoint
    run_cli(accelerate_cmd("gen/train.py", 1) + train_args(split_dir, b, STEPS, "--resume", "latest", *precision(run_a)), env=ENV)
    la, lb = losses(run_a), losses(b)
    assert sorted(lb) == list(range(1, STEPS + 1))
    for s in range(7, STEPS + 1):
        assert lb[s] == pytest.approx(la[s], rel=1e-5), s
    wa = load_file(str(run_a / "checkpoints" / "step-0000012" / "ema.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step-0000012" / "ema.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert "resumed from" in (b / "log.txt").read_text()


def test_two_processes_with_accumulation_match_one_process(run_a, split_dir, tmp_path):
    c = tmp_path / "c"
    run_cli(accelerate_cmd("gen/train.py", 2) + train_args(split_dir, c, 6, "--batch_gpu", "2", *precision(run_a)), env=ENV)
    la, lc = losses(run_a), losses(c)
    assert sorted(lc) == list(range(1, 7))
    rel = 2e-3 if precision(run_a)[1] == "no" else 2e-2  # bf16 rounds each micro-batch's activations
    for s in range(1, 7):  # same global batches, noise and timesteps: only float summation order differs
        assert lc[s] == pytest.approx(la[s], rel=rel), s
    assert json.loads((c / "provenance.json").read_text())["world_size"] == 2
    assert "2 process(es) × 2 × 2 accumulation" in (c / "log.txt").read_text()


def test_bad_inputs_give_clear_errors(run_a, split_dir, tmp_path, capsys):
    for argv, msg in ((["--model.preset", "huge"], "huge"), (["--stepz", "5"], "Did you mean steps"),
                      (["--config", str(tmp_path / "nope.yaml")], "not found")):
        with pytest.raises(SystemExit) as e:
            train_main(["--data", "x.csv", *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    base = {"data": str(split_dir / "train.csv")}
    with pytest.raises(ManifestError, match=r"\['SC'\] have no images"):
        load_training_data(build(TrainConfig, overrides={**base, "classes": "A2C,A4C,PLAX,PSAX,SC", "model.image_size": 16}))
    with pytest.raises(ManifestError, match="not in --classes"):
        load_training_data(build(TrainConfig, overrides={**base, "classes": "A2C,A4C", "model.image_size": 16}))
    with pytest.raises(ConfigError, match="not divisible"):
        batch_plan(10, 4, 2)
    # resuming with a different model or schedule is refused, naming the key and both values
    cfg = build(TrainConfig, "configs/gen/tiny.yaml", {**base, "run_dir": str(run_a), "resume": "latest",
                                                       "model.image_size": 16, "diffusion.num_timesteps": 50})
    run, ck = resolve_resume(cfg)
    assert run == run_a and ck.name == "step-0000012"
    with pytest.raises(ValueError, match=r"diffusion.num_timesteps \(saved 100, now 50\)"):
        check_resume_compatible(run, to_dict(cfg), ["A2C", "A4C", "PLAX", "PSAX"])
    cfg.diffusion.num_timesteps = 100
    with pytest.raises(ValueError, match="classes"):
        check_resume_compatible(run, to_dict(cfg) | {"lr": 0.001, "global_batch": 8, "warmup_steps": 2, "ema_decay": 0.9},
                                ["A2C", "PSAX"])
    with pytest.raises(FileExistsError, match="--resume latest"):
        resolve_resume(build(TrainConfig, overrides={**base, "run_dir": str(run_a)}))
    # the same refusal through the real script: exit 2, message on stderr, run untouched
    proc = run_cli([PYTHON, "gen/train.py", *train_args(split_dir, run_a, STEPS, "--resume", "latest", "--lr", "0.5")],
                   check=False, env=ENV)
    assert proc.returncode == 2 and "cannot resume" in proc.stderr and "lr" in proc.stderr


def test_global_batches_cover_each_epoch_once():
    n, b = 10, 4
    idx = np.concatenate([global_batch_indices(s, b, n, seed=0) for s in range(5)])  # 20 = 2 epochs
    assert sorted(idx[:10].tolist()) == list(range(10)) and sorted(idx[10:].tolist()) == list(range(10))
    assert np.array_equal(global_batch_indices(3, b, n, 0), idx[12:16])
