"""Training checkpoints as safetensors + JSON, written atomically and pruned by a keep policy.

A checkpoint is the directory RUN/checkpoints/step-<NNNNNNN>/ holding `model.safetensors`,
`ema.safetensors`, `optimizer.safetensors` + `optimizer.json` (AdamW moments / param groups),
`scheduler.json` and `state.json` (step, RNG states, data position, anything else to resume).
It is assembled in a hidden temporary directory and renamed into place, so a killed job never
leaves a half-written checkpoint that `--resume latest` could pick.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gen.io import read_json, temp_dir, write_json
from gen.model import checkpoint_dir, list_checkpoints


def rng_states() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as JSON-able values."""
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_states(s: dict[str, Any]) -> None:
    """Restore the states saved by `rng_states`."""
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    n = s["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(s["torch"])), dtype=torch.uint8))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(base64.b64decode(c)), dtype=torch.uint8) for c in s["cuda"]])


def _optimizer_to_files(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": opt_state["param_groups"], "scalars": {}}
    for pid, st in opt_state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{pid}.{k}"] = v
    return tensors, meta


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str | os.PathLike, step: int, *, model: dict, ema: dict, optimizer: dict,
                    scheduler: dict, state: dict) -> Path:
    """Write checkpoint `step` atomically (temp dir + rename) and return its directory."""
    final = checkpoint_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(final.parent, prefix=f".{final.name}.")  # umask mode, not mkdtemp's 0700
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        tensors, meta = _optimizer_to_files(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", meta)
        write_json(tmp / "scheduler.json", scheduler)
        write_json(tmp / "state.json", {"step": step, "rng": rng_states(), **state})  # last: marks complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint directory into {model, ema, optimizer, scheduler, state}."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no state.json)")
    return {
        "model": load_file(str(path / "model.safetensors")),
        "ema": load_file(str(path / "ema.safetensors")),
        "optimizer": _optimizer_from_files(load_file(str(path / "optimizer.safetensors")), read_json(path / "optimizer.json")),
        "scheduler": read_json(path / "scheduler.json"),
        "state": read_json(path / "state.json"),
    }


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int, keep_every: int) -> list[int]:
    """Delete checkpoints except the newest `keep_last` and every step divisible by `keep_every` (0: none); return kept."""
    steps = list_checkpoints(run_dir)
    keep = set(steps[-keep_last:]) if keep_last > 0 else set()
    if keep_every > 0:
        keep |= {s for s in steps if s % keep_every == 0}
    for s in steps:
        if s not in keep:
            shutil.rmtree(checkpoint_dir(run_dir, s), ignore_errors=True)
    return sorted(keep)
