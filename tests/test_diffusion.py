"""Diffusion maths against independent float64 computations, and agreement with diffusers' schedulers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from gen.diffusion import (
    Diffusion,
    cosine_betas,
    discretized_gaussian_log_likelihood,
    linear_betas,
    make_scheduler,
    normal_kl,
    space_timesteps,
)

D64 = torch.float64


def test_linear_schedule_endpoints_scale_with_T():
    b = linear_betas(1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02) and np.all(np.diff(b) > 0)
    b2 = linear_betas(500)  # scaled by 1000/T: same overall noise range
    assert b2[0] == pytest.approx(2e-4) and b2[-1] == pytest.approx(0.04)


def test_cosine_schedule_matches_closed_form():
    T, s = 1000, 0.008
    f = [math.cos(((t / T) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = np.minimum([1 - f[t + 1] / f[t] for t in range(T)], 0.999)
    np.testing.assert_allclose(cosine_betas(T), expected, rtol=1e-12)
    assert cosine_betas(T).max() == pytest.approx(0.999)  # the last β is clipped
    d = Diffusion(T, "cosine")  # ᾱ_t follows f(t+1)/f(0)
    np.testing.assert_allclose(d.alphas_cumprod[:-1], np.array(f[1:T]) / f[0], rtol=1e-9)


def test_kl_of_identical_gaussians_is_zero_and_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(100, generator=g, dtype=D64), torch.randn(100, generator=g, dtype=D64)
    lv1, lv2 = torch.randn(100, generator=g, dtype=D64), torch.randn(100, generator=g, dtype=D64)
    assert torch.allclose(normal_kl(m1, lv1, m1, lv1), torch.zeros(100, dtype=D64), atol=1e-15)
    s1, s2 = np.exp(0.5 * lv1.numpy()), np.exp(0.5 * lv2.numpy())
    ref = np.log(s2 / s1) + (s1**2 + (m1.numpy() - m2.numpy()) ** 2) / (2 * s2**2) - 0.5
    np.testing.assert_allclose(normal_kl(m1, lv1, m2, lv2).numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_matches_bayes_rule(schedule):
    d = Diffusion(1000, schedule)
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(6, 1, 4, 4, generator=g, dtype=D64), torch.randn(6, 1, 4, 4, generator=g, dtype=D64)
    t = torch.tensor([1, 2, 10, 500, 998, 999])
    mean, var, logvar = d.q_posterior(x0, xt, t)
    # q(x_{t-1}|x0) = N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1});  q(x_t|x_{t-1}) = N(√α_t x_{t-1}, β_t); multiply the Gaussians.
    ab = np.cumprod(1 - d.betas)
    for i, ti in enumerate(t.tolist()):
        a_prev, beta = ab[ti - 1], d.betas[ti]
        prec = 1 / (1 - a_prev) + (1 - beta) / beta
        m = (math.sqrt(a_prev) * x0[i].numpy() / (1 - a_prev) + math.sqrt(1 - beta) * xt[i].numpy() / beta) / prec
        np.testing.assert_allclose(mean[i].numpy(), m, rtol=1e-9, atol=1e-12)
        assert var[i].item() == pytest.approx(1 / prec, rel=1e-9)
        assert logvar[i].item() == pytest.approx(math.log(1 / prec), rel=1e-9)


def test_decoder_nll_matches_numerical_integration():
    x = torch.tensor([-1.0, -0.5, 0.0, 127 / 127.5 - 1, 0.9, 1.0], dtype=D64)
    mu = torch.tensor([-0.98, -0.4, 0.01, 0.0, 0.95, 0.97], dtype=D64)
    log_scale = torch.log(torch.tensor([0.01, 0.2, 0.005, 0.3, 0.05, 0.02], dtype=D64))
    got = discretized_gaussian_log_likelihood(x, mu, log_scale).numpy()
    for i in range(len(x)):
        lo = -np.inf if x[i] < -0.999 else x[i].item() - 1 / 255
        hi = np.inf if x[i] > 0.999 else x[i].item() + 1 / 255
        m, sd = mu[i].item(), math.exp(log_scale[i].item())
        lo, hi = max(lo, m - 40 * sd), min(hi, m + 40 * sd)  # the Gaussian has no mass beyond 40σ
        p = integrate.quad(stats.norm(m, sd).pdf, lo, hi, points=[m] if lo < m < hi else None,
                           epsabs=1e-15, epsrel=1e-12, limit=200)[0]
        assert got[i] == pytest.approx(math.log(p), rel=1e-6, abs=1e-9)


def test_vb_gradient_stops_at_the_mean_and_hybrid_weight():
    d = Diffusion(1000, "linear", learn_sigma=True, lambda_vlb=0.001)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 3, 400, 999])
    out = torch.randn(4, 2, 8, 8, generator=g).requires_grad_(True)
    terms = d.losses(out, x0, noise, t)
    assert set(terms) == {"mse", "vb", "loss"} and all(v.shape == (4,) for v in terms.values())
    torch.testing.assert_close(terms["loss"], terms["mse"] + 0.001 * 1000 * terms["vb"])
    (grad,) = torch.autograd.grad(terms["vb"].sum(), out)
    assert grad[:, :1].abs().max() == 0  # no VLB gradient into ε
    assert grad[:, 1:].abs().max() > 0  # but into the variance half
    torch.testing.assert_close(terms["mse"], ((noise - out[:, :1]) ** 2).mean(dim=(1, 2, 3)))


def test_vb_is_zero_for_the_true_posterior_and_fixed_sigma_is_plain_mse():
    d = Diffusion(100, "linear", learn_sigma=True)
    x0 = torch.linspace(-1, 1, 64, dtype=D64).view(1, 1, 8, 8).repeat(3, 1, 1, 1)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=D64)
    t = torch.tensor([5, 50, 99])
    # ε̂ = ε and v chosen so the log variance equals log β̃_t: v = -1 gives min_log exactly.
    out = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    assert d.losses(out, x0, noise, t)["vb"].abs().max() < 1e-6  # float32 inside losses
    f = Diffusion(100, "linear", learn_sigma=False)
    terms = f.losses(noise * 0.5, x0, noise, t)
    torch.testing.assert_close(terms["loss"], terms["mse"])
    assert terms["vb"].abs().max() == 0
    with pytest.raises(ValueError, match="output channels"):
        f.losses(out, x0, noise, t)


def test_q_sample_moments():
    d = Diffusion(1000, "linear")
    x0 = torch.full((20000, 1, 1, 1), 0.5, dtype=D64)
    t = torch.full((20000,), 300)
    xt = d.q_sample(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=D64))
    ab = np.cumprod(1 - d.betas)[300]
    assert xt.mean().item() == pytest.approx(0.5 * math.sqrt(ab), abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.03)


def test_respacing_keeps_alpha_bar():
    d = Diffusion(1000, "cosine")
    kept = space_timesteps(1000, 10)
    r = d.respace(kept)
    np.testing.assert_allclose(r.alphas_cumprod, d.alphas_cumprod[kept], rtol=1e-8)
    assert list(r.timestep_map) == kept and r.num_timesteps == 10
    full = d.respace(range(1000))
    np.testing.assert_allclose(full.betas, d.betas, rtol=1e-10)


@pytest.mark.parametrize("schedule,steps,spacing", [("linear", 10, "linspace"), ("cosine", 25, "linspace"), ("linear", 8, "leading")])
def test_respaced_learned_range_step_agrees_with_diffusers(schedule, steps, spacing):
    """Our respaced p(x_{t-1}|x_t) equals DDPMScheduler(variance_type='learned_range').set_timesteps(N).step."""
    d = Diffusion(1000, schedule, learn_sigma=True)
    sched = make_scheduler(d, "ddpm", spacing)
    sched.set_timesteps(steps)
    kept = space_timesteps(1000, steps, spacing)
    assert sorted(sched.timesteps.tolist()) == kept
    r = d.respace(kept)
    g = torch.Generator().manual_seed(5)
    for i, t in enumerate(sched.timesteps):
        idx = steps - 1 - i  # index in the respaced chain
        x = torch.randn(3, 1, 6, 6, generator=g)
        out = torch.cat([torch.randn(3, 1, 6, 6, generator=g), torch.rand(3, 1, 6, 6, generator=g) * 2 - 1], dim=1)
        seed = 100 + i
        got = sched.step(out, t, x, generator=torch.Generator().manual_seed(seed)).prev_sample
        tt = torch.full((3,), idx)
        mean, _, logvar, _ = r.p_mean_variance(out.double(), x.double(), tt, clip_denoised=True)
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).double()
        ours = mean + (torch.exp(0.5 * logvar) * z if idx > 0 else 0)
        torch.testing.assert_close(got.double(), ours, rtol=2e-4, atol=2e-4)


def test_ddim_scheduler_uses_same_alphas():
    d = Diffusion(1000, "linear")
    s = make_scheduler(d, "ddim")
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), d.alphas_cumprod, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler(d, "euler")
