"""The CUDA C++ backend: kernels in ``csrc/`` compiled into ``lowrank_kernels._C``.

Importing ``_C`` registers ``torch.ops.lowrank_cuda.chain`` (a CUDA kernel and a Meta
kernel, see ``csrc/chain_op.cpp``); :class:`CudaBackend` supplies that op as the chain
primitive of :class:`~.base.ChainBackend`, which composes the forward and backward.
Build and kernel design: ``docs/cuda.md``.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

from .base import ChainBackend

BUILD_HINT = (
    "build it on a machine with CUDA torch and nvcc: "
    "pip install --no-build-isolation --no-deps -e . (see docs/cuda.md)"
)


@functools.cache
def _import_extension() -> tuple[ModuleType | None, str | None]:
    """``(module, None)``, or ``(None, why)`` — imported once per process."""
    try:
        return importlib.import_module("lowrank_kernels._C"), None
    except ModuleNotFoundError as exc:
        if exc.name not in ("lowrank_kernels._C", "lowrank_kernels"):
            return None, f"lowrank_kernels._C failed to import: {exc}"
        return None, f"lowrank_kernels._C is not built; {BUILD_HINT}"
    except ImportError as exc:  # built, but e.g. against another torch/CUDA (undefined symbol)
        return (
            None,
            f"lowrank_kernels._C is built but failed to import ({exc}); rebuild it: {BUILD_HINT}",
        )


def load_extension() -> ModuleType | None:
    """Import ``lowrank_kernels._C`` (registers the ``lowrank_cuda`` ops); ``None`` if unusable."""
    return _import_extension()[0]


def extension_info() -> dict[str, str] | None:
    """Build facts of ``_C`` from its ``build_info()``, or ``None`` if it is not built.

    Keys: ``cuda_archs`` (e.g. ``"80;90"``), ``cuda_version`` (the CUDA runtime it was
    compiled against), ``torch_version`` (the torch headers it was compiled against), ``ops``.
    """
    ext = load_extension()
    if ext is None:
        return None
    return {str(k): str(v) for k, v in ext.build_info().items()}


class CudaBackend(ChainBackend):
    """``torch.ops.lowrank_cuda.chain``: fused CUDA C++ kernels (fp16/bf16/fp32; fp64 via ATen)."""

    name = "cuda"

    def is_available(self) -> bool:
        return load_extension() is not None and torch.cuda.is_available()

    def unsupported_reason(self, device: torch.device) -> str | None:
        ext, why = _import_extension()
        if ext is None:
            return why
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors only, got device {device}"
        if not torch.cuda.is_available():
            return "no CUDA device is available to this process"
        return None

    def chain(self, a, b, c, bias, write_intermediate):
        """``(a·b)·c + bias`` → ``out [M, N]`` (contiguous) and ``a·b [M, r]`` or ``None``.

        Shapes ``a [M, K]``, ``b [K, r]``, ``c [r, N]``, ``bias [N] | None``, any strides.
        """
        if load_extension() is None:  # importing _C is what registers the op
            raise RuntimeError(f"the cuda backend cannot run: {_import_extension()[1]}")
        out, z = torch.ops.lowrank_cuda.chain(a, b, c, bias, write_intermediate)
        return out, (z if write_intermediate else None)
