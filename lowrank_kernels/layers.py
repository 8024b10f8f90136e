"""What model surgery needs to know about a layer: its kind and matrix sizes, its weight
matrix, where the factorizable layers of a model are, and how to build the low-rank
layer for a dense one (and the dense one back).

Shared by rank selection (``rank.py``), the layer profiler (``profiler.py``) and surgery
(``convert.py``); it depends only on the layer modules (``nn``), so the import graph
reads ``nn → layers → {rank, profiler} → convert``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .nn import LowRankConv2d, LowRankLinear, truncated_svd_factors

#: ``filter_fn(module, fqn) -> bool`` (torchao convention): the layers surgery may convert.
FilterFn = Callable[[nn.Module, str], bool]

#: The one registry of dense layer types and the low-rank type that replaces each. A
#: transformers ``Conv1D`` becomes a ``LowRankLinear`` too, but it is matched by
#: ``is_conv1d`` rather than listed here: its class exists only once transformers is imported.
LOWRANK_FOR_DENSE: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: LowRankLinear,
    nn.Conv2d: LowRankConv2d,
}

#: The low-rank layer types, for ``isinstance`` (their inner convs are parts of them, not
#: model layers). Derived from the registry so a new pair is declared in one place.
LOWRANK_TYPES: tuple[type[nn.Module], ...] = tuple(dict.fromkeys(LOWRANK_FOR_DENSE.values()))

#: Set on a LowRankLinear made from a transformers Conv1D, so ``merge`` rebuilds a Conv1D.
ORIGIN = "_lowrank_origin"


# ---------------------------------------------------------------------------------------------
# Layer views: what kind of layer, its matrix sizes, its weight matrix


def conv1d_type() -> type | None:
    """``transformers.pytorch_utils.Conv1D`` if transformers is already imported, else None.

    A model that contains a Conv1D has necessarily imported transformers, so looking in
    ``sys.modules`` finds it without paying transformers' import time for plain models.
    """
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


def is_peft_adapter_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a PEFT tuner layer (e.g. a LoRA-wrapped Linear), found like
    ``conv1d_type``: a model holding one has already imported peft."""
    mod = sys.modules.get("peft.tuners.tuners_utils")
    cls = getattr(mod, "BaseTunerLayer", None) if mod is not None else None
    return cls is not None and isinstance(module, cls)


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a ``transformers`` ``Conv1D`` (weight ``[in, out]``, y = x·W + b)."""
    cls = conv1d_type()
    return cls is not None and isinstance(module, cls)


def layer_dims(module: nn.Module) -> tuple[str, int, int]:
    """``(kind, K, N)``: the layer's kind and its weight matrix's input/output sizes.

    ``K`` is the reduction size (``in_features``, or ``in·kh·kw`` for convs) and ``N`` the
    output size, so the dense layer costs ``K·N`` weights and a rank-r one ``r·(K+N)``.

    Raises:
        TypeError: ``module`` is not a Linear, Conv2d, Conv1D or low-rank module.
    """
    if isinstance(module, LowRankLinear):
        return "LowRankLinear", module.in_features, module.out_features
    if isinstance(module, LowRankConv2d):
        kh, kw = module.kernel_size
        return "LowRankConv2d", module.in_channels * kh * kw, module.out_channels
    if isinstance(module, nn.Linear):
        return "Linear", module.in_features, module.out_features
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return "Conv2d", (module.in_channels // module.groups) * kh * kw, module.out_channels
    if is_conv1d(module):
        nx, nf = module.weight.shape
        return "Conv1D", int(nx), int(nf)
    raise TypeError(
        "module must be an nn.Linear, nn.Conv2d, transformers Conv1D, LowRankLinear or "
        f"LowRankConv2d, got {type(module).__name__}"
    )


def full_rank(module: nn.Module) -> int:
    """The largest rank of ``module``'s weight matrix: ``min(K, N)`` (see ``layer_dims``)."""
    _, k, n = layer_dims(module)
    return min(k, n)


