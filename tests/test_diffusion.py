"""Diffusion maths against independent float64 computations, and agreement with diffusers' schedulers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from echosynth.gen.diffusion.process import (
    Diffusion,
    cosine_betas,
    discretized_gaussian_log_likelihood,
    linear_betas,
    make_noise_scheduler,
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
    assert d.losses(out, x0, noise, t)["vb"].abs().max() < 1e-12  # float64 in, float64 throughout
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
    sched = make_noise_scheduler(d, "ddpm", spacing)
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
    s = make_noise_scheduler(d, "ddim")
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), d.alphas_cumprod, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_noise_scheduler(d, "euler")


# ----------------------------------------------------------------------------------------------
# The decoder term L_0 without cancellation, against mpmath


def _mp_log_bin(x: float, m: float, s: float) -> float:
    """log P(bin of x) under N(m, s²) at 60 digits: 1 − P as two exact tails when P > ½."""
    import mpmath

    with mpmath.workdps(60):
        x, m, s = mpmath.mpf(x), mpmath.mpf(m), mpmath.mpf(s)
        lo = None if x < -0.999 else (x - mpmath.mpf(1) / 255 - m) / s
        hi = None if x > 0.999 else (x + mpmath.mpf(1) / 255 - m) / s
        q = (mpmath.ncdf(lo) if lo is not None else 0) + (mpmath.ncdf(-hi) if hi is not None else 0)
        if q < 0.5:
            return float(mpmath.log1p(-q))
        if lo is None or hi is None:  # an edge bin: one tail
            return float(mpmath.log(mpmath.ncdf(hi) if lo is None else mpmath.ncdf(-lo)))
        if lo > 0:
            return float(mpmath.log(mpmath.ncdf(-lo) - mpmath.ncdf(-hi)))
        return float(mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo)))


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_decoder_log_likelihood_matches_mpmath_to_ten_sigma(dtype, rtol):
    # Pixels at both edges, next to them and inside; means up to 10σ either side; σ from 1e-4 to 1.
    xs = [-1.0, -1 + 1 / 127.5, -0.5, 0.0, 0.3, 1 - 1 / 127.5, 1.0]
    sigmas = [1e-4, 1e-3, 1e-2, 0.1, 1.0]
    ks = np.linspace(-10, 10, 41)
    grid = [(x, x + k * s, s) for s in sigmas for x in xs for k in ks]
    x = torch.tensor([g[0] for g in grid], dtype=dtype)
    m = torch.tensor([g[1] for g in grid], dtype=dtype)
    ls = torch.log(torch.tensor([g[2] for g in grid], dtype=D64)).to(dtype)
    got = discretized_gaussian_log_likelihood(x, m, ls)
    assert got.dtype == dtype
    # The reference sees exactly the rounded inputs; below the smallest normal float, compare absolutely.
    ref = np.array([_mp_log_bin(float(a), float(b), math.exp(float(c))) for a, b, c in zip(x, m, ls)])
    err = np.abs(got.double().numpy() - ref) / np.maximum(np.abs(ref), torch.finfo(dtype).tiny)
    assert err.max() <= rtol, grid[int(err.argmax())]


def test_decoder_log_likelihood_six_sigma_in_float32_and_its_gradient():
    s = 0.01
    x = torch.tensor([0.2])
    m = (x + 6 * s).requires_grad_(True)
    ls = torch.full((1,), math.log(s))
    # The difference of CDFs cancels to the 1e-12 clamp in float32 (−27.6 nats) and has no gradient.
    a, b = (x - 1 / 255 - m) / s, (x + 1 / 255 - m) / s
    naive = torch.log((torch.special.ndtr(b) - torch.special.ndtr(a)).clamp(min=1e-12))
    assert naive.item() == pytest.approx(-27.63, abs=0.01)
    assert torch.autograd.grad(naive.sum(), m)[0].item() == 0
    val = discretized_gaussian_log_likelihood(x, m, ls)
    ref = _mp_log_bin(0.2, float(m.detach()), s)
    assert ref == pytest.approx(-18.40, abs=0.01) and val.item() == pytest.approx(ref, rel=1e-5)
    (g,) = torch.autograd.grad(val.sum(), m)
    m64 = m.detach().double().requires_grad_(True)
    (g64,) = torch.autograd.grad(discretized_gaussian_log_likelihood(x.double(), m64, ls.double()).sum(), m64)
    assert g.item() == pytest.approx(g64.item(), rel=1e-4) and g.item() < -100  # pulls the mean back


def test_decoder_gradients_are_finite_everywhere():
    s = torch.tensor([1e-4, 1e-3, 1e-2, 0.1, 1.0]).repeat_interleave(7 * 41)
    x = torch.tensor([-1.0, -1 + 1 / 127.5, -0.5, 0.0, 0.3, 1 - 1 / 127.5, 1.0]).repeat_interleave(41).repeat(5)
    k = torch.linspace(-10, 10, 41).repeat(35)
    m = (x + k * s).requires_grad_(True)
    ls = torch.log(s).requires_grad_(True)
    val = discretized_gaussian_log_likelihood(x, m, ls)
    gm, gs = torch.autograd.grad(val.sum(), (m, ls))
    assert torch.isfinite(val).all() and torch.isfinite(gm).all() and torch.isfinite(gs).all()
    # An interior pixel's bin lying wholly below the mean pulls the mean down, and vice versa.
    far = (x.abs() < 0.999) & (k.abs() * s > 2 / 255)
    assert far.sum() > 100
    assert (torch.sign(gm[far]) == -torch.sign(k[far])).all()


def test_losses_keep_the_input_dtype_and_match_a_float64_reference():
    d = Diffusion(1000, "linear", learn_sigma=True)
    g = torch.Generator().manual_seed(6)
    x0 = (torch.randint(0, 256, (3, 1, 4, 4), generator=g).double() / 127.5 - 1)
    noise = torch.randn(3, 1, 4, 4, generator=g, dtype=D64)
    out = torch.cat([torch.randn(3, 1, 4, 4, generator=g, dtype=D64) * 0.1 + noise,
                     torch.rand(3, 1, 4, 4, generator=g, dtype=D64) * 2 - 1], dim=1)
    t = torch.zeros(3, dtype=torch.long)
    terms = d.losses(out, x0, noise, t)
    assert all(v.dtype == D64 for v in terms.values())
    # L_0 by hand in float64 numpy/scipy: learned-range σ at t = 0, mean from x̂₀ through the posterior.
    xt = math.sqrt(d.alphas_cumprod[0]) * x0.numpy() + math.sqrt(1 - d.alphas_cumprod[0]) * noise.numpy()
    eps, v = out[:, :1].numpy(), out[:, 1:].numpy()
    x0_hat = (xt - math.sqrt(1 - d.alphas_cumprod[0]) * eps) / math.sqrt(d.alphas_cumprod[0])
    mean = d.posterior_mean_coef1[0] * x0_hat + d.posterior_mean_coef2[0] * xt
    logvar = (v + 1) / 2 * math.log(d.betas[0]) + (1 - v) / 2 * d.posterior_log_variance_clipped[0]
    sd = np.exp(0.5 * logvar)
    xv = x0.numpy()
    lo = np.where(xv < -0.999, -np.inf, (xv - 1 / 255 - mean) / sd)
    hi = np.where(xv > 0.999, np.inf, (xv + 1 / 255 - mean) / sd)
    p = np.where(lo > 0, stats.norm.sf(lo) - stats.norm.sf(hi), stats.norm.cdf(hi) - stats.norm.cdf(lo))
    ref = -np.log(p).reshape(3, -1).mean(1) / math.log(2)
    np.testing.assert_allclose(terms["vb"].numpy(), ref, rtol=1e-10)
    f32 = d.losses(out.float(), x0.float(), noise.float(), t)
    assert all(v.dtype == torch.float32 for v in f32.values())
    np.testing.assert_allclose(f32["vb"].numpy(), ref, rtol=1e-3)
    bf = d.losses(out.bfloat16(), x0.float(), noise.float(), t)  # bf16 model output: losses in float32
    assert all(v.dtype == torch.float32 for v in bf.values())
