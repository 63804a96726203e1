"""Atomic file writing, and folders held by one process: every file the project writes goes through here.

A run can be killed at any moment, so a file is written under a temporary name and renamed over the
target: a reader sees either the old file or the complete new one, never half of one.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: folders are not locked
    fcntl = None

import numpy as np
from PIL import Image


# mkstemp creates files readable by their owner only; give them the permissions open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_temporary_files(folder: Path) -> None:
    """The temporary files (`.NAME.*.tmp`) that writes killed half-way left in a folder this process holds."""
    for stale in Path(folder).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


_held: dict[Path, IO] = {}  # the lock files this process holds, open until it exits


def lock_folder(folder: Path, holder: str) -> str | None:
    """Holds `folder` for the rest of this process (the operating system lets go when it ends, also on a kill).
    Returns None once held (holding it twice is holding it), or the holder that another process wrote."""
    folder = folder.resolve()
    if folder in _held or fcntl is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / ".lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        other = lock.read().strip() or "another process"
        lock.close()
        return other
    lock.seek(0)
    lock.truncate()
    lock.write(holder + "\n")
    lock.flush()
    _held[folder] = lock
    return None


def read_json(path: Path) -> Any | None:
    """The JSON of `path`; None when it is missing or cannot be read (a damaged file is rebuilt, not trusted)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: not JSON, or not even text
        return None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """One line per record, whole or absent: a write that fails (a full disk) is cut off again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(obj) + "\n").encode()
    with open(path, "ab", buffering=0) as f:
        end = f.seek(0, os.SEEK_END)
        try:
            if f.write(line) != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            f.truncate(end)
            raise


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an (H,W) uint8 index mask or an (H,W,3) uint8 picture as PNG, atomically."""
    with atomic_open(path, "wb") as f:
        Image.fromarray(np.ascontiguousarray(array)).save(f, format="PNG")
