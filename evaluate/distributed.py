"""Splitting evaluation work across `accelerate launch` processes and combining what they compute.

Each process takes a contiguous shard of the rows, extracts features for it, and the shards are
combined as statistics (sums and sums of outer products, all-reduced) and, where a metric needs
the vectors themselves (KID, k-NN metrics), as gathered feature rows; images never travel.
A plain `python` run is a world of one and every collective is the identity.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from echosynth.evaluate.metrics import FeatureStats


class Dist:
    """Rank, world size and device of this process, plus the two collectives evaluation needs."""

    def __init__(self, device: str = "auto") -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1:
            from accelerate import PartialState

            state = PartialState(cpu=device == "cpu")
            self.rank, self.world, self.device = state.process_index, state.num_processes, state.device
        else:
            self.rank = 0
            self.device = torch.device(resolve_device(device))

    @property
    def is_main(self) -> bool:
        """True on rank 0, which writes files."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n rows (shares differ in size by at most one)."""
        lo = self.rank * n // self.world
        return slice(lo, (self.rank + 1) * n // self.world)

    def all_reduce_stats(self, s: FeatureStats) -> FeatureStats:
        """Sum n, Σx and Σxxᵀ over ranks."""
        if self.world == 1:
            return s
        packed = torch.from_numpy(np.concatenate([[float(s.n)], s.sum, s.outer.ravel()])).to(self.device)
        torch.distributed.all_reduce(packed)  # NCCL needs device tensors, gloo takes CPU ones
        v = packed.cpu().numpy()
        d = s.sum.shape[0]
        return FeatureStats(int(round(v[0])), v[1:1 + d].copy(), v[1 + d:].reshape(d, d).copy())

    def gather_rows(self, local: np.ndarray) -> np.ndarray:
        """Concatenate every rank's rows in rank order (the shards of `shard`)."""
        if self.world == 1:
            return local
        t = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).to(self.device)
        counts = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world)]
        torch.distributed.all_gather(counts, torch.tensor([t.shape[0]], device=self.device))
        most = int(max(c.item() for c in counts))
        padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=self.device)
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)]).cpu().numpy()

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            torch.distributed.barrier()


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when available, else 'cpu'; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
