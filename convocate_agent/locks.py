"""Per-session lifecycle locks: ``/var/lib/convocate-agent/locks/<uuid>.lock`` holding a PID.

The locks live in the agent's state dir, which no session container mounts (issue 14); agents
before it kept them beside the homes (``/home/claude/<uuid>.lock``), and :meth:`SessionLocks.sweep_legacy`
clears the stale ones left there.

A lifecycle op (create, clone, edit, delete, kill, restart) holds its
session's lock for its whole duration. The lock is the file itself, created
with ``O_CREAT|O_EXCL`` so exactly one holder wins, even across processes.
Its first line is the holder's PID (as the original agents wrote it); the
second names the op and the holder's start time, so a PID reused after a
crash is not mistaken for a live holder. A lock whose holder is gone is stale:
the next taker, ``override``, or the agent's start-up sweep removes it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from convocate.common import messages
from convocate.common.errors import Locked
from convocate.common.model import is_uuid4
from convocate.common.paths import Paths


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock.

    Attributes:
        pid: Holder's process ID.
        op: The op it is running, or ``""`` when written by another tool.
        start_time: Holder's start time in clock ticks, or None when unknown.
    """

    pid: int
    op: str = ""
    start_time: int | None = None

    @property
    def alive(self) -> bool:
        """The holding process still exists (and is the same process, when the start time is known)."""
        current = process_start_time(self.pid)
        if current is None:
            return False
        return self.start_time is None or self.start_time == current

    def describe(self) -> str:
        return f"pid {self.pid}" + (f" ({self.op})" if self.op else "")


class SessionLocks:
    """Takes, inspects and clears session lock files.

    Args:
        paths: The installation layout (lock files live in its ``session_locks_dir``).
    """

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._pid = os.getpid()
        self._start = process_start_time(self._pid)
        self._held: set[str] = set()  # the locks this object holds now: live without reading their files

    def holder(self, session_id: str, *, legacy: bool = False) -> LockHolder | None:
        """The recorded holder of ``session_id``'s lock, live or not; None when unlocked.

        Args:
            session_id: The session UUID.
            legacy: Read the lock where agents before issue 14 kept it.
        """
        path = self.paths.legacy_lock_file(session_id) if legacy else self.paths.lock_file(session_id)
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        lines = text.splitlines()
        try:
            pid = int(lines[0].strip())
        except (IndexError, ValueError):
            return LockHolder(pid=0, op="unreadable lock file")
        op, start = "", None
        if len(lines) > 1:
            words = lines[1].split()
            if words:
                op = words[0]
            if len(words) > 1 and words[1].isdigit():
                start = int(words[1])
        return LockHolder(pid=pid, op=op, start_time=start)

    def is_locked(self, session_id: str) -> bool:
        """A lock file with a live holder exists (one this process holds is known without reading it)."""
        if session_id in self._held:
            return True
        h = self.holder(session_id)
        return h is not None and h.alive

    @contextlib.contextmanager
    def hold(self, session_id: str, op: str) -> Iterator[None]:
        """Hold ``session_id``'s lock for the duration of the ``with`` block.

        A stale lock (holder gone) is taken over. The check and the creation
        happen without yielding to the event loop, so two coroutines of this
        process cannot both win.

        Raises:
            Locked: a live holder (another op, here or in another process) has it.
        """
        path = self.paths.lock_file(session_id)
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        content = f"{self._pid}\n{op} {self._start if self._start is not None else ''}\n".encode()
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                h = self.holder(session_id)
                if h is not None and h.alive:
                    raise Locked(messages.SESSION_LOCKED.format(id=session_id, holder=h.describe())) from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
            break
        else:  # pragma: no cover - three races lost in a row
            raise Locked(messages.SESSION_LOCKED.format(id=session_id, holder="a concurrent operation"))
        self._held.add(session_id)
        try:
            yield
        finally:
            self._held.discard(session_id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def clear_stale(self, session_id: str) -> LockHolder | None:
        """Remove the lock if its holder is gone; returns the removed holder, or None."""
        h = self.holder(session_id)
        if h is None or h.alive:
            return None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.paths.lock_file(session_id))
        return h

    def _lock_ids(self, directory: Path) -> list[str]:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return [name[:-5] for name in names if name.endswith(".lock") and is_uuid4(name[:-5])]

    def locked_ids(self) -> set[str]:
        """Session IDs with a live lock, from one scan of the lock directory (files of held locks are not read)."""
        return {sid for sid in self._lock_ids(self.paths.session_locks_dir) if self.is_locked(sid)}

    def sweep(self) -> list[str]:
        """Remove every stale lock; returns the session IDs freed."""
        return [sid for sid in self._lock_ids(self.paths.session_locks_dir) if self.clear_stale(sid)]

    def sweep_legacy(self) -> list[str]:
        """Remove the stale ``/home/claude/<uuid>.lock`` files of agents before issue 14; returns their IDs.

        A lock there whose holder still lives (an older agent still running during the upgrade)
        is left; nothing here honours it, as nothing but that agent could have written it.
        """
        freed = []
        for sid in self._lock_ids(self.paths.session_base):
            h = self.holder(sid, legacy=True)
            if h is not None and not h.alive:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.paths.legacy_lock_file(sid))
                freed.append(sid)
        return freed
