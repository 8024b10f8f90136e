"""Shared test set-up.

Without CUDA, the Triton kernels run under the interpreter: TRITON_INTERPRET must be
set before lowrank_kernels.triton_ops is first imported, so it is set here, at collection time.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import lowrank_kernels as lrk


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _restore_backend():
    """Tests may force a backend; put the selection back afterwards."""
    previous = lrk.get_backend()
    yield
    lrk.set_backend(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
