"""What the TUI shows, as data: agents, sessions and the table rows (pure, no curses, no I/O).

The network thread feeds it ``list`` results, agent reachability and status
events; the form asks it for rows. Sessions sort by last access, newest first,
across all agents. An agent that cannot be reached is one row with the reason
in place of its sessions; a reachable agent whose status channel is stale or
down keeps its sessions and gets a warning row. Orphans (``O``: session
directories on this shell host that no agent claims) come last, and only while
every agent is reachable.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from convocate.common import messages
from convocate.common import protocol as ev
from convocate.common.credentials import resolved_name
from convocate.common.errors import BadRequest
from convocate.common.model import ACTIVITY_LIMITED, SessionView
from convocate.common.timefmt import parse_rfc3339
from convocate.orphans import unclaimed
from convocate.render import until_clock

CONNECTING, REACHABLE, UNREACHABLE = "connecting", "reachable", "unreachable"

COLUMNS = ("#", "ST", "NAME", "AGENT", "SESSION", "ACTIVITY", "PORT", "DNS", "CREATED", "ACCESSED")
WIDTHS = (3, 2, 20, 8, 8, 8, 9, 12, 11, 11)


def _clock(ns: int) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(ns / 1e9))


@dataclass
class AgentInfo:
    """What the TUI knows about one agent.

    Attributes:
        agent_id: The agent's ID.
        address: ``host:port`` from the registry.
        reach: ``connecting``, ``reachable`` or ``unreachable`` (the RPC connection).
        reason: Why it is unreachable.
        status: Latest ``agent.status`` data from status-serve (connected, stale, ...), if any.
        capacity: Latest capacity figures (from ``agent.started``), if any.
    """

    agent_id: str
    address: str = ""
    reach: str = CONNECTING
    reason: str = ""
    status: dict[str, Any] = field(default_factory=dict)
    capacity: dict[str, Any] = field(default_factory=dict)

    @property
    def warning(self) -> str:
        """Why this agent deserves a row of its own, or ``""``."""
        if self.reach == UNREACHABLE:
            reason = self.reason.removeprefix(f"agent {self.agent_id} ")
            return f"unreachable: {reason}"
        if self.reach == CONNECTING:
            return "connecting..."
        if self.status.get("stale"):
            return "stale: missed 3 heartbeats on the status channel"
        if self.status and not self.status.get("connected"):
            return "status channel down (live updates paused; the table refreshes every few seconds)"
        if self.capacity.get("draining"):
            return "draining: takes no new session (convocate undrain ends it)"
        return ""


@dataclass(frozen=True)
class Row:
    """One line of the table.

    Attributes:
        agent_id: The agent the row belongs to.
        session: The session, or None for an agent's warning row.
        text: The agent's warning (agent rows only).
    """

    agent_id: str
    session: SessionView | None = None
    text: str = ""

    def render(self, number: int) -> str:
        """The row as a fixed-width line; ``number`` is its ``#`` (0 for agent rows)."""
        if self.session is None:
            return f"{'!':>3}  agent {self.agent_id} {self.text}"
        m = self.session.meta
        port = f"{m.port}/{m.protocol}" if m.port else "-"
        lead = (str(number), self.session.state, m.name, self.agent_id, m.uuid[:8])
        if m.activity == "waiting":
            # A waiting session shows its question where the port, DNS and times would be.
            cells = (*lead, "WAITING")
            question = f"? {m.activity_detail or 'needs the operator'}"
            return "  ".join(_fit(c, w) for c, w in zip(cells, WIDTHS, strict=False)) + "  " + question
        if m.activity == ACTIVITY_LIMITED:
            # A limited session shows when its limit resets, and Claude's message, in the same place.
            until = f"limited until {until_clock(m.activity_until)}" if m.activity_until else "limited"
            return "  ".join(_fit(c, w) for c, w in zip(lead, WIDTHS, strict=False)) + "  " + until + \
                (f"  {m.activity_detail}" if m.activity_detail else "")
        cells = (*lead, m.activity or "-", port, m.dns_name or "-", _clock(m.created_at), _clock(m.last_accessed))
        line = "  ".join(_fit(c, w) for c, w in zip(cells, WIDTHS, strict=True)).rstrip()
        return f"{line}  {messages.CREDENTIAL_STALE_MARK}" if self.session.credential_stale else line

    @property
    def detail(self) -> str:
        """What the status line says of this session when it is selected: its credential trouble, or ``""``."""
        view = self.session
        if view is None:
            return ""
        name = resolved_name(view.meta.credential)
        if view.credential_missing:
            return messages.CREDENTIAL_MISSING_DETAIL.format(name=name, agent=self.agent_id)
        if view.credential_stale:
            return messages.CREDENTIAL_STALE_DETAIL.format(name=name,
                                                           running=view.meta.credential_fingerprint or "none")
        return ""