def module_weight_matrix(module: nn.Module) -> torch.Tensor:
    """The detached weight matrix ``[out, in]`` (``[out, in·kh·kw]`` for convs) of ``module``.

    Dense layers return a view of their weight (Conv1D's transposed); low-rank modules
    return the product of their factors, computed in fp32 (fp64 for fp64).
    """
    if isinstance(module, LOWRANK_TYPES):
        return module.weight_matrix()
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        w = module.weight.detach()
        return w.reshape(w.shape[0], -1)
    if is_conv1d(module):
        return module.weight.detach().t()
    layer_dims(module)  # raises the TypeError with the list of supported types
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Finding layers


def is_lowrank_leaf(module: nn.Module) -> bool:
    """Whether scanning stops at ``module``: a low-rank layer, or a type marked
    ``_lowrank_kernels_leaf = True``."""
    # Layers inside these are parts of a low-rank layer (LowRankConv2d's conv_v/conv_u),
    # not layers of the model; other modules can opt in with `_lowrank_kernels_leaf = True`.
    return isinstance(module, LOWRANK_TYPES) or bool(
        getattr(type(module), "_lowrank_kernels_leaf", False)
    )


def dense_kind(module: nn.Module) -> str | None:
    """``"Linear"``, ``"Conv2d"`` or ``"Conv1D"`` for a factorizable dense layer, else None
    (the name of its registered dense type, or Conv1D)."""
    dense = dense_type(module)
    if dense is not None:
        return dense.__name__
    return "Conv1D" if is_conv1d(module) else None


def dense_type(module: nn.Module) -> type[nn.Module] | None:
    """The registered dense type ``module`` is an instance of (``nn.Linear`` / ``nn.Conv2d``,
    also for subclasses), else None (a ``Conv1D`` is not registered: see ``LOWRANK_FOR_DENSE``)."""
    for cls in LOWRANK_FOR_DENSE:
        if isinstance(module, cls):
            return cls
    return None


def walk_layers(
    model: nn.Module,
) -> tuple[list[tuple[str, nn.Module, nn.Module | None]], dict[int, list[str]]]:
    """``(walk, paths)``: ``walk`` lists ``(fqn, module, parent)`` once per module object in
    model order, not descending into low-rank layers (``parent`` is None for the model);
    ``paths`` maps ``id(module)`` to every path it sits at, to detect shared modules."""
    paths: dict[int, list[str]] = {}
    for fqn, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(fqn)
    seen: set[int] = set()
    out: list[tuple[str, nn.Module, nn.Module | None]] = []

    def visit(module: nn.Module, prefix: str, parent: nn.Module | None) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        out.append((prefix, module, parent))
        if is_lowrank_leaf(module):
            return
        for name, child in module.named_children():
            visit(child, f"{prefix}.{name}" if prefix else name, module)

    visit(model, "", None)
    return out, paths


def param_owners(model: nn.Module) -> dict[int, list[str]]:
    """``{id(parameter): [every qualified name it has]}`` (tied weights have several)."""
    owners: dict[int, list[str]] = {}
    for fqn, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            if p is not None:
                owners.setdefault(id(p), []).append(f"{fqn}.{pname}" if fqn else pname)
    return owners


def module_hooks(module: nn.Module) -> list[str]:
    """The kinds of hooks registered on ``module`` itself (forward, forward pre-, backward,
    backward pre- and state_dict hooks): behaviour a replacement module would not inherit."""
    kinds = {
        "forward hooks": module._forward_hooks,
        "forward pre-hooks": module._forward_pre_hooks,
        "backward hooks": module._backward_hooks,
        "backward pre-hooks": module._backward_pre_hooks,
        "state_dict hooks": module._state_dict_hooks,
        "load_state_dict pre-hooks": module._load_state_dict_pre_hooks,
    }
    return [name for name, hooks in kinds.items() if hooks]


