"""Training checkpoints as safetensors + JSON, written atomically and pruned by a keep policy.

A checkpoint is the directory RUN/checkpoints/step-<NNNNNNN>/ holding `model.safetensors`,
`ema.safetensors`, `optimizer.safetensors` + `optimizer.json` (AdamW moments / param groups),
`scheduler.json` and `state.json` (step, RNG states, data position, anything else to resume).
It is assembled in a hidden temporary directory and renamed into place, so a killed job never
leaves a half-written checkpoint that `--resume latest` could pick.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import struct
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from echosynth.gen.core.io import atomic_dir, read_json, write_json

_STEP_RE = re.compile(r"^step-(\d{7})$")


def list_checkpoints(run_dir: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints kept in RUN/checkpoints/ (ascending)."""
    ck = Path(run_dir) / "checkpoints"
    if not ck.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ck.iterdir()
                  if (m := _STEP_RE.match(p.name)) and (p / "state.json").is_file())


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """RUN/checkpoints/step-<NNNNNNN>."""
    return Path(run_dir) / "checkpoints" / f"step-{step:07d}"


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (trainable or not) of a UNet or a classifier."""
    return sum(p.numel() for p in model.parameters())


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


def optimizer_to_files(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict as (tensors for safetensors, JSON-able param groups and scalars)."""
    tensors, meta = {}, {"param_groups": opt_state["param_groups"], "scalars": {}}
    for pid, st in opt_state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{pid}.{k}"] = v
    return tensors, meta


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The optimizer state_dict back from `optimizer_to_files` output."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str | os.PathLike, step: int, *, model: dict, ema: dict, optimizer: dict,
                    scheduler: dict, state: dict) -> Path:
    """Write checkpoint `step` atomically (temp dir + rename) and return its directory."""
    final = checkpoint_dir(run_dir, step)
    with atomic_dir(final) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        tensors, meta = optimizer_to_files(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", meta)
        write_json(tmp / "scheduler.json", scheduler)
        write_json(tmp / "state.json", {"step": step, "rng": rng_states(), **state})  # last: marks complete
    return final


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, garbage or holds non-finite numbers; the message names it."""


class NonFiniteError(ValueError):
    """Training produced nan or inf (loss, gradient or weights); the message names the step."""


WEIGHT_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")
JSON_FILES = ("optimizer.json", "scheduler.json", "state.json")


def verify_safetensors(path: str | os.PathLike) -> None:
    """Check a .safetensors file's framing without reading its tensors: header length, header JSON, data size."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path}: truncated ({size} bytes; a safetensors file starts with an 8-byte header length)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise CheckpointError(f"{path}: truncated or not a safetensors file (header of {n} bytes in a {size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a mapping)")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    if len(ends) != len([k for k in header if k != "__metadata__"]):
        raise CheckpointError(f"{path}: not a safetensors file (a header entry has no data offsets)")
    if 8 + n + max(ends, default=0) != size:
        raise CheckpointError(f"{path}: truncated or padded ({size} bytes, its header describes {8 + n + max(ends, default=0)})")


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a verified .safetensors file; any problem becomes a CheckpointError naming it."""
    verify_safetensors(path)
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError without the file name
        raise CheckpointError(f"{path}: cannot be read ({e})") from None


def nonfinite_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding nan or inf."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise a CheckpointError naming `what` and the first tensors if any tensor holds nan or inf."""
    bad = nonfinite_keys(tensors)
    if bad:
        raise CheckpointError(f"{what}: {len(bad)} tensor(s) hold nan or inf (e.g. {', '.join(bad[:3])}); "
                              "the run diverged: use an earlier checkpoint, a lower --lr or --grad_clip")


def verify_checkpoint(path: str | os.PathLike, files: Iterable[str] = WEIGHT_FILES + JSON_FILES) -> None:
    """Check that a checkpoint directory's `files` are complete and readable (safetensors framing, JSON)."""
    path = Path(path)
    for name in files:
        f = path / name
        if name.endswith(".safetensors"):
            verify_safetensors(f)
        else:
            try:
                read_json(f)
            except (FileNotFoundError, ValueError) as e:
                raise CheckpointError(str(e)) from None


def _warn(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # once, not once per process
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def latest_intact(run_dir: str | os.PathLike, files: Iterable[str] = WEIGHT_FILES + JSON_FILES,
                  warn: Callable[[str], None] = _warn) -> int | None:
    """Step of the newest checkpoint whose `files` verify, warning (naming the file) about each newer broken one."""
    files = tuple(files)
    steps = list_checkpoints(run_dir)
    for i, step in enumerate(reversed(steps)):
        try:
            verify_checkpoint(checkpoint_dir(run_dir, step), files)
            return step
        except CheckpointError as e:
            older = steps[-i - 2] if i + 1 < len(steps) else None
            warn(f"{e}; " + (f"falling back to the previous checkpoint, step {older}" if older is not None
                             else "no older checkpoint to fall back to"))
    return None


def clean_stale_temp(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the hidden `.step-*` directories that interrupted checkpoint writes left in RUN/checkpoints/."""
    ck = Path(run_dir) / "checkpoints"
    stale = sorted(p for p in ck.glob(".step-*") if p.is_dir()) if ck.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint directory into {model, ema, optimizer, scheduler, state}, each file verified and named on error."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no state.json)")
    verify_checkpoint(path)
    try:
        return {
            "model": load_tensors(path / "model.safetensors"),
            "ema": load_tensors(path / "ema.safetensors"),
            "optimizer": optimizer_from_files(load_tensors(path / "optimizer.safetensors"), read_json(path / "optimizer.json")),
            "scheduler": read_json(path / "scheduler.json"),
            "state": read_json(path / "state.json"),
        }
    except (KeyError, TypeError, AttributeError) as e:  # valid JSON of the wrong shape
        raise CheckpointError(f"{path}: optimizer.json or state.json does not describe this checkpoint ({e!r})") from None


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
