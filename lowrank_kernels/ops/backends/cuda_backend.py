"""The CUDA C++ backend: kernels in ``csrc/`` compiled into ``lowrank_kernels._C``."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from .base import ChainBackend


def load_extension() -> ModuleType | None:
    """Import ``lowrank_kernels._C`` (registers the ``lowrank_cuda`` ops); ``None`` if not built."""
    try:
        return importlib.import_module("lowrank_kernels._C")
    except ImportError:
        return None


def extension_info() -> dict[str, str] | None:
    """Build facts of ``_C`` (at least ``cuda_archs``), or ``None`` if it is not built."""
    ext = load_extension()
    if ext is None:
        return None
    return {"cuda_archs": "unknown"}


class CudaBackend(ChainBackend):
    name = "cuda"

    def is_available(self) -> bool:
        return load_extension() is not None and torch.cuda.is_available()

    def unsupported_reason(self, device: torch.device) -> str | None:
        if load_extension() is None:
            return (
                "lowrank_kernels._C is not built (install on a machine with CUDA torch and "
                "nvcc: pip install --no-build-isolation .)"
            )
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors only, got device {device}"
        return None

    def chain(self, a, b, c, bias, write_intermediate):
        raise NotImplementedError("the cuda backend's kernels are not implemented yet")
