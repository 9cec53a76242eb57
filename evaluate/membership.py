"""Membership inference on a diffusion model: the loss-threshold attack on training members vs held-out non-members.

A model that memorised its training images denoises them better than images it never saw. For
every image x₀ we draw one fixed noise ε (seeded by the image's position, so members and
non-members get noise from the same generator family) and fixed timesteps t, form
x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε, and take the per-image denoising error ‖ε − ε̂(x_t, t, y)‖² / D
(the `mse` of `Diffusion.losses`), averaged over the timesteps. The attack calls an image a member
when its loss is below a threshold; sweeping the threshold gives the ROC curve, summarised by
its AUC (0.5 = no leakage) and the true-positive rate at 1% false positives (Carlini et al. 2022,
"Membership inference attacks from first principles").
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from echosynth.evaluate.metrics import subsample
from echosynth.gen.data.image_sets import ImageSet


def _noise(seed: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))
    return torch.randn(shape, generator=g)


@torch.no_grad()
def per_image_loss(run, images: np.ndarray, labels: np.ndarray, timesteps: list[int], *, seed: int = 0,
                   loss: str = "mse", batch_size: int = 64, device: str | torch.device = "cpu",
                   progress: bool = False, desc: str = "losses") -> np.ndarray:
    """Mean denoising loss over `timesteps` of each uint8 image (N,) with fixed per-image noise."""
    device = torch.device(device)
    T = run.diffusion.num_timesteps
    bad = [t for t in timesteps if not 0 <= t < T]
    if bad:
        raise ValueError(f"membership timesteps {bad} are outside the model's 0…{T - 1}")
    out = np.zeros(len(images))
    for lo in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        hi = min(lo + batch_size, len(images))
        x0 = torch.from_numpy(images[lo:hi]).float().div(127.5).sub(1.0).unsqueeze(1).to(device)
        y = torch.as_tensor(labels[lo:hi], device=device)
        for j, t in enumerate(timesteps):
            noise = torch.stack([_noise(seed, 1000 * i + j, x0.shape[1:]) for i in range(lo, hi)]).to(device)
            tt = torch.full((hi - lo,), int(t), device=device, dtype=torch.long)
            x_t = run.diffusion.q_sample(x0, tt, noise)
            terms = run.diffusion.losses(run.model(x_t, tt, y), x0, noise, tt)
            out[lo:hi] += terms[loss].float().cpu().numpy() / len(timesteps)
    return out


def roc_summary(member_scores: np.ndarray, nonmember_scores: np.ndarray, max_fpr: float = 0.01) -> dict:
    """ROC-AUC and TPR at `max_fpr` for scores where higher means 'member'."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    s = np.concatenate([member_scores, nonmember_scores])
    fpr, tpr, _ = roc_curve(y, s)
    ok = fpr <= max_fpr
    return {"auc": float(roc_auc_score(y, s)), f"tpr_at_{max_fpr:g}_fpr": float(tpr[ok].max()) if ok.any() else 0.0,
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}


def loss_threshold_attack(run, members: ImageSet, nonmembers: ImageSet, *, timesteps: list[int],
                          max_images: int = 1000, seed: int = 0, loss: str = "mse", batch_size: int = 64,
                          device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """The attack on equal-size random samples of members and non-members; JSON-ready result."""
    for name, s in (("members", members), ("non-members", nonmembers)):
        if s.size != run.image_size:
            raise ValueError(f"the diffusion model works at {run.image_size}×{run.image_size} but the {name} are "
                             f"{s.size}×{s.size}; pass --size {run.image_size}")
        unknown = sorted(set(np.unique(s.views)) - set(run.classes))
        if unknown:
            raise ValueError(f"the {name} include views {unknown} the diffusion model was not trained on ({run.classes})")
    n = min(len(members), len(nonmembers), max_images)
    if n < 2:
        raise ValueError(f"membership inference needs at least 2 members and 2 non-members, got {len(members)} and {len(nonmembers)}")
    index = {c: i for i, c in enumerate(run.classes)}
    result: dict = {"n_members": n, "n_nonmembers": n, "timesteps": list(map(int, timesteps)), "loss": loss,
                    "checkpoint": {"step": int(run.step), "weights": run.weights}}
    losses = {}
    for name, s, off in (("members", members, 0), ("nonmembers", nonmembers, 1)):
        rows = subsample(len(s), n, seed + off)
        labels = np.array([index[v] for v in s.views[rows]], dtype=np.int64)
        # noise seeds keyed by (seed, set, row) so the two sets never share a noise draw
        losses[name] = per_image_loss(run, s.images[rows], labels, timesteps, seed=seed * 2 + off, loss=loss,
                                      batch_size=batch_size, device=device, progress=progress, desc=f"{name} losses")
    result.update(roc_summary(-losses["members"], -losses["nonmembers"]))  # low loss ⇒ member
    result["loss_mean"] = {k: float(v.mean()) for k, v in losses.items()}
    result["_losses"] = losses  # arrays for the histogram; dropped before writing JSON
    return result
