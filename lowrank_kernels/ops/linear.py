"""Registration of ``torch.ops.lowrank.linear`` and its autograd.

Three ops, in the ``torch.library`` style:

* ``lowrank::linear(x, V, U, bias=None, *, recompute_intermediate=False) -> y`` — the
  public op (CompositeImplicitAutograd): handles autocast, validates, and calls
* ``lowrank::_linear_forward(x, V, U, bias, save_intermediate) -> (y, Z)`` — an opaque
  custom op with a fake kernel and autograd, running the backend chosen at call time;
* ``lowrank::_linear_backward(dy, x, V, U, Z, output_mask) -> (dx, dV, dU, db)``.

Because the backend is resolved when the op runs (not when it is traced),
``torch.compile`` graphs keep one node per layer and follow ``set_backend``
without recompiling.

Memory: backward needs ``x`` (already held by autograd as the op input) and
``Z = x·V`` (``M·r`` elements, in x's dtype) unless ``recompute_intermediate=True``,
which recomputes Z in backward for ``2·M·K·r`` extra FLOPs.
"""

from __future__ import annotations

import torch
from torch.autograd import forward_ad

from .dispatch import resolve_backend
from .validation import check_linear_inputs, work_dtype

_EMPTY_GRAD_SHAPE = (0,)


@torch.library.custom_op("lowrank::_linear_forward", mutates_args=())
def _linear_forward(
    x: torch.Tensor,
    V: torch.Tensor,
    U: torch.Tensor,
    bias: torch.Tensor | None,
    save_intermediate: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y [*, N]`` and ``Z [M, r]`` (``[0, r]`` when not saved) for validated inputs."""
    K, r = V.shape
    N = U.shape[1]
    x2d = x.reshape(-1, K)
    y, z = resolve_backend(x.device).forward(x2d, V, U, bias, save_intermediate)
    if z is None:
        z = x.new_empty((0, r))
    return y.view(*x.shape[:-1], N), z


@_linear_forward.register_fake
def _(x, V, U, bias, save_intermediate):
    K, r = V.shape
    M = x.numel() // K
    y = x.new_empty((*x.shape[:-1], U.shape[1]))
    z = x.new_empty((M, r) if save_intermediate else (0, r))
    return y, z


@torch.library.custom_op("lowrank::_linear_backward", mutates_args=())
def _linear_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    V: torch.Tensor,
    U: torch.Tensor,
    z: torch.Tensor,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``_linear_forward``; masked-out ones come back as empty ``[0]`` tensors."""
    K, N = V.shape[0], U.shape[1]
    needs = tuple(bool(m) for m in output_mask)
    saved_z = z if z.shape[0] * K == x.numel() else None  # [0, r] means "recompute"
    grads = resolve_backend(dy.device).backward(
        dy.reshape(-1, N),
        x.reshape(-1, K),
        V,
        U,
        saved_z,
        needs,  # type: ignore[arg-type]
    )
    dx, dV, dU, db = grads
    if dx is not None:
        dx = dx.view(x.shape)
    # custom ops cannot return None: a masked-out gradient is an empty [0] tensor
    return tuple(  # type: ignore[return-value]
        g if g is not None else dy.new_empty(_EMPTY_GRAD_SHAPE) for g in (dx, dV, dU, db)
    )


@_linear_backward.register_fake
def _(dy, x, V, U, z, output_mask):
    shapes = (x.shape, V.shape, U.shape, (U.shape[1],))
    return tuple(
        dy.new_empty(shape if needed else _EMPTY_GRAD_SHAPE)
        for shape, needed in zip(shapes, output_mask, strict=True)
    )


def _setup_context(ctx, inputs, output) -> None:
    x, V, U, _bias, _save_intermediate = inputs
    _, z = output
    ctx.mark_non_differentiable(z)
    ctx.save_for_backward(x, V, U, z)


def _differentiable_grads(dy, x, V, U, mask):
    """The backward table in differentiable PyTorch ops, for ``create_graph=True``.

    The fused backward op has no derivative of its own; double backward (Hessian-vector
    products, gradient penalties) goes through these ops instead. ``Z`` is recomputed
    from ``x`` and ``V`` because the saved one is not differentiable.
    """
    K, N = V.shape[0], U.shape[1]
    dy2, x2 = dy.reshape(-1, N), x.reshape(-1, K)
    dz = dy2 @ U.t()
    acc = work_dtype(dy)
    return (
        (dz @ V.t()).reshape(x.shape) if mask[0] else None,
        x2.t() @ dz if mask[1] else None,
        (x2 @ V).t() @ dy2 if mask[2] else None,
        dy2.sum(0, dtype=acc).to(dy.dtype) if mask[3] else None,
    )


def _backward(ctx, dy, _dz):
    x, V, U, z = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:4])
    if torch.is_grad_enabled():  # backward(create_graph=True): keep it differentiable
        return (*_differentiable_grads(dy, x, V, U, mask), None)
    grads = torch.ops.lowrank._linear_backward(dy.contiguous(), x, V, U, z, mask)
    return (*(g if needed else None for g, needed in zip(grads, mask, strict=True)), None)


