"""Session recordings: every running session's terminal output as asciicast v2 (issue 19).

Source: a read-only tmux control-mode client (``tmux -C attach-session -r -t main``, tmux(1)
CONTROL MODE) that the agent runs in the session's container through a Docker exec; its
``%output`` lines become ``"o"`` events, window size changes (``%layout-change``) ``"r"`` events.
The stream goes from the tmux server through dockerd to the agent, never through a file or
socket the session can write; the files live under ``Paths.recordings_dir``, which no container
mounts. A session can end or garble its own stream (it owns its tmux); every gap is marked.

The files and their retention are :mod:`convocate_agent.castfile`, the control client's stream
:mod:`convocate_agent.controlmode`; this module runs a recorder per session, and
:mod:`convocate_agent.recorderset` the agent's set of them. Each file starts
with the pane's screen at that moment (an ``"o"`` event), so a player starts on the right screen.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from convocate.common.asciicast import file_name
from convocate.common.errors import ConvocateError
from convocate.common.paths import CLAUDE_GID, CLAUDE_UID
from convocate.common.timefmt import format_rfc3339
from convocate_agent.castfile import CastWriter, drop_oldest, file_size, finished_files
from convocate_agent.controlmode import ControlParser, screen_event, split_frames

log = logging.getLogger(__name__)

#: Backoff of a recorder whose control client ended while the container runs: 1 s doubling to 30 s.
RESTART_BACKOFF_S = (1.0, 30.0)
#: Polling while a just-started container's tmux is not up yet (no file is written meanwhile).
READY_POLL_S = 0.25
READY_TIMEOUT_S = 120.0
#: Buffered bytes that force a flush before the next tick (a burst of output).
FLUSH_BYTES = 256 * 1024
#: Bytes asked of the control client's stream per read: every Docker frame already there is taken
#: in one read and parsed in one pass (the frames are at most 32 KiB; tmux writes a line at a time).
READ_BYTES = 256 * 1024
MARKER_AGENT_RESTART = "recording resumed after agent restart (output while the agent was down is not recorded)"
MARKER_GAP = "output not recorded from {start} to {end} (the recorder's tmux client ended: {reason})"
MARKER_CUT = "recording cut off at {mib} MiB (setting recording_max_mb); resumes at the next start"
MIB = 1024 * 1024


# --- the runtime side the recorder needs -------------------------------------------------------------
class ControlRuntime(Protocol):
    async def open_control(self, session_id: str) -> Any: ...  # pragma: no cover - protocol
    async def exec(self, session_id: str, cmd: list[str]) -> tuple[int, bytes]: ...  # pragma: no cover
    async def container(self, session_id: str) -> Any: ...  # pragma: no cover


@dataclass
class RecordingSettings:
    """What one recorder start uses (a settings change applies at the next start)."""

    max_bytes: int
    record_input: bool


@dataclass(eq=False)
class Recorder:
    """The recorder of one running session: a task that follows its control client.

    A file is opened once the session's tmux answers; when the client ends while the container
    runs, it is restarted with a backoff and the gap is marked in the same file.
    """

    session_id: str
    title: str
    directory: Path
    runtime: Any
    settings: RecordingSettings
    first_marker: str = ""
    uid: int = CLAUDE_UID
    gid: int = CLAUDE_GID
    writer: CastWriter | None = None
    cut: bool = False
    stopping: bool = False
    task: asyncio.Task[None] | None = None
    stream: Any = None
    #: Called with this recorder when an event is buffered (the set's flusher then flushes it).
    on_pending: Callable[[Recorder], None] | None = None
    _finished_bytes: int = 0
    _input_decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    # --- size bound -----------------------------------------------------------
    def enforce_bound(self) -> None:
        """Drop the oldest finished files while the session's files pass the bound; cut off the current.

        The finished files are listed at open and again only when the bound is passed, so a
        flush costs no directory listing.
        """
        if self.writer is None or self.cut:
            return
        current = self.writer.size + self.writer.pending
        if current + self._finished_bytes <= self.settings.max_bytes:
            return
        self._finished_bytes = drop_oldest(self.directory, self.writer.path, current, self.settings.max_bytes,
                                           self.session_id)
        if current > self.settings.max_bytes:
            self.writer.event("m", MARKER_CUT.format(mib=self.settings.max_bytes // MIB))
            self.writer.close()
            self.cut = True
            log.info("session %s: recording %s cut off at the size bound", self.session_id, self.writer.path.name)

    def flush(self) -> None:
        if self.writer is not None and not self.writer.closed:
            try:
                self.enforce_bound()
                if not self.writer.closed:
                    self.writer.flush()
            except OSError as e:
                log.warning("session %s: cannot write its recording %s: %s", self.session_id, self.writer.path, e)

    def _event(self, code: str, data: str, t: float | None = None) -> None:
        if self.writer is not None and not self.writer.closed and not self.cut:
            self.writer.event(code, data, t)
            if self.writer.pending >= FLUSH_BYTES:
                self.flush()
            elif self.on_pending is not None:
                self.on_pending(self)

    def input(self, data: bytes) -> None:
        if self.settings.record_input:
            text = self._input_decoder.decode(data)
            if text:
                self._event("i", text)

    # --- the loop --------------------------------------------------------------
    async def _size_and_screen(self) -> tuple[tuple[int, int], str] | None:
        code, out = await self.runtime.exec(self.session_id, [
            "tmux", "display-message", "-p", "-t", "main", "#{window_width}x#{window_height} #{cursor_x},#{cursor_y}"],
            uid=self.uid, gid=self.gid)
        m = re.fullmatch(rb"(\d+)x(\d+) (\d+),(\d+)\s*", out) if code == 0 else None
        if m is None:
            return None
        size = (int(m.group(1)), int(m.group(2)))
        code, capture = await self.runtime.exec(self.session_id, ["tmux", "capture-pane", "-p", "-e", "-t", "main"],
                                                 uid=self.uid, gid=self.gid)
        screen = screen_event(capture, (int(m.group(3)), int(m.group(4)))) if code == 0 else ""
        return size, screen

    async def _wait_tmux(self) -> tuple[tuple[int, int], str] | None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.stopping and time.monotonic() < deadline:
            try:
                got = await self._size_and_screen()
            except ConvocateError:
                got = None
            if got is not None:
                return got
            state = await _quiet(self.runtime.container(self.session_id))
            if state is not None and not getattr(state, "running", False):
                return None
            await asyncio.sleep(READY_POLL_S)
        return None

    async def run(self) -> None:
        delay = RESTART_BACKOFF_S[0]
        gap_from: float | None = None
        gap_reason = ""
        try:
            while not self.stopping:
                stream = None
                reason = ""
                if await self._wait_tmux() is None:  # a container that just started: its tmux comes up
                    if self.writer is None:
                        log.info("session %s: no tmux to record", self.session_id)
                    break
                try:
                    stream = await self.runtime.open_control(self.session_id, self.uid, self.gid)
                except ConvocateError as e:
                    reason = str(e)
                if stream is not None:
                    self.stream = stream
                    got = await self._wait_tmux()  # again, now that the client is attached: no output lost
                    if got is None:
                        break
                    (width, height), screen = got
                    if self.writer is None:
                        self._open(width, height)
                        if self.first_marker:
                            self._event("m", self.first_marker, 0.0)
                        self._event("o", screen, 0.0)
                    else:
                        self._event("m", MARKER_GAP.format(start=_iso(gap_from or time.time()), end=_iso(time.time()),
                                                           reason=gap_reason or "unknown"))
                        self._event("r", f"{width}x{height}")
                        self._event("o", screen)
                        gap_from = None
                    parser = ControlParser((width, height))
                    started = time.monotonic()
                    reason = await self._follow(stream, parser)
                    stream.close()
                    self.stream = None
                    if time.monotonic() - started > RESTART_BACKOFF_S[1]:
                        delay = RESTART_BACKOFF_S[0]
                if self.stopping:
                    break
                state = await _quiet(self.runtime.container(self.session_id))
                if state is None or not getattr(state, "running", False):
                    break
                if gap_from is None:
                    gap_from = time.time()
                    gap_reason = reason
                log.info("session %s: recorder's tmux client ended (%s); again in %g s", self.session_id, reason, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF_S[1])
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug must not take the agent down
            log.exception("session %s: recorder failed", self.session_id)
        finally:
            if self.stream is not None:
                self.stream.close()
                self.stream = None
            self.close()

    def _open(self, width: int, height: int) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        start = time.time()
        path = self.directory / file_name(start)
        while path.exists():  # two starts in one microsecond
            start += 1e-6
            path = self.directory / file_name(start)
        self._finished_bytes = sum(file_size(p) for p in finished_files(self.directory))
        self.writer = CastWriter(path, width, height, self.title, start)
        log.info("session %s: recording to %s", self.session_id, path)

    async def _follow(self, stream: Any, parser: ControlParser) -> str:
        """Read the client's stdout until it ends; returns why it ended.

        Reads up to :data:`READ_BYTES` at a time and takes every whole Docker frame of it in one
        pass (:func:`convocate_agent.controlmode.split_frames`); a frame cut by the read waits for the next one.
        """
        reader: asyncio.StreamReader = stream.reader
        buf = bytearray()
        while True:
            try:
                chunk = await reader.read(READ_BYTES)
            except (ConnectionError, OSError) as e:
                return f"its stream failed: {e}"
            if not chunk:
                return "its stream ended"
            buf += chunk
            frames, pos = split_frames(buf)
            for kind, payload in frames:
                if kind != 1:
                    log.info("session %s: recorder's tmux client says: %s", self.session_id,
                             payload.decode("utf-8", "replace").strip())
                    continue
                for code, data in parser.feed(payload):
                    if code == "exit":
                        return f"%exit {data}".strip()
                    self._event(code, data)
            del buf[:pos]

    def close(self) -> None:
        if self.writer is not None and not self.writer.closed:
            self.flush()
            if not self.writer.closed:
                self.writer.close()


# --- the set ---------------------------------------------------------------------------------------
def _iso(wall: float) -> str:
    return format_rfc3339(round(wall * 1e9))


async def _quiet(coro: Any) -> Any:
    try:
        return await coro
    except ConvocateError:
        return None
