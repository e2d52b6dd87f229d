"""Session insight: what the Claude Code agent inside each session is doing.

Inside the container, Claude Code's hooks, the convocate MCP server and the
supervisor report to the agent through a Unix socket that is the session's
own: ``/run/convocate-agent/sessions/<uuid>/agent.sock`` on the host, mounted
read-only at ``/run/convocate-agent/`` in that session's container only. The
agent knows the session by the socket a report arrives on and trusts nothing
a report says about who sent it.

Wire: one line of UTF-8 JSON ``{"source", "event", "data"}`` per connection,
answered with ``{"ok": true}`` or ``{"ok": false, "error": ...}``; sources
``hook`` (Claude Code hook events), ``mcp`` (the MCP tools: progress, ask,
status) and ``supervisor`` (start, exit, backoff, gave_up).

:func:`next_activity` turns reports into the session's activity state:
``working``, ``waiting`` (for the operator, with the question), ``idle``,
``crashed`` (the supervisor gave up) or ``exited``. Each report is also
appended to the session's ``~/.convocate/logs/activity.log`` (rotated at
1 MiB), which ``convocate logs`` shows beside the supervisor's log. Files in
a session's home belong to the session, so they are opened without following
symlinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convocate.common.model import ACTIVITIES, validate_uuid
from convocate.common.paths import Paths
from convocate.common.protocol import LineDecoder, LineTooLong
from convocate.common.timefmt import format_rfc3339, now_ns, parse_rfc3339

log = logging.getLogger(__name__)

WORKING, WAITING, IDLE, CRASHED, EXITED = ACTIVITIES
SOCKET_NAME = "agent.sock"
#: Claude Code's name prefix for the tools of convocate's in-session MCP server.
OWN_TOOLS = "mcp__convocate__"
REPORT_MAX = 64 * 1024
DETAIL_MAX = 500
LOG_DIR = (".convocate", "logs")
ACTIVITY_LOG = "activity.log"
SUPERVISOR_LOG = "supervisor.log"
LOG_ROTATE_BYTES = 1 << 20
#: Most bytes of a log the agent reads for ``logs`` (the tail).
LOG_READ_MAX = 1 << 20


@dataclass(frozen=True)
class Activity:
    """A session's activity state.

    Attributes:
        state: One of :data:`ACTIVITIES`, or ``""`` when nothing was reported yet.
        detail: The question (waiting), the progress message, or why it crashed.
        at: When it last changed, ns since the epoch.
    """

    state: str = ""
    detail: str = ""
    at: int = 0


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    return (value if isinstance(value, str) else str(value))[:DETAIL_MAX]


def next_activity(current: Activity, source: str, event: str, data: dict[str, Any], now: int) -> Activity | None:
    """The activity after one report, or None when the report does not change it.

    Rules: a prompt or a tool call means working; a notification (Claude Code
    asks for permission or input) or an ``ask`` means waiting, with its text,
    until the operator's next prompt; the end of a turn (Stop) otherwise means idle; the supervisor giving up means
    crashed; a clean exit means exited. Progress and explicit status reports
    set what they say.
    """
    new: tuple[str, str] | None = None
    if source == "hook":
        if event == "UserPromptSubmit":
            new = (WORKING, _text(data, "prompt"))
        elif event in ("PreToolUse", "PostToolUse") and not _text(data, "tool_name").startswith(OWN_TOOLS):
            # Working on, keeping what it works on; after a wait, say which tool it went back to.
            # (Calls of convocate's own tools report their meaning through the mcp source.)
            tool = _text(data, "tool_name")
            new = (WORKING, current.detail if current.state == WORKING else (f"using {tool}" if tool else ""))
        elif event == "Notification":
            new = (WAITING, _text(data, "message") or "needs the operator")
        elif event == "Stop" and current.state == WAITING:
            new = None  # the turn that asked ends; the question stands until the operator answers
        elif event in ("Stop", "SessionStart"):
            new = (IDLE, "")
        elif event == "SessionEnd":
            new = (EXITED, _text(data, "reason"))
    elif source == "mcp":
        if event == "progress":
            new = (WORKING, _text(data, "message"))
        elif event == "ask":
            new = (WAITING, _text(data, "question"))
        elif event == "status" and data.get("status") in (WORKING, IDLE, WAITING):
            new = (str(data["status"]), _text(data, "message"))
    elif source == "supervisor":
        if event == "start":
            new = (IDLE, "starting" if str(data.get("attempt", "1")) == "1" else
                   f"restarted (attempt {data.get('attempt')})")
        elif event == "gave_up":
            new = (CRASHED, f"the agent command failed {data.get('failures', '?')} times in a row "
                            f"(last exit status {data.get('status', '?')})")
        elif event == "exit" and str(data.get("status")) == "0":
            new = (EXITED, "the agent command exited cleanly")
        elif event == "exit":
            new = (current.state or WORKING, f"exited with status {data.get('status')}; the supervisor restarts it")
    if new is None or (new[0], new[1]) == (current.state, current.detail):
        return None
    return Activity(new[0], new[1], now)


class ReportError(ValueError):
    """A report line that is not a report."""


def parse_report(line: bytes) -> tuple[str, str, dict[str, Any]]:
    """Decode one report line into ``(source, event, data)``.

    Raises:
        ReportError: not JSON, not an object, or missing/mistyped fields.
    """
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise ReportError(f"not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ReportError("a report must be a JSON object")
    source, event, data = obj.get("source"), obj.get("event"), obj.get("data", {})
    if source not in ("hook", "mcp", "supervisor") or not isinstance(event, str) or not isinstance(data, dict):
        raise ReportError('a report needs "source" (hook, mcp or supervisor), a string "event" and an object "data"')
    return source, event[:64], data


# --- files in the session's home, opened without following links ---------------------------
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


# --- the sockets -----------------------------------------------------------------------------------
Report = Callable[[str, str, str, dict[str, Any]], None]


class ReportSockets:
    """One listening Unix socket per session.

    Args:
        paths: Installation layout (sockets under ``/run/convocate-agent/sessions/``).
        on_report: Called on the event loop with ``(session_id, source, event, data)``.
    """

    def __init__(self, paths: Paths, on_report: Report) -> None:
        self.paths = paths
        self.on_report = on_report
        self._servers: dict[str, asyncio.AbstractServer] = {}

    def directory(self, session_id: str) -> Path:
        return self.paths.session_run_dir(session_id)

    async def ensure(self, session_id: str) -> Path:
        """Listen on the session's socket (re-creating it if needed); returns the directory to mount."""
        validate_uuid(session_id)
        directory = self.directory(session_id)
        path = directory / SOCKET_NAME
        if session_id in self._servers and path.exists():
            return directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        os.chmod(directory, 0o755)
        old = self._servers.pop(session_id, None)
        if old is not None:
            old.close()
        server = await asyncio.start_unix_server(lambda r, w: self._serve(session_id, r, w),
                                                 sock=_bind_in(directory, SOCKET_NAME))
        os.chmod(path, 0o666)  # the session's user connects; only this session's container can see it
        self._servers[session_id] = server
        return directory

    async def _serve(self, session_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reply: dict[str, Any] = {"ok": True}
        try:
            decoder = LineDecoder(REPORT_MAX)
            frames: list[bytes | LineTooLong] = []
            while not frames:
                chunk = await asyncio.wait_for(reader.read(65536), 5)
                if not chunk:
                    rest = decoder.pending()
                    frames = [rest] if rest.strip() else []
                    break
                frames = decoder.feed(chunk)
            if not frames:
                return
            frame = frames[0]
            if isinstance(frame, LineTooLong):
                raise ReportError(f"report longer than {REPORT_MAX} bytes")
            source, event, data = parse_report(frame)
            self.on_report(session_id, source, event, data)
        except ReportError as e:
            reply = {"ok": False, "error": str(e)}
        except (TimeoutError, ConnectionError, OSError):
            return
        try:
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def close(self, session_id: str) -> None:
        """Stop listening for a session and remove its socket directory."""
        server = self._servers.pop(session_id, None)
        if server is not None:
            server.close()
        directory = self.directory(session_id)
        with contextlib.suppress(FileNotFoundError):
            (directory / SOCKET_NAME).unlink()
        with contextlib.suppress(OSError):
            directory.rmdir()

    def close_all(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()


def _bind_in(directory: Path, name: str) -> socket.socket:
    """A Unix socket bound at ``directory/name`` whatever the length of ``directory``.

    ``sun_path`` holds 108 bytes (unix(7)); binding through the directory's
    ``/proc/self/fd`` link keeps the path short under any relocated root.
    """
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)  # left by an earlier run
        sock.bind(f"/proc/self/fd/{dir_fd}/{name}")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dir_fd)
    return sock


def report_line(source: str, event: str, data: dict[str, Any]) -> str:
    """The activity-log line for a report: ``<RFC 3339> <source> <event> <json data>``."""
    return f"{format_rfc3339(now_ns())} {source} {event} {json.dumps(data, ensure_ascii=False)[:2000]}"
