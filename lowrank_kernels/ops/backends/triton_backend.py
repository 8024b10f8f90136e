"""The Triton backend: fused chain kernels from ``lowrank_kernels.triton_ops``.

Without CUDA, Triton can only run its interpreter, which runs the real kernel code on
CPU tensors, slowly — how CI tests the kernels. It is opted into by setting
``TRITON_INTERPRET=1`` before triton is first imported (``tests/conftest.py`` does;
``lowrank-kernels selftest`` does it in a child process). Importing this package never
changes the environment: a process-wide switch would silently interpret the user's own
Triton kernels and leak into child processes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from types import ModuleType

import torch

from .. import measurement
from .base import ChainBackend
from .torch_backend import TorchBackend

_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_PYTORCH_CHAIN = TorchBackend()


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "on", "yes"}


def _language_interpreted() -> bool | None:
    """Whether ``triton.language`` was imported under the interpreter; None if not imported."""
    standard = sys.modules.get("triton.language.standard")
    if standard is None:
        return None
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.zeros, InterpretedFunction)


class TritonBackend(ChainBackend):
    """The fused Triton chain kernel, with its launch configuration measured per shape.

    On CUDA tensors the first call of a shape (see ``ChainKey``) times every candidate
    configuration the kernel offers for it (all spill-free and within shared memory on
    sm_80 and sm_90, see ``tests/test_kernel_resources.py``) and caches the fastest.
    A configuration the device cannot launch (e.g. less shared memory than sm_80) is
    skipped; if none launches, the shape runs the PyTorch chain with a warning that says
    why — never an out-of-resources error inside a forward.

    Args:
        timer: ``timer(fn) -> ms`` used to measure configurations (CUDA events by default).
    """

    name = "triton"

    def __init__(self, timer: measurement.Timer | None = None) -> None:
        self._module: ModuleType | None = None
        self.timer = timer or measurement.cuda_event_timer
        self.config_decisions: dict[measurement.ChainKey, measurement.Decision] = {}

    def _kernels(self) -> ModuleType:
        """``lowrank_kernels.triton_ops``, imported on first use: importing it imports
        triton and fixes whether its kernels are interpreted, which must not happen when
        the package is merely imported."""
        if self._module is None:
            self._module = importlib.import_module("lowrank_kernels.triton_ops")
        return self._module

    def _interpreted(self) -> bool:
        """Whether the kernels run (or will run, once loaded) under the interpreter."""
        language = _language_interpreted()
        return _interpreter_requested() if language is None else language

    def is_available(self) -> bool:
        if not _TRITON_INSTALLED:
            return False
        return torch.cuda.is_available() or self._interpreted()

    def unsupported_reason(self, device: torch.device) -> str | None:
        if not _TRITON_INSTALLED:
            return "triton is not installed (pip install triton)"
        if device.type == "cuda":
            if self._interpreted():
                return (
                    "Triton runs under TRITON_INTERPRET=1 in this process, which handles CPU "
                    "tensors only; unset it (before importing triton) to run on the GPU"
                )
            return None
        if device.type == "cpu":
            if self._interpreted():
                return None
            return (
                "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before "
                "triton is first imported"
            )
        return f"the triton backend does not support device type {device.type!r}"

    def chain(self, a, b, c, bias, write_intermediate):
        kernels = self._kernels()
        aligned = kernels.chain_aligned(a, b, c)
        candidates = {
            repr(cfg): cfg
            for cfg in kernels.candidate_configs(a.shape[0], b.shape[1], a.dtype, aligned=aligned)
        }

        def run(config):
            return kernels.chain_forward(a, b, c, bias, write_intermediate, config=config)

        key = measurement.chain_key(a, b, c, bias, write_intermediate)
        decision = self.config_decisions.get(key)
        if decision is not None:
            return run(candidates[decision.choice])
        if len(candidates) > 1 and measurement.measurement_allowed(a.device):
            launchable = {}
            reasons = []
            for name, config in candidates.items():
                try:
                    run(config)
                except kernels.OutOfResources as exc:
                    reasons.append(f"{config}: {exc}")
                else:
                    launchable[name] = lambda config=config: run(config)
            if launchable:
                decision = measurement.measure_fastest(launchable, self.timer)
                self.config_decisions[key] = decision
                return run(candidates[decision.choice])
        else:
            reasons = []
            for config in candidates.values():
                try:
                    return run(config)
                except kernels.OutOfResources as exc:
                    reasons.append(f"{config}: {exc}")
        warnings.warn(
            f"lowrank_linear: no Triton chain configuration launches for M={a.shape[0]}, "
            f"K={a.shape[1]}, N={c.shape[1]}, r={b.shape[1]}, {a.dtype} on {a.device} "
            f"({'; '.join(reasons)}); running the PyTorch chain for this shape",
            RuntimeWarning,
            stacklevel=2,
        )
        return _PYTORCH_CHAIN.chain(a, b, c, bias, write_intermediate)
