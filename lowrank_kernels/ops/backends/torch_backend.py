"""The PyTorch reference backend: the plain two-GEMM chain, on every device.

Numerics (the reference every kernel is compared against): each matmul
accumulates in fp32 inside ``torch.matmul`` and rounds its result to the input
dtype, so ``Z = x·V`` is rounded to the input dtype before ``Z·U``. The bias is
added in the same GEMM (``addmm``) as the second product.
"""

from __future__ import annotations

import torch

from .base import Backend, GradMask, Grads


class TorchBackend(Backend):
    name = "torch"

    def is_available(self) -> bool:
        return True

    def unsupported_reason(self, device: torch.device) -> str | None:
        return None

    def forward(self, x, V, U, bias, save_intermediate):
        z = x @ V
        y = z @ U if bias is None else torch.addmm(bias, z, U)
        return y, (z if save_intermediate else None)

    def backward(self, dy, x, V, U, z, needs: GradMask) -> Grads:
        needs_dx, needs_dV, needs_dU, needs_db = needs
        dx = dV = dU = db = None
        if needs_dx or needs_dV:
            dz = dy @ U.t()
            if needs_dx:
                dx = dz @ V.t()
            if needs_dV:
                dV = x.t() @ dz
        if needs_dU:
            if z is None:
                z = x @ V
            dU = z.t() @ dy
        if needs_db:
            db = dy.sum(0, dtype=torch.float32).to(dy.dtype)
        return dx, dV, dU, db
