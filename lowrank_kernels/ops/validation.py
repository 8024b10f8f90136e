"""Input checks for the low-rank linear op.

Every check raises before any kernel runs and names the offending argument with
the shape/dtype/device that was expected, so bad input never reaches a kernel.
"""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_linear_inputs(
    x: torch.Tensor,
    V: torch.Tensor,
    U: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    op_name: str = "lowrank_linear",
) -> None:
    """Validate ``y = x·V·U + bias`` operands.

    Args:
        x: ``[*, K]`` input, at least 1-D.
        V: ``[K, r]`` left factor, r ≥ 1.
        U: ``[r, N]`` right factor.
        bias: ``[N]`` or ``None``.

    Raises:
        TypeError: an operand is not a tensor or has an unsupported/mismatched dtype.
        ValueError: a shape does not match the contract.
        RuntimeError: operands live on different devices.
    """
    for name, t in (("x", x), ("V", V), ("U", U)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op_name}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(
            f"{op_name}: bias must be a torch.Tensor or None, got {type(bias).__name__}"
        )

    if x.dim() < 1:
        raise ValueError(f"{op_name}: x must have at least 1 dimension [*, K], got a 0-d tensor")
    if V.dim() != 2:
        raise ValueError(f"{op_name}: V must be 2-D [K, r], got shape {tuple(V.shape)}")
    if U.dim() != 2:
        raise ValueError(f"{op_name}: U must be 2-D [r, N], got shape {tuple(U.shape)}")
    K, r = V.shape
    N = U.shape[1]
    if r == 0:
        raise ValueError(f"{op_name}: rank must be >= 1, but V has shape {tuple(V.shape)} (r = 0)")
    if x.shape[-1] != K:
        raise ValueError(
            f"{op_name}: x.shape[-1] must equal V.shape[0] (K = {K}), got x of shape "
            f"{tuple(x.shape)}"
        )
    if U.shape[0] != r:
        raise ValueError(
            f"{op_name}: U.shape[0] must equal V.shape[1] (rank r = {r}), got U of shape "
            f"{tuple(U.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(
            f"{op_name}: bias must have shape [N] = ({N},) to match U.shape[1], got "
            f"{tuple(bias.shape)}"
        )

    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{op_name}: x must be a floating tensor (float16, bfloat16, float32 or float64), "
            f"got {x.dtype}"
        )
    named = [("V", V), ("U", U)] + ([("bias", bias)] if bias is not None else [])
    for name, t in named:
        if t.device != x.device:
            raise RuntimeError(
                f"{op_name}: {name} must be on the same device as x ({x.device}), got {t.device}"
            )
        if t.dtype != x.dtype:
            raise TypeError(
                f"{op_name}: {name} must have the same dtype as x ({x.dtype}), got {t.dtype} "
                "(cast the inputs, or run under torch.autocast)"
            )


def check_int(value: object, name: str, *, minimum: int = 1, owner: str = "") -> int:
    """Return ``value`` after checking it is an int (not a bool) ``>= minimum``.

    The error names ``owner: name`` and the bound, e.g. ``"LowRankLinear: in_features must
    be an int >= 1, got 0"``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_rank(
    rank: object,
    in_features: int,
    out_features: int,
    *,
    arg: str = "rank",
    names: tuple[str, str] = ("in_features", "out_features"),
) -> int:
    """Return ``rank`` as an int after checking ``1 <= rank <= min(in_features, out_features)``.

    Args:
        rank: the rank to check.
        in_features, out_features: the two sizes of the ``[out, in]`` matrix the rank
            factorizes (any order: only their minimum matters).
        arg: what the error calls ``rank``.
        names: what the error calls the two sizes; a conv says
            ``("out_channels=8", "in_channels·kh·kw=27")`` so the bound reads in its terms.

    Raises:
        TypeError: ``rank`` is not an int (bools are refused too).
        ValueError: ``rank`` is outside ``[1, min(in_features, out_features)]``.
    """
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"{arg} must be an int, got {type(rank).__name__} ({rank!r})")
    full = min(in_features, out_features)
    if not 1 <= rank <= full:
        raise ValueError(
            f"{arg} must be between 1 and min({names[0]}, {names[1]}) = {full}, got {rank}"
        )
    return rank


def work_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype products, sums and SVDs run in for ``t``'s dtype: float64 for float64,
    float32 otherwise (16-bit inputs accumulate in fp32, as the GEMMs do)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32
