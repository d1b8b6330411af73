"""Atomic file and directory writes: a crash mid-write never leaves something that loads as valid.

Files are written to a temporary name in the same directory, flushed to disk (``fsync``) and renamed over
the target; directories are built under a temporary name, every file in them is fsynced, and the
directory is renamed into place. The parent directory is fsynced after each rename so the rename itself
survives a power loss. Temporary names start with ``.`` and end with ``.tmp`` so leftovers from a killed
process are recognisable (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

TMP_SUFFIX = ".tmp"


def _fsync_path(path: Path) -> None:
    """fsync a file or directory; a filesystem that cannot fsync directories is not an error."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_yaml(path: Path | str, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextmanager
def atomic_directory(target: Path | str) -> Iterator[Path]:
    """Yield a temp dir beside ``target``; on success it replaces ``target`` in one rename.

    Everything written into the temp dir is fsynced before the rename. The old directory is moved aside
    first and removed only after the new one is in place, so at every moment either the old or the new
    complete directory exists under ``target`` (or the old one under its ``.old`` name, if the process
    dies between the two renames; :func:`remove_stale_temporaries` does not touch those).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        for item in sorted(tmp.rglob("*"), reverse=True):  # files first, then their directories
            _fsync_path(item)
        _fsync_path(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            target.rename(old)
        tmp.rename(target)
        _fsync_path(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_tree(path: Path | str) -> None:
    """Delete a directory so that it disappears at once: rename it to a temporary name, then remove it.

    A crash during the removal leaves only a ``.*.tmp`` leftover, never a half-deleted directory under
    the original name that could be mistaken for a complete one.
    """
    path = Path(path)
    if not path.exists():
        return
    doomed = Path(tempfile.mkdtemp(prefix=f".{path.name}.deleting.", suffix=TMP_SUFFIX, dir=path.parent))
    doomed.rmdir()
    path.rename(doomed)
    _fsync_path(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_stale_temporaries(directory: Path | str) -> list[Path]:
    """Remove ``.*.tmp`` files and directories left in ``directory`` by a killed writer; returns them.

    Only call this where no other process is writing (the training run owns its output directory).
    """
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for item in directory.iterdir():
        if item.name.startswith(".") and item.name.endswith(TMP_SUFFIX):
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
            removed.append(item)
    return removed


def directory_bytes(path: Path | str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
