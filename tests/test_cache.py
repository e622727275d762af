"""dlqnb's cache: verified entries, damaged entries rebuilt with one warning, an unwritable cache tolerated."""

from __future__ import annotations

import hashlib
import warnings

import pytest

from dlqnb.core import cache


def _messages(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, cache.CacheWarning)]


def test_an_entry_reads_back_and_carries_the_sha256_of_its_bytes_in_one_file(tmp_path):
    entry = tmp_path / "sub" / "entry.bin"
    assert cache.write_entry(entry, b"payload")
    assert cache.read_entry(entry) == b"payload"
    header, payload = entry.read_bytes().split(b"\n", 1)
    assert header == b"dlqnb-sha256 " + hashlib.sha256(b"payload").hexdigest().encode() and payload == b"payload"
    # one file, replaced by one rename: a reader never pairs one write's bytes with another's checksum
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["entry.bin"]


def test_a_missing_entry_is_none_without_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.read_entry(tmp_path / "absent.bin") is None
        assert cache.entry_intact(tmp_path / "absent.bin") is False


@pytest.mark.parametrize("damage", ["flip one byte", "truncate", "empty", "no checksum"])
def test_a_damaged_or_foreign_entry_is_removed_with_one_warning_naming_it(tmp_path, damage):
    entry = tmp_path / "entry.bin"
    data = bytes(range(256)) * 8
    cache.write_entry(entry, data)
    stored = entry.read_bytes()
    if damage == "flip one byte":
        broken = bytearray(stored)
        broken[1000] ^= 0x01
        entry.write_bytes(bytes(broken))
    elif damage == "truncate":
        entry.write_bytes(stored[: len(stored) // 2])
    elif damage == "empty":
        entry.write_bytes(b"")
    else:  # the same bytes written by another program: no header
        entry.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.read_entry(entry) is None
    messages = _messages(caught)
    assert len(messages) == 1 and str(entry) in messages[0] and "rebuilding" in messages[0]
    assert not entry.exists()
    assert cache.write_entry(entry, data) and cache.read_entry(entry) == data  # rebuilt, then good again


def test_a_file_written_by_another_tool_is_verified_once_sealed(tmp_path):
    library = tmp_path / "kernel.so"
    library.write_bytes(b"\x7fELF" + bytes(100))
    with pytest.warns(cache.CacheWarning, match="no readable checksum"):
        assert not cache.entry_intact(library)  # unsealed: foreign
    library.write_bytes(b"\x7fELF" + bytes(100))
    assert cache.seal_entry(library) and cache.entry_intact(library)
    library.write_bytes(b"\x7fELF" + bytes(50))
    with pytest.warns(cache.CacheWarning, match="kernel.so does not match its checksum"):
        assert not cache.entry_intact(library)
    assert not library.exists()


def test_an_unwritable_cache_degrades_to_no_caching_with_a_warning(read_only_folder, monkeypatch):
    monkeypatch.setenv("DLQNB_CACHE", str(read_only_folder / "dlqnb"))
    monkeypatch.setattr(cache, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = cache.cache_dir()
        assert cache.write_entry(folder / "x" / "entry.bin", b"data") is False
        with cache.cache_lock("network-a/b"):
            entered = True
    assert entered
    messages = _messages(caught)
    assert messages and all("continuing without caching" in m for m in messages)
    assert cache.read_entry(folder / "x" / "entry.bin") is None


def test_lock_names_with_separators_stay_one_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path))
    with cache.cache_lock("choice-ov2025.3/cpu"):
        pass
    locks = list((tmp_path / "locks").iterdir())
    assert len(locks) == 1 and locks[0].is_file() and "/" not in locks[0].name


def test_a_lock_held_too_long_is_a_timeout_not_an_unwritable_cache(tmp_path, monkeypatch):
    from filelock import FileLock

    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path))
    with cache.cache_lock("busy"):  # creates the locks folder
        pass
    holder = FileLock(str(tmp_path / "locks" / "busy.lock"))
    holder.acquire()
    try:
        import threading

        errors = []

        def wait() -> None:
            try:
                with cache.cache_lock("busy", timeout=0.2):
                    pass
            except TimeoutError as error:
                errors.append(str(error))

        waiter = threading.Thread(target=wait)
        waiter.start()
        waiter.join(10)
    finally:
        holder.release()
    assert len(errors) == 1 and "another process is still building 'busy'" in errors[0]
