"""Loss-aware timestep sampling: unbiased weights, warm-up and history, exact resume; TensorBoard tracking of gen/train.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import accelerate_cmd, run_cli
from echosynth.gen.core.config import ConfigError, build
from echosynth.gen.core.io import read_jsonl
from echosynth.gen.diffusion.settings import TrainConfig
from echosynth.gen.diffusion.timestep_sampler import (
    LossSecondMomentSampler,
    build_timestep_sampler,
    inverse_cdf,
    sample_uniforms,
)

ENV = {"OMP_NUM_THREADS": "1"}


def filled(T: int, seed: int = 0) -> tuple[LossSecondMomentSampler, np.ndarray]:
    """A warmed-up sampler whose L_t span three orders of magnitude (as L_0 dwarfs the late KL terms)."""
    rng = np.random.default_rng(seed)
    level = np.logspace(0, -3, T)
    s = LossSecondMomentSampler(T)
    for _ in range(s.history):
        s.update(np.arange(T), level * rng.uniform(0.5, 1.5, T))
    return s, level


def test_inverse_cdf_hits_each_timestep_with_its_probability():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    u = (np.arange(10000) + 0.5) / 10000  # a uniform grid: counts are exactly N·p
    assert np.bincount(inverse_cdf(p, u), minlength=4).tolist() == [1000, 2000, 3000, 4000]
    assert inverse_cdf(p, np.array([0.0, 0.1, np.nextafter(1.0, 0)])).tolist() == [0, 1, 3]
    # rounding in the cumulative sum never leaves u near 1 without a timestep
    assert inverse_cdf(np.full(3, 1 / 3), np.array([0.9999999999999999])).tolist() == [2]


def test_uniforms_belong_to_the_sample_not_the_process():
    a = sample_uniforms(0, 5, np.arange(8))
    assert np.array_equal(np.concatenate([sample_uniforms(0, 5, np.arange(0, 8, 2)), sample_uniforms(0, 5, np.arange(1, 8, 2))])
                          [np.argsort(np.r_[np.arange(0, 8, 2), np.arange(1, 8, 2)])], a)
    assert not np.array_equal(a, sample_uniforms(0, 6, np.arange(8))) and ((a >= 0) & (a < 1)).all()


def test_weights_keep_the_loss_estimate_unbiased():
    T = 50
    s, level = filled(T)
    p = s.probs()
    assert p.sum() == pytest.approx(1.0, abs=1e-12) and p.min() >= 0.001 / T
    # p_t = 0.999·√E[L_t²]/Σ + 0.001/T, from the history itself
    rms = np.sqrt((s.losses ** 2).mean(1))
    np.testing.assert_allclose(p, 0.999 * rms / rms.sum() + 0.001 / T, rtol=1e-12)
    L = level  # any per-timestep loss: E_p[w·L] = Σ_t p_t · L_t/(T p_t) = mean_t L_t, exactly
    t_all = np.arange(T)
    w_all = 1.0 / (T * p[t_all])
    assert float(np.sum(p * w_all * L)) == pytest.approx(L.mean(), rel=1e-12)
    # and numerically through the sampler's own draws
    t, w = s.draw(seed=3, step=7, positions=np.arange(20000))
    est = w * L[t]
    se = est.std() / np.sqrt(len(est))
    assert abs(est.mean() - L.mean()) < 4 * se
    np.testing.assert_allclose(w, 1.0 / (T * p[t]))
    # the point of it: far less variance than uniform t (T·L_t/T = L_t drawn uniformly)
    assert est.var() < 0.2 * L.var()


def test_uniform_until_every_history_is_full_then_the_oldest_drops():
    s = LossSecondMomentSampler(3)
    for _ in range(10):
        s.update(np.array([0, 1]), np.array([1.0, 2.0]))
    assert not s.warmed_up() and np.allclose(s.probs(), 1 / 3)
    t, w = s.draw(0, 0, np.arange(6))
    assert np.allclose(w, 1.0) and set(t.tolist()) <= {0, 1, 2}
    s.update(np.array([2] * 10), np.arange(10.0))
    assert s.warmed_up() and not np.allclose(s.probs(), 1 / 3)
    s.update(np.array([2, 2]), np.array([np.nan, 10.0]))  # non-finite skipped; 10 pushes out the oldest (0)
    assert s.losses[2].tolist() == list(range(1, 11)) and s.counts.tolist() == [10, 10, 10]


def test_state_round_trips_through_json_exactly():
    s, _ = filled(20, seed=1)
    r = LossSecondMomentSampler(20)
    r.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert np.array_equal(r.losses, s.losses) and np.array_equal(r.counts, s.counts)
    assert np.array_equal(r.probs(), s.probs())
    with pytest.raises(ValueError, match="T=20"):
        LossSecondMomentSampler(30).load_state_dict(s.state_dict())
    assert build_timestep_sampler("uniform", 10) is None
    with pytest.raises(ValueError, match="loss-aware"):
        build_timestep_sampler("importance", 10)


def test_config_refusals():
    with pytest.raises(ConfigError, match="fixed-σ"):
        build(TrainConfig, overrides={"data": "x.csv", "timestep_sampler": "loss-aware", "diffusion.learn_sigma": False})
    with pytest.raises(ConfigError, match="not one of"):
        build(TrainConfig, overrides={"data": "x.csv", "timestep_sampler": "importance"})
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="pip install"):
            build(TrainConfig, overrides={"data": "x.csv", "log_with": "wandb"})


# ----------------------------------------------------------------------------------------------
# Through gen/train.py: T = 4 (cosine: linear β would exceed 1) so the histories fill (40 values) within the first 6 steps of 16 images

STEPS = 12


def args(split_dir, run_dir, steps=STEPS, *extra):
    return ["--config", "configs/gen/tiny.yaml", "--data", str(split_dir / "train.csv"), "--run_dir", str(run_dir),
            "--model.image_size", "16", "--diffusion.num_timesteps", "4", "--diffusion.schedule", "cosine", "--steps", str(steps),
            "--global_batch", "16", "--lr", "0.001", "--warmup_steps", "2", "--log_every", "1",
            "--checkpoint_every", "6", "--keep_last", "5", "--sample_every", "6", "--sample_per_class", "1",
            "--sampling_steps", "4", "--ema_decay", "0.9", "--timestep_sampler", "loss-aware",
            "--log_with", "tensorboard", *extra]


@pytest.fixture(scope="module")
def run_la(split_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("loss-aware") / "a"
    run_cli(accelerate_cmd("gen/train.py", 1) + args(split_dir, run), env=ENV)
    return run


def sampler_state(run, step):
    return json.loads((run / "checkpoints" / f"step-{step:07d}" / "state.json").read_text())["timestep_sampler"]


def test_loss_aware_run_warms_up_and_checkpoints_its_history(run_la):
    s6, s12 = sampler_state(run_la, 6), sampler_state(run_la, 12)
    assert s6["counts"] == [10, 10, 10, 10] and s12["counts"] == [10, 10, 10, 10]
    r = LossSecondMomentSampler(4)
    r.load_state_dict(s12)
    p = r.probs()
    assert p.max() > 0.5 and p.min() >= 0.001 / 4  # far from uniform: the L_t differ by orders of magnitude
    assert s6["losses"] != s12["losses"]


def test_loss_aware_resume_retraces_the_uninterrupted_run(run_la, split_dir, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(run_la, b)
    shutil.rmtree(b / "checkpoints" / "step-0000012")
    shutil.rmtree(b / "tracking")
    run_cli(accelerate_cmd("gen/train.py", 1) + args(split_dir, b, STEPS, "--resume", "latest"), env=ENV)
    la = {r["step"]: r["loss"] for r in read_jsonl(run_la / "stats.jsonl")}
    lb = {r["step"]: r["loss"] for r in read_jsonl(b / "stats.jsonl")}
    for s in range(7, STEPS + 1):
        assert lb[s] == pytest.approx(la[s], rel=1e-5), s
    assert sampler_state(b, 12) == sampler_state(run_la, 12)
    wa = load_file(str(run_la / "checkpoints" / "step-0000012" / "ema.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step-0000012" / "ema.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_tensorboard_events_mirror_stats_jsonl(run_la):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = list((run_la / "tracking").iterdir())
    assert [p.name for p in runs] == [run_la.name]
    ea = EventAccumulator(str(runs[0]), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {f"train/{k}" for k in ("loss", "mse", "vb", "loss_q0", "grad_norm", "lr", "images_per_s")} <= tags
    stats = {r["step"]: r for r in read_jsonl(run_la / "stats.jsonl")}
    logged = {e.step: e.value for e in ea.Scalars("train/loss")}
    assert sorted(logged) == list(range(1, STEPS + 1))
    assert all(logged[s] == pytest.approx(stats[s]["loss"], rel=1e-6) for s in logged)
    images = ea.Images("samples")
    assert [e.step for e in images] == [6, 12] and images[0].width > 0


def test_loss_aware_history_does_not_depend_on_the_process_count(run_la, split_dir, tmp_path):
    # 2 processes × 4 images × 2 accumulation steps = the same global batch of 16: the same per-sample
    # draws and, gathered in batch order, the same history (up to float summation order in L_t).
    c = tmp_path / "c"
    run_cli(accelerate_cmd("gen/train.py", 2) + args(split_dir, c, 6, "--batch_gpu", "4", "--log_with", ""), env=ENV)
    a6, c6 = sampler_state(run_la, 6), sampler_state(c, 6)
    assert c6["counts"] == a6["counts"]
    np.testing.assert_allclose(np.array(c6["losses"]), np.array(a6["losses"]), rtol=2e-3, atol=1e-6)
    assert not (c / "tracking").exists()
