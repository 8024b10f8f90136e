"""Small helpers for running under ``torchrun`` (DDP, FSDP2): one source of truth per decision.

Every structural decision a strategy makes (stable-rank convergence, the chosen ranks,
profiler verdicts, InRank growth) is computed on rank 0 and broadcast, because the
inputs are not bit-identical everywhere (layer timings always differ between processes)
and processes that disagree on a model's structure deadlock in the next collective.
All helpers are no-ops in a single process, so the same code runs with or without
``torch.distributed``.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .nn import LoRALinear, LowRankConv2d, LowRankLinear

T = TypeVar("T")

__all__ = [
    "all_reduce_mean",
    "barrier",
    "broadcast_module_",
    "broadcast_object",
    "env_world",
    "full_state_dict",
    "fully_shard_lowrank",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "params_fingerprint",
]


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the ``torchrun`` environment (0, 1, 0 without)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ValueError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them), got "
            f"RANK={os.environ.get('RANK')!r} WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} "
            f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r}"
        ) from exc
    return rank, world, local


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 without a process group; env ``RANK`` before init)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return env_world()[0]


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and logs."""
    return get_rank() == 0


def init_from_env(device: torch.device, timeout_s: float = 300.0) -> torch.device:
    """Initialise the default process group when launched by ``torchrun`` with N > 1.

    Backend: ``nccl`` for CUDA devices, ``gloo`` otherwise. A CUDA device without an index
    becomes ``cuda:LOCAL_RANK`` (one GPU per process). Does nothing when a group already
    exists (the caller set it up) or when ``WORLD_SIZE`` is absent or 1.

    Args:
        device: the device the run asked for.
        timeout_s: collective timeout: a peer that does not join a collective within it
            (stopped, hung, dead) fails the run instead of hanging it. Rank 0 may profile
            layers while the others wait, so keep it above a minute.

    Returns:
        The device this process should use.
    """
    _, world, local = env_world()
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return device


def barrier() -> None:
    """``dist.barrier()`` when distributed; nothing otherwise."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every process (pickled; for small decisions, not tensors)."""
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every process's ``module``, in place.

    Used after a structural switch so that factors computed independently (truncated
    SVDs, random re-inits) are bit-identical everywhere before training goes on.
    """
    if not is_distributed():
        return
    tensors = [p.data for p in module.parameters()] + list(module.buffers())
    for t in tensors:
        if t.is_contiguous():
            dist.broadcast(t, src=src)
        else:  # broadcast needs contiguous storage; copy back into the strided view
            tmp = t.contiguous()
            dist.broadcast(tmp, src=src)
            t.copy_(tmp)


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a Python float over all processes (the value itself in one process)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


@torch.no_grad()
def params_fingerprint(module: nn.Module) -> dict[str, Any]:
    """``{name: (shape, float64 sum, float64 sum of squares)}`` of every parameter.

    Cheap to compare across processes (tests, sanity checks); identical parameters give
    identical fingerprints, and any single-element difference changes the sums of squares
    except in contrived cases.
    """
    out = {}
    for name, p in module.named_parameters():
        d = p.detach().double()
        out[name] = (tuple(p.shape), float(d.sum()), float((d * d).sum()))
    return out


# ---------------------------------------------------------------------------------------------
# FSDP2


def fully_shard_lowrank(model: nn.Module, **fully_shard_kwargs: Any) -> nn.Module:
    """Shard ``model`` with FSDP2: every low-rank layer as its own unit, then the root.

    ``LowRankLinear``, ``LowRankConv2d`` and ``LoRALinear`` become separate FSDP units, so
    each layer's factors are gathered just before its forward (and a ``LoRALinear``'s
    frozen ``weight`` and trainable ``A``/``B`` live in one unit: FSDP2 shards every
    parameter as its own DTensor, so mixed ``requires_grad`` is fine — unlike FSDP1's flat
    parameters). Factorize **before** sharding; after a structural switch gather the full
    state (:func:`full_state_dict`), rebuild, and shard again.

    Args:
        model: the model (unsharded, on its device).
        **fully_shard_kwargs: passed to ``torch.distributed.fsdp.fully_shard`` (``mesh``,
            ``reshard_after_forward``, ``mp_policy``, ...).

    Returns:
        ``model`` (sharded in place; its parameters are now ``DTensor`` shards).
    """
    from torch.distributed.fsdp import fully_shard

    units = [
        m
        for m in model.modules()
        if isinstance(m, (LowRankLinear, LowRankConv2d, LoRALinear)) and m is not model
    ]
    for module in units:
        fully_shard(module, **fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)
    return model


@torch.no_grad()
def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded ``state_dict`` of a (possibly FSDP2-sharded) model, on the CPU.

    Collective under FSDP2: every process must call it. The keys are the plain model's
    (no wrapper prefixes), so the result loads into an unsharded copy or
    :func:`lowrank_kernels.restore`.
    """
    from torch.distributed.tensor import DTensor

    out = {}
    for key, value in model.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        out[key] = value.detach().cpu().clone()
    return out
