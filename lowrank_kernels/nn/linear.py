"""``LowRankLinear``: a drop-in ``nn.Linear`` whose weight is factorized as ``V·U``."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..ops import check_int, check_rank, lowrank_linear, work_dtype


def truncated_svd_factors(
    weight_t: torch.Tensor, rank: int, *, name: str = "weight"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors of a ``[K, N]`` matrix, split as ``V = A_r·√S``, ``U = √S·B_rᵀ``.

    The SVD runs in fp32 (fp64 for fp64 input) on the matrix's device; the factors
    come back in that precision, ``V [K, rank]`` and ``U [rank, N]``.

    Raises:
        ValueError: the matrix holds NaN or inf (its SVD is undefined: the factors would
            be NaN), or the SVD did not converge; the message starts with ``name``.
    """
    matrix = weight_t.detach().to(work_dtype(weight_t))
    if not torch.isfinite(matrix).all():
        bad = int((~torch.isfinite(matrix)).sum())
        raise ValueError(f"{name} holds {bad} NaN/inf values: it cannot be factorized")
    try:
        A, S, Bh = torch.linalg.svd(matrix, full_matrices=False)
    except torch.linalg.LinAlgError as exc:
        raise ValueError(f"{name}: the SVD did not converge ({exc})") from exc
    sqrt_s = S[:rank].sqrt()
    return A[:, :rank] * sqrt_s, sqrt_s[:, None] * Bh[:rank]


def dense_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, *, like: torch.Tensor
) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight [out, in]`` and ``bias [out]`` (copied, detached),
    in ``like``'s dtype and device: how every low-rank layer turns back into a dense one."""
    out_features, in_features = weight.shape
    linear = nn.Linear(
        in_features, out_features, bias=bias is not None, device=like.device, dtype=like.dtype
    )
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias.detach())
    return linear


def carry_trainability(old: nn.Module, new: nn.Module) -> None:
    """Give ``new``'s parameters the ``requires_grad`` of ``old``'s parameters of the same
    name, and ``new`` the train/eval mode of ``old``: a layer rebuilt at another rank must
    not silently unfreeze frozen factors or switch modes."""
    old_params = dict(old.named_parameters())
    for pname, p in new.named_parameters():
        if pname in old_params:
            p.requires_grad_(old_params[pname].requires_grad)
    new.train(old.training)


