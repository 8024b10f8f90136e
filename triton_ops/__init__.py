"""Triton kernels for lowrank_kernels, one file per kernel family.

Import this only through ``lowrank_kernels``' triton backend: whether the kernels
are compiled or interpreted is fixed when they are first decorated, from
``TRITON_INTERPRET``.
"""

import os

import triton.language.standard
from triton.runtime.interpreter import InterpretedFunction

# Triton's own standard library was decorated when triton.language was imported; the
# kernels here are decorated now. Both must agree or every launch fails obscurely.
INTERPRETED = isinstance(triton.language.standard.zeros, InterpretedFunction)
if (
    os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "on", "yes"}
) != INTERPRETED:
    raise ImportError(
        "triton_ops: TRITON_INTERPRET changed after triton was imported; set it (or unset it) "
        "before the first import of triton, torch._dynamo or lowrank_kernels"
    )

from triton.runtime.errors import OutOfResources  # noqa: E402

from .chain import (  # noqa: E402
    SUPPORTED_DTYPES,
    ChainConfig,
    candidate_configs,
    chain_aligned,
    chain_forward,
    rank_chunks,
    split_for,
)

__all__ = [
    "INTERPRETED",
    "SUPPORTED_DTYPES",
    "ChainConfig",
    "OutOfResources",
    "candidate_configs",
    "chain_aligned",
    "chain_forward",
    "rank_chunks",
    "split_for",
]
