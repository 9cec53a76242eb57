"""Exponential moving average of model weights, kept in float32 beside the trained model."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """Decay used after `step` updates: min(decay, (1 + step)/(10 + step)) with warm-up, else `decay`."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class EMA:
    """θ_ema ← d·θ_ema + (1 − d)·θ after each optimiser step; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend the current weights of `model` (unwrapped) into the average."""
        d = ema_decay_at(step, self.decay, self.warmup)
        ema_p = list(self.model.parameters())
        cur_p = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, loadable into a fresh model."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore averaged weights."""
        self.model.load_state_dict(state)
