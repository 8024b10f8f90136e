"""The interface every backend of the low-rank linear op implements.

All tensors handed to a backend are already validated (see ``validation.py``):
``x`` is 2-D ``[M, K]`` (possibly non-contiguous), ``V`` is ``[K, r]``, ``U`` is
``[r, N]``, ``bias`` is ``[N]`` or ``None``, all of one dtype and device.

Every backend so far is a :class:`ChainBackend`: it supplies one primitive, the
rank-r chain ``out = (A·B)·C + bias`` over strided operands, and the forward and
backward of docs/design.md are composed from it. ``dx = (dY·Uᵀ)·Vᵀ`` is the same chain
as the forward, fed the transposed views ``Uᵀ``, ``Vᵀ`` (no copies).
"""

from __future__ import annotations

import abc

import torch

from ..validation import work_dtype

# (needs_dx, needs_dV, needs_dU, needs_db)
GradMask = tuple[bool, bool, bool, bool]
Grads = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


class Backend(abc.ABC):
    """One implementation of ``y = x·V·U + b`` and its backward (docs/design.md)."""

    name: str

    @abc.abstractmethod
    def is_available(self) -> bool:
        """True if this backend can run on at least one device of this process."""

    @abc.abstractmethod
    def unsupported_reason(self, device: torch.device) -> str | None:
        """``None`` if tensors on ``device`` can run here, else a human-readable reason."""

    @abc.abstractmethod
    def forward(
        self,
        x: torch.Tensor,
        V: torch.Tensor,
        U: torch.Tensor,
        bias: torch.Tensor | None,
        save_intermediate: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``y [M, N]`` and, if ``save_intermediate``, ``Z = x·V [M, r]`` in x's dtype."""

    @abc.abstractmethod
    def backward(
        self,
        dy: torch.Tensor,
        x: torch.Tensor,
        V: torch.Tensor,
        U: torch.Tensor,
        z: torch.Tensor | None,
        needs: GradMask,
    ) -> Grads:
        """Return ``(dx [M, K], dV [K, r], dU [r, N], db [N])``; ``None`` where not needed.

        ``z`` is the saved ``x·V`` or ``None`` when it must be recomputed.
        """


class ChainBackend(Backend):
    """A backend built on one strided chain primitive (see module docstring)."""

    @abc.abstractmethod
    def chain(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        c: torch.Tensor,
        bias: torch.Tensor | None,
        write_intermediate: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``out = (a·b)·c + bias`` and, if asked, ``a·b`` rounded to a's dtype.

        Shapes: ``a [M, K]``, ``b [K, r]``, ``c [r, N]``, ``bias [N] | None`` → ``out [M, N]``
        (contiguous), intermediate ``[M, r]`` (contiguous) or ``None``. Operands may have
        any strides (the backward passes transposed views).
        """

    def forward(self, x, V, U, bias, save_intermediate):
        return self.chain(x, V, U, bias, save_intermediate)

    def backward(self, dy, x, V, U, z, needs: GradMask) -> Grads:
        needs_dx, needs_dV, needs_dU, needs_db = needs
        dx = dz = None
        if needs_dx:
            dx, dz = self.chain(dy, U.t(), V.t(), None, needs_dV)
        elif needs_dV:
            dz = dy @ U.t()
        dV = x.t() @ dz if needs_dV else None
        dU = None
        if needs_dU:
            if z is None:
                z = x @ V
            dU = z.t() @ dy
        db = dy.sum(0, dtype=work_dtype(dy)).to(dy.dtype) if needs_db else None
        return dx, dV, dU, db
