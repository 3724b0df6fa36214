"""Durable file writes: a crash never leaves a torn file where a reader looks.

Files are fsynced before anything points at them, and a file that replaces another is written
beside it under a temporary name and renamed over it, so a reader sees the old file or the new
one. The run log's summaries and configs, checkpoints, the decoded-data cache, sweep manifests,
reports and ONNX exports all write through here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def synced_open(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for writing; when the block ends its bytes are flushed and fsynced."""
    with open(path, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_synced(path: Path, data: bytes) -> int:
    """Write ``data`` to ``path`` and fsync it; returns the number of bytes."""
    with synced_open(path) as f:
        f.write(data)
    return len(data)


def fsync_path(path: Path) -> None:
    """fsync a file someone else wrote (e.g. an exporter that only takes a path)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a directory so the renames inside it survive a power cut (best effort: some
    filesystems refuse to open or sync a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write (and fsync) the new file at; when the block ends
    it is renamed over ``path``. If the block fails, ``path`` is untouched and the temporary file
    is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old or the new file, never part of one."""
    with replacing(path) as tmp:
        write_synced(tmp, data)


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON, atomically (a reader sees the old file or the new one)."""
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, streamed in 1 MiB reads: a 150 MB checkpoint or a dataset archive
    never sits in memory (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
