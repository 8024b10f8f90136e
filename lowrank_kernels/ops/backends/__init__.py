"""Backend registry for the low-rank linear op."""

from .base import Backend, ChainBackend, GradMask, Grads
from .cuda_backend import CudaBackend
from .torch_backend import TorchBackend
from .triton_backend import TritonBackend

TRITON = TritonBackend()

# Preference order of the "auto" backend on CUDA devices.
BACKENDS: dict[str, Backend] = {
    "triton": TRITON,
    "cuda": CudaBackend(),
    "torch": TorchBackend(),
}

__all__ = ["BACKENDS", "TRITON", "Backend", "ChainBackend", "GradMask", "Grads"]
