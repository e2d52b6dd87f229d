"""A session's recording files on disk: one asciicast v2 file's writer, the listing, the retention.

Layout (read by :mod:`convocate.common.asciicast` and ``convocate_agent.recordings``):
``<recordings_dir>/<uuid>/<UTC start, %Y%m%dT%H%M%S.%fZ>.cast``, directories 0700, files 0600. A
file is a header line and one JSON event line each (asciicast v2: ``[t, code, data]``); only whole
lines reach the disk. Retention drops the oldest finished files past a session's size bound (the
agent setting ``recording_max_mb``), files older than ``recording_retention_days``, and the
recordings of sessions that are gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from convocate.common.asciicast import FILE_NAME_PATTERN

log = logging.getLogger("convocate_agent.recorder")  # the name the recorder's log lines had before the split

#: ``TERM`` given in a recording's header.
TERM = "xterm-256color"


class CastWriter:
    """One recording file: header at open, buffered event lines, whole lines only on disk.

    Args:
        path: The new file (created 0600, must not exist).
        width: Columns at start.
        height: Rows at start.
        title: The session's name.
        start: When the recording starts, wall-clock seconds since the epoch (the header's ``timestamp``).
    """

    def __init__(self, path: Path, width: int, height: int, title: str, start: float) -> None:
        self.path = path
        self.start_wall = start
        self.start_mono = time.monotonic()
        self.fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._buf: list[str] = []
        self._buffered = 0
        self.size = 0
        header = {"version": 2, "width": max(1, width), "height": max(1, height), "timestamp": round(start, 6),
                  "env": {"TERM": TERM}, "title": title}
        self._append(json.dumps(header, ensure_ascii=False))
        self.flush()

    def now(self) -> float:
        """Seconds since the header's timestamp (monotonic clock)."""
        return time.monotonic() - self.start_mono

    def at(self, wall: float) -> float:
        """A wall-clock time as seconds since the header's timestamp (never below 0)."""
        return max(0.0, wall - self.start_wall)

    def event(self, code: str, data: str, t: float | None = None) -> None:
        """Buffer one event ``[t, code, data]``; ``t`` defaults to now (seconds since the header)."""
        self._append(json.dumps([round(self.now() if t is None else t, 6), code, data], ensure_ascii=False))

    def _append(self, line: str) -> None:
        b = line + "\n"
        self._buf.append(b)
        self._buffered += len(b)

    @property
    def pending(self) -> int:
        """Bytes buffered, not yet written."""
        return self._buffered

    def flush(self) -> int:
        """Write the buffered lines (one ``write`` of whole lines); returns the bytes written."""
        if self.fd is None or not self._buf:
            return 0
        data = "".join(self._buf).encode("utf-8", "surrogatepass")
        self._buf.clear()
        self._buffered = 0
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)
        return len(data)

    def close(self) -> None:
        """Flush what is buffered (an error is ignored: the file keeps its whole lines) and close."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.flush()
        os.close(self.fd)
        self.fd = None

    @property
    def closed(self) -> bool:
        """The file is closed (cut off at the bound, or its recorder ended)."""
        return self.fd is None


def finished_files(directory: Path, exclude: Path | None = None) -> list[Path]:
    """A session's recording files, oldest first, without ``exclude`` (the one being written)."""
    try:
        names = sorted(n for n in os.listdir(directory) if FILE_NAME_PATTERN.fullmatch(n))
    except FileNotFoundError:
        return []
    return [directory / n for n in names if exclude is None or directory / n != exclude]


def file_size(path: Path) -> int:
    """``path``'s size in bytes, 0 when it is gone."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def drop_oldest(directory: Path, current: Path, current_bytes: int, max_bytes: int, session_id: str) -> int:
    """Remove a session's oldest finished files while its files pass ``max_bytes``.

    Args:
        directory: The session's recordings directory.
        current: The file being written (kept).
        current_bytes: Its bytes, written and buffered.
        max_bytes: The session's bound (``recording_max_mb`` in bytes).
        session_id: For the log.

    Returns:
        The bytes of the finished files left.
    """
    sizes = [(p, file_size(p)) for p in finished_files(directory, exclude=current)]
    total = current_bytes + sum(s for _, s in sizes)
    for path, size in sizes:  # oldest first
        if total <= max_bytes:
            break
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            log.info("session %s: dropped recording %s (over recording_max_mb)", session_id, path.name)
        total -= size
    return total - current_bytes


def purge_recordings(recordings_dir: Path, keep: set[str], days: int, current: dict[str, Path | None]) -> list[Path]:
    """Drop finished files older than ``days`` and the recordings of sessions not in ``keep`` nor ``current``.

    Args:
        recordings_dir: ``Paths.recordings_dir``.
        keep: The session IDs whose recordings stay (sessions and trash entries).
        days: ``recording_retention_days``; 0 or less keeps every file of a kept session.
        current: Session ID → the file its recorder writes (kept), or None, for every recorded session.

    Returns:
        What was removed.
    """
    removed: list[Path] = []
    try:
        names = os.listdir(recordings_dir)
    except FileNotFoundError:
        return removed
    cutoff = time.time() - days * 86400
    for name in names:
        d = recordings_dir / name
        if name not in keep and name not in current:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            continue
        if days <= 0:
            continue
        for path in finished_files(d, exclude=current.get(name)):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
    for path in removed:
        log.info("recordings: removed %s", path)
    return removed
