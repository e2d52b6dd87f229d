"""Session activity: what the Claude Code agent inside each session is doing (DESIGN: `activity`).

Inside the container, Claude Code's hooks, the convocate MCP server and the
supervisor report to the agent through a Unix socket that is the session's
own: ``/run/convocate-agent/sessions/<uuid>/agent.sock`` on the host, mounted
read-only at ``/run/convocate-agent/`` in that session's container only. The
agent knows the session by the socket a report arrives on and trusts nothing
a report says about who sent it.

Who may report (DESIGN §8: a local user is untrusted): the session's
directory is mode 0750 and its socket 0660, both the agent's and in the
session user's group (the packaged agent runs as that user, 1337; one running
as root gives them the group), under ``/run/convocate-agent`` and
``sessions/`` (0750), so nobody but the agent can replace the socket. Before
reading a report the agent asks the kernel who connected (``SO_PEERCRED``,
unix(7)) and accepts only a peer whose UID is the session user's or the
agent's own, and whose process is the agent itself or lives in that
session's container: its ``/proc/<pid>/cgroup`` (cgroups(7)) names the
container's ID, which a process cannot change without write access to the
cgroup file system. A peer outside the agent's PID namespace (PID 0) cannot
be checked and is refused.

Wire: one line of UTF-8 JSON ``{"source", "event", "data"}`` per connection,
answered with ``{"ok": true}`` or ``{"ok": false, "error": ...}``; sources
``hook`` (Claude Code hook events), ``mcp`` (the MCP tools: progress, ask,
status) and ``supervisor`` (start, exit, backoff, gave_up).

:func:`next_activity` turns reports into the session's activity state:
``working``, ``waiting`` (for the operator, with the question), ``idle``,
``crashed`` (the supervisor gave up), ``exited``, or ``limited`` (a usage or
rate limit ended the turn; with the time it resets). Each report is also
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
import re
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convocate.common import messages
from convocate.common.errors import BadRequest
from convocate.common.fsutil import atomic_write
from convocate.common.model import ACTIVITIES, validate_uuid
from convocate.common.paths import Paths
from convocate.common.protocol import LineDecoder, LineTooLong
from convocate.common.timefmt import format_rfc3339, now_ns, parse_rfc3339

log = logging.getLogger(__name__)

WORKING, WAITING, IDLE, CRASHED, EXITED, LIMITED = ACTIVITIES
SOCKET_NAME = "agent.sock"
#: Claude Code's name prefix for the tools of convocate's in-session MCP server.
OWN_TOOLS = "mcp__convocate__"
REPORT_MAX = 64 * 1024
DETAIL_MAX = 500
#: Furthest a reported reset time may lie ahead, in s: Claude's limits reset within 5 hours or a week;
#: anything later (or earlier than now) is not believed (a session is untrusted, DESIGN §8).
LIMIT_HORIZON_S = 8 * 24 * 3600
#: What a ``StopFailure`` with this ``error`` is (Claude Code 2.1.330's hook input); any other error ends the
#: turn as ``idle`` with "turn failed: <error>".
RATE_LIMIT_ERROR = "rate_limit"
LOG_DIR = (".convocate", "logs")
ACTIVITY_LOG = "activity.log"
SUPERVISOR_LOG = "supervisor.log"
LOG_ROTATE_BYTES = 1 << 20
#: Most bytes of a log the agent reads for ``logs`` (the tail).
LOG_READ_MAX = 1 << 20
#: Modes of the report socket and of the directories above it (a local user is untrusted, DESIGN §8).
SOCKET_MODE = 0o660
RUN_DIR_MODE = 0o750
#: A Docker container ID as it appears in a cgroup path (cgroupfs ``/<parent>/<id>``, systemd ``docker-<id>.scope``).
_CONTAINER_ID = re.compile(r"^(?:docker-)?([0-9a-f]{64})(?:\.scope)?$")


@dataclass(frozen=True)
class Activity:
    """A session's activity state.

    Attributes:
        state: One of :data:`ACTIVITIES`, or ``""`` when nothing was reported yet.
        detail: The question (waiting), the progress message, or why it crashed.
        at: When it last changed, ns since the epoch.
        until: ``limited`` only: when the limit resets, or when the agent tries again (ns since the epoch).
    """

    state: str = ""
    detail: str = ""
    at: int = 0
    until: int = 0


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    return (value if isinstance(value, str) else str(value))[:DETAIL_MAX]


def limit_until(data: dict[str, Any], now: int, retry_s: float) -> int:
    """When a ``limited`` session's limit resets, in ns since the epoch.

    ``resets_at`` (epoch seconds, from the transcript) counts only as an
    integer within [now, now + :data:`LIMIT_HORIZON_S`]; anything else the
    session says is ignored, and the agent tries again ``retry_s`` from now.
    """
    resets = data.get("resets_at")
    if isinstance(resets, int) and not isinstance(resets, bool):
        at = resets * 1_000_000_000
        if now <= at <= now + LIMIT_HORIZON_S * 1_000_000_000:
            return at
    return now + int(retry_s * 1_000_000_000)


def next_activity(current: Activity, source: str, event: str, data: dict[str, Any], now: int, *,
                  limit_retry_s: float = 300.0) -> Activity | None:
    """The activity after one report, or None when the report does not change it.

    Rules: a prompt or a tool call means working; a notification (Claude Code
    asks for permission or input) or an ``ask`` means waiting, with its text,
    until the operator's next prompt; the end of a turn (Stop) otherwise means idle; the supervisor giving up means
    crashed; a clean exit means exited. Progress and explicit status reports
    set what they say. A turn ended by an API error (``StopFailure``, Claude
    Code 2.1.330) with ``error`` ``rate_limit`` means limited, with Claude's
    message and the reset time (:func:`limit_until`); any other API error
    (``authentication_failed``, ``overloaded``, ``billing_error``, ...) ends the
    turn as idle with "turn failed: <error>". Limited ends with the next
    prompt, tool call or turn, as every state does.

    Args:
        current: The activity before the report.
        source: ``hook``, ``mcp`` or ``supervisor``.
        event: The report's event.
        data: The report's data (untrusted).
        now: The time, ns since the epoch.
        limit_retry_s: When a limit's reset time is unknown, seconds until the agent tries again
            (agent setting ``limit_retry_s``).
    """
    new: tuple[str, str] | None = None
    until = 0
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
        elif event == "StopFailure":
            error = _text(data, "error")[:64] or "unknown"
            message = _text(data, "last_assistant_message")
            if error == RATE_LIMIT_ERROR:
                new = (LIMITED, message or "rate limited")
                until = limit_until(data, now, limit_retry_s)
            else:
                new = (IDLE, (f"turn failed: {error}" + (f" ({message})" if message else ""))[:DETAIL_MAX])
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
            until = current.until if new[0] == LIMITED else 0
    if new is None or (new[0], new[1], until) == (current.state, current.detail, current.until):
        return None
    return Activity(new[0], new[1], now, until)


class ReportError(BadRequest):
    """A report line that is not a report, or a sender that may not report (the error root's ``bad_request``)."""


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


# --- who is on the other end -------------------------------------------------------------------
@dataclass(frozen=True)
class PeerCredentials:
    """The kernel's word on a connected Unix socket's peer (``SO_PEERCRED``, unix(7)).

    Attributes:
        pid: The peer's PID at connect time, in the agent's PID namespace (0 if it is not visible there).
        uid: Its effective UID.
        gid: Its effective GID.
    """

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """``SO_PEERCRED`` of a connected ``AF_UNIX`` socket (``struct ucred``: three 32-bit ints)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return PeerCredentials(*struct.unpack("3i", raw))


def cgroup_container_ids(cgroup_text: str) -> set[str]:
    """Docker container IDs named in the paths of a ``/proc/<pid>/cgroup`` file (cgroups(7)).

    Each line is ``hierarchy-ID:controllers:path``; a container's processes sit
    in ``.../<id>`` (cgroupfs driver) or ``.../docker-<id>.scope`` (systemd driver).
    """
    found = set()
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        for part in path.split("/"):
            m = _CONTAINER_ID.match(part)
            if m:
                found.add(m.group(1))
    return found


def peer_refusal(peer: PeerCredentials, cgroup_text: str | None, container_id: str | None, *,
                 session_uid: int, agent_uid: int, agent_pid: int) -> str | None:
    """Why a peer may not report for a session, or None when it may.

    Args:
        peer: The peer's credentials.
        cgroup_text: The peer's ``/proc/<pid>/cgroup``, or None if it could not be read.
        container_id: The session's container ID, or None if it has none.
        session_uid: The session user's UID (1337).
        agent_uid: The agent's own UID.
        agent_pid: The agent's own PID (the agent may report for itself).

    Returns:
        A reason for the log, or None.
    """
    if peer.uid not in (session_uid, agent_uid):
        return f"uid {peer.uid} is neither the session user's ({session_uid}) nor the agent's ({agent_uid})"
    if peer.pid == agent_pid:
        return None
    if peer.pid <= 0:
        return "the peer's process is outside the agent's PID namespace and cannot be checked"
    if cgroup_text is None:
        return f"pid {peer.pid}'s cgroup cannot be read"
    ids = cgroup_container_ids(cgroup_text)
    if container_id is None or ids != {container_id}:
        where = ", ".join(sorted(i[:12] for i in ids)) or "no container"
        return f"pid {peer.pid} is in {where}, not in the session's container"
    return None


def _read_cgroup(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


# --- the sockets -----------------------------------------------------------------------------------
Report = Callable[[str, str, str, dict[str, Any]], None]
#: ``session_id`` → the ID of its container, or None when it has none.
ContainerOf = Callable[[str], Awaitable["str | None"]]


class ReportSockets:
    """One listening Unix socket per session.

    Args:
        paths: Installation layout (sockets under ``/run/convocate-agent/sessions/``).
        on_report: Called on the event loop with ``(session_id, source, event, data)``.
        uid: The session user's UID: owner of the socket and its directory, and a peer UID accepted.
        gid: The session user's GID: group of the socket and its directory.
        container_of: Looks up a session's container ID, to check that a peer lives in it.
            Without it only the agent's own process may report.
    """

    def __init__(self, paths: Paths, on_report: Report, *, uid: int = 1337, gid: int = 1337,
                 container_of: ContainerOf | None = None) -> None:
        self.paths = paths
        self.on_report = on_report
        self.uid = uid
        self.gid = gid
        self.container_of = container_of
        self._servers: dict[str, asyncio.AbstractServer] = {}
        self._containers: dict[str, str] = {}  # session → container ID last seen for it

    def directory(self, session_id: str) -> Path:
        return self.paths.session_run_dir(session_id)

    async def ensure(self, session_id: str) -> Path:
        """Listen on the session's socket (re-creating it if needed); returns the directory to mount."""
        validate_uuid(session_id)
        directory = self.directory(session_id)
        path = directory / SOCKET_NAME
        if session_id in self._servers and path.exists():
            return directory
        self.paths.agent_run_dir.mkdir(parents=True, exist_ok=True, mode=RUN_DIR_MODE)
        for d in (self.paths.agent_run_dir, directory.parent, directory):
            d.mkdir(exist_ok=True, mode=RUN_DIR_MODE)
            os.chmod(d, RUN_DIR_MODE)
            self._own(d)
        old = self._servers.pop(session_id, None)
        if old is not None:
            old.close()
        server = await asyncio.start_unix_server(lambda r, w: self._serve(session_id, r, w),
                                                 sock=_bind_in(directory, SOCKET_NAME, SOCKET_MODE))
        self._own(path)
        self._servers[session_id] = server
        return directory

    def _own(self, path: Path) -> None:
        """Give ``path`` the session user's group (an agent running as root must; the packaged one is that user)."""
        if os.geteuid() == 0:
            os.lchown(path, -1, self.gid)

    async def _peer_refusal(self, session_id: str, writer: asyncio.StreamWriter) -> str | None:
        """Why this connection's peer may not report for ``session_id`` (None: it may)."""
        sock = writer.get_extra_info("socket")
        try:
            peer = peer_credentials(sock)
        except (OSError, struct.error) as e:
            return f"no peer credentials: {e}"
        cgroup_text = _read_cgroup(peer.pid) if peer.pid > 0 and peer.pid != os.getpid() else None
        container_id = self._containers.get(session_id)
        if container_id is None or (cgroup_text is not None and container_id not in cgroup_container_ids(cgroup_text)):
            container_id = await self._lookup_container(session_id)
        return peer_refusal(peer, cgroup_text, container_id, session_uid=self.uid, agent_uid=os.getuid(),
                            agent_pid=os.getpid())

    async def _lookup_container(self, session_id: str) -> str | None:
        if self.container_of is None:
            return None
        try:
            container_id = await self.container_of(session_id)
        except Exception as e:  # noqa: BLE001 - Docker away: refuse the report, keep serving
            log.info("session %s: cannot look up its container to check a report's sender: %s", session_id, e)
            return None
        if container_id:
            self._containers[session_id] = container_id
        else:
            self._containers.pop(session_id, None)
        return container_id

    async def _serve(self, session_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reply: dict[str, Any] = {"ok": True}
        try:
            refusal = await self._peer_refusal(session_id, writer)
            if refusal is not None:
                log.warning("session %s: report refused: %s", session_id, refusal)
                raise ReportError(messages.REPORT_PEER_REFUSED)
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

    def write_credential_env(self, session_id: str, data: bytes | None) -> Path | None:
        """Write (or, for None, remove) the session's ``credential.env`` beside its socket.

        The file is 0600 and owned by the session user (an agent running as root gives it away;
        the packaged agent is that user), written atomically, so the container's entrypoint, and
        no other session, can read it through the read-only mount of this directory.

        Args:
            session_id: The session UUID (its directory must exist: :meth:`ensure` first).
            data: The file's bytes (convocate.common.credentials.render_env_file), or None.

        Returns:
            The file's path, or None when it was removed.

        Raises:
            OSError: the file could not be written.
        """
        path = self.paths.session_credential_env(session_id)
        if data is None:
            path.unlink(missing_ok=True)
            return None
        as_root = os.geteuid() == 0
        if not as_root and os.geteuid() != self.uid:
            log.warning("session %s: the agent runs as uid %d, not the session user %d: the session cannot read "
                        "its credential.env", session_id, os.geteuid(), self.uid)
        atomic_write(path, data, mode=0o600, uid=self.uid if as_root else None, gid=self.gid if as_root else None)
        return path

    def close(self, session_id: str) -> None:
        """Stop listening for a session and remove its socket directory."""
        server = self._servers.pop(session_id, None)
        if server is not None:
            server.close()
        self._containers.pop(session_id, None)
        directory = self.directory(session_id)
        with contextlib.suppress(FileNotFoundError):
            self.paths.session_credential_env(session_id).unlink()
        with contextlib.suppress(FileNotFoundError):
            (directory / SOCKET_NAME).unlink()
        with contextlib.suppress(OSError):
            directory.rmdir()

    def close_all(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()


def _bind_in(directory: Path, name: str, mode: int) -> socket.socket:
    """A Unix socket bound at ``directory/name`` with ``mode``, whatever the length of ``directory``.

    ``sun_path`` holds 108 bytes (unix(7)); binding through the directory's
    ``/proc/self/fd`` link keeps the path short under any relocated root. The
    directory is the agent's and 0750, so nobody else can swap the socket for
    a link between bind and chmod.
    """
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)  # left by an earlier run
        sock.bind(f"/proc/self/fd/{dir_fd}/{name}")
        os.chmod(f"/proc/self/fd/{dir_fd}/{name}", mode)
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dir_fd)
    return sock


def report_line(source: str, event: str, data: dict[str, Any]) -> str:
    """The activity-log line for a report: ``<RFC 3339> <source> <event> <json data>``."""
    return f"{format_rfc3339(now_ns())} {source} {event} {json.dumps(data, ensure_ascii=False)[:2000]}"
