"""``convocate auth``: one login for the whole cluster (issue 15 item 2).

The shell host keeps the cluster's Claude credentials in ``/etc/convocate/credentials/<name>.json``
(root, 0600; :class:`~convocate.common.credentials.CredentialStore`) and sends each to every
registered agent with the ``credential_set`` op over the existing peering; the agents give it to
their sessions at each container start. The secret comes from a file, stdin or a no-echo prompt,
never the command line, and nothing here prints it: people see fingerprints.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from convocate.client import AgentClient
from convocate.cluster import Cluster
from convocate.common import messages
from convocate.common.cli import no_permission
from convocate.common.credentials import Credential, CredentialStore, validate_secret
from convocate.common.errors import BadRequest, ConvocateError, NotFound
from convocate.common.ops.base import OpParams
from convocate.common.ops.params import CredentialDeleteParams, CredentialListParams, CredentialSetParams
from convocate.common.paths import Paths

#: What :func:`status` says of one agent's copy of one credential.
IN_SYNC = "ok"


def shell_store(paths: Paths) -> CredentialStore:
    """The shell host's credential store (``/etc/convocate/credentials``)."""
    return CredentialStore(paths.shell_credentials_dir)


def read_secret(from_file: Path | None, stdin: IO[str], prompt: str) -> str:
    """The secret from ``from_file`` (``-`` is stdin), else stdin when it is not a terminal, else a no-echo prompt.

    Surrounding white space (the newline of a file or a pipe) is dropped.

    Raises:
        BadRequest: nothing was given, or the secret breaks the rule (the message never quotes it).
        NoPermission: the file may not be read.
    """
    if from_file is not None and str(from_file) != "-":
        try:
            text = from_file.read_text(encoding="utf-8")
        except PermissionError as e:
            raise no_permission(e) from e
        except (OSError, UnicodeDecodeError) as e:
            raise BadRequest(f"--from-file {from_file}: {getattr(e, 'strerror', None) or e}") from None
    elif from_file is not None or not stdin.isatty():
        text = stdin.read()
    else:
        text = getpass.getpass(prompt)
    secret = text.strip()
    if not secret:
        raise BadRequest(messages.AUTH_NO_SECRET)
    return validate_secret(secret)


@dataclass
class AgentOutcome:
    """What one agent answered.

    Attributes:
        agent_id: The agent.
        results: One result per request sent (the op's result type; None for a tolerated error), when it answered.
        error: Why it did not, or None.
    """

    agent_id: str
    results: list[Any] = field(default_factory=list)
    error: ConvocateError | None = None


async def _each_agent(cluster: Cluster, calls: list[OpParams[Any]],
                      tolerate: type[ConvocateError] | None = None) -> list[AgentOutcome]:
    """Send the requests ``calls`` in order to every agent, agents in parallel; an agent stops at its first error.

    Args:
        tolerate: An error class that counts as a result (``None`` in ``results``), e.g. NotFound for a delete.
    """
    async def one(client: AgentClient) -> AgentOutcome:
        outcome = AgentOutcome(client.agent_id)
        for params in calls:
            try:
                outcome.results.append(await client.request(params))
            except ConvocateError as e:
                if tolerate is not None and isinstance(e, tolerate):
                    outcome.results.append(None)
                    continue
                outcome.error = e
                break
        return outcome

    return list(await asyncio.gather(*(one(c) for c in sorted(cluster.clients.values(), key=lambda c: c.agent_id))))


def _set_calls(credentials: list[Credential]) -> list[OpParams[Any]]:
    return [CredentialSetParams(name=c.name, kind=c.kind, secret=c.secret) for c in credentials]


async def set_credential(paths: Paths, cluster: Cluster, name: str, kind: str, secret: str) -> tuple[
        Credential, list[AgentOutcome]]:
    """Store a credential on the shell host, then send it to every registered agent.

    Raises:
        NoPermission: the shell's store may not be written (it is root's).
    """
    try:
        credential = await asyncio.to_thread(shell_store(paths).put, name, kind, secret)
    except PermissionError as e:
        raise no_permission(e, "writing") from e
    return credential, await _each_agent(cluster, _set_calls([credential]))


def stored(paths: Paths, name: str | None = None) -> list[Credential]:
    """The shell's credentials (one, when ``name`` is given).

    Raises:
        NotFound: none stored (or not that one).
        NoPermission: the store may not be read (it is root's).
    """
    store = shell_store(paths)
    try:
        found = [c for c in [store.get(name)] if c is not None] if name else store.all()
    except PermissionError as e:
        raise no_permission(e) from e
    if not found:
        raise NotFound(messages.AUTH_NOTHING_STORED.format(which=f' named "{name}"' if name else ""))
    return found


