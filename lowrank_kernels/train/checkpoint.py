"""Checkpoint and report files that are never half-written and never silently corrupt.

* :func:`atomic_write` writes through a temporary file in the target's directory,
  ``fsync``s it and renames it over the target: a reader (or a crash, a kill, a full
  disk) sees the previous file or the new one, never a torn mix. A full disk says so
  and leaves the previous file untouched.
* :func:`state_digest` is a SHA-256 over a whole checkpoint (every tensor's name, dtype,
  shape and bytes; every other value's repr); checkpoints store it and
  :func:`verify_digest` refuses a file whose contents no longer match (flipped bytes
  load silently through ``torch.load``; an edited config or method would resume a
  different run than the one saved).
* :func:`check_writable` checks an output path before a run starts, so a bad ``--save``
  or ``--report`` fails in a second, not after training.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import IO, Any

import torch


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Raise ``OSError`` naming ``what`` unless a file can be created at ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a directory, expected a file path")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{what} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"{what} {path}: directory {directory} is not writable")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it over ``path``.

    Raises:
        OSError: with errno ENOSPC and a message saying the previous file is intact when
            the disk is full; any other write error as it came (the temporary file is
            removed either way).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if _disk_full(exc):
            raise OSError(
                errno.ENOSPC,
                f"no space left on the device while writing {path}; "
                "the previous file there is untouched",
            ) from exc
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the data is already synced


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    # torch.save reports a failed write from its C++ zip writer as a RuntimeError
    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, RuntimeError) and (
        "unexpected pos" in str(exc)
        or "file write failed" in str(exc)
        or (isinstance(cause, OSError) and cause.errno == errno.ENOSPC)
    )


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`.

    The object is serialised in memory first, so a failure of ``torch.save`` itself never
    touches the disk; only whole bytes are written.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    atomic_write(path, lambda f: f.write(data))


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 over everything in ``state`` (nested dicts, lists and tuples), in a fixed
    order: each tensor with its path, dtype, shape and bytes, each other value with its
    path, type and ``repr``. Equal iff the states are equal (tensors bitwise)."""
    h = hashlib.sha256()

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{prefix}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, Mapping):
            h.update(f"{prefix}|dict|{len(value)}".encode())
            for key in sorted(value, key=repr):
                visit(f"{prefix}/{key!r}", value[key])
        elif isinstance(value, list | tuple):
            h.update(f"{prefix}|{type(value).__name__}|{len(value)}".encode())
            for i, item in enumerate(value):
                visit(f"{prefix}[{i}]", item)
        else:  # None, bool, int, float (repr is exact), str, ...
            h.update(f"{prefix}|{type(value).__name__}|{value!r}".encode())

    visit("", state)
    return h.hexdigest()


def verify_digest(state: Mapping[str, Any], expected: str | None, path: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless ``state`` hashes to ``expected`` (:func:`state_digest`)."""
    if expected is None:
        raise ValueError(f"{path}: the checkpoint stores no digest of its contents")
    if state_digest(state) != expected:
        raise ValueError(
            f"{path}: the checkpoint's contents do not match the digest stored with them "
            "(the file was modified or corrupted after it was written)"
        )
