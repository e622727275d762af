"""dlqnb's cache folder, atomic writes and the lock that keeps parallel notebooks from duplicating work.

Generated data, trained networks and compiled kernels live in one folder: ``$DLQNB_CACHE`` when set,
otherwise ``$XDG_CACHE_HOME/dlqnb`` (``~/.cache/dlqnb``). Entries are keyed by a hash of what produced
them, written to a temporary name and renamed into place, and built under a file lock.

Entries are verified: :func:`write_entry` stores each entry with a SHA-256 checksum of its bytes in a
one-line header, in one atomic rename (so a reader never sees an entry and a checksum from two writes),
and :func:`read_entry` checks it before anything is used; a file loaded by path (a compiled library)
gets its checksum beside it (``<file>.sha256``, :func:`seal_entry`) and is checked by :func:`entry_intact`. A damaged or foreign entry is removed with one
:class:`CacheWarning` naming the file, so the caller builds it again; a cache folder that cannot be
written degrades to no caching, with one warning.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "example.txt"
    >>> atomic_write_bytes(path, b"done")
    >>> path.read_bytes()
    b'done'
    >>> cache_dir().is_dir()
    True
    >>> entry = pathlib.Path(tempfile.mkdtemp()) / "entry.bin"
    >>> write_entry(entry, b"payload"), read_entry(entry)
    (True, b'payload')
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

__all__ = [
    "CHECKSUM_SUFFIX",
    "CacheWarning",
    "atomic_write_bytes",
    "atomic_write_text",
    "bytes_key",
    "cache_dir",
    "cache_lock",
    "content_key",
    "ENTRY_HEADER",
    "discard_entry",
    "entry_intact",
    "read_entry",
    "seal_entry",
    "write_entry",
]

#: The checksum file beside every verified cache entry: ``<entry>.sha256`` holds the entry's SHA-256 in hex.
CHECKSUM_SUFFIX = ".sha256"


class CacheWarning(UserWarning):
    """A cache entry was damaged or foreign (and is rebuilt), or the cache folder cannot be written."""


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, CacheWarning, stacklevel=3)


def _cache_root() -> Path:
    root = os.environ.get("DLQNB_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "dlqnb"


def _unwritable_key(path: Path) -> str:
    """One warning per unwritable cache (not one per sub-folder of it); paths outside it are keyed by their folder."""
    root = _cache_root()
    return f"unwritable:{root if path == root or root in path.parents else path.parent}"


def cache_dir() -> Path:
    """The cache folder (created if missing)."""
    path = _cache_root()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # read-only home or cache: callers degrade to no caching
        _warn_once(_unwritable_key(path), f"dlqnb: cannot create the cache folder {path} ({error}); continuing without caching")
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
    """Hold the cache's lock ``name`` (one builder at a time across processes).

    Where the cache folder cannot be written, nothing is cached either, so the caller goes on
    without the lock (one :class:`CacheWarning`).
    """
    lock_path = cache_dir() / "locks" / f"{_safe_name(name)}.lock"
    lock = FileLock(str(lock_path), timeout=timeout)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:  # a TimeoutError, so an OSError: not an unwritable cache
        raise TimeoutError(f"dlqnb: waited {timeout:.0f} s for {lock_path}: another process is still building {name!r}") from None
    except OSError as error:
        _warn_once(_unwritable_key(lock_path), f"dlqnb: cannot lock {lock_path} ({error}); continuing without caching")
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _safe_name(name: str) -> str:
    """``name`` as one file name: separators and other unsafe characters become ``-``."""
    return "".join(c if c.isalnum() or c in "._+-" else "-" for c in name)


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


#: The first line of every entry :func:`write_entry` stores: this prefix, the payload's SHA-256 in hex, a newline.
ENTRY_HEADER = b"dlqnb-sha256 "
_HEADER_LENGTH = len(ENTRY_HEADER) + 64 + 1


def write_entry(path: str | os.PathLike[str], data: bytes) -> bool:
    """Store a cache entry with its checksum, in one atomic rename.

    Returns:
        True when stored; False, with one :class:`CacheWarning`, when the cache folder cannot be
        written (the caller simply goes on without the cached copy).

    Example:
        >>> import tempfile, pathlib
        >>> write_entry(pathlib.Path(tempfile.mkdtemp()) / "a.bin", b"x")
        True
    """
    target = Path(path)
    try:
        atomic_write_bytes(target, ENTRY_HEADER + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
    except OSError as error:
        _warn_once(_unwritable_key(target), f"dlqnb: cannot write the cache entry {target} ({error}); continuing without caching")
        return False
    return True


def seal_entry(path: str | os.PathLike[str]) -> bool:
    """Record the checksum of a file another tool wrote into the cache (a compiled library), beside it,
    so that :func:`entry_intact` can verify it before it is loaded. False (one warning) when it cannot be written."""
    target = Path(path)
    try:
        atomic_write_text(_checksum_path(target), hashlib.sha256(target.read_bytes()).hexdigest())
    except OSError as error:
        _warn_once(_unwritable_key(target), f"dlqnb: cannot write the checksum of {target} ({error}); it will be rebuilt next time")
        return False
    return True


def discard_entry(path: str | os.PathLike[str], reason: str) -> None:
    """Remove a damaged or foreign entry (and a checksum beside it), with one :class:`CacheWarning`
    naming the file and ``reason``; the caller then builds it again."""
    target = Path(path)
    warnings.warn(f"dlqnb: the cache entry {target} {reason}; rebuilding it", CacheWarning, stacklevel=3)
    for item in (target, _checksum_path(target)):
        with contextlib.suppress(OSError):
            item.unlink()


def _read_bytes(target: Path) -> bytes | None:
    try:
        return target.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        discard_entry(target, f"cannot be read ({error})")
        return None


def read_entry(path: str | os.PathLike[str]) -> bytes | None:
    """A cache entry's bytes, verified against its checksum.

    Returns:
        The bytes; None when there is no entry; None after removing a damaged or foreign entry (one
        :class:`CacheWarning` naming it), so that the caller builds it again.

    Example:
        >>> import tempfile, pathlib
        >>> entry = pathlib.Path(tempfile.mkdtemp()) / "b.bin"
        >>> _ = write_entry(entry, b"abc"); _ = entry.write_bytes(entry.read_bytes()[:-1] + b"d")
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     read_entry(entry), entry.exists(), "does not match its checksum" in str(caught[0].message)
        (None, False, True)
    """
    target = Path(path)
    raw = _read_bytes(target)
    if raw is None:
        return None
    header, payload = raw[:_HEADER_LENGTH], raw[_HEADER_LENGTH:]
    if not header.startswith(ENTRY_HEADER) or not header.endswith(b"\n") or len(header) != _HEADER_LENGTH:
        discard_entry(target, "has no checksum (damaged, or written by another program)")
        return None
    if hashlib.sha256(payload).hexdigest().encode() != header[len(ENTRY_HEADER) : -1]:
        discard_entry(target, "does not match its checksum (damaged)")
        return None
    return payload


def entry_intact(path: str | os.PathLike[str]) -> bool:
    """Whether a file in the cache is present and matches the checksum :func:`seal_entry` recorded
    beside it; a damaged or unsealed file is removed (one warning) so that it is rebuilt."""
    target = Path(path)
    data = _read_bytes(target)
    if data is None:
        return False
    try:
        expected = _checksum_path(target).read_text().strip()
    except (OSError, UnicodeDecodeError):
        discard_entry(target, "has no readable checksum (damaged, or written by another program)")
        return False
    if hashlib.sha256(data).hexdigest() != expected:
        discard_entry(target, "does not match its checksum (damaged)")
        return False
    return True


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    umask = os.umask(0)  # read by setting it, then restored: the caller's umask at the time of writing
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
