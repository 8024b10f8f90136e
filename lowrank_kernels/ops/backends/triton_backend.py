"""The Triton backend: fused chain kernels from the top-level ``triton_ops`` package.

Without CUDA, Triton can only run its interpreter, so on such a machine this module
sets ``TRITON_INTERPRET=1`` when it is imported (if the variable is unset and
``triton.language`` is not imported yet; the interpreter is fixed when Triton's
standard library is decorated). Forcing this backend on CPU tensors then runs the
real kernel code, slowly. That is how CI tests the kernels without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import torch

from .base import ChainBackend

_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "on", "yes"}


def _language_interpreted() -> bool | None:
    """Whether ``triton.language`` was imported under the interpreter; None if not imported."""
    standard = sys.modules.get("triton.language.standard")
    if standard is None:
        return None
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.zeros, InterpretedFunction)


if (
    _TRITON_INSTALLED
    and "TRITON_INTERPRET" not in os.environ
    and _language_interpreted() is None
    and not torch.cuda.is_available()
):
    os.environ["TRITON_INTERPRET"] = "1"


class TritonBackend(ChainBackend):
    name = "triton"

    def __init__(self) -> None:
        self._module: ModuleType | None = None

    def _kernels(self) -> ModuleType:
        if self._module is None:
            import triton_ops

            self._module = triton_ops
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
        return self._kernels().chain_forward(a, b, c, bias, write_intermediate)
