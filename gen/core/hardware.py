"""How a run uses the hardware: the autocast its precision means on its device, and torch.compile where it pays.

Precision is resolved once per script (echosynth.gen.core.launcher.resolve_precision: the script's flag, else the
launcher's, else `auto`); every forward pass that may run in bf16 (DDPM training and sampling, classifier
training and prediction, feature extraction for FID and privacy) enters `autocast(device, precision)`.
What the numbers are made of stays float32: losses are computed on `.float()` outputs, and EMA weights,
optimizer state and metrics never see autocast.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable

import torch

from echosynth.gen.core.launcher import resolve_precision


def resolve_for(requested: str, device: torch.device | str) -> tuple[str, str]:
    """(precision, where it came from) on `device`: `auto` is bf16 on CUDA with bf16 and on CPUs with native bf16."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    return resolve_precision(requested, cuda, cuda and torch.cuda.is_bf16_supported())


def autocast(device: torch.device | str, precision: str):
    """The autocast context of a resolved precision: bf16 on CPU or CUDA, fp16 on CUDA only, else none."""
    device = torch.device(device)
    if precision == "bf16" and device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# torch.compile: compile time is paid once per process, so `auto` compiles only runs long enough to win it back


COMPILE_MIN_CPU_EVALS = 20000  # model evaluations a CPU run must make before `auto` compiles (see docs/ddpm.md)


def want_compile(setting: str | bool, device: torch.device | str, evals: int, training: bool = False) -> tuple[bool, str]:
    """(compile?, why) for a `compile` setting (auto/true/false) and a run of `evals` UNet evaluations per process.

    `auto`: always on CUDA. On CPU, sampling compiles from COMPILE_MIN_CPU_EVALS evaluations (measured
    break-even about 5,300: benchmarks/results/ddpm_compile_cpu.json); training never does, since a
    compiled training step measured no faster than eager bf16 there (0.99×) after about 2 minutes of
    compiling.
    """
    if setting is False or setting == "false":
        return False, "compile false"
    if setting is True or setting == "true":
        return True, "compile true"
    if torch.device(device).type == "cuda":
        return True, "compile auto: CUDA"
    if training:
        return False, "compile auto: off for training on CPU (measured no faster than eager, benchmarks/results/ddpm_compile_cpu.json)"
    if evals >= COMPILE_MIN_CPU_EVALS:
        return True, f"compile auto: {evals} UNet evaluations on CPU (≥ {COMPILE_MIN_CPU_EVALS})"
    return False, f"compile auto: off, {evals} UNet evaluations on CPU are too few to amortise compiling (< {COMPILE_MIN_CPU_EVALS})"


class Compiled(torch.nn.Module):
    """A module run through torch.compile, falling back to eager (one warning) if compiling or the first call fails.

    The first call (the warm-up, where compiling happens) is timed and reported through `log`.
    """

    def __init__(self, module: torch.nn.Module, log: Callable[[str], None] | None = None, **compile_kwargs) -> None:
        super().__init__()
        self.module = module
        self._log = log or (lambda msg: None)
        self._warm = False
        try:  # kept off the module tree (object.__setattr__): it shares `module`'s parameters
            object.__setattr__(self, "_compiled", torch.compile(module, **compile_kwargs))
        except Exception as e:  # noqa: BLE001 - any compile failure means: run eager
            self._fall_back(e)

    def _fall_back(self, e: BaseException) -> None:
        object.__setattr__(self, "_compiled", None)
        msg = f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); running eager"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        self._log(msg)

    def forward(self, *args, **kwargs):
        if self._compiled is None:
            return self.module(*args, **kwargs)
        if self._warm:
            return self._compiled(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            self._fall_back(e)
            return self.module(*args, **kwargs)
        self._warm = True
        self._log(f"compile: warm-up (first call, compiling the forward) took {time.perf_counter() - t0:.1f} s"
                  + ("; the backward compiles during the first backward()" if torch.is_grad_enabled() else ""))
        return out

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)