def scan_layers(
    model: nn.Module, filter_fn: FilterFn | None
) -> tuple[dict[str, nn.Module], dict[str, tuple[nn.Module, str]]]:
    """``(candidates, skipped)``: factorizable dense layers and dense layers left alone
    (``{fqn: (module, reason)}``), both in model order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable (module, fqn) -> bool, got {filter_fn!r}")
    walk, paths = walk_layers(model)
    owners = param_owners(model)
    adapters = [f"{fqn}." for fqn, module, _ in walk if is_peft_adapter_layer(module)]
    candidates: dict[str, nn.Module] = {}
    skipped: dict[str, tuple[nn.Module, str]] = {}
    for fqn, module, parent in walk:
        kind = dense_kind(module)
        if kind is None:
            continue
        reason = None
        base = dense_type(module)
        weight = getattr(module, "weight", None)
        if fqn == "":
            reason = "the model itself is the layer (cannot be replaced in place)"
        elif any(fqn.startswith(prefix) for prefix in adapters):
            reason = (
                "part of a PEFT adapter layer (its base layer or an adapter); factorize "
                "before adding adapters, or merge_and_unload first"
            )
        elif isinstance(weight, nn.parameter.UninitializedParameter):
            reason = "lazy layer not initialised yet"
        elif base is not None and type(module).forward is not base.forward:
            reason = f"{type(module).__name__} overrides {base.__name__}.forward"
        elif parametrize.is_parametrized(module):
            reason = (
                f"parametrized {sorted(module.parametrizations)} (e.g. weight_norm); "
                "a low-rank layer would drop the parametrization"
            )
        elif module_hooks(module):
            reason = (
                f"has {', '.join(module_hooks(module))} (e.g. the old weight_norm); "
                "a low-rank layer would drop them"
            )
        elif kind == "Conv2d" and module.groups != 1:
            reason = f"grouped conv (groups={module.groups})"
        elif isinstance(parent, nn.MultiheadAttention):
            reason = "nn.MultiheadAttention reads this layer's weight directly"
        elif len(paths[id(module)]) > 1:
            reason = f"module shared at several paths {paths[id(module)]}"
        elif weight is not None and len(owners.get(id(weight), [])) > 1:
            others = [o for o in owners[id(weight)] if o != f"{fqn}.weight"]
            reason = f"weight tied to {others}"
        elif filter_fn is not None and not filter_fn(module, fqn):
            reason = "excluded by filter_fn"
        if reason is None:
            candidates[fqn] = module
        else:
            skipped[fqn] = (module, reason)
    return candidates, skipped


def candidate_layers(model: nn.Module, filter_fn: FilterFn | None = None) -> dict[str, nn.Module]:
    """The layers ``factorize`` may convert: ``{fqn: module}`` in model order.

    That is every ``nn.Linear``, ``nn.Conv2d`` with ``groups == 1`` and ``transformers``
    ``Conv1D`` that passes ``filter_fn(module, fqn)`` (torchao convention), except:
    layers already low-rank (and the convs inside a ``LowRankConv2d``), subclasses that
    override ``forward``, layers with a parametrization (``weight_norm``, ``spectral_norm``)
    or hooks of their own (a replacement would drop them), lazy layers, the projections
    of ``nn.MultiheadAttention`` (it reads their weights directly), modules reachable
    under several names, layers whose weight is tied to another module's (e.g. GPT-2's
    ``lm_head``), and the model itself.
    ``summary`` lists the layers left out with the reason.
    """
    return scan_layers(model, filter_fn)[0]


# ---------------------------------------------------------------------------------------------
# Building low-rank layers


def check_layer_rank(rank: object, fqn: str, module: nn.Module, source: str) -> int:
    """``rank`` after checking it is an int in ``[1, full_rank(module)]``; the error names
    ``source`` and the layer ``fqn``."""
    full = full_rank(module)
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(
            f"{source}: rank for layer {fqn!r} must be an int, got {type(rank).__name__} ({rank!r})"
        )
    if not 1 <= rank <= full:
        _, k, n = layer_dims(module)
        raise ValueError(
            f"{source}: rank for layer {fqn!r} must be between 1 and its full rank "
            f"min({k}, {n}) = {full}, got {rank}"
        )
    return rank


def lowrank_like(module: nn.Module, rank: int) -> nn.Module:
    """An untrained low-rank layer of ``module``'s shape, device and dtype at ``rank``.

    ``nn.Linear``/``Conv1D`` give a ``LowRankLinear``, ``nn.Conv2d`` a ``LowRankConv2d``
    with the same stride/padding/dilation/padding mode. Default init (no SVD): use it
    where only the shapes matter (profiling, loading a state_dict).
    """
    kind = dense_kind(module)
    weight = module.weight
    factory = {"device": weight.device, "dtype": weight.dtype}
    has_bias = getattr(module, "bias", None) is not None
    if kind in ("Linear", "Conv1D"):
        _, k, n = layer_dims(module)
        new = LowRankLinear(k, n, rank, bias=has_bias, **factory)
        if kind == "Conv1D":
            setattr(new, ORIGIN, "Conv1D")
        return new
    if kind == "Conv2d":
        if module.groups != 1:
            raise ValueError(f"groups must be 1 to factorize a Conv2d, got groups={module.groups}")
        return LowRankConv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            rank,
            bias=has_bias,
            **LowRankConv2d.conv_options(module),
            **factory,
        )
    raise TypeError(
        f"module must be an nn.Linear, nn.Conv2d or transformers Conv1D, got "
        f"{type(module).__name__}"
    )


def factorized(module: nn.Module, rank: int) -> nn.Module:
    """The low-rank layer for a dense ``module`` at ``rank`` (truncated SVD, √S split),
    with the dense layer's trainability and train/eval mode."""
    dense = dense_type(module)
    if dense is not None:
        new = LOWRANK_FOR_DENSE[dense].from_dense(module, rank)
    else:  # Conv1D: weight [in, out] and y = x·W + b, i.e. already LowRankLinear's [K, N]
        new = lowrank_like(module, rank)
        V, U = truncated_svd_factors(module.weight.detach(), rank)
        with torch.no_grad():
            new.V.copy_(V)
            new.U.copy_(U)
            new.bias.copy_(module.bias.detach())
    # carry the trainability of the dense layer over to its factors
    w_grad = module.weight.requires_grad
    for name, p in new.named_parameters():
        bias = getattr(module, "bias", None)
        p.requires_grad_(
            bias.requires_grad if name.endswith("bias") and bias is not None else w_grad
        )
    new.train(module.training)
    return new


