"""The Triton backend: fused chain kernels from the top-level ``triton_ops`` package.

On a machine without CUDA the kernels are loaded under the Triton interpreter
(``TRITON_INTERPRET=1``, set here if unset before ``triton_ops`` is first
imported), so forcing this backend on CPU tensors runs the real kernel code,
slowly. That is how CI tests the kernels without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import torch

from .base import ChainBackend


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "on", "yes"}


class TritonBackend(ChainBackend):
    name = "triton"

    def __init__(self) -> None:
        self._module: ModuleType | None = None

    def _kernels(self) -> ModuleType:
        if self._module is None:
            if not torch.cuda.is_available() and "triton_ops" not in sys.modules:
                os.environ.setdefault("TRITON_INTERPRET", "1")
            import triton_ops

            self._module = triton_ops
        return self._module

    def _interpreted(self) -> bool:
        if self._module is not None:
            return self._module.INTERPRETED
        if "triton_ops" in sys.modules:
            return sys.modules["triton_ops"].INTERPRETED
        return _interpreter_requested() or not torch.cuda.is_available()

    def is_available(self) -> bool:
        if importlib.util.find_spec("triton") is None:
            return False
        return torch.cuda.is_available() or self._interpreted()

    def unsupported_reason(self, device: torch.device) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install triton)"
        if device.type == "cuda":
            if self._interpreted():
                return (
                    "the Triton kernels were loaded under TRITON_INTERPRET=1 and run on CPU "
                    "tensors only; unset it to run them on the GPU"
                )
            return None
        if device.type == "cpu":
            if self._interpreted():
                return None
            return (
                "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before "
                "triton_ops is first imported"
            )
        return f"the triton backend does not support device type {device.type!r}"

    def chain(self, a, b, c, bias, write_intermediate):
        return self._kernels().chain_forward(a, b, c, bias, write_intermediate)
