"""A session's logs in its home: ``~/.convocate/logs/activity.log`` and ``supervisor.log``.

The agent appends each activity report to ``activity.log`` (rotated to ``activity.log.1`` past
1 MiB); the in-session supervisor writes ``supervisor.log``; ``convocate logs`` shows both merged by
their leading RFC 3339 timestamps. Files in a session's home belong to the session (DESIGN §8), so
every step is opened through a directory fd with ``O_NOFOLLOW`` and only regular files are read.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from convocate.common.timefmt import format_rfc3339, now_ns, parse_rfc3339

LOG_DIR = (".convocate", "logs")
ACTIVITY_LOG = "activity.log"
SUPERVISOR_LOG = "supervisor.log"
LOG_ROTATE_BYTES = 1 << 20
#: Most bytes of a log the agent reads for ``logs`` (the tail).
LOG_READ_MAX = 1 << 20


def _open_log_dir(home: Path, create: bool) -> int:
    """An fd of ``<home>/.convocate/logs``, refusing symlinks at every step."""
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in LOG_DIR:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def append_log(home: Path, name: str, line: str, owner: tuple[int, int] | None = None) -> None:
    """Append one line to a session log, rotating it to ``<name>.1`` past 1 MiB."""
    dir_fd = _open_log_dir(home, create=True)
    try:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_size > LOG_ROTATE_BYTES:
                os.rename(name, f"{name}.1", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
        try:
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, *owner)
            os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8", "replace"))
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def read_log_tail(home: Path, name: str, limit: int = LOG_READ_MAX) -> str:
    """The last ``limit`` bytes of a session log (``""`` if it does not exist or is not a regular file)."""
    try:
        dir_fd = _open_log_dir(home, create=False)
    except OSError:
        return ""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return ""
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        os.lseek(fd, max(0, st.st_size - limit), os.SEEK_SET)
        data = os.read(fd, limit)
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace")
    return text if st.st_size <= limit else text.split("\n", 1)[-1]


def merge_logs(texts: dict[str, str], since_ns: int = 0, lines: int = 0) -> list[str]:
    """Lines of several logs ordered by their leading RFC 3339 timestamp, each tagged with its log's name.

    Args:
        texts: Log name → content.
        since_ns: Keep only lines stamped after this time.
        lines: Keep only the last N lines (0: all).
    """
    stamped: list[tuple[int, int, str]] = []
    for order, (name, text) in enumerate(texts.items()):
        last = 0
        for line in text.splitlines():
            stamp = line.split(" ", 1)[0]
            try:
                last = parse_rfc3339(stamp)
            except ValueError:
                pass  # a continuation line keeps the stamp of the line before it
            if last > since_ns:
                stamped.append((last, order, f"{name}: {line}"))
    stamped.sort(key=lambda t: (t[0], t[1]))
    out = [t[2] for t in stamped]
    return out[-lines:] if lines else out


def report_line(source: str, event: str, data: dict[str, Any]) -> str:
    """The activity-log line for a report: ``<RFC 3339> <source> <event> <json data>``."""
    return f"{format_rfc3339(now_ns())} {source} {event} {json.dumps(data, ensure_ascii=False)[:2000]}"
