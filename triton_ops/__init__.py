"""Triton kernels for lowrank_kernels, one file per kernel family.

Import this only through ``lowrank_kernels``' triton backend: whether the kernels
are compiled or interpreted is fixed when they are first decorated, from
``TRITON_INTERPRET``.
"""

import os

INTERPRETED = os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "on", "yes"}


def chain_forward(*args, **kwargs):
    raise NotImplementedError("the Triton kernels are not implemented yet")
