"""Timestep samplers for the training loss: uniform, and improved DDPM's loss-aware importance sampler (§3.3).

The loss estimates Σ_t L_t from one timestep per sample. Drawn uniformly, T·L_t is unbiased;
drawn from p_t and weighted by w_t = 1/(T·p_t), E_p[w_t L_t] = (1/T) Σ_t L_t stays the same
while p_t ∝ √E[L_t²] minimises the variance of the L_vlb estimate. As improved-diffusion's
`LossSecondMomentResampler`: the last 10 values of L_t per timestep, uniform until every
timestep has 10, then p mixed with the uniform distribution at weight 0.001 so no timestep starves.

Randomness stays with the sample, not the process: each sample's timestep is the inverse CDF of p
at a uniform drawn from its own (seed, step, position) stream, and every process updates the
history with the whole global batch, gathered and taken in batch order, so all ranks hold the
same history whatever their number and a resumed run (the history is in the checkpoint) retraces
the uninterrupted one.
"""

from __future__ import annotations

import numpy as np

TIMESTEP_SAMPLERS = ("uniform", "loss-aware")
STREAM = 13  # the per-sample seed's last part: independent of the noise/timestep stream of echosynth.gen.diffusion.loop


def inverse_cdf(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Timesteps t with P(t = k) = probs[k] for uniforms u ∈ [0, 1): the first k with CDF(k) > u."""
    cdf = np.cumsum(probs, dtype=np.float64)
    cdf[-1] = 1.0  # rounding must not leave u ∈ [cdf[-1], 1) without a timestep
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(probs) - 1).astype(np.int64)


def sample_uniforms(seed: int, step: int, positions: np.ndarray) -> np.ndarray:
    """One uniform in [0, 1) per sample from its own (seed, step, position) stream."""
    return np.array([np.random.default_rng([int(seed), int(step), int(p), STREAM]).random() for p in positions])


class LossSecondMomentSampler:
    """Importance sampling of timesteps with p_t ∝ √(mean of the last `history` L_t²), mixed with uniform."""

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        if num_timesteps < 1 or history < 1 or not 0 <= uniform_prob <= 1:
            raise ValueError(f"need num_timesteps ≥ 1, history ≥ 1, uniform_prob in [0, 1]; got "
                             f"{num_timesteps}, {history}, {uniform_prob}")
        self.num_timesteps, self.history, self.uniform_prob = num_timesteps, history, uniform_prob
        self.losses = np.zeros((num_timesteps, history), dtype=np.float64)  # oldest first once full
        self.counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        """Whether every timestep's history is full (before that, sampling is uniform)."""
        return bool((self.counts == self.history).all())

    def probs(self) -> np.ndarray:
        """p_t = (1 − u)·√E[L_t²]/Σ_s √E[L_s²] + u/T after warm-up (u = uniform_prob); 1/T before."""
        T = self.num_timesteps
        if not self.warmed_up():
            return np.full(T, 1.0 / T)
        w = np.sqrt(np.mean(self.losses ** 2, axis=1))
        if w.sum() <= 0:  # every recorded L_t is zero: nothing to prefer
            return np.full(T, 1.0 / T)
        return w / w.sum() * (1.0 - self.uniform_prob) + self.uniform_prob / T

    def draw(self, seed: int, step: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, importance weights 1/(T·p_t)) for the samples at `positions` of step `step`'s global batch."""
        p = self.probs()
        t = inverse_cdf(p, sample_uniforms(seed, step, positions))
        return t, 1.0 / (self.num_timesteps * p[t])

    def update(self, t: np.ndarray, losses: np.ndarray) -> None:
        """Record L_t for each (t, loss) pair in order; a full history drops its oldest value. Non-finite losses are skipped."""
        for ti, li in zip(np.asarray(t, dtype=np.int64).tolist(), np.asarray(losses, dtype=np.float64).tolist()):
            if not np.isfinite(li):
                continue  # a diverged step is stopped by the training loop; it must not poison p
            n = self.counts[ti]
            if n == self.history:
                self.losses[ti, :-1] = self.losses[ti, 1:]
                self.losses[ti, -1] = li
            else:
                self.losses[ti, n] = li
                self.counts[ti] = n + 1

    def state_dict(self) -> dict:
        """JSON-able state (float64 values round-trip exactly through JSON)."""
        return {"kind": "loss-aware", "num_timesteps": self.num_timesteps, "history": self.history,
                "uniform_prob": self.uniform_prob, "losses": self.losses.tolist(), "counts": self.counts.tolist()}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; refuses a state made for another T or history length."""
        if (state.get("num_timesteps"), state.get("history")) != (self.num_timesteps, self.history):
            raise ValueError(f"timestep sampler state is for T={state.get('num_timesteps')}, history "
                             f"{state.get('history')}; this run has T={self.num_timesteps}, history {self.history}")
        self.losses = np.asarray(state["losses"], dtype=np.float64).reshape(self.num_timesteps, self.history)
        self.counts = np.asarray(state["counts"], dtype=np.int64).reshape(self.num_timesteps)


def build_timestep_sampler(kind: str, num_timesteps: int) -> LossSecondMomentSampler | None:
    """None for `uniform` (echosynth.gen.diffusion.loop's own per-sample draw), the loss-aware sampler otherwise."""
    if kind not in TIMESTEP_SAMPLERS:
        raise ValueError(f"unknown timestep sampler {kind!r}; choose one of {', '.join(TIMESTEP_SAMPLERS)}")
    return LossSecondMomentSampler(num_timesteps) if kind == "loss-aware" else None


def update_from_global_batch(sampler: LossSecondMomentSampler, accelerator, positions: list, timesteps: list,
                             losses: list) -> None:
    """Gather (position, t, L_t) of this step's micro-batches from every process and update in batch order."""
    import torch

    device = accelerator.device
    pos = accelerator.gather(torch.as_tensor(np.concatenate(positions), dtype=torch.int64, device=device))
    t = accelerator.gather(torch.cat([x.to(device, torch.int64) for x in timesteps]))
    loss = accelerator.gather(torch.cat([x.detach().to(device, torch.float64) for x in losses]))
    order = torch.argsort(pos).cpu().numpy()  # the same order for any number of processes or accumulation steps
    sampler.update(t.cpu().numpy()[order], loss.cpu().numpy()[order])
