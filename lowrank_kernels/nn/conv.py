"""``LowRankConv2d``: a k×k conv to ``rank`` channels followed by a 1×1 conv to ``out``.

The layout is Cuttlefish/Pufferfish's: with the dense weight viewed as the matrix
``W [out, in·kh·kw]`` (each row one output channel's filter), the factorization
``W ≈ U_c·V_c`` becomes two convolutions — ``conv_v`` with weight ``V_c`` reshaped
to ``[rank, in, kh, kw]`` (same stride, padding, dilation and padding mode as the
dense conv) and ``conv_u``, a 1×1 conv with weight ``U_c [out, rank, 1, 1]`` and
the bias. Both are linear maps of the patches, so the composition equals the
dense conv with weight ``U_c·V_c`` exactly.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from ..ops import check_int, check_rank, work_dtype
from .linear import carry_trainability, truncated_svd_factors


def _conv_rank(rank: object, in_channels: int, out_channels: int, kernel: tuple[int, int]) -> int:
    """``rank`` after checking ``1 <= rank <= min(out_channels, in_channels·kh·kw)``, the rank
    bound of the conv's ``[out, in·kh·kw]`` weight matrix, with the error in conv terms."""
    patch = in_channels * kernel[0] * kernel[1]
    names = (f"out_channels={out_channels}", f"in_channels·kh·kw={patch}")
    return check_rank(rank, patch, out_channels, names=names)


