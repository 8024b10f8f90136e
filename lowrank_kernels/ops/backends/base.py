"""The interface every backend of the low-rank linear op implements.

All tensors handed to a backend are already validated (see ``validation.py``):
``x`` is 2-D ``[M, K]`` (possibly non-contiguous), ``V`` is ``[K, r]``, ``U`` is
``[r, N]``, ``bias`` is ``[N]`` or ``None``, all of one dtype and device.
"""

from __future__ import annotations

import abc

import torch

# (needs_dx, needs_dV, needs_dU, needs_db)
GradMask = tuple[bool, bool, bool, bool]
Grads = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


class Backend(abc.ABC):
    """One implementation of ``y = x·V·U + b`` and its backward (DESIGN §2)."""

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
