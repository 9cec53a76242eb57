"""Batched affine augmentation with torch ops (affine_grid / grid_sample), no flips.

Flips would turn one view into another (a mirrored A4C is not an A4C), so only rotation
(±10°), shifts (±0.1 of the size) and zoom (±0.08) are drawn, as in the Sectra thesis.
Parameters belong to the item: `epoch_params(seed, epoch, n)` draws one row per training
image, so an image's augmentation does not depend on batch size or the number of processes.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F


def epoch_params(seed: int, epoch: int, n: int, rotate_deg: float, shift: float, zoom: float) -> torch.Tensor:
    """n×4 (angle in radians, shift x, shift y, scale), uniform in the given ranges, seeded by (seed, epoch)."""
    g = torch.Generator().manual_seed(zlib.crc32(f"augment/{seed}/{epoch}".encode()))
    u = torch.rand(n, 4, generator=g) * 2 - 1
    return torch.stack([u[:, 0] * math.radians(rotate_deg), u[:, 1] * shift * 2, u[:, 2] * shift * 2,
                        1 + u[:, 3] * zoom], 1)  # shifts ×2: grid coordinates span [-1, 1]


def apply_affine(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Rotate, shift and zoom images N×C×H×W in [-1, 1]; uncovered pixels become -1 (black)."""
    p = params.to(device=x.device, dtype=torch.float32)
    cos, sin = torch.cos(p[:, 0]) / p[:, 3], torch.sin(p[:, 0]) / p[:, 3]
    # theta maps output to input coordinates, so a content shift of +t samples from -t.
    theta = torch.stack([torch.stack([cos, -sin, -p[:, 1]], 1), torch.stack([sin, cos, -p[:, 2]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with 0 (mid-grey in [-1, 1]): shift to [0, 2] so padding is black.
    x = x.float()
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
