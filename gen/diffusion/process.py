"""Gaussian diffusion maths of improved DDPM (Nichol & Dhariwal 2021): schedules, posterior, hybrid loss.

Notation: β_t the noise schedule, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s, t ∈ {0, …, T−1}.
The model predicts ε (first half of its output) and, when σ is learned, a value v ∈ [−1, 1]
(second half) that interpolates the log-variance between log β̃_t and log β_t.
Constants are computed in float64 and cast to the input's dtype on use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

SCHEDULES = ("linear", "cosine")
_LN2 = math.log(2.0)
_RSQRT2 = 1.0 / math.sqrt(2.0)


# ----------------------------------------------------------------------------------------------
# Schedules


def linear_betas(num_timesteps: int) -> np.ndarray:
    """β linear from 1e-4 to 0.02, both scaled by 1000/T so any T spans the same noise range."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999) with ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2)."""
    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    T = num_timesteps
    return np.array([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)], dtype=np.float64)


BETA_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def get_betas(schedule: str, num_timesteps: int) -> np.ndarray:
    """β of a named schedule (see SCHEDULES)."""
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}")
    return BETA_SCHEDULES[schedule](num_timesteps)


def space_timesteps(num_timesteps: int, steps: int, spacing: str = "linspace") -> list[int]:
    """Kept timesteps (ascending) for a `steps`-long chain, exactly as diffusers' `set_timesteps` picks them."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if spacing == "linspace":
        ts = np.linspace(0, num_timesteps - 1, steps).round()
    elif spacing == "leading":
        ts = np.arange(0, steps) * (num_timesteps // steps)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use linspace or leading")
    return sorted({int(t) for t in ts})


# ----------------------------------------------------------------------------------------------
# Gaussian helpers


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) = ½(−1 + log σ₂² − log σ₁² + σ₁²/σ₂² + (μ₁ − μ₂)²/σ₂²), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 − eᵈ) for d ≤ 0 without cancellation: log(−expm1 d) above −log 2, log1p(−eᵈ) below (Mächler 2012)."""
    near = d > -_LN2
    # Each branch sees only its own range, so the unused one never makes an inf whose gradient is NaN.
    return torch.where(near, torch.log(-torch.expm1(d.clamp(min=-_LN2))), torch.log1p(-torch.exp(d.clamp(max=-_LN2))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log P(x) for x on the 256-level grid of [−1, 1] under N(μ, σ²) integrated over each bin, in nats.

    P(x) = Φ(b) − Φ(a) with a = (x − 1/255 − μ)/σ, b = (x + 1/255 − μ)/σ; the edge bins extend
    to ∓∞ (log Φ(b) at x = −1, log Φ(−a) at x = 1). Evaluated without cancellation in any dtype:
    a bin wholly on one side of the mean is mirrored into the lower tail (u < v ≤ 0) and
    log P = log Φ(v) + log(1 − exp(log Φ(u) − log Φ(v))); a bin holding the mean uses
    P = ½(erf(v/√2) − erf(u/√2)), a sum of two positive terms, or log1p(−Φ(u) − Φ(−v)) when P > ½.
    Accurate to ~1e-5 relative in float32 and ~1e-12 in float64 for |μ − x| ≤ 10σ (tested with
    mpmath), where Φ(b) − Φ(a) in float32 falls to zero beyond ~5σ. This is the exact erf form,
    not improved-diffusion's tanh approximation of Φ.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    hi = inv_std * (centered + 1.0 / 255.0)
    lo = inv_std * (centered - 1.0 / 255.0)
    above = lo > 0  # the bin lies wholly above the mean: mirror it, P = Φ(−a) − Φ(−b)
    u, v = torch.where(above, -hi, lo), torch.where(above, -lo, hi)
    log_cdf_v = torch.special.log_ndtr(v)
    one_side = log_cdf_v + log1mexp(torch.special.log_ndtr(u) - log_cdf_v)
    p = 0.5 * (torch.erf(v * _RSQRT2) - torch.erf(u * _RSQRT2))
    tails = 0.5 * (torch.erfc(-u * _RSQRT2) + torch.erfc(v * _RSQRT2))  # Φ(u) + Φ(−v); torch's ndtr is 1 − … for u < 0
    holds_mean = torch.where(p > 0.5, torch.log1p(-tails.clamp(max=0.5)), torch.log(p.clamp(min=torch.finfo(p.dtype).tiny)))
    mid = torch.where(v <= 0, one_side, holds_mean)
    return torch.where(x < -0.999, torch.special.log_ndtr(hi), torch.where(x > 0.999, torch.special.log_ndtr(-lo), mid))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def _extract(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t] as a tensor broadcastable to `like` (N, 1, 1, …), in like's dtype/device."""
    out = torch.as_tensor(arr, device=t.device)[t].to(dtype=like.dtype, device=like.device)
    return out.view(-1, *([1] * (like.ndim - 1)))


# ----------------------------------------------------------------------------------------------
# The diffusion process


class Diffusion:
    """Forward process q, posterior q(x_{t−1}|x_t, x₀), model p(x_{t−1}|x_t) and the hybrid loss."""

    def __init__(self, num_timesteps: int = 1000, schedule: str = "linear", learn_sigma: bool = True,
                 lambda_vlb: float = 0.001, betas: np.ndarray | None = None,
                 timestep_map: Sequence[int] | None = None) -> None:
        betas = get_betas(schedule, num_timesteps) if betas is None else np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.schedule, self.learn_sigma, self.lambda_vlb = schedule, learn_sigma, lambda_vlb
        self.betas = betas
        self.num_timesteps = T = len(betas)
        self.timestep_map = np.asarray(timestep_map if timestep_map is not None else np.arange(T), dtype=np.int64)
        alphas = 1.0 - betas
        self.alphas_cumprod = ac = np.cumprod(alphas)
        self.alphas_cumprod_prev = acp = np.append(1.0, ac[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        # β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t); β̃_0 = 0, so its log is clipped to log β̃_1.
        self.posterior_variance = betas * (1.0 - acp) / (1.0 - ac)
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = np.log(np.append(pv[1], pv[1:]) if T > 1 else np.array([betas[0]]))
        self.posterior_mean_coef1 = betas * np.sqrt(acp) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - acp) * np.sqrt(alphas) / (1.0 - ac)

    def respace(self, use_timesteps: Sequence[int]) -> Diffusion:
        """The process on a subset t₁ < t₂ < … of timesteps: β′_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}} (ᾱ_{t₀} := 1)."""
        kept = sorted(set(int(t) for t in use_timesteps))
        if not kept or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ValueError(f"timesteps to keep must lie in [0, {self.num_timesteps - 1}]")
        ac = self.alphas_cumprod[kept]
        new_betas = 1.0 - ac / np.append(1.0, ac[:-1])
        return Diffusion(schedule=self.schedule, learn_sigma=self.learn_sigma, lambda_vlb=self.lambda_vlb,
                         betas=new_betas, timestep_map=self.timestep_map[kept])

    # -- forward process ------------------------------------------------------------------------

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε."""
        return (_extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """q(x_{t−1}|x_t, x₀) = N(μ̃, β̃_t): μ̃ = β_t√ᾱ_{t−1}/(1−ᾱ_t) x₀ + (1−ᾱ_{t−1})√α_t/(1−ᾱ_t) x_t.

        Returns (mean, variance, clipped log variance).
        """
        mean = _extract(self.posterior_mean_coef1, t, x_t) * x_start + _extract(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _extract(self.posterior_variance, t, x_t), _extract(self.posterior_log_variance_clipped, t, x_t)

    def predict_xstart(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂₀ = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t."""
        return _extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    # -- model ----------------------------------------------------------------------------------

    def split_output(self, model_output: torch.Tensor, x_t: torch.Tensor):
        """(ε̂, v) halves of the model output; v is None when σ is fixed."""
        C = x_t.shape[1]
        if self.learn_sigma:
            if model_output.shape[1] != 2 * C:
                raise ValueError(f"learn_sigma needs {2 * C} output channels, the model gave {model_output.shape[1]}")
            return model_output[:, :C], model_output[:, C:]
        if model_output.shape[1] != C:
            raise ValueError(f"fixed σ needs {C} output channels, the model gave {model_output.shape[1]}")
        return model_output, None

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True):
        """p(x_{t−1}|x_t) = N(μ̃(x̂₀, x_t), σ²) with log σ² = ½(v+1) log β_t + ½(1−v) log β̃_t (learned range).

        With fixed σ, σ² = β̃_t (log clipped at t = 0). Returns (mean, variance, log variance, x̂₀).
        """
        eps, v = self.split_output(model_output, x_t)
        if v is not None:
            min_log = _extract(self.posterior_log_variance_clipped, t, x_t)
            max_log = _extract(np.log(self.betas), t, x_t)
            frac = (v + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        else:
            log_var = _extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        x0 = self.predict_xstart(x_t, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        return mean, torch.exp(log_var), log_var, x0

    # -- losses ---------------------------------------------------------------------------------

    def vb_terms_bpd(self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """L_t in bits/dim: KL(q(x_{t−1}|x_t,x₀) ‖ p(x_{t−1}|x_t)) for t > 0, −log p(x₀|x₁) (256 bins) at t = 0."""
        true_mean, _, true_log_var = self.q_posterior(x_start, x_t, t)
        mean, _, log_var, _ = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x_start, mean, 0.5 * log_var)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def losses(self, model_output: torch.Tensor, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample `mse` = ‖ε − ε̂‖²/D, `vb` = L_t (bits/dim) and `loss`.

        loss = L_simple + λ·L_vlb with L_vlb estimated from one uniform t as T·L_t, i.e.
        mse + λ·T·vb (λ = 0.001 gives improved-diffusion's `vb · T/1000`). L_t sees ε̂ with its
        gradient stopped, so the VLB term trains only the variance half. Fixed σ: loss = mse.
        Terms come in the inputs' promoted dtype, at least float32 (float64 in, float64 out).
        """
        dtype = torch.promote_types(torch.promote_types(model_output.dtype, x_start.dtype), torch.float32)
        model_output, x_start, noise = model_output.to(dtype), x_start.to(dtype), noise.to(dtype)
        x_t = self.q_sample(x_start, t, noise)
        eps, v = self.split_output(model_output, x_start)
        mse = mean_flat((noise - eps) ** 2)
        if v is None:
            return {"mse": mse, "vb": torch.zeros_like(mse), "loss": mse}
        frozen = torch.cat([eps.detach(), v], dim=1)
        vb = self.vb_terms_bpd(frozen, x_start, x_t, t)
        return {"mse": mse, "vb": vb, "loss": mse + self.lambda_vlb * self.num_timesteps * vb}


def make_noise_scheduler(diffusion: Diffusion, sampler: str = "ddpm", spacing: str = "linspace"):
    """The diffusers scheduler over the same β: DDPM (learned_range / fixed_small), DDIM, DPM-Solver++ (2M, ODE or SDE) or UniPC.

    All but `ddpm` take the ε half of the model output only (echosynth.gen.diffusion.synthesis passes it): diffusers'
    multistep schedulers would slice `model_output[:, :3]` for learned variances, which is wrong
    for a 1-channel UNet. DPM-Solver++ 2M (Lu et al. 2022, Alg. 2, midpoint) and UniPC (bh2,
    Zhao et al. 2023) are second-order multistep solvers of the probability-flow ODE in x̂₀ form;
    both end with a first-order step (to σ = 0), and neither draws noise. `dpm++2m-sde` is
    SDE-DPM-Solver++ 2M (Lu et al. 2022, §5; Gonzalez et al. 2023): the same data-prediction
    multistep update with the exact noise of the variance-preserving SDE added each step, so
    like ancestral sampling it can correct an imperfect model's errors; its noise is drawn from
    each image's own generator (echosynth.gen.diffusion.synthesis passes them).
    """
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
    )

    common = dict(num_train_timesteps=diffusion.num_timesteps, trained_betas=diffusion.betas.tolist(),
                  prediction_type="epsilon", timestep_spacing=spacing)
    clip = dict(clip_sample=True, clip_sample_range=1.0)
    if sampler == "ddpm":
        return DDPMScheduler(variance_type="learned_range" if diffusion.learn_sigma else "fixed_small", **clip, **common)
    if sampler == "ddim":
        return DDIMScheduler(set_alpha_to_one=True, **clip, **common)
    if sampler == "dpm++2m":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                           lower_order_final=True, final_sigmas_type="zero", **common)
    if sampler == "dpm++2m-sde":
        return DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="midpoint",
                                           lower_order_final=True, final_sigmas_type="zero", **common)
    if sampler == "unipc":
        return UniPCMultistepScheduler(solver_order=2, predict_x0=True, solver_type="bh2", lower_order_final=True,
                                       final_sigmas_type="zero", **common)
    raise ValueError(f"unknown sampler {sampler!r}; use ddpm, ddim, dpm++2m, dpm++2m-sde or unipc")