class LowRankLinear(nn.Module):
    """``y = x·V·U + bias``, the factorized form of ``nn.Linear(in_features, out_features)``.

    Args:
        in_features: K, size of each input's last dim.
        out_features: N, size of each output's last dim.
        rank: r, ``1 <= r <= min(K, N)``.
        bias: learn an additive bias ``[N]``.
        recompute_intermediate: recompute ``Z = x·V`` in backward instead of saving it.

    Shapes: input ``[*, K]`` → output ``[*, N]``. Parameters ``V [K, r]``,
    ``U [r, N]``, ``bias [N]``.

    Default init: ``V ~ U(-√(3/K), √(3/K))`` (variance ``1/K``, so ``Z = x·V``
    keeps the input's variance) and ``U ~ U(-1/√r, 1/√r)`` (variance ``1/(3r)``,
    ``nn.Linear``'s default for fan-in r). The product then has per-entry
    variance ``r·(1/K)·(1/(3r)) = 1/(3K)``, exactly that of ``nn.Linear``'s
    default weight, so swapping layers keeps activation scales. The bias follows
    ``nn.Linear``: ``U(-1/√K, 1/√K)``.
    """

    __constants__: ClassVar[list[str]] = ["in_features", "out_features", "rank"]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        recompute_intermediate: bool = False,
    ) -> None:
        super().__init__()
        check_int(in_features, "in_features", owner="LowRankLinear")
        check_int(out_features, "out_features", owner="LowRankLinear")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = check_rank(rank, in_features, out_features)
        self.recompute_intermediate = recompute_intermediate
        factory = {"device": device, "dtype": dtype}
        self.V = nn.Parameter(torch.empty(in_features, self.rank, **factory))
        self.U = nn.Parameter(torch.empty(self.rank, out_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the parameters from the default init described in the class docstring."""
        bound_v = math.sqrt(3.0 / self.in_features)
        bound_u = 1.0 / math.sqrt(self.rank)
        nn.init.uniform_(self.V, -bound_v, bound_v)
        nn.init.uniform_(self.U, -bound_u, bound_u)
        if self.bias is not None:
            bound_b = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound_b, bound_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lowrank_linear(
            x, self.V, self.U, self.bias, recompute_intermediate=self.recompute_intermediate
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """Factorize ``linear`` by truncated SVD (fp32) with the √S split; keeps device/dtype.

        At ``rank = min(K, N)`` the product reproduces the weight up to fp32 SVD error;
        below, ``‖W − (V·U)ᵀ‖_F`` equals the norm of the discarded singular values.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(
                f"from_linear: linear must be an nn.Linear, got {type(linear).__name__}"
            )
        weight = linear.weight.detach()
        rank = check_rank(rank, linear.in_features, linear.out_features)
        module = cls(
            linear.in_features,
            linear.out_features,
            rank,
            bias=linear.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        module._fit(weight, linear.bias, name="from_linear: linear.weight")
        return module

    @torch.no_grad()
    def _fit(self, weight: torch.Tensor, bias: torch.Tensor | None, *, name: str) -> None:
        """Set ``V``, ``U`` to the best rank-``self.rank`` fit of ``weight [out, in]`` (truncated
        SVD, √S split) and copy ``bias [out]``; the one way a factorization is computed."""
        V, U = truncated_svd_factors(weight.t(), self.rank, name=name)
        self.V.copy_(V)
        self.U.copy_(U)
        if bias is not None:
            self.bias.copy_(bias.detach())

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """:meth:`from_linear` under the name every low-rank layer shares."""
        return cls.from_linear(linear, rank)

    def to_dense(self) -> nn.Linear:
        """:meth:`to_linear` under the name every low-rank layer shares."""
        return self.to_linear()

    def factors(self) -> tuple[nn.Parameter, nn.Parameter]:
        """``(V [in, r], U [r, out])``: the layer's two factor weights."""
        return self.V, self.U

    @property
    def weight(self) -> torch.Tensor:
        """The dense-equivalent weight ``(V·U)ᵀ`` ``[out, in]``, as ``nn.Linear.weight``.

        For code written against ``nn.Linear`` (``layer.weight.dtype``, ``.device``,
        ``.shape``, even ``F.linear(x, layer.weight)``): computed on every access in the
        factors' dtype and device, at a cost of ``in·out·rank`` multiply-adds and
        ``in·out`` elements of memory, and differentiable with respect to ``V`` and ``U``
        (gradients through it are correct). The layer's own forward never builds it.
        Read-only: assign ``V``/``U`` instead. For a detached fp32 copy use
        :meth:`weight_matrix`.
        """
        return (self.V @ self.U).t()

    def __setattr__(self, name: str, value: object) -> None:
        # nn.Module routes a Parameter to register_parameter before any property setter,
        # which would fail with an unhelpful KeyError: give the setter's message instead.
        if name == "weight":
            type(self).weight.fset(self, value)
        super().__setattr__(name, value)

    @weight.setter
    def weight(self, value: object) -> None:
        raise AttributeError(
            "LowRankLinear.weight is the product (V·U)ᵀ, computed on access and read-only; "
            "set V and U (e.g. from_linear or with_rank) instead"
        )

    def weight_matrix(self) -> torch.Tensor:
        """The dense-equivalent weight ``(V·U)ᵀ`` as ``[out, in]``, detached, multiplied in
        fp32 (fp64 for fp64)."""
        work = work_dtype(self.V)
        return (self.V.detach().to(work) @ self.U.detach().to(work)).t()

    @torch.no_grad()
    def with_rank(self, rank: int) -> LowRankLinear:
        """A new layer of the same shape, dtype, device, bias and options at ``rank``.

        Growing (``rank >= self.rank``) keeps the function exactly: the current factors
        are kept, the new columns of ``V [in, rank]`` come from the default init and the new
        rows of ``U [rank, out]`` are zero, so both start receiving gradients. Shrinking
        gives the best rank-``rank`` approximation of the current product (truncated SVD of
        the fp32 product, √S split). Trainability and train/eval mode carry over.
        """
        rank = check_rank(rank, self.in_features, self.out_features)
        new = type(self)(
            self.in_features,
            self.out_features,
            rank,
            bias=self.bias is not None,
            device=self.V.device,
            dtype=self.V.dtype,
            recompute_intermediate=self.recompute_intermediate,
        )
        if rank < self.rank:
            new._fit(self.weight_matrix(), self.bias, name="with_rank: the product V·U")
        else:
            new.V[:, : self.rank] = self.V
            new.U[: self.rank] = self.U
            new.U[self.rank :] = 0
            if self.bias is not None:
                new.bias.copy_(self.bias)
        carry_trainability(self, new)
        return new

    def to_linear(self) -> nn.Linear:
        """The dense ``nn.Linear`` with weight ``(V·U)ᵀ``, multiplied in fp32 (fp64 for fp64)."""
        return dense_linear(self.weight_matrix(), self.bias, like=self.V)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
        )
