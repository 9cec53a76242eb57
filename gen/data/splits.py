"""Patient-level splits and nested training subsets that keep view × source proportions."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

SPLIT_NAMES = ("train", "val", "test")


def _rng(seed: int, *keys: str) -> np.random.Generator:
    # crc32 of the key, not hash(): Python's string hash is salted per process.
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def assign_splits(
    df: pd.DataFrame,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    holdout_sources: Sequence[str] = ("camus", "unity"),
) -> pd.Series:
    """Split labels per row: whole patients to train/val/test, holdout sources to 'shift'.

    Patients are stratified by their most frequent view × source; within a stratum they are
    shuffled (seeded) and each goes to the split furthest below its target share of images,
    so image counts track `fractions` per stratum while no patient spans two splits.
    """
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    split = pd.Series("", index=df.index, dtype=object)
    holdout = df["source"].isin(holdout_sources)
    split[holdout] = "shift"
    rest = df[~holdout]
    if rest.empty:
        return split
    key = rest["view"].astype(str) + "/" + rest["source"].astype(str)
    per_patient = rest.assign(_key=key).groupby("patient_id")["_key"]
    stratum = per_patient.agg(lambda s: s.value_counts().sort_index().idxmax())
    sizes = per_patient.size()
    patient_split: dict[str, str] = {}
    for name in sorted(stratum.unique()):
        pids = np.array(sorted(stratum.index[stratum == name]))
        pids = pids[_rng(seed, "split", name).permutation(len(pids))]
        assigned = np.zeros(3)
        for pid in pids:
            n = sizes[pid]
            deficit = fractions * (assigned.sum() + n) - assigned
            k = int(np.argmax(deficit))
            assigned[k] += n
            patient_split[pid] = SPLIT_NAMES[k]
    split[~holdout] = rest["patient_id"].map(patient_split)
    return split


def balanced_order(counts: Sequence[int]) -> np.ndarray:
    """A sequence of stratum indices whose every prefix of length N holds each stratum s
    within one item of N·p_s (p_s = counts_s / total).

    Tijdeman's earliest-deadline rule (1980): among strata that would not overshoot their
    quota by more than 1 − σ, σ = 1/(2k − 2), take the one whose next item is due first.
    Prefixes of this one order are the nested subsets, so 1k ⊂ 2k ⊂ … by construction.
    """
    counts = np.asarray(counts, dtype=float)
    k = len(counts)
    if k == 0 or counts.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    p = counts / counts.sum()
    sigma = 1.0 / (2 * k - 2) if k > 1 else 0.5
    taken = np.zeros(k)
    order = np.empty(int(counts.sum()), dtype=np.int64)
    with np.errstate(divide="ignore"):
        for n in range(1, len(order) + 1):
            left = taken < counts
            ok = left & (taken + 1 - n * p <= 1 - sigma + 1e-12)
            deadline = np.where(ok if ok.any() else left, (taken + 1 - sigma) / p, np.inf)
            s = int(np.argmin(deadline))
            order[n - 1] = s
            taken[s] += 1
    return order


def subset_ranks(train: pd.DataFrame, seed: int = 0) -> pd.Series:
    """Rank of every training row in the nested-subset order (subset N = rows with rank < N)."""
    key = train["view"].astype(str) + "/" + train["source"].astype(str)
    strata = sorted(key.unique())
    members = []
    for name in strata:
        idx = np.asarray(train.index[key == name])
        idx = idx[np.argsort(train.loc[idx, "path"].to_numpy(), kind="stable")]  # independent of row order
        members.append(idx[_rng(seed, "subset", name).permutation(len(idx))])
    order = balanced_order([len(m) for m in members])
    cursor = [0] * len(members)
    ranks = pd.Series(-1, index=train.index, dtype=np.int64)
    for rank, s in enumerate(order):
        ranks[members[s][cursor[s]]] = rank
        cursor[s] += 1
    return ranks


def subset_column(ranks: pd.Series, sizes: Sequence[int]) -> pd.Series:
    """Smallest requested subset size holding each row (sizes sorted; the last is the full set)."""
    sizes = np.sort(np.asarray(sizes))
    pos = np.searchsorted(sizes, ranks.to_numpy() + 1)  # rank r is in subset N iff r + 1 <= N
    return pd.Series(sizes[np.minimum(pos, len(sizes) - 1)], index=ranks.index)