def _fit(text: str, width: int) -> str:
    return text[: width - 1] + "~" if len(text) > width else text.ljust(width)


def header() -> str:
    return "  ".join(_fit(c, w) for c, w in zip(COLUMNS, WIDTHS, strict=True)).rstrip()


class ClusterModel:
    """Agents and sessions, updated from lists and events.

    Args:
        agents: ``agent_id → address`` of the registered agents.
    """

    def __init__(self, agents: dict[str, str]) -> None:
        self.agents = {aid: AgentInfo(aid, addr) for aid, addr in agents.items()}
        self.sessions: dict[str, dict[str, SessionView]] = {aid: {} for aid in agents}
        self.orphans: list[SessionView] = []
        self.version = 0  # bumped on every change, so the form repaints only when needed

    def _changed(self) -> None:
        self.version += 1

    def agent(self, agent_id: str) -> AgentInfo:
        if agent_id not in self.agents:
            self.agents[agent_id] = AgentInfo(agent_id)
            self.sessions[agent_id] = {}
        return self.agents[agent_id]

    # --- updates ------------------------------------------------------------------------
    def set_reach(self, agent_id: str, reach: str, reason: str = "") -> None:
        info = self.agent(agent_id)
        if (info.reach, info.reason) != (reach, reason):
            info.reach, info.reason = reach, reason
            self._changed()

    def replace_sessions(self, agent_id: str, views: list[SessionView]) -> None:
        self.agent(agent_id)
        self.sessions[agent_id] = {v.meta.uuid: dataclasses.replace(v, agent_id=agent_id) for v in views}
        self._changed()

    def set_orphans(self, views: list[SessionView]) -> None:
        """This shell host's session directories (see :mod:`convocate.orphans`)."""
        if views != self.orphans:
            self.orphans = views
            self._changed()

    def apply(self, message: dict[str, Any]) -> bool:
        """Apply one status-socket message.

        Returns:
            True when the agent should be listed again (``agent.started``: it
            may have dropped events, or an event was not complete enough).
        """
        kind = message.get("type")
        agent_id = message.get("agent_id")
        if not isinstance(agent_id, str):
            return False
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        sid = message.get("session_id")
        sessions = self.sessions.setdefault(agent_id, {})
        self.agent(agent_id)
        if kind == ev.AGENT_STATUS:
            self.agents[agent_id].status = data
        elif kind == ev.AGENT_STARTED:
            self.agents[agent_id].capacity = data.get("capacity") or {}
            self._changed()
            return True
        elif kind == ev.AGENT_SHUTDOWN:
            self.agents[agent_id].status = {**self.agents[agent_id].status, "connected": False}
        elif kind in (ev.CONTAINER_CREATED, ev.CONTAINER_EDITED, ev.CONTAINER_STARTED, ev.CONTAINER_STOPPED) and sid:
            try:
                view = SessionView.from_wire(data, agent_id)
            except BadRequest:
                return True  # an event without full metadata (an original agent): list again
            old = sessions.get(sid)
            if kind == ev.CONTAINER_EDITED and old is not None:
                view = dataclasses.replace(view, running=old.running, attached_count=old.attached_count)
            sessions[sid] = view
        elif kind == ev.CONTAINER_DELETED and sid:
            sessions.pop(sid, None)
        elif kind == ev.SESSION_ACTIVITY and sid in sessions:
            old = sessions[sid]
            at = data.get("at")
            try:
                at_ns = parse_rfc3339(at) if isinstance(at, str) else old.meta.activity_at
            except ValueError:
                at_ns = old.meta.activity_at
            until = data.get("until")
            try:
                until_ns = parse_rfc3339(until) if isinstance(until, str) else 0
            except ValueError:
                until_ns = 0
            meta = old.meta.with_changes(activity=str(data.get("activity", "")), activity_detail=str(data.get("detail", "")),
                                         activity_at=at_ns, activity_until=until_ns)
            sessions[sid] = dataclasses.replace(old, meta=meta)
        elif kind in (ev.SESSION_ATTACHED, ev.SESSION_DETACHED) and sid in sessions:
            count = data.get("attached_count")
            if isinstance(count, int):
                sessions[sid] = dataclasses.replace(sessions[sid], attached_count=count)
        else:
            return False
        self._changed()
        return False

    # --- reading ------------------------------------------------------------------------
    def rows(self) -> list[Row]:
        """Agent warning rows first (by agent ID), then sessions by last access, newest first."""
        warnings = [Row(aid, None, info.warning) for aid, info in sorted(self.agents.items()) if info.warning]
        visible = [v for aid, views in self.sessions.items() if self.agents[aid].reach != UNREACHABLE
                   for v in views.values()]
        visible.sort(key=lambda v: v.meta.last_accessed, reverse=True)
        rows = warnings + [Row(v.agent_id, v) for v in visible]
        if all(info.reach == REACHABLE for info in self.agents.values()):  # only then is "no agent claims it" known
            claimed = {uuid for views in self.sessions.values() for uuid in views}
            rows += [Row("-", v) for v in unclaimed(self.orphans, claimed)]
        return rows

    def set_capacity(self, agent_id: str, capacity: dict[str, Any]) -> None:
        info = self.agent(agent_id)
        if info.capacity != capacity:
            info.capacity = capacity
            self._changed()

    def capacity_summary(self) -> str:
        """Reserved/limit CPUs and memory over the reachable agents, for the title (``""`` before any is known)."""
        caps = [a.capacity for a in self.agents.values() if a.capacity and a.reach != UNREACHABLE]
        if not caps:
            return ""
        def total(section: str, key: str) -> float:
            return sum(float((c.get(section) or {}).get(key) or 0) for c in caps)
        return (f"cpu {total('reserved', 'cpus'):g}/{total('limits', 'cpus'):g}  "
                f"mem {total('reserved', 'memory_mb') / 1024:.1f}/{total('limits', 'memory_mb') / 1024:.1f} GiB")

    def next_waiting(self, after: tuple[str, str] | None) -> int | None:
        """Index in :meth:`rows` of the next session waiting for the operator after ``(agent, uuid)``, wrapping."""
        rows = self.rows()
        waiting = [i for i, r in enumerate(rows) if r.session is not None and r.session.meta.activity == "waiting"]
        if not waiting:
            return None
        start = next((i for i, r in enumerate(rows) if r.session is not None and after is not None
                      and (r.agent_id, r.session.meta.uuid) == after), -1)
        return next((i for i in waiting if i > start), waiting[0])

    def waiting(self) -> list[SessionView]:
        """Every session of a reachable agent waiting for the operator, the longest waiting first."""
        views = [v for aid, views in self.sessions.items() if self.agents[aid].reach != UNREACHABLE
                 for v in views.values() if v.meta.activity == "waiting"]
        return sorted(views, key=lambda v: (v.meta.activity_at, v.agent_id, v.meta.name))

    def activity_counts(self) -> str:
        """``2 waiting, 1 limited`` for the title (``""`` when none is either)."""
        counts = {kind: sum(1 for views in self.sessions.values() for v in views.values() if v.meta.activity == kind)
                  for kind in ("waiting", ACTIVITY_LIMITED)}
        return ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)

    def session_count(self) -> int:
        return sum(len(v) for v in self.sessions.values())

    def find(self, agent_id: str, session_id: str) -> SessionView | None:
        return self.sessions.get(agent_id, {}).get(session_id)
