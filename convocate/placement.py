"""Placement: which agent a new session goes to when the operator names none.

The ranking is a pure function of what each agent says of itself in its
``capacity`` answer: host totals, the reservations and number of its running
sessions, live load and memory, its defaults for a session's CPUs and memory,
and whether it is draining. An agent is a
candidate only if the agents' own admission rule
(:func:`convocate.common.capacity.check_admission`: reservations of running
sessions plus the request within 90% of the host) admits the request there;
among candidates the one with the most headroom wins, where headroom is the
smallest of four free shares after the request:

- CPU reservations: ``(limit - reserved - asked) / limit``;
- memory reservations: ``(limit - reserved - outside - asked) / limit``;
- live CPU: ``(cpus - load1) / cpus`` (the 1-minute load average, proc(5));
- live memory: ``(MemAvailable - asked) / MemTotal``.

The smallest share is the one that runs out first, so it is what the session
would be short of. Headrooms are compared in whole percent, so agents a
rounding error apart tie; ties go to the agent with fewer running sessions, then to
the agent ID (a stable order). An agent that refuses anyway (another shell
placed a session there in between) is skipped and the next one tried: see
:func:`convocate.cli` ``new``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from convocate.common.capacity import HostResources, Reservation, check_admission
from convocate.common.errors import AdmissionDenied


@dataclass(frozen=True)
class AgentLoad:
    """What one agent says of itself, as placement needs it.

    Attributes:
        agent_id: The agent.
        host: Its CPUs (cores) and memory (MiB).
        reserved: Reservations of its running sessions.
        outside_memory_mb: Memory its host uses outside the sessions, in MiB (counts like a reservation).
        load1: 1-minute load average (runnable tasks), or None if unknown.
        memory_available_mb: ``MemAvailable`` in MiB, or None if unknown.
        sessions: Its running sessions (a stopped one reserves nothing).
        default_cpus: Its default CPUs for a session that asks for none, in cores.
        default_memory_mb: Its default memory for a session that asks for none, in MiB.
        draining: It admits nothing new (``convocate drain``; the ``capacity`` answer's ``draining``).
    """

    agent_id: str
    host: HostResources
    reserved: Reservation
    outside_memory_mb: int = 0
    load1: float | None = None
    memory_available_mb: int | None = None
    sessions: int = 0
    default_cpus: float = 0.5
    default_memory_mb: int = 1024
    draining: bool = False

    @classmethod
    def from_wire(cls, agent_id: str, capacity: dict[str, Any]) -> AgentLoad:
        """Build from an agent's ``capacity`` answer.

        Args:
            agent_id: The agent.
            capacity: The ``capacity`` result: ``host``, ``reserved`` (with ``sessions``, the running ones),
                ``usage``, ``draining`` and ``defaults`` (an agent without the last two is taken as not
                draining, with the agents' built-in defaults).

        Raises:
            ValueError: a field is missing or of the wrong type (names the field).
        """
        def number(section: str, key: str, optional: bool = False) -> float | None:
            value = (capacity.get(section) or {}).get(key)
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"agent {agent_id}: capacity field {section}.{key} is {value!r}, not a number")
            return float(value)

        available = number("usage", "memory_available_mb", optional=True)
        cpus, memory = number("defaults", "cpus", optional=True), number("defaults", "memory_mb", optional=True)
        return cls(
            agent_id=agent_id,
            host=HostResources(float(number("host", "cpus") or 0), int(number("host", "memory_mb") or 0)),
            reserved=Reservation(float(number("reserved", "cpus") or 0), int(number("reserved", "memory_mb") or 0)),
            outside_memory_mb=int(number("usage", "outside_memory_mb", optional=True) or 0),
            load1=number("usage", "load1", optional=True),
            memory_available_mb=None if available is None else int(available),
            sessions=int(number("reserved", "sessions", optional=True) or 0),
            default_cpus=cls.default_cpus if cpus is None else cpus,
            default_memory_mb=cls.default_memory_mb if memory is None else int(memory),
            draining=capacity.get("draining") is True,
        )


@dataclass(frozen=True)
class Choice:
    """One agent's place in the ranking.

    Attributes:
        agent_id: The agent.
        admits: Whether it would take the session.
        headroom: Smallest free share after the request, 0.0-1.0 (below 0 when it does not fit); None when
            it does not admit for another reason (draining, unreachable).
        request: What the session would reserve there (its defaults fill what the operator left out).
        sessions: Its session count (the tie-break).
        reason: Why it does not admit, or which share is the smallest (``"cpu reservations 62%"``).
    """

    agent_id: str
    admits: bool
    headroom: float | None
    request: Reservation | None
    sessions: int
    reason: str


def _shares(load: AgentLoad, request: Reservation) -> dict[str, float]:
    """The four free shares of :mod:`placement`'s docstring, each 0.0-1.0 or below 0."""
    limits = load.host.limits
    shares = {
        "cpu reservations": (limits.cpus - load.reserved.cpus - request.cpus) / limits.cpus if limits.cpus else -1.0,
        "memory reservations": ((limits.memory_mb - load.reserved.memory_mb - load.outside_memory_mb
                                 - request.memory_mb) / limits.memory_mb) if limits.memory_mb else -1.0,
    }
    if load.load1 is not None and load.host.cpus:
        shares["live cpu"] = (load.host.cpus - load.load1) / load.host.cpus
    if load.memory_available_mb is not None and load.host.memory_mb:
        shares["live memory"] = (load.memory_available_mb - request.memory_mb) / load.host.memory_mb
    return shares


def choose(load: AgentLoad, cpus: float | None, memory_mb: int | None) -> Choice:
    """Judge one agent for a session asking for ``cpus`` and ``memory_mb`` (None: the agent's default)."""
    request = Reservation(load.default_cpus if cpus is None else cpus,
                          load.default_memory_mb if memory_mb is None else memory_mb)
    if load.draining:
        return Choice(load.agent_id, False, None, request, load.sessions, "draining")
    try:
        check_admission(load.host, load.reserved, request, load.outside_memory_mb)
    except AdmissionDenied as e:
        return Choice(load.agent_id, False, min(_shares(load, request).values()), request, load.sessions, str(e))
    shares = _shares(load, request)
    tightest = min(shares, key=lambda k: shares[k])
    return Choice(load.agent_id, True, shares[tightest], request, load.sessions,
                  f"{tightest} {shares[tightest]:.0%}")


def not_judged(agent_id: str, error: str) -> Choice:
    """The entry of an agent that could not be judged (no answer, an error): never chosen, listed with why."""
    return Choice(agent_id, False, None, None, 0, f"not judged: {error}")


def rank(loads: Iterable[AgentLoad], cpus: float | None = None, memory_mb: int | None = None,
         extra: Iterable[Choice] = ()) -> list[Choice]:
    """Every agent, best first: admitting agents by headroom, then the others.

    Args:
        loads: What each reachable agent said of itself.
        cpus: The session's CPUs in cores, or None for each agent's default.
        memory_mb: The session's memory in MiB, or None for each agent's default.
        extra: Entries of agents that could not be judged (:func:`not_judged`), listed last.

    Returns:
        One :class:`Choice` per agent; the first admitting one is where the session goes.
    """
    choices = [choose(load, cpus, memory_mb) for load in loads]

    def key(c: Choice) -> tuple[int, int, int, str]:
        percent = math.floor((c.headroom if c.headroom is not None else -1.0) * 100 + 1e-9)
        return (0 if c.admits else 1, -percent, c.sessions, c.agent_id)

    return sorted(choices, key=key) + sorted(extra, key=lambda c: c.agent_id)


def format_ranking(choices: list[Choice]) -> list[str]:
    """The ranking as lines for ``convocate place``: ``1. agent  headroom  sessions  why``."""
    lines = []
    for n, c in enumerate(choices, 1):
        mark = f"{n}." if c.admits else "-"
        headroom = "-" if c.headroom is None else f"{c.headroom:.0%}"
        asked = "" if c.request is None else f"{c.request.cpus:g} cpus/{c.request.memory_mb} MiB"
        lines.append(f"{mark:<3} {c.agent_id:<20} headroom {headroom:>5}  sessions {c.sessions:>4}  {asked:<18} {c.reason}")
    return lines


async def survey(clients: Iterable[Any]) -> tuple[list[AgentLoad], list[Choice]]:
    """Ask every agent for its ``capacity``, in parallel (one round trip each).

    Args:
        clients: :class:`convocate.client.AgentClient` objects (anything with ``agent_id`` and ``call``).

    Returns:
        The loads of the agents that answered, and a :func:`not_judged` entry for each that did not
        (the error names what failed: a refused login, an agent without the ``capacity`` op).
    """
    from convocate.common.ops.params import CapacityParams

    async def one(client: Any) -> AgentLoad:
        return AgentLoad.from_wire(client.agent_id, await client.request(CapacityParams()))

    clients = list(clients)
    results = await asyncio.gather(*(one(c) for c in clients), return_exceptions=True)
    loads: list[AgentLoad] = []
    failed: list[Choice] = []
    for client, result in zip(clients, results, strict=True):
        if isinstance(result, AgentLoad):
            loads.append(result)
        elif isinstance(result, Exception):
            failed.append(not_judged(client.agent_id, str(result)))
        else:  # a BaseException (cancellation): not ours to swallow
            raise result
    return loads, failed