async def push(paths: Paths, cluster: Cluster, name: str | None = None) -> tuple[list[Credential], list[AgentOutcome]]:
    """Send the shell's credentials (or one) to every registered agent again (new agents, agents that were down)."""
    credentials = stored(paths, name)
    return credentials, await _each_agent(cluster, _set_calls(credentials))


async def remove(paths: Paths, cluster: Cluster, name: str) -> tuple[bool, list[AgentOutcome]]:
    """Remove a credential from the shell host and from every agent.

    Returns:
        ``(whether the shell host had it, outcomes)``; an agent that did not have it has ``None`` as its result.

    Raises:
        NoPermission: the shell's store may not be changed (it is root's).
    """
    try:
        shell_store(paths).delete(name)
        had = True
    except NotFound:
        had = False
    except PermissionError as e:
        raise no_permission(e, "writing") from e
    return had, await _each_agent(cluster, [CredentialDeleteParams(name=name)], tolerate=NotFound)


@dataclass(frozen=True)
class StatusRow:
    """One agent's copy of one credential.

    Attributes:
        agent_id: The agent.
        name: The credential's name.
        kind: Its kind on the agent, or on the shell when the agent lacks it.
        fingerprint: The agent's fingerprint, ``""`` when it lacks it.
        shell_fingerprint: The shell's, ``""`` when the shell lacks it; None when the shell's store is unreadable.
        state: ``ok``, ``missing``, ``differs from the shell's``, ``not on the shell host``, or ``""`` when the
            shell's copy could not be read.
    """

    agent_id: str
    name: str
    kind: str
    fingerprint: str
    shell_fingerprint: str | None
    state: str

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def compare(agent_id: str, agent_list: list[dict[str, Any]], shell: dict[str, Credential] | None) -> list[StatusRow]:
    """Rows for one agent: every name either side holds, by name (pure)."""
    held = {str(c.get("name")): c for c in agent_list if isinstance(c, dict)}
    rows = []
    for name in sorted(set(held) | set(shell or {})):
        mine = held.get(name)
        theirs = (shell or {}).get(name)
        fp = str(mine.get("fingerprint", "")) if mine else ""
        kind = str(mine.get("kind", "")) if mine else (theirs.kind if theirs else "")
        if shell is None:
            state, shell_fp = "", None
        elif theirs is None:
            state, shell_fp = messages.AUTH_STATUS_NOT_ON_SHELL, ""
        elif mine is None:
            state, shell_fp = messages.AUTH_STATUS_MISSING, theirs.fingerprint
        else:
            shell_fp = theirs.fingerprint
            state = IN_SYNC if fp == shell_fp else messages.AUTH_STATUS_DIFFERS
        rows.append(StatusRow(agent_id, name, kind, fp, shell_fp, state))
    return rows


async def status(paths: Paths, cluster: Cluster) -> tuple[list[StatusRow], dict[str, ConvocateError], str]:
    """Which agent holds which credential, compared with the shell's.

    Returns:
        ``(rows, agent errors, note)``; the note says why fingerprints were not compared (``""`` when they were).
    """
    note = ""
    try:
        shell: dict[str, Credential] | None = {c.name: c for c in shell_store(paths).all()}
    except PermissionError:
        shell, note = None, messages.AUTH_SHELL_UNREADABLE.format(path=paths.shell_credentials_dir)
    outcomes = await _each_agent(cluster, [CredentialListParams()])
    rows: list[StatusRow] = []
    errors: dict[str, ConvocateError] = {}
    for outcome in outcomes:
        if outcome.error is not None:
            errors[outcome.agent_id] = outcome.error
        else:
            listed = outcome.results[0] if outcome.results and isinstance(outcome.results[0], list) else []
            rows += compare(outcome.agent_id, [c.received for c in listed], shell)
    return rows, errors, note


def print_outcomes(outcomes: list[AgentOutcome], line: Any, out: IO[str] = sys.stdout,
                   err: IO[str] = sys.stderr) -> int:
    """One line per agent (``line(outcome)`` when it answered); returns how many failed."""
    failed = 0
    for outcome in outcomes:
        if outcome.error is not None:
            failed += 1
            print(messages.AUTH_AGENT_FAILED.format(agent=outcome.agent_id, error=outcome.error), file=err)
        else:
            print(line(outcome), file=out)
    return failed
