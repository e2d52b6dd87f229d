"""The cluster as one pool (issue 18): placing a new session, draining and undraining an agent.

The ranking itself is :mod:`convocate.placement` (pure); this module asks the
agents for what it needs and acts on the answer:

- :func:`create_placed` creates a session on the best agent, and on the next
  one when an agent refuses anyway (``admission_denied``: another shell placed
  a session there since the survey, or it started draining);
- :func:`drain` turns an agent's ``draining`` setting on, so it admits nothing
  new, then moves its sessions away one at a time, each to the agent
  placement picks among the others, and reports what could not move and why;
- :func:`undrain` turns the setting off.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from convocate.common import messages
from convocate.common.errors import AdmissionDenied, ConvocateError
from convocate.common.model import SessionView
from convocate.common.ops.params import CreateParams, ListParams, SettingsSetParams
from convocate.placement import Choice, rank, survey

#: Called with an agent ID and its refusal when :func:`create_placed` passes over it.
OnSkip = Callable[[str, ConvocateError], None]
#: Moves one session (its UUID) from its agent to the named agent (``convocate.move``).
Mover = Callable[[str, str], Awaitable[Any]]


async def ranking(clients: Iterable[Any], cpus: float | None, memory_mb: int | None) -> list[Choice]:
    """Survey ``clients`` and rank them for a session of ``cpus`` cores and ``memory_mb`` MiB (None: defaults).

    Returns:
        Every agent, best first (:func:`convocate.placement.rank`).
    """
    loads, failed = await survey(clients)
    return rank(loads, cpus, memory_mb, failed)


def no_agent_admits(choices: list[Choice]) -> AdmissionDenied:
    """The error when no agent takes the session: every agent with its reason."""
    reasons = "; ".join(f"{c.agent_id}: {c.reason}" for c in choices) or "no agent is registered"
    return AdmissionDenied(messages.NO_AGENT_ADMITS.format(reasons=reasons))


async def create_placed(clients: dict[str, Any], params: CreateParams,
                        on_skip: OnSkip | None = None) -> tuple[Any, SessionView]:
    """``create`` on the agent placement ranks first, falling back down the ranking on refusal.

    Args:
        clients: Agent ID → :class:`convocate.client.AgentClient`.
        params: The ``create`` params (``cpus`` and ``memory_mb`` when the operator gave them, else None).
        on_skip: Told of each agent that refused after being chosen.

    Returns:
        ``(client, view)``: the agent that took it and the session it created.

    Raises:
        AdmissionDenied: no agent admits the session (every agent's reason is named).
        ConvocateError: an agent's other refusal (a bad name, a port in use) ends the attempt as it is:
            another agent would refuse it the same way or the operator must fix it.
    """
    choices = await ranking(clients.values(), params.cpus, params.memory_mb)
    refused: list[Choice] = []
    for choice in choices:
        if not choice.admits:
            refused.append(choice)
            continue
        client = clients[choice.agent_id]
        try:
            return client, await client.request(params)
        except AdmissionDenied as e:  # it filled up (or began draining) since the survey: the next one
            if on_skip is not None:
                on_skip(choice.agent_id, e)
            refused.append(Choice(choice.agent_id, False, choice.headroom, choice.request, choice.sessions, str(e)))
    raise no_agent_admits(refused)


def ranking_json(choices: list[Choice]) -> str:
    """``convocate place --json``: the ranking as a JSON array, best first."""
    return json.dumps([{"agent_id": c.agent_id, "admits": c.admits, "headroom": c.headroom,
                        "cpus": None if c.request is None else c.request.cpus,
                        "memory_mb": None if c.request is None else c.request.memory_mb,
                        "sessions": c.sessions, "reason": c.reason} for c in choices], indent=2)


@dataclass
class DrainReport:
    """What :func:`drain` did.

    Attributes:
        moved: ``(session name, target agent)`` of each session that moved.
        stayed: ``(session name, reason)`` of each session that did not.
    """

    moved: list[tuple[str, str]]
    stayed: list[tuple[str, str]]


async def drain(clients: dict[str, Any], agent_id: str, mover: Mover | None,
                progress: Callable[[str], None] = lambda _line: None) -> DrainReport:
    """Mark ``agent_id`` draining, then move each of its sessions to the best other agent.

    Sessions move one at a time, running ones first (they are what operators wait for), each to the
    agent :func:`convocate.placement.rank` puts first among the others for that session's own CPUs
    and memory. A session no other agent admits stays, with the reason.

    Args:
        clients: Agent ID → client.
        agent_id: The agent to empty.
        mover: Moves one session; None marks the agent draining and moves nothing.
        progress: Told one line per step.

    Returns:
        The sessions moved and those left, with why.

    Raises:
        NotFound: no such agent.
        ConvocateError: the agent refused the setting.
    """
    source = clients[agent_id]
    await source.request(SettingsSetParams(values={"draining": True}))
    progress(messages.DRAIN_MARKED.format(agent=agent_id))
    report = DrainReport([], [])
    if mover is None:
        return report
    sessions = await source.request(ListParams())
    others = [c for aid, c in clients.items() if aid != agent_id]
    for view in sorted(sessions, key=lambda v: (not v.running, v.meta.name)):
        name = view.meta.name
        choices = await ranking(others, view.meta.cpus or None, view.meta.memory_mb or None)
        target = next((c for c in choices if c.admits), None)
        if target is None:
            report.stayed.append((name, str(no_agent_admits(choices))))
            progress(messages.DRAIN_STAYED.format(session=name, reason=report.stayed[-1][1]))
            continue
        try:
            await mover(view.meta.uuid, target.agent_id)
        except ConvocateError as e:
            report.stayed.append((name, str(e)))
            progress(messages.DRAIN_STAYED.format(session=name, reason=e))
            continue
        report.moved.append((name, target.agent_id))
        progress(messages.DRAIN_MOVED.format(session=name, agent=target.agent_id))
    return report


async def undrain(client: Any) -> None:
    """Turn ``draining`` off on one agent: it admits new sessions again."""
    await client.request(SettingsSetParams(values={"draining": False}))
