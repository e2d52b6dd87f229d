"""Talking to agents of the Go original v0.0.5 (protocol 1) in a mixed cluster (issue 16, item 4).

The shell learns each agent's protocol from ``ping``, once per SSH connection: our agents answer
``protocol`` (2) and ``capabilities``; a v0.0.5 agent answers only ``agent_id``, ``version`` and
``server_time``, and an answer without ``protocol`` is taken as protocol 1 with the v0.0.5 op set
(docs/compat.md has the facts, read from the Go source at tag v0.0.5). Toward protocol-2 agents
nothing changes on the wire but that one ``ping``; toward a protocol-1 agent :func:`call` adapts:

- ``create`` is sent without the fields v0.0.5 decodes strictly away (``start``, ``cpus``...), then
  ``restart`` starts the session (v0.0.5's op that starts a container) when ``start`` was asked;
- ``list`` answering ``null`` (no sessions) becomes ``[]``;
- an error without ``code`` (v0.0.5 sends none) is mapped by its text to our errors, here only;
- an op v0.0.5 lacks fails before the wire with one clear error naming the agent and its protocol.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from dataclasses import dataclass
from typing import Any

from convocate.common import messages
from convocate.common.errors import BadRequest, Conflict, ConvocateError, InternalError, Locked, NotFound
from convocate.common.ops.params import CapacityParams

#: The ops a v0.0.5 agent registers (internal/agentserver/ops.go and cruds.go at v0.0.5).
PROTOCOL1_OPS = frozenset(
    {"ping", "list", "get", "create", "edit", "clone", "delete", "kill", "background", "override", "restart",
     "settings-get", "settings-set"})

#: The params each v0.0.5 op decodes; it refuses any other field (``DisallowUnknownFields``).
PROTOCOL1_PARAMS: dict[str, frozenset[str]] = {
    "get": frozenset({"id"}), "delete": frozenset({"id"}), "kill": frozenset({"id"}),
    "background": frozenset({"id"}), "override": frozenset({"id"}), "restart": frozenset({"id"}),
    "create": frozenset({"name", "port", "protocol", "dns_name"}),
    "edit": frozenset({"id", "name", "port", "protocol", "dns_name"}),
    "clone": frozenset({"source_id", "name"}),
}

#: Fields of ours that the shell may drop toward v0.0.5 with no loss: ``start`` is done with ``restart``.
_DROPPABLE = frozenset({"start"})

#: v0.0.5's error texts (internal/session, internal/agentserver at v0.0.5) and the errors they mean.
_ERROR_TEXTS: tuple[tuple[re.Pattern[str], type[ConvocateError]], ...] = (
    (re.compile(r'^session ".*" does not exist$'), NotFound),
    (re.compile(r"^session .* is (currently locked|already locked|actively in use)"), Locked),
    (re.compile(r"^session .* already running$"), Conflict),
    (re.compile(r"is already assigned to another session$"), Conflict),
    (re.compile(r"^(unknown op|malformed request|decode params|invalid port|protocol must be|DNS |session name )"),
     BadRequest),
)


@dataclass(frozen=True)
class Profile:
    """What one agent speaks, from its ``ping`` answer.

    Attributes:
        protocol: 2 for our agents; 1 for an answer without ``protocol`` (Go v0.0.5).
        version: The agent's ``version`` field ("-" when absent).
        capabilities: The ops (and ``attach.read_only``...) it reports; v0.0.5's op set for protocol 1.
    """

    protocol: int
    version: str
    capabilities: frozenset[str]

    @classmethod
    def from_ping(cls, answer: Any) -> Profile:
        """Read a ``ping`` answer (a dict; anything else reads as protocol 1)."""
        answer = answer if isinstance(answer, dict) else {}
        protocol = answer.get("protocol")
        version = str(answer.get("version") or "-")
        if not isinstance(protocol, int) or isinstance(protocol, bool) or protocol < 2:
            return cls(1, version, PROTOCOL1_OPS)
        caps = answer.get("capabilities")
        return cls(protocol, version, frozenset(c for c in caps if isinstance(c, str)) if isinstance(caps, list)
                   else frozenset())


# One profile per SSH connection object: a reconnect (an agent upgraded in place) pings again.
_PROFILES: weakref.WeakKeyDictionary[Any, Profile] = weakref.WeakKeyDictionary()
_PROFILE_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def lacks(client: Any, profile: Profile, what: str) -> BadRequest:
    """The error for a feature a protocol-1 agent does not have."""
    return BadRequest(messages.COMPAT_LACKS.format(agent=client.agent_id, protocol=profile.protocol,
                                                   version=profile.version, what=what))


async def profile(client: Any, conn: Any) -> Profile:
    """The profile of ``client``'s agent on connection ``conn``, pinging it the first time.

    Calls racing on a new connection wait for the one ping (a lock per connection).
    """
    known = _PROFILES.get(conn)
    if known is not None:
        return known
    lock = _PROFILE_LOCKS.setdefault(conn, asyncio.Lock())
    async with lock:
        known = _PROFILES.get(conn)
        if known is None:
            known = Profile.from_ping(await client._call_on(conn, "ping", {}))
            _PROFILES[conn] = known
    return known


def map_error(error: InternalError) -> ConvocateError:
    """Map a protocol-1 error (no ``code``, so it arrived as :class:`InternalError`) by its text."""
    for pattern, cls in _ERROR_TEXTS:
        if pattern.search(error.message):
            return cls(error.message)
    return error


async def call(client: Any, conn: Any, op: str, params: dict[str, Any] | None) -> Any:
    """Run ``op`` on ``client``'s connection ``conn``, adapted to the agent's protocol.

    Args:
        client: The :class:`convocate.client.AgentClient` (its ``_call_on`` sends one request).
        conn: Its open SSH connection.
        op: The op name.
        params: The op's params (ours; trimmed for a protocol-1 agent).

    Returns:
        The op's result; ``[]`` for a protocol-1 ``list`` answering ``null``; for ``create`` with
        ``start`` on a protocol-1 agent, the session as ``get`` reads it after ``restart``; for
        ``kill``/``restart``/``background`` (v0.0.5 answers ``{}``) the session read again with ``get``,
        for ``override`` ``{"session", "cleared_lock": "", "detached": 0}``, for ``delete`` ``{"uuid"}``
        (v0.0.5 has no trash), as our agents answer.

    Raises:
        BadRequest: a protocol-1 agent lacks the op or a field given (:data:`messages.COMPAT_LACKS`).
        ConvocateError: the agent's error (mapped by text for protocol 1).
    """
    params = params or {}
    prof = await profile(client, conn)  # the first call on a connection pings on a channel of its own
    if prof.protocol >= 2:  # ours: reads go on the held channel (convocate.client.AgentClient._request)
        return await client._request(op, params)
    if op not in PROTOCOL1_OPS:
        if op.startswith("operator_"):  # the claim's own "agent too old" path (convocate.operator)
            raise BadRequest(f'unknown op: "{op}" ({lacks(client, prof, op).message})')
        raise lacks(client, prof, op)
    allowed = PROTOCOL1_PARAMS.get(op)
    sent = dict(params)
    if allowed is not None:
        extra = sorted(k for k in sent if k not in allowed and k not in _DROPPABLE)
        if extra:
            raise lacks(client, prof, f'field "{extra[0]}" in {op}')
        sent = {k: v for k, v in sent.items() if k in allowed}
    try:
        result = await client._call_on(conn, op, sent)
        if op == "list":
            return [] if result is None else result
        if op == "create" and params.get("start", True) and isinstance(result, dict) and result.get("uuid"):
            await client._call_on(conn, "restart", {"id": result["uuid"]})
            return await client._call_on(conn, "get", {"id": result["uuid"]})
        if op in ("kill", "restart", "background"):  # v0.0.5 answers {}; ours the session as it is now
            return await client._call_on(conn, "get", {"id": sent["id"]})
        if op == "override":
            view = await client._call_on(conn, "get", {"id": sent["id"]})
            return {"session": view, "cleared_lock": "", "detached": 0}
        if op == "delete":  # v0.0.5 removes the session's directory: no trash to name
            return {"uuid": sent["id"]}
        return result
    except InternalError as e:
        raise map_error(e) from e


async def capacity(client: Any, row: dict[str, Any]) -> dict[str, Any] | None:
    """``capacity`` for the ``agents`` listing: None, with ``row["note"]`` saying why, for a protocol-1 agent."""
    conn = await client.connect()
    prof = await profile(client, conn)
    if prof.protocol < 2 and "capacity" not in prof.capabilities:
        row["note"] = messages.COMPAT_NO_CAPACITY.format(protocol=prof.protocol)
        return None
    return await client.request(CapacityParams())


async def check_attach(client: Any, read_only: bool) -> None:
    """Refuse a read-only attach to an agent that would ignore ``read_only`` (v0.0.5 reads id, cols, rows)."""
    if not read_only:
        return
    prof = await profile(client, await client.connect())
    if prof.protocol < 2:
        raise lacks(client, prof, "read-only attach")
