"""``LoRALinear``: a frozen dense weight plus a trainable low-rank update (ReLoRA's layer)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import check_int, check_rank, lowrank_linear, work_dtype
from .linear import dense_linear


class LoRALinear(nn.Module):
    """``y = x·Wᵀ + bias + s·x·A·B`` with ``W`` frozen and ``A``, ``B`` trainable.

    Args:
        in_features: K, size of each input's last dim.
        out_features: N, size of each output's last dim.
        rank: r of the update, ``1 <= r <= min(K, N)``.
        bias: learn an additive bias ``[N]`` (trainable: it is tiny and not low-rank).
        scale: s, the fixed multiplier of the low-rank path.

    Shapes: input ``[*, K]`` → output ``[*, N]``. ``weight [N, K]`` (frozen, stored like
    ``nn.Linear.weight``), ``A [K, r]``, ``B [r, N]``, ``bias [N]``.

    The ``x·A·B`` path runs through :func:`lowrank_kernels.lowrank_linear`, so GPUs get
    the fused kernels. Init: ``A`` kaiming-uniform with fan-in K (bound ``1/√K``, as
    ``nn.Linear``), ``B`` zero — the update starts at zero but ``B`` receives a
    non-zero gradient on the first step (``dB = (x·A)ᵀ·dY·s``), and ``A`` from the
    second step on. Never set both to zero: then both gradients vanish forever.
    """

    __constants__: ClassVar[list[str]] = ["in_features", "out_features", "rank"]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_int(in_features, "in_features", owner="LoRALinear")
        check_int(out_features, "out_features", owner="LoRALinear")
        if (
            isinstance(scale, bool)
            or not isinstance(scale, (int, float))
            or not math.isfinite(scale)
            or scale <= 0
        ):
            raise ValueError(f"LoRALinear: scale must be a finite float > 0, got {scale!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = check_rank(rank, in_features, out_features)
        self.scale = float(scale)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, **factory), requires_grad=False
        )
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.A = nn.Parameter(torch.empty(in_features, self.rank, **factory))
        self.B = nn.Parameter(torch.empty(self.rank, out_features, **factory))
        self._reset_dense()
        self.reset_lora()

    def _reset_dense(self) -> None:
        # nn.Linear's default init, so a fresh LoRALinear behaves like a fresh nn.Linear.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def reset_lora(self) -> None:
        """``A`` ← kaiming-uniform (fan-in K), ``B`` ← 0: the update restarts from zero."""
        # A is stored [K, r]; its transpose has nn.Linear's [out, in] layout, so kaiming
        # sees fan-in K (on A itself it would wrongly use r).
        nn.init.kaiming_uniform_(self.A.T, a=math.sqrt(5))
        self.B.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = F.linear(x, self.weight, self.bias)
        return dense + self.scale * lowrank_linear(x, self.A, self.B)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """The update ``s·(A·B)ᵀ`` as an ``[N, K]`` matrix in fp32 (fp64 for fp64 params)."""
        work = work_dtype(self.A)
        return (self.A.to(work) @ self.B.to(work)).t() * self.scale

    @torch.no_grad()
    def merge_and_reinit(self) -> None:
        """``W += s·(A·B)ᵀ`` (in fp32), then :meth:`reset_lora`; the output is unchanged."""
        self.weight.copy_(self.weight.to(self.delta_weight().dtype) + self.delta_weight())
        self.reset_lora()

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, scale: float = 1.0) -> LoRALinear:
        """Wrap ``linear``: its weight (copied) becomes the frozen ``W``; keeps device/dtype.

        The result computes exactly ``linear``'s function (B starts at zero).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(
                f"LoRALinear.from_linear: linear must be an nn.Linear, got {type(linear).__name__}"
            )
        weight = linear.weight.detach()
        module = cls(
            linear.in_features,
            linear.out_features,
            rank,
            bias=linear.bias is not None,
            scale=scale,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            module.weight.copy_(weight)
            if linear.bias is not None:
                module.bias.copy_(linear.bias.detach())
        return module

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int) -> LoRALinear:
        """:meth:`from_linear` (scale 1) under the name every low-rank layer shares."""
        return cls.from_linear(linear, rank)

    def to_dense(self) -> nn.Linear:
        """:meth:`to_linear` under the name every low-rank layer shares."""
        return self.to_linear()

    def factors(self) -> tuple[nn.Parameter, nn.Parameter]:
        """``(A [in, r], B [r, out])``: the trainable low-rank update's factors."""
        return self.A, self.B

    @torch.no_grad()
    def weight_matrix(self) -> torch.Tensor:
        """The dense-equivalent weight ``W + s·(A·B)ᵀ`` as ``[out, in]``, in fp32 (fp64 for
        fp64), detached. Unlike the factorized layers its rank is not bounded by ``r``."""
        delta = self.delta_weight()
        return self.weight.detach().to(delta.dtype) + delta

    def to_linear(self) -> nn.Linear:
        """The dense ``nn.Linear`` with weight ``W + s·(A·B)ᵀ`` (summed in fp32)."""
        return dense_linear(self.weight_matrix(), self.bias, like=self.weight)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, scale={self.scale}, bias={self.bias is not None}"
        )
