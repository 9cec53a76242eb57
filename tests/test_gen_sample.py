"""Sampling: per-image seeds, guidance, sample directories (1 vs 2 processes), resume and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import PYTHON, accelerate_cmd, run_cli
from echosynth.gen.core.checkpoint import save_checkpoint
from echosynth.gen.core.config import ConfigError, to_dict
from echosynth.gen.core.io import save_npz, write_json
from echosynth.gen.data.manifest import load_gray, read_manifest
from echosynth.gen.diffusion.ema import EMA
from echosynth.gen.diffusion.loop import DiffusionConfig, TrainConfig
from echosynth.gen.diffusion.synthesis import (
    SampleConfig,
    image_seeds,
    parse_counts,
    plan_labels,
    sample_images,
    sample_to_dir,
    shard_path,
)
from echosynth.gen.diffusion.trained import load_run
from echosynth.gen.diffusion.unet import ClassUNet, ModelConfig

CLASSES = ["A2C", "A4C", "PSAX"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_run(root, cfg_dropout=0.0):
    """A run with one random-weight checkpoint (sampling does not care whether the weights are trained)."""
    cfg = TrainConfig(data="x.csv", model=ModelConfig("tiny", 16), diffusion=DiffusionConfig(num_timesteps=100),
                      cfg_dropout=cfg_dropout)
    run = root / f"run-{cfg_dropout}"
    run.mkdir(parents=True)
    write_json(run / "config.json", to_dict(cfg))
    write_json(run / "classes.json", CLASSES)
    torch.manual_seed(0)
    m = ClassUNet("tiny", 16, len(CLASSES), True)
    opt = torch.optim.AdamW(m.parameters())
    save_checkpoint(run, 1, model=m.state_dict(), ema=EMA(m).state_dict(), optimizer=opt.state_dict(),
                    scheduler={}, state={})
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("sample"))


def test_seeds_labels_and_counts():
    s = image_seeds(0, range(5))
    assert len(set(s.tolist())) == 5 and np.array_equal(s, image_seeds(0, range(5)))
    assert np.array_equal(image_seeds(0, [3]), s[3:4]) and not np.array_equal(image_seeds(1, range(5)), s)
    assert plan_labels(CLASSES, per_class=2).tolist() == [0, 0, 1, 1, 2, 2]
    assert plan_labels(CLASSES, counts={"PSAX": 2, "A2C": 1}).tolist() == [0, 2, 2]
    assert parse_counts("A2C=5, PSAX=3") == {"A2C": 5, "PSAX": 3}
    with pytest.raises(ConfigError, match="not CLASS=N"):
        parse_counts("A2C:5")
    with pytest.raises(ValueError, match="PLAX"):
        plan_labels(CLASSES, counts={"PLAX": 1})


def test_images_do_not_depend_on_batching(run_dir):
    r = load_run(run_dir)
    labels, seeds = np.array([0, 1, 2, 1, 0]), image_seeds(7, range(5))
    a = sample_images(r, labels, seeds, steps=8, batch_size=5)
    b = sample_images(r, labels, seeds, steps=8, batch_size=2)
    c = sample_images(r, labels[3:4], seeds[3:4], steps=8, batch_size=1)
    assert a.dtype == np.uint8 and a.shape == (5, 16, 16)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1 and np.abs(a[3].astype(int) - c[0].astype(int)).max() <= 1
    assert len({im.tobytes() for im in a}) == 5  # different seeds, different images
    d = sample_images(r, labels, seeds, steps=8, sampler="ddim", batch_size=5)
    assert np.array_equal(d, sample_images(r, labels, seeds, steps=8, sampler="ddim", batch_size=5))
    for sampler in ("dpm++2m", "dpm++2m-sde", "unipc"):  # multistep solvers keep state per batch: batching must not leak into it
        for precision in ("no", "bf16"):
            e = sample_images(r, labels, seeds, steps=6, sampler=sampler, batch_size=5, precision=precision)
            f = sample_images(r, labels, seeds, steps=6, sampler=sampler, batch_size=2, precision=precision)
            assert np.abs(e.astype(int) - f.astype(int)).max() <= 1, (sampler, precision)


def test_guidance_needs_cfg_training_and_changes_output(tmp_path, run_dir):
    with pytest.raises(ValueError, match="cfg_dropout"):
        sample_images(load_run(run_dir), [0], [1], steps=4, guidance=2.0)
    r = load_run(make_run(tmp_path, cfg_dropout=0.1))
    a = sample_images(r, [0, 1], [1, 2], steps=4, guidance=1.0)
    b = sample_images(r, [0, 1], [1, 2], steps=4, guidance=3.0)
    assert not np.array_equal(a, b)


def _cfg(run, out, **kw):
    return SampleConfig(run=str(run), out=str(out), per_class=2, sampling_steps=6, batch_size=2, seed=3, **kw)


def test_sample_dir_resume_and_refusals(tmp_path, run_dir):
    out = sample_to_dir(_cfg(run_dir, tmp_path / "a"))
    z = np.load(out / "samples.npz")
    assert z["images"].shape == (6, 16, 16) and z["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    assert z["classes"].tolist() == CLASSES and np.array_equal(z["seeds"], image_seeds(3, range(6)))
    meta = json.loads((out / "sample.json").read_text())
    assert meta["complete"] and meta["checkpoint_step"] == 1 and meta["sampler"] == "ddpm" and meta["sampling_steps"] == 6
    assert not (out / "shards").exists()
    with pytest.raises(FileExistsError, match="already complete"):
        sample_to_dir(_cfg(run_dir, out))
    with pytest.raises(FileExistsError, match="another request"):
        sample_to_dir(_cfg(run_dir, out, sampler="ddim"))
    # resume: a completed shard is not sampled again (a marked fake shard survives into the merge)
    part = tmp_path / "b"
    part.mkdir()
    meta["complete"] = False
    write_json(part / "sample.json", meta)
    fake = np.full((2, 16, 16), 7, np.uint8)
    save_npz(shard_path(part, 2, 4), images=fake, labels=np.array([1, 1]), seeds=z["seeds"][2:4], sha1=np.array(["x", "y"]))
    sample_to_dir(_cfg(run_dir, part))
    zb = np.load(part / "samples.npz")
    assert (zb["images"][2:4] == 7).all() and np.array_equal(zb["images"][[0, 1, 4, 5]], z["images"][[0, 1, 4, 5]])
    with pytest.raises(ConfigError, match="exactly one of"):
        SampleConfig(run="r", out="o", per_class=2, counts="A2C=1").validate()


@pytest.mark.parametrize("sampler, precision", [("ddpm", "no"), ("dpm++2m", "bf16"), ("dpm++2m-sde", "bf16")])
def test_one_and_two_processes_give_identical_sets(tmp_path, run_dir, sampler, precision):
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"p{n}"
        run_cli(accelerate_cmd("gen/sample.py", n) + ["--run", str(run_dir), "--counts", "A2C=3,PSAX=2,A4C=1",
                                                      "--sampling_steps", "5", "--batch-size", "2", "--out", str(outs[n]),
                                                      "--sampler", sampler, "--mixed_precision", precision],
                env={"OMP_NUM_THREADS": "1"})
    assert json.loads((outs[1] / "sample.json").read_text())["precision"] == precision
    z1, z2 = np.load(outs[1] / "samples.npz"), np.load(outs[2] / "samples.npz")
    for k in ("images", "labels", "seeds", "classes"):
        assert np.array_equal(z1[k], z2[k]), k
    assert z1["labels"].tolist() == [0, 0, 0, 1, 2, 2]
    m1 = read_manifest(outs[1] / "manifest.csv", check_sha1=True)
    m2 = read_manifest(outs[2] / "manifest.csv", check_sha1=True)
    assert m1.df.equals(m2.df)
    assert set(m1.df["source"]) == {"synthetic"} and set(m1.df["split"]) == {""}
    assert m1.df["patient_id"].tolist()[:2] == ["synthetic-0", "synthetic-1"]
    assert m1.df["view"].tolist() == ["A2C"] * 3 + ["A4C"] + ["PSAX"] * 2
    assert [int(s) for s in m1.df["seed"]] == z1["seeds"].tolist()
    for i, p in enumerate(m1.df["path"]):
        assert np.array_equal(load_gray(outs[1] / p), z1["images"][i])
    # a bad request fails with a message naming the problem, before any sampling
    bad = run_cli([PYTHON, "gen/sample.py", "--run", str(run_dir), "--per_class", "1", "--out", str(tmp_path / "c"),
                   "--sampler", "euler"], check=False)
    assert bad.returncode == 2 and "sampler" in bad.stderr
    shutil.rmtree(outs[2])


def _oracle(T: int, S: int):
    """(a loaded run whose model knows each class's x₀, ε̂ = (x_t − √ᾱ_t x₀)/√(1−ᾱ_t), over T steps; the uint8 x₀ images)."""
    from echosynth.gen.diffusion.process import Diffusion
    from echosynth.gen.diffusion.trained import LoadedRun

    d = Diffusion(T, "linear", True)
    x0s = torch.linspace(-0.8, 0.8, 2 * S * S).view(2, 1, S, S)

    class Oracle(torch.nn.Module):
        null_class, in_channels = 2, 1

        def forward(self, x, t, y):
            ab = torch.as_tensor(d.alphas_cumprod, dtype=x.dtype)[t].view(-1, 1, 1, 1)
            eps = (x - ab.sqrt() * x0s[y]) / (1 - ab).sqrt()
            return torch.cat([eps, torch.zeros_like(eps)], 1)

    return LoadedRun(Oracle(), d, ["a", "b"], S, None, 0, None, "ema"), ((x0s[:, 0] + 1) * 127.5).round().numpy()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m", "dpm++2m-sde", "unipc"])
def test_an_oracle_model_is_sampled_back_exactly(sampler):
    """A model that knows each class's x₀ must yield x₀ with every sampler."""
    r, want = _oracle(1000, 8)
    for steps in (10, 50):
        got = sample_images(r, [0, 1], [1, 2], steps=steps, sampler=sampler)
        # the ODE solvers reach x₀ through float32 sums of a few terms: a level may round the other way
        assert np.abs(got - want).max() <= (0 if sampler in ("ddpm", "ddim") else 1), sampler


def test_progress_moves_every_denoising_step(run_dir):
    """on_step is called once per step and batch, and its increments add up to the number of images."""
    loaded = load_run(run_dir)
    calls: list[float] = []
    labels = np.array([0, 1, 0, 1, 0])
    sample_images(loaded, labels, image_seeds(0, range(5)), steps=3, batch_size=2, on_step=calls.append)
    assert len(calls) == 3 * 3  # 3 batches (2, 2, 1 images) × 3 steps
    assert sum(calls) == pytest.approx(5)
    assert calls[:3] == pytest.approx([2 / 3] * 3) and calls[-1] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------------------------
# The multistep solvers against their closed forms, computed here in float64 numpy


def _toy_eps(x: np.ndarray, t: float) -> np.ndarray:
    """A smooth nonlinear ε-model of x and t."""
    return 0.3 * x + np.sin(2 * x) * (0.2 + t / 2000)


def _vp(t: int):
    """(α_t, σ_t, λ_t) = (√ᾱ_t, √(1 − ᾱ_t), log α_t/σ_t) of the linear schedule β = linspace(1e-4, 0.02, 1000)."""
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))[t]
    a, s = np.sqrt(ab), np.sqrt(1 - ab)
    return a, s, np.log(a / s)


