"""Test utilities: independent float64 references and the numerics rule every backend
is held to (importable, so a new backend, a user's CI and ``lowrank-kernels selftest``
reuse the same contract).

The rule (``docs/design.md``): measured by ``‖out − ref‖ / ‖ref‖`` against float64, a
backend's output and every gradient may have at most 2× the error of PyTorch's own
same-dtype two-GEMM chain, or a per-dtype floor below which that error is noise.
"""

from __future__ import annotations

import torch

from .ops import lowrank_linear, set_backend


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float64 (the absolute error where ``ref`` is all zero)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def linear_reference64(x, V, U, bias=None):
    """Forward of docs/design.md in float64 on the CPU: ``y = x·V·U + b``."""
    x64, V64, U64 = x.detach().double().cpu(), V.detach().double().cpu(), U.detach().double().cpu()
    y = (x64 @ V64) @ U64
    if bias is not None:
        y = y + bias.detach().double().cpu()
    return y


def linear_grads64(x, V, U, bias, dy):
    """All gradients of docs/design.md's backward table in float64: ``(dx, dV, dU, db)``."""
    x64 = x.detach().double().cpu().reshape(-1, V.shape[0])
    V64, U64 = V.detach().double().cpu(), U.detach().double().cpu()
    dy64 = dy.detach().double().cpu().reshape(-1, U.shape[1])
    z = x64 @ V64
    dz = dy64 @ U64.t()
    dx = (dz @ V64.t()).reshape(x.shape)
    dV = x64.t() @ dz
    dU = z.t() @ dy64
    db = dy64.sum(0) if bias is not None else None
    return dx, dV, dU, db


def torch_chain(x, V, U, bias=None):
    """PyTorch's own same-dtype two-GEMM chain: the error baseline kernels are held to."""
    y = (x @ V) @ U
    return y + bias if bias is not None else y


def error_bound(chain_out: torch.Tensor, ref: torch.Tensor, floor: float) -> float:
    """2× the same-dtype chain's error vs float64 (docs/design.md), at least ``floor``."""
    return max(2.0 * rel_error(chain_out, ref), floor)


# Error floors per dtype for error_bound: below these the chain's own error is noise.
FLOOR = {torch.float32: 1e-6, torch.bfloat16: 1e-3, torch.float16: 1e-4, torch.float64: 1e-12}


def compare_with_reference(
    backend, x, V, U, b, *, recompute=False
) -> dict[str, tuple[float, float]]:
    """Run ``lowrank_linear`` on ``backend`` and PyTorch's same-dtype chain on the same
    operands, and return ``{name: (error, bound)}`` for the output and every gradient
    (``"y"``, ``"x"``, ``"V"``, ``"U"``, ``"bias"``) against the float64 reference.

    Selects ``backend`` (``set_backend``) as a side effect. Shapes: ``x [*, K]``,
    ``V [K, r]``, ``U [r, N]``, ``b [N]`` or None.
    """
    dtype = x.dtype
    set_backend(backend)
    # detach() keeps the operands' strides (strided views are part of what is tested)
    leaves = [t.detach().requires_grad_() for t in (x, V, U, b) if t is not None]
    kb = leaves[3] if b is not None else None
    y = lowrank_linear(*leaves[:3], kb, recompute_intermediate=recompute)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)

    chain_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    cb = chain_leaves[3] if b is not None else None
    chain_y = torch_chain(*chain_leaves[:3], cb)
    chain_grads = torch.autograd.grad(chain_y, chain_leaves, dy)

    ref_y = linear_reference64(x, V, U, b)
    if y.shape != ref_y.shape or y.dtype != dtype:
        raise AssertionError(f"{backend}: y has shape {tuple(y.shape)} and dtype {y.dtype}, "
                             f"expected {tuple(ref_y.shape)} and {dtype}")  # fmt: skip
    result = {"y": (rel_error(y, ref_y), error_bound(chain_y, ref_y, FLOOR[dtype]))}
    refs = [g for g in linear_grads64(x, V, U, b, dy) if g is not None]
    names = ["x", "V", "U", "bias"][: len(grads)]
    for name, got, chain_got, ref in zip(names, grads, chain_grads, refs, strict=True):
        if got.shape != ref.shape:
            raise AssertionError(f"{backend}: d{name} has shape {tuple(got.shape)}, "
                                 f"expected {tuple(ref.shape)}")  # fmt: skip
        result[name] = (rel_error(got, ref), error_bound(chain_got, ref, FLOOR[dtype]))
    return result


def check_backend_against_reference(backend, x, V, U, b, *, recompute=False) -> None:
    """Assert the numerics rule for ``backend`` on the output and every gradient (see
    :func:`compare_with_reference`; the operands' ``requires_grad`` is left untouched)."""
    for name, (error, bound) in compare_with_reference(
        backend, x, V, U, b, recompute=recompute
    ).items():
        assert error <= bound, f"{backend}: {name} error {error:.3g} > bound {bound:.3g}"
