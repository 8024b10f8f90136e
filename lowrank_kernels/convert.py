"""One-call model surgery: ``factorize`` / ``merge`` / ``restore`` / ``summary``
(docs/design.md, Public contract).

``factorize`` swaps ``nn.Linear``, ``nn.Conv2d`` (groups = 1) and ``transformers``'
``Conv1D`` layers for ``LowRankLinear`` / ``LowRankConv2d`` in place, initialised by
truncated SVD of the dense weight; ``merge`` multiplies the factors back (fp32) into
the original dense layer type. A factorized model's ``state_dict`` carries its ranks
in the factor shapes (``<fqn>.V`` is ``[K, r]``, ``<fqn>.conv_v.weight`` is
``[r, in, kh, kw]``), so ``restore`` can rebuild the architecture from a freshly
built dense model with no side file.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .layers import (
    LOWRANK_TYPES,
    ORIGIN,
    FilterFn,
    candidate_layers,
    check_layer_rank,
    dense_kind,
    factorized,
    full_rank,
    layer_dims,
    lowrank_like,
    merged,
    parent_of,
    replace_child,
    scan_layers,
    walk_layers,
)
from .nn import LowRankConv2d
from .ops import check_int
from .profiler import profile_layers
from .rank import StableRankTracker, round_rank, stable_ranks

__all__ = [
    "FactorizedRanks",
    "LayerSummary",
    "ModelSummary",
    "candidate_layers",
    "factorize",
    "full_rank",
    "lowrank_like",
    "merge",
    "restore",
    "summary",
]

RankSpec = int | float | str | Mapping[str, int] | Callable[[str, nn.Module], "int | float | None"]

_RECORDS = "_lowrank_records"  # per-model {fqn: {...}}: reasons and measured times


# ---------------------------------------------------------------------------------------------
# Rank resolution


def _derived(raw: float, module: nn.Module, min_rank: int, rank_multiple: int) -> int:
    full = full_rank(module)
    r = min(max(math.ceil(raw - 1e-9), min_rank, 1), full)
    return round_rank(r, rank_multiple, full)


def _resolve_ranks(
    rank: RankSpec,
    candidates: dict[str, nn.Module],
    skipped: dict[str, tuple[nn.Module, str]],
    model: nn.Module,
    *,
    rank_multiple: int,
    min_rank: int,
    skip_unprofitable: bool,
    tracker: StableRankTracker | None,
) -> tuple[dict[str, int], dict[str, str]]:
    """``({fqn: rank}, {fqn: reason kept dense})`` before the profitability check."""
    chosen: dict[str, int] = {}
    dense: dict[str, str] = {}
    src = "factorize"
    if isinstance(rank, bool):
        raise TypeError(f"{src}: rank must be an int, float, mapping, callable or str, got bool")
    if isinstance(rank, int):
        if rank < 1:
            raise ValueError(f"{src}: rank must be >= 1, got {rank}")
        for fqn, m in candidates.items():
            full = full_rank(m)
            if rank <= full:
                chosen[fqn] = rank
            elif skip_unprofitable:
                dense[fqn] = f"rank {rank} exceeds the full rank {full}"
            else:
                check_layer_rank(rank, fqn, m, src)
    elif isinstance(rank, float):
        if not (math.isfinite(rank) and 0.0 < rank <= 1.0):
            raise ValueError(f"{src}: a float rank is a ratio of full rank in (0, 1], got {rank}")
        for fqn, m in candidates.items():
            chosen[fqn] = _derived(rank * full_rank(m), m, min_rank, rank_multiple)
    elif isinstance(rank, str):
        if rank == "stable":
            srs = stable_ranks(list(candidates.values())).tolist() if candidates else []
            for (fqn, m), s in zip(candidates.items(), srs, strict=True):
                chosen[fqn] = _derived(s, m, min_rank, rank_multiple)
        elif rank == "scaled_stable":
            if not isinstance(tracker, StableRankTracker):
                raise ValueError(
                    f'{src}: rank="scaled_stable" needs tracker=StableRankTracker(model) '
                    f"created before training (it records ξ = full_rank / srank(W_0)), got "
                    f"tracker={tracker!r}"
                )
            named = dict(model.named_modules())
            unknown = [f for f in tracker.fqns if f not in named]
            if unknown:
                raise ValueError(
                    f"{src}: the tracker tracks layers {unknown} that this model does not "
                    "have (was it built for another model?)"
                )
            scaled = tracker.scaled_ranks(rank_multiple)
            for fqn, m in candidates.items():
                if fqn in scaled:
                    chosen[fqn] = _derived(scaled[fqn], m, min_rank, rank_multiple)
                else:
                    dense[fqn] = "not tracked by the StableRankTracker"
        else:
            raise ValueError(
                f'{src}: rank string must be "stable" or "scaled_stable", got {rank!r}'
            )
    elif isinstance(rank, Mapping):
        # Full names first, then short names ("q_proj": every layer whose name ends in
        # ".q_proj"), so a full name overrides a short one whatever the mapping's order.
        for key in sorted(rank, key=lambda k: k not in candidates and k not in skipped):
            r = rank[key]
            if key in skipped:
                raise ValueError(
                    f"{src}: layer {key!r} in the rank mapping cannot be factorized: "
                    f"{skipped[key][1]}"
                )
            if key in candidates:
                chosen[key] = check_layer_rank(r, key, candidates[key], src)
                continue
            matches = [f for f in candidates if f.endswith(f".{key}")]
            if not matches:
                names = list(candidates)
                shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
                raise ValueError(
                    f"{src}: rank mapping names {key!r}, which is neither a factorizable layer "
                    f"of the model nor the last part of one's name; candidates are: {shown}"
                )
            for fqn in matches:
                if fqn not in rank:
                    chosen[fqn] = check_layer_rank(r, fqn, candidates[fqn], src)
        for fqn in candidates:
            if fqn not in chosen:
                dense[fqn] = "not in the rank mapping"
    elif callable(rank):
        for fqn, m in candidates.items():
            r = rank(fqn, m)
            if r is None:
                dense[fqn] = "rank callable returned None"
            elif isinstance(r, float):
                if not (math.isfinite(r) and 0.0 < r <= 1.0):
                    raise ValueError(
                        f"{src}: rank callable returned {r} for layer {fqn!r}; a float is a "
                        "ratio of the full rank in (0, 1]"
                    )
                chosen[fqn] = _derived(r * full_rank(m), m, min_rank, rank_multiple)
            else:
                chosen[fqn] = check_layer_rank(r, fqn, m, f"{src}: rank callable")
    else:
        raise TypeError(
            f"{src}: rank must be an int, a float ratio in (0, 1], a {{fqn: int}} mapping, a "
            f'callable (fqn, module) -> int, "stable" or "scaled_stable", got '
            f"{type(rank).__name__}"
        )
    return chosen, dense


def _records(model: nn.Module) -> dict[str, dict[str, Any]]:
    rec = model.__dict__.get(_RECORDS)
    if rec is None:
        rec = {}
        model.__dict__[_RECORDS] = rec
    return rec


# ---------------------------------------------------------------------------------------------
# Public API


def factorize(
    model: nn.Module,
    rank: RankSpec,
    filter_fn: FilterFn | None = None,
    *,
    rank_multiple: int = 8,
    min_rank: int = 1,
    skip_unprofitable: bool = True,
    example_input: Any = None,
    min_speedup: float | None = None,
    tracker: StableRankTracker | None = None,
    timer: Callable[[nn.Module, torch.Tensor, int], float] | None = None,
    profile_repeats: int = 10,
    profile_backward: bool = False,
    target_modules: str | Sequence[str] | None = None,
) -> FactorizedRanks:
    """Replace the model's factorizable layers by low-rank ones, in place.

    Each layer of ``candidate_layers(model, filter_fn)`` that ``target_modules`` selects
    (PEFT's convention: a list of names, each matching a layer's full name or its last
    parts, e.g. ``["q_proj", "v_proj"]``; a string is a regular expression the full name
    must match entirely; None: every candidate) gets a rank from ``rank``:

    - ``int``: that rank for every layer, as asked (not rounded).
    - ``float`` in ``(0, 1]``: ``ceil(ratio · full_rank)`` per layer (derived).
    - ``{name: int}``: exactly those layers at exactly those ranks; others stay dense. A
      name is a layer's full name or, like PEFT's ``rank_pattern``, a short name for
      every layer whose name ends in it (``{"q_proj": 8}``); a full name wins.
    - callable ``(fqn, module) -> int | float | None``: an int as returned, a float as a
      ratio of the full rank (derived), None keeps the layer dense.
    - ``"stable"``: ``ceil(stable_rank(W))`` (derived).
    - ``"scaled_stable"``: ``ceil(srank(W_t)·ξ)`` from ``tracker`` (derived).

    Derived ranks are raised to ``min_rank`` and rounded UP to a multiple of
    ``rank_multiple`` (never above full rank); explicit ranks (int, mapping, callable)
    are validated (``1 <= r <= full_rank``) and used as given. Then, with
    ``skip_unprofitable`` (default), a layer stays dense where ``r·(K+N) >= K·N`` (no
    parameter saving; an int rank above a layer's full rank also just keeps it dense);
    with ``skip_unprofitable=False`` every chosen layer is factorized, and an int rank
    above a layer's full rank raises.

    With ``example_input`` (a tensor, a tuple of positional args or a dict of kwargs for
    ``model``), every remaining layer is timed dense vs low-rank on its real input
    (``profile_layers``); with ``min_speedup=s`` a layer stays dense where
    ``dense_time / lowrank_time < s``. ``summary(model)`` reports ranks, reasons and times.

    Weights are copied by truncated SVD in fp32 with the √S split, keeping device, dtype
    and ``requires_grad``. Forward hooks registered on replaced layers are not carried over.

    The model is changed in place; keep using it (the result is not the model). When no
    layer is factorized a ``UserWarning`` says why.

    Returns:
        ``{fqn: rank}`` of the layers that were factorized, in model order.

    Raises:
        ValueError / TypeError: a bad rank (0, negative, above a layer's full rank, an
            unknown fqn, a wrong type), ``"scaled_stable"`` without a tracker, or
            ``min_speedup`` without ``example_input``.
    """
    check_int(rank_multiple, "rank_multiple", minimum=1)
    check_int(min_rank, "min_rank", minimum=1)
    if not isinstance(skip_unprofitable, bool):
        raise TypeError(f"skip_unprofitable must be a bool, got {skip_unprofitable!r}")
    if min_speedup is not None:
        if (
            isinstance(min_speedup, bool)
            or not isinstance(min_speedup, (int, float))
            or not min_speedup > 0
        ):
            raise ValueError(f"min_speedup must be a positive number or None, got {min_speedup!r}")
        if example_input is None:
            raise ValueError(
                "min_speedup needs example_input (the layers are timed on the inputs they see "
                "when the model runs on it)"
            )
    candidates, skipped = scan_layers(model, filter_fn)
    if target_modules is not None:
        targeted = _targeted(target_modules)
        for fqn in [f for f in candidates if not targeted(f)]:
            skipped[fqn] = (candidates.pop(fqn), "not in target_modules")
    chosen, dense = _resolve_ranks(
        rank,
        candidates,
        skipped,
        model,
        rank_multiple=rank_multiple,
        min_rank=min_rank,
        skip_unprofitable=skip_unprofitable,
        tracker=tracker,
    )
    if skip_unprofitable:
        for fqn in list(chosen):
            _, k, n = layer_dims(candidates[fqn])
            r = chosen[fqn]
            if r * (k + n) >= k * n:
                dense[fqn] = (
                    f"rank {r} saves no parameters (needs r < K·N/(K+N) = {k * n / (k + n):.1f})"
                )
                del chosen[fqn]

    timings = {}
    if example_input is not None and chosen:
        timings = profile_layers(
            model,
            example_input,
            chosen,
            repeats=profile_repeats,
            timer=timer,
            backward=profile_backward,
        )
        if min_speedup is not None:
            for fqn in list(chosen):
                t = timings.get(fqn)
                if t is not None and t.speedup < min_speedup:
                    dense[fqn] = f"measured speedup {t.speedup:.2f}x < min_speedup {min_speedup}"
                    del chosen[fqn]

    # Build every low-rank layer first, then replace: a layer that cannot be factorized
    # (NaN/inf weights, an SVD that fails) raises before the model is touched.
    new_records = {fqn: {"reason": why, "dense_s": None, "lowrank_s": None}
                   for fqn, (_, why) in skipped.items()}  # fmt: skip
    built: dict[str, nn.Module] = {}
    for fqn, module in candidates.items():
        t = timings.get(fqn)
        rec = {"reason": dense.get(fqn), "dense_s": None, "lowrank_s": None}
        if t is not None:
            rec.update(dense_s=t.dense_s, lowrank_s=t.lowrank_s)
        elif example_input is not None and fqn in chosen:
            rec["reason"] = "not profiled: example_input did not reach this layer"
        new_records[fqn] = rec
        if fqn in chosen:
            try:
                built[fqn] = factorized(module, chosen[fqn])
            except ValueError as exc:
                raise ValueError(
                    f"factorize: layer {fqn!r}: {exc}; the model was left unchanged"
                ) from exc
    _records(model).update(new_records)
    for fqn, new in built.items():
        replace_child(parent_of(model, fqn), fqn, new)
    result = FactorizedRanks((fqn, chosen[fqn]) for fqn in candidates if fqn in chosen)
    if not result:
        already = sum(isinstance(m, LOWRANK_TYPES) for m in model.modules())
        message = _nothing_factorized(candidates, skipped, dense)
        if already:
            message += f"; {already} layers are already low-rank"
        warnings.warn(message, UserWarning, stacklevel=2)
    return result


class FactorizedRanks(dict):
    """``{fqn: rank}`` returned by :func:`factorize`: a dict that explains itself when
    mistaken for the model (``model = factorize(model, ...)``). Store ``dict(result)`` in
    checkpoints meant for ``torch.load(weights_only=True)``."""

    _HINT = (
        "factorize changed the model in place and returned {fqn: rank}, not the model; "
        "keep using the model object you passed (do not assign factorize's result to it)"
    )

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{name!r}: {self._HINT}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(self._HINT)


def _targeted(target_modules: str | Sequence[str]) -> Callable[[str], bool]:
    """``fqn -> bool`` for PEFT-style ``target_modules`` (regex string or list of names)."""
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as exc:
            raise ValueError(
                f"target_modules: {target_modules!r} is not a valid regular expression: {exc}"
            ) from None
        return lambda fqn: pattern.fullmatch(fqn) is not None
    names = list(target_modules)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise TypeError(
            "target_modules must be a regular expression (str) or a non-empty list of layer "
            f"names, got {target_modules!r}"
        )
    return lambda fqn: any(fqn == n or fqn.endswith(f".{n}") for n in names)


def _nothing_factorized(
    candidates: dict[str, nn.Module],
    skipped: dict[str, tuple[nn.Module, str]],
    dense: dict[str, str],
) -> str:
    """The warning when ``factorize`` replaced no layer: why, with up to three examples."""
    if not candidates:
        why = Counter(reason for _, reason in skipped.values())
        detail = "; ".join(f"{n} x {reason}" for reason, n in why.most_common(3))
        return "factorize: the model has no layer it may factorize" + (
            f" ({detail})" if detail else " (no nn.Linear, nn.Conv2d or Conv1D)"
        )
    shown = "; ".join(f"{fqn}: {why}" for fqn, why in list(dense.items())[:3])
    more = f" (and {len(dense) - 3} more)" if len(dense) > 3 else ""
    return f"factorize: every candidate layer stayed dense: {shown}{more}"


def merge(model: nn.Module) -> nn.Module:
    """Turn every ``LowRankLinear`` / ``LowRankConv2d`` back into its dense layer, in place.

    The product ``V·U`` is formed in fp32 (fp64 for fp64) and cast to the factors' dtype.
    A layer that ``factorize`` made from a ``transformers`` ``Conv1D`` becomes a
    ``Conv1D`` again (so the state_dict matches the original model); others become
    ``nn.Linear`` / ``nn.Conv2d``. Returns ``model`` (or the dense layer when ``model``
    itself is a low-rank layer, which cannot be replaced in place).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, LOWRANK_TYPES):
        return merged(model)
    records = model.__dict__.get(_RECORDS, {})
    walk, paths = walk_layers(model)
    for fqn, module, _ in walk:
        if isinstance(module, LOWRANK_TYPES):
            dense = merged(module)
            for path in paths[id(module)]:  # keep sharing if the layer sits at several paths
                replace_child(parent_of(model, path), path, dense)
            records.pop(fqn, None)
    return model


