"""Per-epoch resume checkpoints of classifier training, and stopping on Ctrl-C between steps.

SEED_DIR/checkpoints/epoch-<phase>-<NNNN>/ holds the model, optimiser moments (safetensors +
JSON), the LR scheduler, the selection state (best value, best round, history) and the RNG
states after validation round NNNN of a phase (an epoch, unless a --steps budget sets the rounds). It is assembled in a hidden temporary directory and renamed
into place; the previous one is deleted only afterwards, so a kill never leaves no state behind.
Epoch order and augmentation are functions of (seed, epoch), and dropout's RNG is restored, so a
resumed seed retraces the uninterrupted one.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from echosynth.gen.core.checkpoint import (
    CheckpointError,
    clean_stale_temp,
    load_tensors,
    optimizer_from_files,
    optimizer_to_files,
    rng_states,
    set_rng_states,
    verify_checkpoint,
)
from echosynth.gen.core.io import atomic_dir, read_json, read_jsonl, write_json, write_text
from echosynth.gen.core.launcher import Interrupted, active_stop

_EPOCH_RE = re.compile(r"^epoch-(?P<phase>[a-z]+)-(?P<epoch>\d{4})$")
FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "state.json")


def epoch_dirs(seed_dir: Path, phase: str) -> list[tuple[int, Path]]:
    """(epoch, directory) of the complete epoch checkpoints of a phase, ascending."""
    ck = Path(seed_dir) / "checkpoints"
    if not ck.is_dir():
        return []
    found = [(int(m["epoch"]), p) for p in ck.iterdir()
             if (m := _EPOCH_RE.match(p.name)) and m["phase"] == phase and (p / "state.json").is_file()]
    return sorted(found)


def save_epoch_state(seed_dir: Path, phase: str, epoch: int, net: torch.nn.Module, opt, sched, best, best_epoch: int,
                     history: list[dict]) -> Path:
    """Write the state after `epoch` of `phase` atomically, then drop older ones of the phase."""
    final = Path(seed_dir) / "checkpoints" / f"epoch-{phase}-{epoch:04d}"
    from safetensors.torch import save_file

    with atomic_dir(final) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / "model.safetensors"))
        tensors, meta = optimizer_to_files(opt.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", meta)
        write_json(tmp / "scheduler.json", sched.state_dict())
        write_json(tmp / "state.json", {"phase": phase, "epoch": epoch, "best": best, "best_epoch": best_epoch,
                                        "history": history, "rng": rng_states()})  # last: marks complete
    for e, p in epoch_dirs(seed_dir, phase):
        if e < epoch:
            shutil.rmtree(p, ignore_errors=True)
    return final


def load_epoch_state(seed_dir: Path, phase: str, net: torch.nn.Module, opt, sched, main_process: bool = True,
                     warn=print) -> tuple[int, object, int, list[dict]] | None:
    """Restore the newest intact epoch checkpoint of `phase` into net/opt/sched and the RNGs.

    Returns (epochs done, best, best epoch, history), or None when the phase has none. A damaged
    newer checkpoint is skipped with a warning naming its file; the main process also drops
    stats.jsonl lines of later epochs of the phase.
    """
    if main_process:
        clean_stale_temp(seed_dir)
    for epoch, path in reversed(epoch_dirs(seed_dir, phase)):
        try:
            verify_checkpoint(path, FILES)
            net.load_state_dict(load_tensors(path / "model.safetensors"))
            opt.load_state_dict(optimizer_from_files(load_tensors(path / "optimizer.safetensors"),
                                                     read_json(path / "optimizer.json")))
            sched.load_state_dict(read_json(path / "scheduler.json"))
            state = read_json(path / "state.json")
            set_rng_states(state["rng"])
        except (CheckpointError, KeyError, ValueError, RuntimeError) as e:
            if main_process:
                warn(f"warning: {path}: cannot resume from it ({e}); trying an older one")
            continue
        if main_process:
            stats = Path(seed_dir) / "stats.jsonl"
            if stats.exists():
                kept = [r for r in read_jsonl(stats) if r.get("phase") != phase or r.get("round", r.get("epoch", 0)) <= epoch]
                write_text(stats, "".join(json.dumps(r) + "\n" for r in kept))
        return epoch, state["best"], int(state["best_epoch"]), list(state["history"])
    return None


def check_stop(accelerator, where: str) -> None:
    """Raise echosynth.gen.core.launcher.Interrupted on every process once any of them got SIGINT/SIGTERM (call between steps)."""
    stop = active_stop()
    if stop is None:
        return
    flag = bool(stop.signum)
    if accelerator.num_processes > 1:  # the signal reaches processes at different steps: agree first
        flag = float(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum")) > 0
    if flag:
        raise Interrupted(f"{where}", stop.exit_code or 143)
