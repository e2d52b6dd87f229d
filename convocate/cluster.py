"""Every registered agent at once: the cluster as the shell's verbs and the TUI see it.

:class:`Cluster` holds one :class:`~convocate.client.AgentClient` per registered agent, lists
every agent's sessions in parallel (with this shell host's orphaned session directories), and finds
a session across agents by UUID, unique UUID prefix, or name. :func:`each_agent` is the one way
to ask every agent something at once and sort the answers from the failures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from convocate.client import AgentClient
from convocate.common import messages
from convocate.common.cli import no_permission
from convocate.common.errors import ConfigError, Conflict, ConvocateError, NotFound, ProtocolError
from convocate.common.model import SessionView
from convocate.common.ops.params import ListParams
from convocate.common.paths import Paths
from convocate.orphans import MIGRATE_HINT, scan_orphans, unclaimed
from convocate.registry import load_registry

log = logging.getLogger("convocate.client")  # the name its log lines had before the split

R = TypeVar("R")


class AmbiguousReference(ConvocateError):
    """A session reference matched more than one session."""

    code = "bad_request"
    exit_code = 2


async def each_agent(clients: Iterable[AgentClient], work: Callable[[AgentClient], Awaitable[R]]
                     ) -> tuple[list[tuple[AgentClient, R]], dict[str, ConvocateError]]:
    """Run ``work`` on every client at once and sort the answers from the failures.

    Returns:
        ``(answers, errors)``: ``(client, result)`` for each agent that answered, in ``clients``' order, and
        agent ID -> its error; an exception outside the project's errors is a ProtocolError naming the agent.
    """
    clients = list(clients)
    results = await asyncio.gather(*(work(c) for c in clients), return_exceptions=True)
    answers: list[tuple[AgentClient, R]] = []
    errors: dict[str, ConvocateError] = {}
    for client, result in zip(clients, results, strict=True):
        if isinstance(result, ConvocateError):
            errors[client.agent_id] = result
        elif isinstance(result, BaseException):
            errors[client.agent_id] = ProtocolError(f"agent {client.agent_id}: {result}")
        else:
            answers.append((client, result))
    return answers, errors


@dataclass
class SessionRef:
    """A session found in the cluster: which agent holds it, and its metadata."""

    client: AgentClient
    view: SessionView


@dataclass
class ClusterListing:
    """Result of listing every agent.

    Attributes:
        sessions: Every session of every reachable agent, newest access first.
        errors: Agent ID → the error that kept it out of the listing.
        orphans: Session directories on this shell host that no agent claims (only known, and
            listed, when every agent answered).
    """

    sessions: list[SessionRef]
    errors: dict[str, ConvocateError]
    orphans: list[SessionView] = field(default_factory=list)


class Cluster:
    """Every agent registered on this shell host.

    Args:
        paths: Installation layout (the registry is ``/etc/convocate/agents``).

    Raises:
        ConfigError: no agent is registered.
        NoPermission: this account may not read the registry (it is the ``claude`` account's).
    """

    def __init__(self, paths: Paths, warn: Callable[[str], None] | None = None) -> None:
        self.paths = paths
        try:
            records, self.registry_errors = load_registry(paths)
        except PermissionError as e:  # /etc/convocate is the claude account's (0750)
            raise no_permission(e) from e
        for error in self.registry_errors:
            log.warning("%s", error)
        if not records:
            raise ConfigError(messages.NO_AGENTS.format(path=paths.agents_dir))
        self.clients = {r.agent_id: AgentClient(r, paths=paths, identify=True, warn=warn) for r in records}

    def set_warn(self, warn: Callable[[str], None]) -> None:
        """Send the agents' warnings (a refused operator claim) to ``warn`` from now on (the TUI's status line)."""
        for client in self.clients.values():
            client.warn = warn

    def client(self, agent_id: str) -> AgentClient:
        """The client for one agent.

        Raises:
            NotFound: no such agent is registered.
        """
        try:
            return self.clients[agent_id]
        except KeyError:
            raise NotFound(f'agent "{agent_id}" is not registered (known: {", ".join(sorted(self.clients))})') from None

    async def list(self) -> ClusterListing:
        """``list`` on every agent in parallel."""
        async def one(client: AgentClient) -> list[SessionRef]:
            return [SessionRef(client, view) for view in await client.request(ListParams())]

        answers, errors = await each_agent(self.clients.values(), one)
        sessions = [ref for _, refs in answers for ref in refs]
        sessions.sort(key=lambda s: s.view.meta.last_accessed, reverse=True)
        orphans = [] if errors else unclaimed(scan_orphans(self.paths), {s.view.meta.uuid for s in sessions})
        return ClusterListing(sessions, errors, orphans)

    async def resolve(self, ref: str) -> SessionRef:
        """Find one session by UUID, unique UUID prefix, or exact name.

        Raises:
            NotFound: nothing matches (the unreachable agents are named).
            AmbiguousReference: several sessions match.
        """
        listing = await self.list()
        exact = [s for s in listing.sessions if s.view.meta.uuid == ref]
        if exact:
            return exact[0]
        # A name and a UUID prefix are equals: a session named like another one's UUID prefix
        # ("fe793004") must not silently win over it (issue 14), nor the prefix over the name.
        matches = [s for s in listing.sessions
                   if s.view.meta.name == ref or (len(ref) >= 4 and s.view.meta.uuid.startswith(ref.lower()))]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(f"{m.view.meta.uuid[:8]} ({m.view.meta.name}@{m.client.agent_id})" for m in matches)
            raise AmbiguousReference(messages.AMBIGUOUS_SESSION.format(ref=ref, count=len(matches), matches=shown))
        orphan = next((v for v in listing.orphans if ref in (v.meta.uuid, v.meta.name)
                       or (len(ref) >= 4 and v.meta.uuid.startswith(ref.lower()))), None)
        if orphan is not None:
            raise Conflict(MIGRATE_HINT.format(name=orphan.meta.name, id=orphan.meta.uuid[:8], uuid=orphan.meta.uuid))
        detail = messages.NO_SUCH_SESSION.format(ref=ref)
        if listing.errors:
            detail += "; unreachable: " + "; ".join(str(e) for e in listing.errors.values())
        raise NotFound(detail)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)
