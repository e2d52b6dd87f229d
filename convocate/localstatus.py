"""Read status-serve's copy of every agent's state from its local socket, without asyncio or SSH.

status-serve (:mod:`convocate.status_server`) starts every new subscriber of
``/run/convocate/status.sock`` with a replay: per known agent an ``agent.status``
(link up, stale, last seen) and an ``agent.sessions`` (its copy of the agent's own
``list``, ``capacity`` and ``ping`` answers, and whether that copy is current), then
``replay.done``. :func:`read_replay` reads that replay with a plain blocking socket
(issue 17: ``convocate ls`` and ``agents`` start without asyncio, asyncssh or
cryptography) and :func:`usable` says, per agent, whether the copy may answer for
the agent or the agent must be asked over SSH.

The rule (:func:`usable`), per agent of this shell's registry:

- the replay must have arrived (socket present, accepting, ``replay.done`` within
  :data:`REPLAY_TIMEOUT_S`), else every agent goes over SSH;
- the agent must be in it (status-serve has seen it since it started), its status
  link up (``connected``) and not ``stale`` (3 missed heartbeats);
- its ``agent.sessions`` must say ``current``: status-serve holds a ``list`` taken
  after the last session event it received from that agent (none pending or in
  flight), the refresh did not fail, and it is younger than 3 heartbeat intervals
  (status-serve refreshes it at every heartbeat too).

Any agent that fails one of these is asked over SSH, and only that agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convocate.common.fsutil import atomic_write
from convocate.common.paths import Paths
from convocate.common.timefmt import parse_rfc3339

#: The replay message holding status-serve's copy of one agent's ``list``, ``capacity`` and ``ping``.
AGENT_SESSIONS = "agent.sessions"
#: Seconds allowed to connect to the socket and read the whole replay.
REPLAY_TIMEOUT_S = 2.0
#: ``source`` of a row status-serve's copy answered, and of one the agent answered over SSH (``--json``).
SOURCE_STATUS = "status-serve"
SOURCE_AGENT = "agent"
#: Longest replay line accepted (the protocol's line limit, 1 MiB, plus its newline).
_LINE_MAX = (1 << 20) + 1


@dataclass
class Replay:
    """What status-serve's replay said.

    Attributes:
        status: Agent ID → the data of its ``agent.status``.
        sessions: Agent ID → the data of its ``agent.sessions``.
    """

    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_replay(paths: Paths, timeout: float = REPLAY_TIMEOUT_S) -> Replay | None:
    """Connect to status-serve's local socket and read its replay, up to ``replay.done``.

    Args:
        paths: Installation layout (``status_socket``).
        timeout: Seconds for the connect and the whole replay.

    Returns:
        The replay, or None when status-serve does not answer: no socket, nobody listening,
        this account may not use it (0660, group ``claude``), a line over 1 MiB, or no
        ``replay.done`` within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    replay = Replay()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(paths.status_socket))
        pending = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            chunk = sock.recv(1 << 20)
            if not chunk:
                return None  # closed before replay.done
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > _LINE_MAX:
                return None
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                kind, agent_id = message.get("type"), message.get("agent_id")
                data = message.get("data") if isinstance(message.get("data"), dict) else {}
                if kind == "replay.done":
                    return replay
                if isinstance(agent_id, str) and kind == "agent.status":
                    replay.status[agent_id] = data
                elif isinstance(agent_id, str) and kind == AGENT_SESSIONS:
                    replay.sessions[agent_id] = data
    except OSError:  # FileNotFoundError, ConnectionRefusedError, PermissionError, a timeout
        return None
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def _write_mark() -> Path:
    """This user's mark of the last change made from this shell host (read-your-writes for ``ls``)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache")
    return Path(base) / "convocate" / "last-write"


def note_write(agent_id: str | None = None) -> None:
    """Record that a change (a lifecycle op) was just answered: until status-serve lists the agents
    again after this moment, ``ls`` and ``agents`` ask the agents themselves, so a session made a moment
    ago is never missing (the agent's event may still be on its way to status-serve).

    With ``agent_id``, status-serve is then asked to list that agent again at once
    (:func:`ask_refresh`): its list taken for the agent's event may have been asked before this mark,
    and without the ask the copy would wait for the agent's next heartbeat (30 s). Never raises.
    """
    mark = _write_mark()
    with contextlib.suppress(OSError):
        mark.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(mark, str(time.time_ns()).encode(), mode=0o600)
    if agent_id is not None:
        ask_refresh(Paths.from_env(), agent_id)


def ask_refresh(paths: Paths, agent_id: str) -> None:
    """Ask status-serve to list ``agent_id`` again now: one ``{"refresh": ...}`` line on its local socket.

    The line is followed by EOF, and the replay status-serve sends is read and dropped until it
    closes: it closes once it has read to that EOF, so the ask has been taken when this returns.
    The list itself is not waited for (the next ``ls`` finds it, or asks the agent). Without
    status-serve, or when it does not answer within :data:`REPLAY_TIMEOUT_S`, nothing happens.
    Never raises.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(REPLAY_TIMEOUT_S)
        sock.connect(str(paths.status_socket))
        sock.sendall(json.dumps({"refresh": agent_id}).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + REPLAY_TIMEOUT_S
        while sock.recv(1 << 16) and time.monotonic() < deadline:
            pass
    except OSError:
        pass
    finally:
        sock.close()


def last_write_ns() -> int:
    """When :func:`note_write` last ran for this user (0: never, or unreadable)."""
    try:
        return int(_write_mark().read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def usable(replay: Replay | None, agent_id: str) -> tuple[dict[str, Any] | None, str]:
    """Whether status-serve's copy may answer for ``agent_id`` (the rule in the module docstring).

    Returns:
        ``(copy, "")`` with the ``agent.sessions`` data when it may, else ``(None, reason)``:
        why the agent must be asked over SSH (for ``--json`` and the tests).
    """
    if replay is None:
        return None, "status-serve did not answer"
    status = replay.status.get(agent_id)
    if status is None:
        return None, "status-serve has not seen this agent"
    if status.get("stale"):
        return None, "the agent is stale (missed 3 heartbeats)"
    if not status.get("connected"):
        return None, "the agent's status link is down"
    copy = replay.sessions.get(agent_id)
    if copy is None:
        return None, "status-serve holds no list of this agent"
    if not copy.get("current") or not isinstance(copy.get("sessions"), list):
        return None, str(copy.get("reason") or "status-serve's list of this agent is not current")
    listed = copy.get("listed_at")
    try:
        listed_ns = parse_rfc3339(listed) if isinstance(listed, str) else 0
    except ValueError:
        listed_ns = 0
    if listed_ns <= last_write_ns():
        return None, "a change made from here since status-serve's list (read your writes)"
    return copy, ""


def agent_mark(state: dict[str, Any], now_ns: int | None = None) -> str | None:
    """A one-line warning for an agent that is stale or whose status channel is down, else None."""
    if not state:
        return None
    seen = state.get("last_seen")
    ago = ""
    if isinstance(seen, str):
        try:
            seconds = ((now_ns or time.time_ns()) - parse_rfc3339(seen)) / 1e9
            ago = f", last event {seconds:.0f} s ago"
        except ValueError:
            pass
    if state.get("stale"):
        return f"stale (missed 3 heartbeats){ago}"
    if not state.get("connected"):
        return f"status channel down{ago}"
    return None