_linear_forward.register_autograd(_backward, setup_context=_setup_context)


_lib = torch.library.Library("lowrank", "FRAGMENT")
_lib.define(
    "linear(Tensor x, Tensor V, Tensor U, Tensor? bias=None, *, "
    "bool recompute_intermediate=False) -> Tensor"
)


def _autocast_inputs(
    x: torch.Tensor, V: torch.Tensor, U: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Cast like ``nn.Linear`` under ``torch.autocast``: every operand to the autocast dtype."""
    if not isinstance(x, torch.Tensor):
        return x, V, U, bias
    device_type = x.device.type
    # meta (and other devices without autocast) never autocast, like nn.Linear there
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(
        device_type
    ):
        return x, V, U, bias
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype:
            return t.to(dtype)
        return t

    return cast(x), cast(V), cast(U), cast(bias)  # type: ignore[return-value]


def _under_forward_ad_or_transform(*tensors: torch.Tensor | None) -> bool:
    """Whether an operand carries a forward-mode tangent or a ``torch.func`` wrapper.

    The opaque op has a backward formula only: under forward-mode AD it would return zero
    tangents, and ``torch.func.grad``/``jacrev`` cannot see through it. There the same math
    runs as PyTorch ops, which every transform understands.
    """
    for t in tensors:
        if t is None:
            continue
        if torch._C._functorch.is_functorch_wrapped_tensor(t):
            return True
        if forward_ad._current_level >= 0 and forward_ad.unpack_dual(t).tangent is not None:
            return True
    return False


def _linear_composite(
    x: torch.Tensor,
    V: torch.Tensor,
    U: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    recompute_intermediate: bool = False,
) -> torch.Tensor:
    x, V, U, bias = _autocast_inputs(x, V, U, bias)
    check_linear_inputs(x, V, U, bias)
    if _under_forward_ad_or_transform(x, V, U, bias):
        y = torch.matmul(torch.matmul(x, V), U)
        return y + bias if bias is not None else y
    y, _ = torch.ops.lowrank._linear_forward(x, V, U, bias, not recompute_intermediate)
    return y


_lib.impl("linear", _linear_composite, "CompositeImplicitAutograd")


def lowrank_linear(
    x: torch.Tensor,
    V: torch.Tensor,
    U: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    recompute_intermediate: bool = False,
) -> torch.Tensor:
    """Low-rank linear map ``y = x·V·U + bias`` (docs/design.md), differentiable in every input.

    Args:
        x: ``[*, K]`` input (any number of leading dims, any strides).
        V: ``[K, r]`` left factor.
        U: ``[r, N]`` right factor.
        bias: ``[N]`` or ``None``.
        recompute_intermediate: if True, do not save ``Z = x·V`` (``M·r`` elements) for
            backward; recompute it there instead (less activation memory, more FLOPs).

    Returns:
        ``y`` of shape ``[*, N]`` in x's dtype (the autocast dtype under ``torch.autocast``).

    The backend is chosen by :func:`lowrank_kernels.set_backend`; this is
    ``torch.ops.lowrank.linear``.
    """
    return torch.ops.lowrank.linear(x, V, U, bias, recompute_intermediate=recompute_intermediate)
