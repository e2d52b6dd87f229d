"""status-serve's pure core: each agent's state as its events tell it, and the fan-out to local subscribers.

No socket here (:class:`StatusHub` is tested without one): :mod:`convocate.status_server` feeds it
the agents' checked events (:func:`convocate.status_events.check_event`) and writes each
subscriber's :class:`SubscriberQueue` to the Unix socket. An agent is stale after
:data:`STALE_AFTER_HEARTBEATS` missed heartbeats; a subscriber that falls
:data:`SUBSCRIBER_BACKLOG_BYTES` behind is cut off, never waited for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from convocate.common.errors import BadRequest, ProtocolError
from convocate.common.framing import encode_line
from convocate.common.model import SessionView, validate_dns_name
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
    REPLAY_DONE,
    Event,
)
from convocate.common.timefmt import format_rfc3339, now_ns
from convocate.localstatus import AGENT_SESSIONS
from convocate.status_events import SESSION_EVENTS

#: status-serve's log lines keep the logger name they have always had (its log format prints it).
log = logging.getLogger("convocate.status_server")

#: Missed heartbeats after which a silent agent is stale.
STALE_AFTER_HEARTBEATS = 3
#: Bytes of messages a slow local subscriber may fall behind before it is dropped (16 MiB). A size,
#: not a count: one message may be up to 1 MiB, and a subscriber that keeps up still sees a burst of
#: every agent's batch (AGENT_BATCH_BYTES each) between two turns of its writer.
SUBSCRIBER_BACKLOG_BYTES = 16 << 20


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


def take_all(queue: asyncio.Queue[bytes | None]) -> list[bytes | None]:
    """Everything ``queue`` holds now, without waiting (one write per batch, not per message)."""
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
