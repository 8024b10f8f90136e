"""The PyTorch backend: the plain two-GEMM chain, on every device and dtype.

It is the fallback everywhere and the baseline ``auto`` measures fused kernels against;
it is not the tests' oracle (that is the float64 reference in
``lowrank_kernels.testing``). Numerics: each matmul accumulates in fp32 inside
``torch.matmul`` and rounds its result to the input dtype, so ``Z = x·V`` is rounded to
the input dtype before ``Z·U``; the bias is added in the same GEMM (``addmm``) as the
second product. The kernels round where this chain rounds.
"""

from __future__ import annotations

import torch

from .base import ChainBackend


class TorchBackend(ChainBackend):
    name = "torch"

    def is_available(self) -> bool:
        return True

    def unsupported_reason(self, device: torch.device) -> str | None:
        return None

    def chain(self, a, b, c, bias, write_intermediate):
        z = a @ b
        out = z @ c if bias is None else torch.addmm(bias, z, c)
        return out, (z if write_intermediate else None)
