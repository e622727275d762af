"""dlqnb's cache folder, atomic writes and the lock that keeps parallel notebooks from duplicating work.

Generated data, trained networks and compiled kernels live in one folder: ``$DLQNB_CACHE`` when set,
otherwise ``$XDG_CACHE_HOME/dlqnb`` (``~/.cache/dlqnb``). Entries are keyed by a hash of what produced
them, written to a temporary name and renamed into place, and built under a file lock.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "example.txt"
    >>> atomic_write_bytes(path, b"done")
    >>> path.read_bytes()
    b'done'
    >>> cache_dir().is_dir()
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = ["atomic_write_bytes", "atomic_write_text", "bytes_key", "cache_dir", "cache_lock", "content_key"]


def cache_dir() -> Path:
    """The cache folder (created if missing)."""
    root = os.environ.get("DLQNB_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "dlqnb"
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_key(recipe: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serializable recipe (what produced a cache entry)."""
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def bytes_key(data: bytes) -> str:
    """A short stable hash of a file's bytes (a model file, for the caches of what is compiled from it).

    Example:
        >>> len(bytes_key(b"model")), bytes_key(b"model") == bytes_key(b"model")
        (20, True)
    """
    return hashlib.sha256(data).hexdigest()[:20]


@contextlib.contextmanager
def cache_lock(name: str, timeout: float = 3600) -> Iterator[None]:
    """Hold the cache's lock ``name`` (one builder at a time across processes)."""
    lock_path = cache_dir() / "locks" / f"{name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path), timeout=timeout):
        yield


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(handle, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Text form of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))