def _check_state_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise ``RuntimeError`` listing missing and unexpected keys and shape mismatches.

    ``load_state_dict`` finds the same misfits only after copying every tensor that fits,
    which would leave a half-loaded model behind.
    """
    expected = model.state_dict(keep_vars=True)
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for key, current in expected.items():
        saved = state_dict.get(key)
        is_tensors = isinstance(saved, torch.Tensor) and isinstance(current, torch.Tensor)
        if is_tensors and saved.shape != current.shape:
            problems.append(
                f"{key} has shape {tuple(saved.shape)}, the model needs {tuple(current.shape)}"
            )
    if problems:
        raise RuntimeError("; ".join(problems))


def _meta_tensors(model: nn.Module) -> list[str]:
    """Names of ``model``'s parameters and buffers on the meta device."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in named if t is not None and t.is_meta]


def restore(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a factorized model's ``state_dict`` into a freshly built dense ``model``.

    Every dense layer whose factors appear in ``state_dict`` (``<fqn>.V``/``<fqn>.U`` for
    Linear and Conv1D, ``<fqn>.conv_v.weight``/``<fqn>.conv_u.weight`` for Conv2d) is
    replaced by a low-rank layer of the rank read from the factor shapes; then the
    state_dict is loaded with ``strict=True``. Returns ``model``.

    A model built on the meta device (``with torch.device("meta"): model = ...``) takes
    the state_dict's tensors themselves (``assign=True``), so the restored model lives where
    they do; every meta tensor must then be in ``state_dict``.

    Raises:
        RuntimeError: the state_dict does not fit the model (missing/unexpected keys,
            shape mismatches); the model is then left as it was.
        ValueError: a factor's shape does not match the layer it belongs to.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    walk, _ = walk_layers(model)
    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for fqn, module, parent in walk:
            kind = dense_kind(module)
            if kind is None or parent is None:
                continue
            pre = f"{fqn}."
            _, k, n = layer_dims(module)
            if kind in ("Linear", "Conv1D") and f"{pre}V" in state_dict:
                V = state_dict[f"{pre}V"]
                if V.dim() != 2 or V.shape[0] != k:
                    raise ValueError(
                        f"restore: {pre}V has shape {tuple(V.shape)} but layer {fqn!r} "
                        f"({kind}, in={k}, out={n}) needs [{k}, r]"
                    )
                r = int(V.shape[1])
            elif kind == "Conv2d" and f"{pre}conv_v.weight" in state_dict:
                cv = state_dict[f"{pre}conv_v.weight"]
                expect = (module.in_channels, *module.kernel_size)
                if cv.dim() != 4 or tuple(cv.shape[1:]) != expect:
                    raise ValueError(
                        f"restore: {pre}conv_v.weight has shape {tuple(cv.shape)} but layer "
                        f"{fqn!r} needs [r, {', '.join(map(str, expect))}]"
                    )
                r = int(cv.shape[0])
            else:
                continue
            check_layer_rank(r, fqn, module, "restore")
            new = lowrank_like(module, r)
            new.train(module.training)
            name = fqn.rsplit(".", 1)[-1]
            replaced.append((parent, name, module))
            parent._modules[name] = new
        # A model built on the meta device (no memory) takes the state's tensors as they are;
        # a copy into a meta tensor would be a no-op and leave the model empty.
        on_meta = _meta_tensors(model)
        if on_meta:
            uncovered = [n for n in on_meta if n not in state_dict]
            if uncovered:
                raise ValueError(
                    f"restore: the model is on the meta device and state_dict does not hold "
                    f"{uncovered} (e.g. non-persistent buffers); materialize the model first "
                    "(model.to_empty(device=...) and re-initialize them)"
                )
        _check_state_fits(model, state_dict)  # before any copy: a misfit changes nothing
        model.load_state_dict(state_dict, strict=True, assign=bool(on_meta))
    except (RuntimeError, ValueError, TypeError) as err:
        for parent, name, old in reversed(replaced):
            parent._modules[name] = old
        if isinstance(err, RuntimeError):
            raise RuntimeError(
                f"restore: the state_dict does not fit this model's architecture: {err}"
            ) from err
        raise
    return model


# ---------------------------------------------------------------------------------------------
# Summary


@dataclass
class LayerSummary:
    """One factorizable layer: its shape, rank, and cost dense vs now.

    ``params_*`` count weights plus bias; ``flops_*`` are multiply-adds × 2 per output
    position (one row of a Linear's input, one output pixel of a conv). ``rank`` is None
    for a dense layer, with ``reason`` saying why it stayed dense. Times (seconds, median)
    are present when ``factorize`` profiled the layer.
    """

    fqn: str
    kind: str
    in_size: int
    out_size: int
    full_rank: int
    rank: int | None
    params_dense: int
    params: int
    flops_dense: int
    flops: int
    reason: str | None = None
    dense_s: float | None = None
    lowrank_s: float | None = None

    @property
    def speedup(self) -> float | None:
        """Measured ``dense_s / lowrank_s``, or None when not profiled."""
        if self.dense_s is None or not self.lowrank_s:
            return None
        return self.dense_s / self.lowrank_s


@dataclass
class ModelSummary:
    """``summary(model)``: a list of ``LayerSummary`` plus whole-model totals; ``str()`` is a
    table."""

    layers: list[LayerSummary] = field(default_factory=list)
    total_params: int = 0

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, key: int | str) -> LayerSummary:
        if isinstance(key, str):
            for layer in self.layers:
                if layer.fqn == key:
                    return layer
            raise KeyError(key)
        return self.layers[key]

    @property
    def params_dense(self) -> int:
        """Parameter count the whole model would have with every listed layer dense."""
        return self.total_params + sum(x.params_dense - x.params for x in self.layers)

    def __str__(self) -> str:
        def ms(t: float | None) -> str:
            return "-" if t is None else f"{t * 1e3:.3f}"

        head = ("layer", "type", "K x N", "full", "rank", "params", "FLOPs/pos", "dense ms",
                "lowrank ms", "note")  # fmt: skip
        rows = [head]
        for x in self.layers:
            rows.append(
                (
                    x.fqn,
                    x.kind,
                    f"{x.in_size}x{x.out_size}",
                    str(x.full_rank),
                    "dense" if x.rank is None else str(x.rank),
                    f"{x.params_dense:,} -> {x.params:,}",
                    f"{x.flops_dense:,} -> {x.flops:,}",
                    ms(x.dense_s),
                    ms(x.lowrank_s),
                    x.reason or "",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        n_low = sum(x.rank is not None for x in self.layers)
        lines.append(
            f"{n_low}/{len(self.layers)} layers low-rank; model parameters "
            f"{self.params_dense:,} dense -> {self.total_params:,} now "
            f"({self.total_params / max(self.params_dense, 1):.1%})"
        )
        return "\n".join(lines)

    __repr__ = __str__


def summary(model: nn.Module) -> ModelSummary:
    """Every Linear / Conv2d / Conv1D layer of ``model`` (dense or low-rank) with its rank,
    parameters and FLOPs dense vs now, why it is dense, and measured times if profiled.

    Returns a ``ModelSummary`` (iterable of ``LayerSummary``; ``print`` it for a table).
    """
    _, skipped = scan_layers(model, None)
    records = model.__dict__.get(_RECORDS, {})
    walk, _ = walk_layers(model)
    layers = []
    for fqn, module, _ in walk:
        if isinstance(module, LOWRANK_TYPES):
            kind = (
                "Conv2d" if isinstance(module, LowRankConv2d) else getattr(module, ORIGIN, "Linear")
            )
            r: int | None = module.rank
        elif dense_kind(module) is not None:
            kind, r = dense_kind(module), None
        else:
            continue
        _, k, n = layer_dims(module)
        has_bias = getattr(module, "bias", None) is not None
        dense_params = k * n + (n if has_bias else 0)
        now_params = dense_params if r is None else r * (k + n) + (n if has_bias else 0)
        rec = records.get(fqn, {})
        reason = rec.get("reason")
        if r is None and reason is None and fqn in skipped:
            reason = skipped[fqn][1]
        layers.append(
            LayerSummary(
                fqn=fqn,
                kind=kind,
                in_size=k,
                out_size=n,
                full_rank=min(k, n),
                rank=r,
                params_dense=dense_params,
                params=now_params,
                flops_dense=2 * k * n,
                flops=2 * k * n if r is None else 2 * r * (k + n),
                reason=reason,
                dense_s=rec.get("dense_s"),
                lowrank_s=rec.get("lowrank_s"),
            )
        )
    total = sum(p.numel() for p in model.parameters())
    return ModelSummary(layers=layers, total_params=total)