def _run_scheduler(sampler: str, x: np.ndarray, n_steps: int, steps: int, noise: list[np.ndarray] | None = None):
    """`n_steps` updates of echosynth.gen.diffusion.process.make_noise_scheduler's solver on the toy model, fed a 2-channel
    output's ε half (and, for the SDE solver, the given noise of each step)."""
    from echosynth.gen.diffusion.process import Diffusion, make_noise_scheduler

    sched = make_noise_scheduler(Diffusion(1000, "linear", True), sampler)
    sched.set_timesteps(steps)
    xt = torch.from_numpy(x.astype(np.float32))
    for i, t in enumerate(sched.timesteps[:n_steps]):
        eps = torch.from_numpy(_toy_eps(xt.double().numpy(), float(t)).astype(np.float32))
        out = torch.cat([eps, torch.full_like(eps, 0.5)], 1)  # the variance half must be ignored
        kw = {} if noise is None else {"variance_noise": torch.from_numpy(noise[i].astype(np.float32))}
        xt = sched.step(out[:, :1].contiguous(), t, xt, **kw).prev_sample
    return xt.double().numpy(), [int(t) for t in sched.timesteps]


def test_dpm_solver_pp_2m_matches_its_closed_form():
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): with h_i = λ_{t_i} − λ_{t_{i−1}}, x̂₀ = (x − σ ε̂)/α,
    x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x − α_{t_i}(e^{−h_i} − 1) D,  D = x̂₀ at the first step, else
    D = (1 + 1/(2r)) x̂₀_{i−1} − 1/(2r) x̂₀_{i−2} with r = h_{i−1}/h_i."""
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
    got, ts = _run_scheduler("dpm++2m", x, 3, 20)
    xs, x0s = x, []
    for i in range(3):
        s, t = ts[i], (ts[i + 1] if i + 1 < len(ts) else None)
        a_s, s_s, l_s = _vp(s)
        a_t, s_t, l_t = _vp(t)
        x0s.append((xs - s_s * _toy_eps(xs, s)) / a_s)
        h = l_t - l_s
        if i == 0:
            d = x0s[-1]
        else:
            r = h_prev / h  # noqa: F821 - set on the previous pass
            d = (1 + 1 / (2 * r)) * x0s[-1] - 1 / (2 * r) * x0s[-2]
        xs = (s_t / s_s) * xs - a_t * np.expm1(-h) * d
        h_prev = h  # noqa: F841
    np.testing.assert_allclose(got, xs, rtol=2e-4, atol=2e-5)


def test_sde_dpm_solver_pp_2m_matches_its_closed_form():
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, §5; midpoint form): with the same h, x̂₀ and D as the ODE solver,
    x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) e^{−h_i} x + α_{t_i}(1 − e^{−2h_i}) D + σ_{t_i} √(1 − e^{−2h_i}) z_i."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 1, 4, 4))
    z = [rng.standard_normal(x.shape) for _ in range(3)]
    got, ts = _run_scheduler("dpm++2m-sde", x, 3, 20, noise=z)
    xs, x0s, h_prev = x, [], None
    for i in range(3):
        s, t = ts[i], ts[i + 1]
        a_s, s_s, l_s = _vp(s)
        a_t, s_t, l_t = _vp(t)
        x0s.append((xs - s_s * _toy_eps(xs, s)) / a_s)
        h = l_t - l_s
        d = x0s[-1] if i == 0 else (1 + h / (2 * h_prev)) * x0s[-1] - h / (2 * h_prev) * x0s[-2]
        xs = (s_t / s_s) * np.exp(-h) * xs - a_t * np.expm1(-2 * h) * d + s_t * np.sqrt(-np.expm1(-2 * h)) * z[i]
        h_prev = h
    np.testing.assert_allclose(got, xs, rtol=2e-4, atol=2e-5)
    # the noise matters: other noise, another result
    other, _ = _run_scheduler("dpm++2m-sde", x, 3, 20, noise=[-n for n in z])
    assert np.abs(other - got).max() > 1e-2


def test_unipc_first_step_is_the_first_order_update():
    """UniPC's first predictor step (before any corrector) is the first-order data-prediction update
    x_t = (σ_t/σ_s) x − α_t(e^{−h} − 1) x̂₀ (= DDIM)."""
    x = np.random.default_rng(1).standard_normal((2, 1, 4, 4))
    got, ts = _run_scheduler("unipc", x, 1, 10)
    a_s, s_s, l_s = _vp(ts[0])
    a_t, s_t, l_t = _vp(ts[1])
    x0 = (x - s_s * _toy_eps(x, ts[0])) / a_s
    np.testing.assert_allclose(got, (s_t / s_s) * x - a_t * np.expm1(-(l_t - l_s)) * x0, rtol=2e-4, atol=2e-5)


def test_multistep_samplers_are_the_ones_that_repeat_a_timestep():
    """settings.MULTISTEP_SAMPLERS (what a study's torch-free pre-run check uses) is exactly the set of
    samplers whose diffusers scheduler repeats a timestep at T linspace steps."""
    from echosynth.gen.diffusion.process import Diffusion
    from echosynth.gen.diffusion.settings import MULTISTEP_SAMPLERS, SAMPLERS
    from echosynth.gen.diffusion.synthesis import check_timesteps

    def refused(sampler: str) -> bool:
        try:
            check_timesteps(Diffusion(100, "linear", True), sampler, "linspace", 100)
        except ValueError:
            return True
        return False

    assert {s for s in SAMPLERS if refused(s)} == set(MULTISTEP_SAMPLERS)


@pytest.mark.parametrize("sampler", ["dpm++2m", "dpm++2m-sde", "unipc"])
def test_multistep_solvers_refuse_a_chain_that_repeats_a_timestep(sampler):
    """diffusers' multistep solvers space steps + 1 points over 0…T−1: with linspace and steps = T two steps
    share a timestep (h = 0) and every image came out black. That chain is refused; T − 1 steps, or
    trailing spacing, sample an oracle model back to x₀."""
    r, want = _oracle(100, 4)
    with pytest.raises(ValueError, match="repeats timesteps at 100 sampling steps over T = 100: use at most 99"):
        sample_images(r, [0, 1], [1, 2], steps=100, sampler=sampler)
    for steps, spacing in ((99, "linspace"), (100, "trailing")):
        got = sample_images(r, [0, 1], [1, 2], steps=steps, sampler=sampler, spacing=spacing)
        assert np.abs(got - want).max() <= 1, (steps, spacing)