class LowRankConv2d(nn.Module):
    """Factorized ``nn.Conv2d(in_channels, out_channels, kernel_size)`` of rank ``rank``.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: int or ``(kh, kw)``.
        rank: r, ``1 <= r <= min(C_out, C_in·kh·kw)``.
        stride, padding, dilation, padding_mode: as ``nn.Conv2d``; applied to ``conv_v``.
        bias: learn an additive bias ``[C_out]`` (held by ``conv_u``).

    Submodules: ``conv_v`` (``nn.Conv2d(C_in, r, kernel_size)``, no bias) and
    ``conv_u`` (``nn.Conv2d(r, C_out, 1)``, with the bias).

    Shapes: input ``[B, C_in, H, W]`` → output ``[B, C_out, H', W']`` with ``H', W'`` as
    the dense conv's. Parameters: ``r·(C_in·kh·kw + C_out)`` (+ ``C_out`` bias), against
    ``C_out·C_in·kh·kw`` dense.

    Default init mirrors ``LowRankLinear``: ``conv_v`` entries have variance
    ``1/fan_in`` (fan_in = C_in·kh·kw) and ``conv_u`` entries ``1/(3r)``, so the product's
    entries have variance ``1/(3·fan_in)``, that of ``nn.Conv2d``'s default weight; the
    bias is ``U(-1/√fan_in, 1/√fan_in)`` like the dense conv's.
    """

    __constants__: ClassVar[list[str]] = ["in_channels", "out_channels", "rank"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        rank: int,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", owner="LowRankConv2d")
        self.out_channels = check_int(out_channels, "out_channels", owner="LowRankConv2d")
        kernel = _pair(kernel_size)
        if len(kernel) != 2:  # _pair passes a tuple of any length through unchanged
            raise ValueError(
                f"LowRankConv2d: kernel_size must be an int or a (kh, kw) pair, got {kernel_size!r}"
            )
        for k in kernel:
            check_int(k, "kernel_size", owner="LowRankConv2d")
        self.kernel_size: tuple[int, int] = (int(kernel[0]), int(kernel[1]))
        self.rank = _conv_rank(rank, in_channels, out_channels, self.kernel_size)
        factory = {"device": device, "dtype": dtype}
        self.conv_v = nn.Conv2d(
            in_channels,
            self.rank,
            self.kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
            padding_mode=padding_mode,
            **factory,
        )
        self.conv_u = nn.Conv2d(self.rank, out_channels, 1, bias=bias, **factory)
        self.reset_parameters()

    # The dense conv's hyper-parameters live on conv_v; expose them under nn.Conv2d's names.
    @property
    def stride(self) -> tuple[int, ...]:
        return self.conv_v.stride

    @property
    def padding(self) -> tuple[int, ...] | str:
        return self.conv_v.padding

    @property
    def dilation(self) -> tuple[int, ...]:
        return self.conv_v.dilation

    @property
    def padding_mode(self) -> str:
        return self.conv_v.padding_mode

    @property
    def bias(self) -> nn.Parameter | None:
        return self.conv_u.bias

    def reset_parameters(self) -> None:
        """Re-draw the parameters from the default init described in the class docstring."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound_v = math.sqrt(3.0 / fan_in)
        bound_u = 1.0 / math.sqrt(self.rank)
        nn.init.uniform_(self.conv_v.weight, -bound_v, bound_v)
        nn.init.uniform_(self.conv_u.weight, -bound_u, bound_u)
        if self.conv_u.bias is not None:
            bound_b = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.conv_u.bias, -bound_b, bound_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_u(self.conv_v(x))

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, rank: int) -> LowRankConv2d:
        """Factorize ``conv`` by truncated SVD of its ``[out, in·kh·kw]`` weight (√S split).

        Keeps device, dtype, stride, padding, dilation and padding mode. At
        ``rank = min(out, in·kh·kw)`` the result reproduces the conv up to fp32 SVD error.

        Raises:
            TypeError: ``conv`` is not an ``nn.Conv2d`` or ``rank`` is not an int.
            ValueError: ``conv.groups != 1`` (grouped/depthwise convs are not factorized)
                or ``rank`` is out of range.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv2d: conv must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(
                f"from_conv2d: conv.groups must be 1 (grouped and depthwise convs are not "
                f"factorized), got groups={conv.groups}"
            )
        weight = conv.weight.detach()
        kernel = (int(conv.kernel_size[0]), int(conv.kernel_size[1]))
        rank = _conv_rank(rank, conv.in_channels, conv.out_channels, kernel)
        module = cls(
            conv.in_channels,
            conv.out_channels,
            kernel,
            rank,
            bias=conv.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
            **cls.conv_options(conv),
        )
        module._fit(
            weight.reshape(conv.out_channels, -1), conv.bias, name="from_conv2d: conv.weight"
        )
        module.conv_v.weight.requires_grad_(conv.weight.requires_grad)
        module.conv_u.weight.requires_grad_(conv.weight.requires_grad)
        if conv.bias is not None:
            module.conv_u.bias.requires_grad_(conv.bias.requires_grad)
        return module

    @torch.no_grad()
    def _fit(self, weight: torch.Tensor, bias: torch.Tensor | None, *, name: str) -> None:
        """Set the factors to the best rank-``self.rank`` fit of ``weight [out, in·kh·kw]``
        (truncated SVD, √S split) and copy ``bias [out]``; the one way a factorization is
        computed."""
        # W ≈ A_r·√S · √S·B_rᵀ: the left factor is the 1×1 conv, the right one the k×k conv.
        left, right = truncated_svd_factors(weight, self.rank, name=name)
        self.conv_u.weight.copy_(left.reshape(self.out_channels, self.rank, 1, 1))
        self.conv_v.weight.copy_(right.reshape(self.rank, self.in_channels, *self.kernel_size))
        if bias is not None:
            self.conv_u.bias.copy_(bias.detach())

    @property
    def weight(self) -> torch.Tensor:
        """The dense-equivalent kernel ``[out, in, kh, kw]``, as ``nn.Conv2d.weight``.

        The product of the 1×1 and the k×k kernels, computed on every access in the
        factors' dtype and device (``out·rank·in·kh·kw`` multiply-adds), differentiable
        with respect to both; for code that reads ``conv.weight.dtype``/``.shape`` or
        convolves with it. The layer's own forward never builds it. Read-only.
        """
        u = self.conv_u.weight.reshape(self.out_channels, self.rank)
        v = self.conv_v.weight.reshape(self.rank, -1)
        return (u @ v).reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def __setattr__(self, name: str, value: object) -> None:
        # nn.Module routes a Parameter to register_parameter before any property setter,
        # which would fail with an unhelpful KeyError: give the setter's message instead.
        if name == "weight":
            type(self).weight.fset(self, value)
        super().__setattr__(name, value)

    @weight.setter
    def weight(self, value: object) -> None:
        raise AttributeError(
            "LowRankConv2d.weight is the product of conv_u and conv_v, computed on access and "
            "read-only; set conv_u.weight and conv_v.weight instead"
        )

    def weight_matrix(self) -> torch.Tensor:
        """The product ``U_c·V_c`` as ``[out, in·kh·kw]``, in fp32 (fp64 for fp64), detached."""
        u = self.conv_u.weight.detach()
        work = work_dtype(u)
        v = self.conv_v.weight.detach().reshape(self.rank, -1)
        return u.reshape(self.out_channels, self.rank).to(work) @ v.to(work)

    @staticmethod
    def conv_options(conv: nn.Conv2d | LowRankConv2d) -> dict[str, object]:
        """``stride``, ``padding``, ``dilation``, ``padding_mode`` of a (low-rank) conv: the
        constructor arguments every conversion carries over."""
        return {
            "stride": conv.stride,
            "padding": conv.padding,
            "dilation": conv.dilation,
            "padding_mode": conv.padding_mode,
        }

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, rank: int) -> LowRankConv2d:
        """:meth:`from_conv2d` under the name every low-rank layer shares."""
        return cls.from_conv2d(conv, rank)

    def to_dense(self) -> nn.Conv2d:
        """:meth:`to_conv2d` under the name every low-rank layer shares."""
        return self.to_conv2d()

    def factors(self) -> tuple[nn.Parameter, nn.Parameter]:
        """``(conv_v.weight [r, in, kh, kw], conv_u.weight [out, r, 1, 1])``."""
        return self.conv_v.weight, self.conv_u.weight

    @torch.no_grad()
    def with_rank(self, rank: int) -> LowRankConv2d:
        """A new layer with the same shape, options, bias, dtype and device at ``rank``.

        Growing (``rank >= self.rank``) keeps the function exactly: the current factors
        are kept, the new k×k filters of ``conv_v [rank, in, kh, kw]`` come from the default
        init and the new 1×1 weights of ``conv_u [out, rank, 1, 1]`` are zero. Shrinking
        gives the best rank-``rank`` approximation of the current product (truncated SVD of
        the fp32 product). Trainability and train/eval mode carry over.
        """
        rank = _conv_rank(rank, self.in_channels, self.out_channels, self.kernel_size)
        weight = self.conv_v.weight
        new = type(self)(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            rank,
            bias=self.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
            **self.conv_options(self),
        )
        if rank < self.rank:
            new._fit(self.weight_matrix(), self.bias, name="with_rank: the product U_c·V_c")
        else:
            new.conv_v.weight[: self.rank] = weight
            new.conv_u.weight[:, : self.rank] = self.conv_u.weight
            new.conv_u.weight[:, self.rank :] = 0
            if self.bias is not None:
                new.conv_u.bias.copy_(self.bias)
        carry_trainability(self, new)
        return new

    def to_conv2d(self) -> nn.Conv2d:
        """The dense ``nn.Conv2d`` with weight ``U_c·V_c``, multiplied in fp32 (fp64 for fp64)."""
        ref = self.conv_v.weight
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            bias=self.bias is not None,
            device=ref.device,
            dtype=ref.dtype,
            **self.conv_options(self),
        )
        with torch.no_grad():
            conv.weight.copy_(self.weight_matrix().reshape(conv.weight.shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias.detach())
        conv.weight.requires_grad_(ref.requires_grad)
        if self.bias is not None:
            conv.bias.requires_grad_(self.bias.requires_grad)
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"rank={self.rank}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}"
        )
