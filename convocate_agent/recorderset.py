"""Every recorder of an agent: started and stopped with its session's container, flushed together (issue 19).

One :class:`convocate_agent.recorder.Recorder` per running session; this module starts them on
Docker's ``start`` event and at agent start (a file marked as resumed), stops them on ``die``,
flushes the ones with buffered events, and purges old files by the retention setting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from convocate.common.paths import CLAUDE_GID, CLAUDE_UID, Paths
from convocate_agent.castfile import purge_recordings
from convocate_agent.recorder import MARKER_AGENT_RESTART, MIB, Recorder, RecordingSettings

#: Seconds between flushes of the buffered events to disk (the brief: at least every second).
FLUSH_INTERVAL_S = 1.0


class RecordingHook(Protocol):
    """What the service and the attach relay call (the service never reaches into a recorder)."""

    def input(self, session_id: str, data: bytes) -> None: ...  # pragma: no cover - protocol


class RecorderSet:
    """Every recorder of this agent, owned by the AgentServer.

    Args:
        paths: Installation layout (``recordings_dir``).
        runtime: Docker access (``open_control``, ``exec``, ``container``).
        settings: Returns the agent's current settings (read at each start).
        title_of: A session's name, for the header's ``title``.
        keep: The session IDs whose recordings stay (sessions and trash entries); others go at purge.
        uid: The session user inside containers (the execs run as it).
        gid: Its group.
    """

    def __init__(self, paths: Paths, runtime: Any, settings: Callable[[], Any], title_of: Callable[[str], str],
                 keep: Callable[[], set[str]], *, uid: int = CLAUDE_UID, gid: int = CLAUDE_GID) -> None:
        self.paths = paths
        self.uid, self.gid = uid, gid
        self.runtime = runtime
        self._settings = settings
        self._title_of = title_of
        self._keep = keep
        self.recorders: dict[str, Recorder] = {}
        self._running: set[Recorder] = set()  # also the stopping ones a new start replaced
        self._flusher: asyncio.Task[None] | None = None
        #: The recorders with buffered events: the flusher visits only these (idle sessions cost nothing).
        self._pending: set[Recorder] = set()
        self._wake = asyncio.Event()

    def start(self, session_id: str, marker: str = "") -> Recorder | None:
        """Start recording a running session (no-op if it is recorded already or ``recording`` is off)."""
        current = self.recorders.get(session_id)
        if current is not None and current.task is not None and not current.task.done() and not current.stopping:
            return current  # a stopping one (its container died) finishes its own file
        settings = self._settings()
        if not settings.recording:
            return None
        try:
            title = self._title_of(session_id)
        except Exception:
            title = ""
        rec = Recorder(session_id, title, self.paths.session_recordings_dir(session_id), self.runtime,
                       RecordingSettings(int(settings.recording_max_mb) * MIB, bool(settings.record_input)),
                       first_marker=marker, uid=self.uid, gid=self.gid, on_pending=self._note_pending)
        rec.task = asyncio.create_task(rec.run(), name=f"recorder-{session_id[:8]}")
        rec.task.add_done_callback(lambda _t, sid=session_id, r=rec: self._ended(sid, r))
        self.recorders[session_id] = rec
        self._running.add(rec)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="recorder-flush")
        return rec

    def _note_pending(self, rec: Recorder) -> None:
        self._pending.add(rec)
        self._wake.set()

    def _ended(self, session_id: str, rec: Recorder) -> None:
        self._running.discard(rec)
        self._pending.discard(rec)
        if self.recorders.get(session_id) is rec:
            del self.recorders[session_id]

    async def stop(self, session_id: str) -> None:
        rec = self.recorders.pop(session_id, None)
        if rec is not None:
            await self._stop(rec)

    @staticmethod
    async def _stop(rec: Recorder) -> None:
        rec.stopping = True
        if rec.stream is not None:
            rec.stream.close()  # stdin EOF ends tmux's client
        if rec.task is not None:
            rec.task.cancel()
            await asyncio.gather(rec.task, return_exceptions=True)

    def input(self, session_id: str, data: bytes) -> None:
        """Record what an operator typed (``"i"``), when the recorder's start had ``record_input`` on."""
        rec = self.recorders.get(session_id)
        if rec is not None:
            rec.input(data)

    def on_container_event(self, action: str, session_id: str, attributes: dict[str, Any]) -> None:
        """Docker's ``start`` starts a recorder; ``die`` stops it (the stream ends with the container)."""
        if action == "start":
            self.start(session_id)
        elif action == "die":
            rec = self.recorders.get(session_id)
            if rec is not None:
                rec.stopping = True

    async def resume(self, running: list[str]) -> None:
        """At agent start: a new file, marked as resumed, for each session already running."""
        for sid in running:
            self.start(sid, MARKER_AGENT_RESTART)

    async def _flush_loop(self) -> None:
        """Flush, at most :data:`FLUSH_INTERVAL_S` after its first buffered event, every recorder that has any.

        O(recorders with output) per tick, and no tick at all while every session is quiet: at
        200 idle sessions the loop sleeps (issue 17).
        """
        while True:
            await self._wake.wait()
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self._wake.clear()
            pending, self._pending = self._pending, set()
            for rec in pending:
                rec.flush()

    def purge(self) -> list[Path]:
        """Retention: drop finished files older than ``recording_retention_days`` and the recordings of
        sessions that are neither sessions nor in the trash; returns what was removed."""
        days = int(self._settings().recording_retention_days)
        current = {sid: rec.writer.path if rec.writer is not None else None for sid, rec in self.recorders.items()}
        return purge_recordings(self.paths.recordings_dir, self._keep(), days, current)

    async def shutdown(self) -> None:
        """Flush and close every recording (agent shutdown)."""
        self.recorders.clear()
        await asyncio.gather(*(self._stop(rec) for rec in list(self._running)))
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