def merged(module: nn.Module) -> nn.Module:
    """The dense layer equal to a low-rank ``module`` (a Conv1D again where it was one)."""
    if isinstance(module, LowRankConv2d):
        dense = module.to_dense()
    elif getattr(module, ORIGIN, None) == "Conv1D":
        conv1d = conv1d_type()
        if conv1d is None:  # pragma: no cover - the origin is only set when it was imported
            raise RuntimeError("merge: transformers is needed to rebuild a Conv1D layer")
        v = module.V.detach()
        dense = conv1d(module.out_features, module.in_features).to(device=v.device, dtype=v.dtype)
        with torch.no_grad():
            dense.weight.copy_(module.weight_matrix().t())
            dense.bias.copy_(module.bias.detach())
        dense.weight.requires_grad_(module.V.requires_grad)
    else:
        dense = module.to_dense()
        dense.weight.requires_grad_(module.V.requires_grad)
    dense.train(module.training)
    return dense


def replace_child(parent: nn.Module, fqn: str, new: nn.Module) -> None:
    """Put ``new`` in ``parent`` under the last component of ``fqn``."""
    parent._modules[fqn.rsplit(".", 1)[-1]] = new


def parent_of(model: nn.Module, fqn: str) -> nn.Module:
    """The module that holds the submodule ``fqn`` of ``model``."""
    return model.get_submodule(fqn.rsplit(".", 1)[0]) if "." in fqn else model
