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

:func:`convocate_agent.activityrules.next_activity` turns reports into the session's activity state:
``working``, ``waiting`` (for the operator, with the question), ``idle``,
``crashed`` (the supervisor gave up), ``exited``, or ``limited`` (a usage or
rate limit ended the turn; with the time it resets). Each report is also
appended to the session's ``~/.convocate/logs/activity.log`` (rotated at
1 MiB, :mod:`convocate_agent.sessionlogs`), which ``convocate logs`` shows
beside the supervisor's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convocate.common import messages
from convocate.common.errors import BadRequest
from convocate.common.framing import LineDecoder, LineTooLong
from convocate.common.fsutil import atomic_write
from convocate.common.model import validate_uuid
from convocate.common.paths import CLAUDE_GID, CLAUDE_UID, Paths

log = logging.getLogger(__name__)

SOCKET_NAME = "agent.sock"
REPORT_MAX = 64 * 1024
#: Modes of the report socket and of the directories above it (a local user is untrusted, DESIGN §8).
SOCKET_MODE = 0o660
RUN_DIR_MODE = 0o750
#: A Docker container ID as it appears in a cgroup path (cgroupfs ``/<parent>/<id>``, systemd ``docker-<id>.scope``).
_CONTAINER_ID = re.compile(r"^(?:docker-)?([0-9a-f]{64})(?:\.scope)?$")


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

    def __init__(self, paths: Paths, on_report: Report, *, uid: int = CLAUDE_UID, gid: int = CLAUDE_GID,
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
