"""Crash-safe file writes.

A file convocate writes is either the old version or the new one, never half
of each: the data goes to a temporary file in the same directory, is fsynced,
then renamed over the target (rename(2) is atomic within a filesystem), and
the directory is fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, uid: int | None = None, gid: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically.

    Args:
        path: Target file; its directory must exist.
        data: The complete new contents.
        mode: Permission bits of the new file (applied before the rename, so a
            secret is never readable by others, even briefly).
        uid: Owner to set, or ``None`` to keep the writer's.
        gid: Group to set, or ``None`` to keep the writer's.

    Raises:
        OSError: the write, fsync or rename failed; the target is unchanged
            and the temporary file is removed.
    """
    import tempfile  # here, not at the top: read-only commands (ls) never write and skip its import (issue 17)

    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so renames and creations in it are durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_token(path: Path) -> str:
    """Read a one-value file (``agent-id``, ``current-image``), stripped of whitespace.

    Returns:
        The value, or ``""`` if the file does not exist.
    """
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
