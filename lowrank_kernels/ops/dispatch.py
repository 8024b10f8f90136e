"""Backend selection: ``set_backend`` / ``get_backend`` / ``available_backends``.

``auto`` (the default) resolves per device: on CUDA tensors it measures, per
shape bucket, the available backends among triton, cuda and torch and runs the
fastest (see ``autotune.py``); on every other device the PyTorch reference.
A backend the user forces is used as asked or raises — never a silent fallback.
The env variable ``LOWRANK_KERNELS_BACKEND`` sets the initial choice.
"""

from __future__ import annotations

import os

import torch

from .autotune import MeasuredDispatch
from .backends import BACKENDS, TRITON, Backend

ENV_VAR = "LOWRANK_KERNELS_BACKEND"
BACKEND_NAMES = ("auto", *BACKENDS)


def _parse_backend_name(name: object, *, source: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKEND_NAMES:
        raise ValueError(f"{source} must be one of {list(BACKEND_NAMES)}, got {name!r}")
    return name.strip().lower()


_selected: str = _parse_backend_name(os.environ.get(ENV_VAR, "auto"), source=ENV_VAR)
_gpu_auto = MeasuredDispatch([BACKENDS["triton"], BACKENDS["cuda"], BACKENDS["torch"]])


def set_backend(name: str) -> None:
    """Select the backend of ``lowrank_linear``: "auto", "triton", "cuda" or "torch".

    Raises:
        ValueError: unknown name.
        RuntimeError: the backend cannot run in this process (e.g. ``"cuda"`` without the
            compiled extension, ``"triton"`` without triton installed).
    """
    name = _parse_backend_name(name, source="set_backend(name)")
    if name != "auto" and not BACKENDS[name].is_available():
        reasons = {
            dev: BACKENDS[name].unsupported_reason(torch.device(dev)) for dev in ("cuda", "cpu")
        }
        raise RuntimeError(
            f"set_backend: backend {name!r} is not available in this process: "
            f"{reasons['cuda'] or reasons['cpu']}. Available: {available_backends()}"
        )
    global _selected
    _selected = name


def get_backend() -> str:
    """Return the selected backend name (``"auto"`` unless one was forced)."""
    return _selected


def available_backends() -> list[str]:
    """Names of the backends that can run on at least one device of this process."""
    return [name for name, backend in BACKENDS.items() if backend.is_available()]


def resolve_backend(device: torch.device) -> Backend:
    """The backend that will run tensors on ``device`` under the current selection."""
    if _selected != "auto":
        backend = BACKENDS[_selected]
        reason = backend.unsupported_reason(device)
        if reason is not None:
            raise RuntimeError(f"lowrank_linear: backend {_selected!r} was forced but {reason}")
        return backend
    if device.type == "cuda":
        return _gpu_auto
    return BACKENDS["torch"]


def dispatch_decisions() -> dict[str, dict[str, object]]:
    """The measured per-shape choices on GPUs: the ``auto`` backend's and the Triton
    kernel's launch configurations, with the measured times.

    Keys are ``"device=… dtype=… m_bucket=… K=… N=… r=… has_bias=… write_intermediate=…
    layout=…"`` strings; values hold ``backend`` and its ``times_ms`` per candidate (when
    ``auto`` measured that shape) and ``triton_config`` and ``triton_config_times_ms``
    (when the Triton kernel tuned it).
    """
    entries: dict[str, dict[str, object]] = {}

    def entry(key) -> dict[str, object]:
        return entries.setdefault(
            " ".join(f"{name}={value}" for name, value in key._asdict().items()), {}
        )

    for key, decision in _gpu_auto.decisions.items():
        entry(key).update(backend=decision.choice, times_ms=dict(decision.times_ms))
    for key, decision in TRITON.config_decisions.items():
        entry(key).update(
            triton_config=decision.choice, triton_config_times_ms=dict(decision.times_ms)
        )
    return entries


def clear_dispatch_cache() -> None:
    """Forget every measured choice (backends and Triton configurations); they are
    re-measured on next use."""
    _gpu_auto.decisions.clear()
    TRITON.config_decisions.clear()
