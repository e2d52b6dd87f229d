"""``convocate status-serve``: the shell host's status listener (tcp/223) and local fan-out.

Agents connect with their ``agent_to_shell`` key (listed in
``status_authorized_keys``, re-read on change) and push events on the
``convocate-status`` subsystem. status-serve

- records each agent's last-seen time, version, image and capacity, and marks
  an agent stale after 3 missed heartbeats;
- fans every event out to local subscribers on the Unix socket
  ``/run/convocate/status.sock`` (group ``claude``, 0660) as newline JSON,
  starting each new subscriber with a replay of every agent's latest state
  (``agent.status``) and a ``replay.done`` marker; lines go out in batches,
  and a subscriber that falls 16 MiB behind is disconnected, never waited for;
- keeps the dnsmasq hosts file in step with the sessions' DNS names, from the
  events and from a ``list`` of the agent after each ``agent.started``;
- keeps a copy of each agent's own ``list``, ``capacity`` and ``ping`` answers,
  taken again after every session event and every heartbeat (one refresh at a time
  per agent), and replays it to each new subscriber as ``agent.sessions`` with
  ``current`` saying whether it may answer for the agent (issue 17: ``convocate ls``
  and ``agents`` read it, :mod:`convocate.localstatus`).

Every session is untrusted, and so is what an agent says for it (issue 14):

- a status key speaks for the one agent whose registry entry holds it
  (``/etc/convocate/agents/<id>/status_ed25519_key.pub``, recorded by
  ``convocate-host init-agent`` or ``update``), never for the agent its
  ``status_authorized_keys`` comment names; a key no entry holds is refused;
  an event claiming another agent is refused and logged;
- every event's fields are checked for type and size (:func:`check_event`), the
  DNS name by :func:`convocate.common.model.validate_dns_name` inside the
  cluster's domain; a bad event is refused and logged, and the link stays up;
- the hosts file is rendered whole from the state, never from event text;
- an agent's links are counted per connection: a second connection with the
  same key ending does not mark the live one down;
- a local subscriber may send nothing but newline-terminated lines; one that sends
  :data:`SUBSCRIBER_INPUT_MAX` bytes without a newline is disconnected. The one line
  that does something is ``{"refresh": "<agent-id>"}`` of a known agent: list that
  agent again now (a CLI that just changed something there asks for it, so that its
  next ``ls`` reads the copy instead of the agent, issue 17); refreshes of an agent
  run one at a time, so asking again and again costs one list in flight. Anything
  else is discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from convocate.client import AgentClient
from convocate.common import keys, startinputs
from convocate.common.constants import STATUS_PORT
from convocate.common.daemon import serve_until_signalled
from convocate.common.errors import BadRequest, ConfigError, ConvocateError, ProtocolError
from convocate.common.fsutil import read_token
from convocate.common.model import SessionView, is_uuid4, validate_dns_name
from convocate.common.paths import CLAUDE_USER, Paths
from convocate.common.protocol import (
    AGENT_HEARTBEAT,
    AGENT_SHUTDOWN,
    AGENT_STARTED,
    AGENT_STATUS,
    CONTAINER_CREATED,
    CONTAINER_DELETED,
    CONTAINER_EDITED,
    CONTAINER_STARTED,
    CONTAINER_STOPPED,
    EVENT_TYPES,
    REPLAY_DONE,
    SESSION_ACTIVITY,
    SESSION_ATTACHED,
    SESSION_DETACHED,
    STATUS_SUBSYSTEM,
    Event,
    LineTooLong,
    decode_object,
    encode_line,
    read_frame_batches,
)
from convocate.common.sshserver import Caller, SubsystemListener, format_address
from convocate.common.timefmt import format_rfc3339, now_ns, parse_rfc3339
from convocate.common.version import __version__
from convocate.dns import HostRecord, HostsFile, is_ip, one_per_session
from convocate.localstatus import AGENT_SESSIONS
from convocate.registry import AGENT_ID, load_agent, status_key_bindings

log = logging.getLogger(__name__)

#: Missed heartbeats after which a silent agent is stale.
STALE_AFTER_HEARTBEATS = 3
#: Bytes of messages a slow local subscriber may fall behind before it is dropped (16 MiB). A size,
#: not a count: one message may be up to 1 MiB, and a subscriber that keeps up still sees a burst of
#: every agent's batch (AGENT_BATCH_BYTES each) between two turns of its writer.
SUBSCRIBER_BACKLOG_BYTES = 16 << 20
#: Bytes of an agent's events handled between two yields to the loop (about 70 heartbeats), so that
#: neither one busy agent nor a large read holds up the other agents and the local socket's writer:
#: the loop turns every few ms, and each turn's fan-out stays smaller than a Unix socket's send buffer.
AGENT_BATCH_BYTES = 8 * 1024
DEFAULT_DOMAIN = "convocate.internal"
#: Bytes a local subscriber may send without a newline before it is disconnected (64 KiB). What they
#: send is read in chunks and thrown away but for refresh lines, so this bounds one line only.
SUBSCRIBER_INPUT_MAX = 64 * 1024
#: Longest subscriber line read as a request (``{"refresh": "<agent-id>"}`` is 24 bytes).
REFRESH_LINE_MAX = 256
#: Event types that concern one session: they need a ``session_id`` (a UUIDv4).
SESSION_EVENTS = frozenset({CONTAINER_CREATED, CONTAINER_EDITED, CONTAINER_STARTED, CONTAINER_STOPPED,
                            CONTAINER_DELETED, SESSION_ATTACHED, SESSION_DETACHED, SESSION_ACTIVITY})
#: Event types whose data is the session's metadata, ``dns_name`` included.
METADATA_EVENTS = frozenset({CONTAINER_CREATED, CONTAINER_EDITED, CONTAINER_STARTED})
#: Longest ``timestamp`` (RFC 3339 with nanoseconds and an offset is 35 characters).
TIMESTAMP_MAX = 64
#: Longest ``version`` and ``image`` of ``agent.started`` (a Docker reference is at most 255 characters).
STARTED_TEXT_MAX = 256


def check_event(event: Event, domain: str | None) -> None:
    """Check every field of an agent's event for type and size before anything of it is used.

    Args:
        event: The parsed event.
        domain: The cluster's DNS domain, for :func:`validate_dns_name`.

    Raises:
        BadRequest: a field breaks its rule; the message says which (and is safe to log: values are repr'd).
    """
    def bad(what: str) -> BadRequest:
        return BadRequest(f"event {event.type[:64]!r}: {what}")

    if event.type not in EVENT_TYPES:
        raise bad("not an event type agents send")
    if not AGENT_ID.match(event.agent_id):
        raise bad(f"agent_id {event.agent_id[:64]!r} is not 8 of a-z and 0-9")
    if event.type in SESSION_EVENTS:
        if event.session_id is None or not is_uuid4(event.session_id):
            raise bad(f"session_id {str(event.session_id)[:64]!r} is not a UUIDv4")
    elif event.session_id is not None:
        raise bad("an agent event carries no session_id")
    if len(event.timestamp) > TIMESTAMP_MAX:
        raise bad(f"timestamp longer than {TIMESTAMP_MAX} characters")
    try:
        parse_rfc3339(event.timestamp)
    except (TypeError, ValueError) as e:
        raise bad(f"timestamp {event.timestamp!r} is not RFC 3339: {e}") from e
    if event.data is not None and not isinstance(event.data, dict):
        raise bad(f"data must be an object, got {type(event.data).__name__}")
    data = event.data or {}
    if event.type == AGENT_STARTED:
        for name in ("version", "image"):
            value = data.get(name, "")
            if not isinstance(value, str) or len(value) > STARTED_TEXT_MAX:
                raise bad(f"data.{name} must be a string of at most {STARTED_TEXT_MAX} characters")
        if not isinstance(data.get("capacity", {}), dict):
            raise bad("data.capacity must be an object")
    for name in ("heartbeat_interval_s", "interval_s"):
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad(f"data.{name} must be a number")
    if event.type in METADATA_EVENTS:
        uuid = data.get("uuid", event.session_id)
        if uuid != event.session_id:
            raise bad(f"data.uuid {str(uuid)[:64]!r} is not the event's session_id")
        validate_dns_name(data.get("dns_name", "") or "", domain)


@dataclass
class StatusConfig:
    """Everything ``convocate status-serve`` needs.

    Attributes:
        paths: Installation layout (``CONVOCATE_ROOT`` aware).
        listen: ``HOST:PORT`` of the SSH listener; ``:223`` is every address, port 223.
        domain: Cluster DNS domain (``/etc/convocate/domain``, else ``convocate.internal``).
        dnsmasq_pid_file: dnsmasq's PID file for reloads; None to never signal it.
        socket_group: Group given the local socket.
        shutdown_timeout: Seconds the whole shutdown may take (under the unit's ``TimeoutStopSec=30s``).
    """

    paths: Paths
    listen: str = f":{STATUS_PORT}"
    domain: str | None = None
    dnsmasq_pid_file: Path | None = Path("/run/dnsmasq/dnsmasq.pid")
    socket_group: str = CLAUDE_USER
    shutdown_timeout: float = 20.0

    def __post_init__(self) -> None:
        if self.domain is None:
            self.domain = read_token(self.paths.shell_domain_file) or DEFAULT_DOMAIN


@dataclass
class AgentState:
    """What the shell knows about one agent.

    Attributes:
        agent_id: The agent's ID.
        connected: A status connection is open.
        stale: No event for more than 3 heartbeat intervals.
        last_seen_ns: Wall time of the last event (ns since the epoch), 0 if never.
        last_seen_mono: Monotonic time of the last event.
        version: From ``agent.started``.
        image: Current image tag, from ``agent.started``.
        capacity: From ``agent.started``.
        heartbeat_interval_s: From ``agent.started`` (30 until told).
        peer: Address of the status connection.
        sessions: Session UUID → DNS name (``""`` for none).
        running: The UUIDs of its sessions whose container runs (from events and each listing).
        links: The open status connections of this agent (one token each); connected while any is.
        listing: The agent's last ``list`` answer (wire metadata), None before the first.
        listing_extra: ``capacity`` and ``ping`` answers taken with it.
        listed_ns: Wall time the listing was asked for (ns since the epoch).
        listed_mono: Monotonic time the listing was asked for.
        listing_pending: A session event (or a heartbeat) came after the listing was asked for:
            the listing may be behind, another is due.
        listing_error: Why the last refresh failed (``""`` when it did not).
        refresh_mono: Monotonic time of the last refresh attempt.
    """

    agent_id: str
    connected: bool = False
    stale: bool = False
    last_seen_ns: int = 0
    last_seen_mono: float = 0.0
    version: str = ""
    image: str = ""
    capacity: dict[str, Any] = field(default_factory=dict)
    heartbeat_interval_s: float = 30.0
    peer: str = ""
    sessions: dict[str, str] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    links: set[object] = field(default_factory=set)
    listing: list[dict[str, Any]] | None = None
    listing_extra: dict[str, Any] = field(default_factory=dict)
    listed_ns: int = 0
    listed_mono: float = 0.0
    listing_pending: bool = False
    listing_error: str = ""
    refresh_mono: float = 0.0

    def listing_reason(self, now_mono: float, stale_after: int) -> str:
        """Why the listing may not answer for the agent now; ``""`` when it may (it is current)."""
        if self.listing is None:
            return self.listing_error or "status-serve has not listed this agent yet"
        if self.listing_error:
            return f"status-serve's last list of this agent failed: {self.listing_error}"
        if self.listing_pending:
            return "a session event came after status-serve's last list of this agent"
        if now_mono - self.listed_mono > stale_after * self.heartbeat_interval_s:
            return f"status-serve's list of this agent is older than {stale_after} heartbeats"
        return ""

    def sessions_message(self, now_mono: float, stale_after: int) -> dict[str, Any]:
        """The replay's ``agent.sessions``: the copy of the agent's answers and whether it is ``current``."""
        reason = self.listing_reason(now_mono, stale_after)
        return Event.now(AGENT_SESSIONS, self.agent_id, data={
            "current": not reason,
            "reason": reason,
            "listed_at": format_rfc3339(self.listed_ns) if self.listed_ns else None,
            "sessions": self.listing,
            "capacity": self.listing_extra.get("capacity"),
            "ping": self.listing_extra.get("ping"),
        }).to_wire()

    def status_message(self) -> dict[str, Any]:
        """The shell-local ``agent.status`` message for subscribers."""
        return Event.now(AGENT_STATUS, self.agent_id, data={
            "connected": self.connected,
            "stale": self.stale,
            "last_seen": format_rfc3339(self.last_seen_ns) if self.last_seen_ns else None,
            "version": self.version,
            "image": self.image,
            "capacity": self.capacity,
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "peer": self.peer,
        }).to_wire()


class SubscriberQueue(asyncio.Queue):  # type: ignore[type-arg]
    """One local subscriber's pending lines, bounded by their total size rather than their number.

    Holds encoded lines (bytes, newline included); ``None`` last means "close the connection".
    :meth:`put_nowait` raises ``asyncio.QueueFull`` once :attr:`pending_bytes` has reached the limit.
    :attr:`ready` is set while the queue holds anything, for a writer that must wait for lines
    without taking one out (``get()`` would hold a line outside the queue while the writer sleeps).

    Args:
        limit_bytes: Total size of the pending lines at which the queue counts as full.
    """

    def __init__(self, limit_bytes: int) -> None:
        super().__init__()
        self.limit_bytes = limit_bytes
        self.pending_bytes = 0
        self.ready = asyncio.Event()
        self._closing = False

    def full(self) -> bool:
        """Whether the pending lines reached the limit (never once cut off: the end marker must fit)."""
        return not self._closing and self.pending_bytes >= self.limit_bytes

    @property
    def closing(self) -> bool:
        """Whether :meth:`cut_off` was called (the end marker is queued)."""
        return self._closing

    def cut_off(self) -> None:
        """End the subscriber: it gets what is already queued, then its connection closes."""
        self._closing = True
        self.put_nowait(None)

    def _put(self, item: bytes | None) -> None:
        super()._put(item)  # type: ignore[misc]
        self.pending_bytes += len(item or b"")
        self.ready.set()

    def _get(self) -> bytes | None:
        item = super()._get()  # type: ignore[misc]
        self.pending_bytes -= len(item or b"")
        if self.empty():
            self.ready.clear()
        return item


class StatusHub:
    """Agent states and event fan-out, without sockets (the pure part of status-serve).

    Args:
        stale_after: Missed heartbeats before an agent is stale.
        clock: Monotonic clock (seconds), replaceable in tests.
        backlog_bytes: How far (bytes) a subscriber may fall behind before it is cut off.
    """

    def __init__(self, stale_after: int = STALE_AFTER_HEARTBEATS, clock: Any = time.monotonic,
                 backlog_bytes: int = SUBSCRIBER_BACKLOG_BYTES) -> None:
        self.stale_after = stale_after
        self.clock = clock
        self.backlog_bytes = backlog_bytes
        self.agents: dict[str, AgentState] = {}
        self.subscribers: set[SubscriberQueue] = set()

    def agent(self, agent_id: str) -> AgentState:
        """The state of ``agent_id``, created on first mention."""
        state = self.agents.get(agent_id)
        if state is None:
            state = self.agents[agent_id] = AgentState(agent_id)
        return state

    def broadcast(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for every subscriber; one that is too far behind is cut off."""
        if not self.subscribers:
            return
        line = encode_line(message)
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(line)
            except asyncio.QueueFull:
                log.warning("status socket: a subscriber fell %d bytes behind; disconnecting it",
                            queue.pending_bytes)
                self.subscribers.discard(queue)
                queue.cut_off()

    def subscribe(self) -> SubscriberQueue:
        """A new subscriber queue, already holding the replay and ``replay.done``."""
        queue = SubscriberQueue(self.backlog_bytes)
        now = self.clock()
        for state in sorted(self.agents.values(), key=lambda a: a.agent_id):
            queue.put_nowait(encode_line(state.status_message()))
            message = state.sessions_message(now, self.stale_after)
            try:
                line = encode_line(message)
            except ProtocolError:  # over the 1 MiB line limit: the readers ask the agent instead
                message["data"].update(current=False, sessions=None, reason="the list is over the line limit")
                line = encode_line(message)
            queue.put_nowait(line)
        queue.put_nowait(encode_line({"type": REPLAY_DONE, "timestamp": format_rfc3339(now_ns())}))
        self.subscribers.add(queue)
        return queue

    def connected(self, agent_id: str, peer: str, link: object = None) -> None:
        """A status connection of ``agent_id`` opened (``link``: its token, one per connection)."""
        state = self.agent(agent_id)
        state.links.add(link)
        state.connected, state.peer = True, peer
        self.broadcast(state.status_message())

    def disconnected(self, agent_id: str, link: object = None) -> int:
        """The connection ``link`` of ``agent_id`` ended; the agent is down once none is left.

        Returns:
            How many connections of the agent are still open.
        """
        state = self.agent(agent_id)
        state.links.discard(link)
        if not state.links:
            state.connected = False
            self.broadcast(state.status_message())
        return len(state.links)

    def record(self, event: Event) -> bool:
        """Apply an agent's event to its state and fan it out.

        Returns:
            True if the event changed a session's DNS name (the hosts file needs updating).
        """
        state = self.agent(event.agent_id)
        was_stale = state.stale
        state.last_seen_ns, state.last_seen_mono, state.stale = now_ns(), self.clock(), False
        dns_changed = False
        data = event.data if isinstance(event.data, dict) else {}
        if event.type == AGENT_STARTED:
            state.version = str(data.get("version", ""))
            state.image = str(data.get("image", ""))
            state.capacity = data.get("capacity") if isinstance(data.get("capacity"), dict) else {}
            interval = data.get("heartbeat_interval_s")
            if isinstance(interval, (int, float)) and interval > 0:
                state.heartbeat_interval_s = float(interval)
        elif event.type == AGENT_HEARTBEAT:
            interval = data.get("interval_s")
            if isinstance(interval, (int, float)) and interval > 0:
                state.heartbeat_interval_s = float(interval)
        elif event.type in (CONTAINER_CREATED, CONTAINER_EDITED, CONTAINER_STARTED) and event.session_id:
            name = str(data.get("dns_name", "") or "").lower()  # checked by check_event before
            dns_changed = (state.sessions.get(event.session_id) or "") != name
            state.sessions[event.session_id] = name
        elif event.type == CONTAINER_DELETED and event.session_id:
            dns_changed = bool(state.sessions.pop(event.session_id, ""))
        if event.session_id and event.type in (CONTAINER_STARTED, CONTAINER_STOPPED, CONTAINER_DELETED):
            was = event.session_id in state.running
            (state.running.add if event.type == CONTAINER_STARTED else state.running.discard)(event.session_id)
            # which copy of a session two agents hold has the record follows which one runs
            dns_changed |= was != (event.session_id in state.running) and self.held_elsewhere(state, event.session_id)
        if event.type in SESSION_EVENTS or event.type in (AGENT_STARTED, AGENT_SHUTDOWN):
            state.listing_pending = True  # the copy of its list is behind until listed again
        self.broadcast(event.to_wire())
        if was_stale or event.type in (AGENT_STARTED, AGENT_SHUTDOWN):
            self.broadcast(state.status_message())
        return dns_changed

    def wants_refresh(self, event: Event) -> bool:
        """Whether ``event`` (just recorded) calls for a new list of its agent: a session event,
        ``agent.started``, or a heartbeat when the last refresh is half a heartbeat old or more."""
        state = self.agent(event.agent_id)
        if state.listing_pending and event.type != AGENT_SHUTDOWN:
            return True
        return (event.type == AGENT_HEARTBEAT
                and self.clock() - state.refresh_mono >= state.heartbeat_interval_s / 2)

    def held_elsewhere(self, state: AgentState, session_id: str) -> bool:
        """Whether another agent than ``state``'s holds ``session_id`` too (a move in progress)."""
        return any(session_id in other.sessions for other in self.agents.values() if other is not state)

    def running_copies(self) -> set[tuple[str, str]]:
        """``(agent_id, session_id)`` of every session copy known to run."""
        return {(state.agent_id, sid) for state in self.agents.values() for sid in state.running}

    def resync(self, agent_id: str, sessions: list[SessionView]) -> bool:
        """Replace an agent's session DNS names with a fresh ``list``; True if a record may change
        (a name, or which copy of a session two agents hold runs)."""
        state = self.agent(agent_id)
        fresh = {v.meta.uuid: v.meta.dns_name for v in sessions}
        running = {v.meta.uuid for v in sessions if v.running}
        changed = {k: v for k, v in fresh.items() if v} != {k: v for k, v in state.sessions.items() if v}
        changed |= any(self.held_elsewhere(state, sid) for sid in running ^ state.running)
        state.sessions, state.running = fresh, running
        return changed

    def valid_names(self, sessions: list[SessionView], domain: str | None) -> list[SessionView]:
        """``sessions`` with every DNS name :func:`validate_dns_name` refuses cleared (and logged)."""
        kept = []
        for view in sessions:
            try:
                validate_dns_name(view.meta.dns_name, domain)
            except BadRequest as e:
                log.warning("dns: agent %s lists session %s with a name it may not publish: %s",
                            view.agent_id, view.meta.uuid, e)
                view = dataclasses.replace(view, meta=view.meta.with_changes(dns_name=""))
            kept.append(view)
        return kept

    def check_stale(self) -> None:
        """Mark agents silent for more than ``stale_after`` heartbeats as stale and tell subscribers."""
        now = self.clock()
        for state in self.agents.values():
            if state.stale or not state.last_seen_mono:
                continue
            if now - state.last_seen_mono > self.stale_after * state.heartbeat_interval_s:
                state.stale = True
                log.warning("agent %s is stale: silent for %.0f s", state.agent_id, now - state.last_seen_mono)
                self.broadcast(state.status_message())


@dataclass(eq=False)  # hashed by identity: one token per connection in AgentState.links
class _AgentLink:
    """One agent's status channel: who opened it and the agent ID its key is bound to in the registry."""

    caller: Caller
    agent_id: str
    peer_ip: str


def take_all(queue: asyncio.Queue[bytes | None]) -> list[bytes | None]:
    """Everything ``queue`` holds now, without waiting (one write per batch, not per message)."""
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


class StatusServer:
    """The status listener, the local socket, stale detection and DNS, until shut down.

    Args:
        config: The settings to run with.
    """

    def __init__(self, config: StatusConfig) -> None:
        self.config = config
        self.hub = StatusHub()
        self.hosts = HostsFile(config.paths.dnsmasq_hosts, config.domain or "", config.dnsmasq_pid_file)
        self.listener: SubsystemListener | None = None
        self._unix: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clients: dict[str, AgentClient] = {}
        self._refreshing: set[str] = set()
        self._local: dict[SubscriberQueue, asyncio.StreamWriter] = {}
        self._addresses: dict[str, str] = {}
        self._dns_lock = asyncio.Lock()

    async def start(self) -> list[tuple[str, int]]:
        """Open the local socket and the SSH listener; returns the bound listener addresses.

        Raises:
            ConfigError: the status host key is missing or invalid.
            OSError: an address or the socket path cannot be bound.
        """
        paths = self.config.paths
        started_with = startinputs.digest(paths.shell_start_inputs())
        if not paths.status_host_key.exists():
            raise ConfigError(f"{paths.status_host_key} is missing: run `convocate-host init-shell`, "
                              "which creates the status host key")
        host_key = keys.load_private_key(paths.status_host_key)
        await self._open_socket()
        self.listener = SubsystemListener(
            listen=self.config.listen, default_port=STATUS_PORT, host_key=host_key,
            authorized_keys=paths.status_authorized_keys, subsystems=frozenset({STATUS_SUBSYSTEM}),
            handler=self._handle, server_version=f"convocate-status_{__version__}",
        )
        addresses = await self.listener.start()
        self._spawn(self._stale_loop())
        await self._update_dns()
        for addr in addresses:
            log.info("convocate status-serve %s listening on %s; local socket %s; dns %s (domain %s)",
                     __version__, format_address(addr), paths.status_socket, paths.dnsmasq_hosts, self.config.domain)
        try:
            startinputs.record(paths.run_dir, started_with)
        except OSError as e:  # only dpkg-reconfigure's restart decision needs it
            log.warning("cannot record what status-serve started with in %s: %s", paths.run_dir, e)
        return addresses

    async def _open_socket(self) -> None:
        path = self.config.paths.status_socket
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a socket file left by a previous run
        self._unix = await asyncio.start_unix_server(self._subscriber, path=str(path))
        os.chmod(path, 0o660)
        try:
            os.chown(path, -1, grp.getgrnam(self.config.socket_group).gr_gid)
        except KeyError:
            log.info("group %s does not exist; %s keeps the group of its creator", self.config.socket_group, path)
        except PermissionError as e:
            log.warning("cannot give %s to group %s: %s", path, self.config.socket_group, e)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- agents ---------------------------------------------------------------------------
    def _handle(self, process: asyncssh.SSHServerProcess, caller: Caller) -> Any:
        return self._spawn(self._serve_agent(process, caller))

    async def _serve_agent(self, process: asyncssh.SSHServerProcess, caller: Caller) -> None:
        agent_id = (await asyncio.to_thread(status_key_bindings, self.config.paths)).get(caller.fingerprint)
        if agent_id is None:
            log.warning("status: refused a link from %s: key %s is bound to no agent in %s (run `convocate-host "
                        "init-agent` or `update` for the agent, which records its status key there)",
                        caller.peer, caller.fingerprint, self.config.paths.agents_dir)
            with contextlib.suppress(Exception):
                process.exit(1)
            return
        link = _AgentLink(caller, agent_id, caller.peer.rsplit(":", 1)[0].strip("[]"))
        self.hub.connected(agent_id, caller.peer, link)
        try:
            # Whole reads (READ_CHUNK: what the channel holds), handled a batch at a time.
            async for frames in read_frame_batches(process.stdin, batch_bytes=AGENT_BATCH_BYTES):
                for frame in frames:
                    self._take(link, frame)
                self._flush_local()
                # A read that finds data returns without suspending: yield, or this agent
                # would hold the loop for as long as it keeps sending.
                await asyncio.sleep(0)
        except (OSError, asyncssh.Error) as e:
            log.info("status: connection from %s ended: %s", caller, e)
        finally:
            still_open = self.hub.disconnected(agent_id, link)
            if still_open:
                log.info("status: a link of agent %s from %s closed; %d still open", agent_id, caller.peer,
                         still_open)
            else:
                log.info("status: agent %s disconnected", agent_id)
            with contextlib.suppress(Exception):
                process.exit(0)

    def _take(self, link: _AgentLink, frame: bytes | LineTooLong) -> None:
        """Handle one line from an agent: parse, check the agent ID, record and fan out."""
        if isinstance(frame, LineTooLong):
            log.warning("status: %s sent an oversized line; ignored", link.caller)
            return
        try:
            event = Event.parse(frame)
        except BadRequest as e:
            log.warning("status: %s sent a bad event: %s", link.caller, e)
            return
        if event.agent_id != link.agent_id:
            log.warning("status: refused an event claiming agent %r on the connection of agent %s (key %s)",
                        event.agent_id[:64], link.agent_id, link.caller.fingerprint)
            return
        try:
            check_event(event, self.config.domain)
        except BadRequest as e:
            log.warning("status: refused an event of agent %s: %s", link.agent_id, e)
            return
        if link.agent_id not in self._addresses:
            self._addresses[link.agent_id] = link.peer_ip
        try:
            dns_changed = self.hub.record(event)
        except ProtocolError as e:  # its rendering for the local socket is over the line limit
            log.warning("status: event %s of agent %s not passed on: %s", event.type, link.agent_id, e)
            return
        if dns_changed:
            self._spawn(self._update_dns())
        if self.hub.wants_refresh(event):
            self._want_listing(link.agent_id)

    def _want_listing(self, agent_id: str) -> None:
        """List the agent again; one refresh at a time per agent, which repeats while events keep coming."""
        self.hub.agent(agent_id).listing_pending = True
        if agent_id not in self._refreshing:
            self._refreshing.add(agent_id)
            self._spawn(self._resync(agent_id))

    async def _resync(self, agent_id: str) -> None:
        """Take the agent's ``list``, ``capacity`` and ``ping`` again, until no event came during one.

        The sessions' DNS names follow the list (events may have been dropped), and the answers
        are the copy the replay's ``agent.sessions`` carries. A failure leaves the copy marked
        not current until the next event or heartbeat asks again.
        """
        state = self.hub.agent(agent_id)
        try:
            client = self._clients.get(agent_id)
            if client is None:
                try:
                    client = self._clients[agent_id] = AgentClient(load_agent(self.config.paths, agent_id))
                except ConfigError as e:
                    log.info("status: agent %s is not in the registry (%s); DNS follows its events only", agent_id, e)
                    state.listing_error = f"not in the shell's registry ({e})"
                    state.listing_pending = False
                    state.refresh_mono = self.hub.clock()
                    return
            while state.listing_pending:
                state.listing_pending = False
                asked_ns, asked_mono = now_ns(), self.hub.clock()
                state.refresh_mono = asked_mono
                try:
                    result, capacity, ping = await asyncio.gather(client.call("list"), client.call("capacity"),
                                                                  client.call("ping"))
                    if not isinstance(result, list):
                        raise ProtocolError(f"list returned {type(result).__name__}")
                    views = [SessionView.from_wire(obj, agent_id) for obj in result]
                except (ConvocateError, BadRequest) as e:
                    log.warning("status: cannot list agent %s: %s", agent_id, e)
                    state.listing_error = str(e) or type(e).__name__
                    state.listing_pending = False
                    return
                state.listing, state.listing_extra = result, {"capacity": capacity, "ping": ping}
                state.listed_ns, state.listed_mono, state.listing_error = asked_ns, asked_mono, ""
                if self.hub.resync(agent_id, self.hub.valid_names(views, self.config.domain)):
                    await self._update_dns()
        finally:
            self._refreshing.discard(agent_id)

    async def _agent_address(self, agent_id: str) -> str | None:
        """The agent host's IP: the registry's address (resolved if a name), else its status peer address."""
        try:
            address = load_agent(self.config.paths, agent_id).address
        except ConfigError:
            return self._addresses.get(agent_id)
        if is_ip(address):
            return address
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(address, None, type=socket.SOCK_STREAM)
            return infos[0][4][0]
        except OSError as e:
            log.warning("dns: cannot resolve agent %s address %s: %s", agent_id, address, e)
            return self._addresses.get(agent_id)

    async def _update_dns(self) -> None:
        async with self._dns_lock:
            records: list[HostRecord] = []
            for state in list(self.hub.agents.values()):
                names = {sid: name for sid, name in state.sessions.items() if name}
                if not names:
                    continue
                address = await self._agent_address(state.agent_id)
                if address is None:
                    continue
                records += [HostRecord(address, name, state.agent_id, sid) for sid, name in names.items()]
            records = one_per_session(records, self.hub.running_copies())
            try:
                await asyncio.to_thread(self.hosts.update, records)
            except OSError as e:
                log.error("dns: cannot write %s: %s", self.hosts.path, e)

    async def _stale_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.hub.check_stale()

    # --- local subscribers -------------------------------------------------------------------
    def _flush_local(self) -> None:
        """Write each subscriber's queued lines to its socket now, if the socket took all written before.

        Each subscriber's writer task wakes once per turn of the loop, and one wake moves at most one
        socket buffer (about 200 KiB) to the kernel; with many busy agents a turn can queue more.
        Flushing after every agent batch too keeps the local socket in step, while a subscriber that
        does not read still fills its transport buffer and is left to its writer's ``drain``.
        """
        for queue, writer in self._local.items():
            if queue.empty() or queue.closing or writer.transport.get_write_buffer_size():
                continue
            writer.write(b"".join(take_all(queue)))  # type: ignore[arg-type]

    async def _read_input(self, reader: asyncio.StreamReader) -> None:
        """Read what a subscriber sends, in chunks; act on refresh lines, throw the rest away; return at
        EOF or a runaway line.

        A line is acted on only when it is whole within one chunk and at most :data:`REFRESH_LINE_MAX`
        bytes: ``{"refresh": AGENT_ID}`` of an agent status-serve knows lists that agent again. Nothing
        else is kept, so memory stays bounded by one chunk. A subscriber that sends
        :data:`SUBSCRIBER_INPUT_MAX` bytes without a newline is told off in the log and disconnected.
        """
        since_newline = 0
        while chunk := await reader.read(SUBSCRIBER_INPUT_MAX):
            for line in chunk.split(b"\n")[:-1]:
                if len(line) <= REFRESH_LINE_MAX:
                    self._refresh_asked(line)
            end = chunk.rfind(b"\n")
            since_newline = len(chunk) - end - 1 if end >= 0 else since_newline + len(chunk)
            if since_newline >= SUBSCRIBER_INPUT_MAX:
                log.warning("status socket: a subscriber sent %d bytes without a newline; disconnecting it",
                            since_newline)
                return

    def _refresh_asked(self, line: bytes) -> None:
        """A subscriber's ``{"refresh": AGENT_ID}``: list that agent again (an unknown agent or another line: nothing)."""
        try:
            message = decode_object(line, what="subscriber line")
        except BadRequest:
            return
        agent_id = message.get("refresh")
        if isinstance(agent_id, str) and agent_id in self.hub.agents:
            self._want_listing(agent_id)

    async def _subscriber(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue = self.hub.subscribe()
        self._local[queue] = writer
        gone = asyncio.ensure_future(self._read_input(reader))  # returns when they left or misbehaved
        try:
            while not gone.done():
                if queue.empty():
                    ready = asyncio.ensure_future(queue.ready.wait())
                    done, _ = await asyncio.wait({ready, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if ready not in done:
                        ready.cancel()
                        return
                lines = take_all(queue)  # all at once, and in the same step as the write: order is kept
                end = lines.index(None) if None in lines else len(lines)
                if lines[:end]:
                    writer.write(b"".join(lines[:end]))  # type: ignore[arg-type]
                    await writer.drain()
                if end < len(lines):
                    return
        except (ConnectionError, OSError):
            return
        finally:
            gone.cancel()
            self.hub.subscribers.discard(queue)
            self._local.pop(queue, None)
            writer.close()

    # --- lifetime --------------------------------------------------------------------------
    async def serve(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then shut down (:func:`.serve_until_signalled`).

        The shutdown may take ``config.shutdown_timeout`` seconds; a second signal during it ends
        status-serve at once.

        Raises:
            ConfigError: see :meth:`start`.
            OSError: see :meth:`start`.
        """
        await serve_until_signalled(self.start, self.shutdown, name="convocate status-serve",
                                    shutdown_timeout_s=self.config.shutdown_timeout)

    async def shutdown(self) -> None:
        """Close the listener, the local socket and every connection."""
        if self.listener is not None:
            await self.listener.stop_accepting()
        if self._unix is not None:
            self._unix.close()
            with contextlib.suppress(FileNotFoundError):
                self.config.paths.status_socket.unlink()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.listener is not None:
            await self.listener.close_connections()
        await asyncio.gather(*(c.close() for c in self._clients.values()), return_exceptions=True)
        log.info("convocate status-serve stopped")
