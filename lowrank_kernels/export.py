"""Exported programs that run without this package: the low-rank ops as standard ATen ops.

``torch.export`` keeps ``lowrank::linear`` as one node per layer (the backend is chosen
when it runs). Such a program can only be loaded where ``lowrank_kernels`` is imported,
because the op must be registered to deserialize it. :func:`decompose` rewrites every
low-rank node into the two-GEMM chain of the ``torch`` backend (``Z = x·V``, then
``Z·U + bias`` in one ``addmm``: the same numerics), so the saved program, and an
AOTInductor package compiled from it, loads and runs with plain PyTorch::

    ep = torch.export.export(model, (x,))
    torch.export.save(lowrank_kernels.export.decompose(ep), "model.pt2")
    # elsewhere, without lowrank_kernels installed:
    torch.export.load("model.pt2").module()(x)

The fused kernels are then not used: the program runs PyTorch's matmuls (fast on GPUs
too, but unfused).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .ops.backends.torch_backend import TorchBackend

__all__ = ["decompose", "decomposition_table"]

_CHAIN = TorchBackend()


def _linear_as_aten(
    x: torch.Tensor,
    V: torch.Tensor,
    U: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    recompute_intermediate: bool = False,
) -> torch.Tensor:
    """``lowrank::linear`` as ATen ops: ``x [*, K]`` → ``[*, N]``."""
    y, _ = _CHAIN.forward(x.reshape(-1, V.shape[0]), V, U, bias, False)
    return y.reshape(*x.shape[:-1], U.shape[1])


def _linear_forward_as_aten(
    x: torch.Tensor,
    V: torch.Tensor,
    U: torch.Tensor,
    bias: torch.Tensor | None,
    save_intermediate: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lowrank::_linear_forward`` as ATen ops: ``(y [*, N], Z [M, r] or [0, r])``."""
    K, r = V.shape
    y, z = _CHAIN.forward(x.reshape(-1, K), V, U, bias, save_intermediate)
    if z is None:
        z = x.new_empty((0, r))
    return y.reshape(*x.shape[:-1], U.shape[1]), z


def decomposition_table() -> dict[Any, Callable[..., Any]]:
    """``{op overload: ATen implementation}`` for every low-rank op an exported forward can
    hold; pass it (merged into ``torch.export.default_decompositions()``) to
    ``ExportedProgram.run_decompositions``, or use :func:`decompose`."""
    return {
        torch.ops.lowrank.linear.default: _linear_as_aten,
        torch.ops.lowrank._linear_forward.default: _linear_forward_as_aten,
    }


def decompose(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with every low-rank op replaced by standard ATen ops (and the rest
    decomposed as ``run_decompositions()`` does by default).

    Args:
        program: from ``torch.export.export(model, args)`` of a model with low-rank layers.

    Returns:
        A new ``ExportedProgram`` whose graph names no ``lowrank::`` op: it saves, loads
        and runs (``torch.export.load``, AOTInductor) without this package.

    Raises:
        TypeError: ``program`` is not an ``ExportedProgram``.
    """
    if not isinstance(program, torch.export.ExportedProgram):
        raise TypeError(
            f"decompose: program must be a torch.export.ExportedProgram, got "
            f"{type(program).__name__}"
        )
    table = torch.export.default_decompositions()
    table.update(decomposition_table())
    return program.run_decompositions(table)
