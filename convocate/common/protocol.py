"""The request, response and event messages, and the subsystems that carry them (DESIGN §2-§3).

The message classes parse and render the envelope and nothing else: the meaning of ``params``
belongs to :mod:`convocate.common.ops`, the framing of the lines to
:mod:`convocate.common.framing`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from convocate.common import messages
from convocate.common.errors import (
    WIRE_CODES,
    BadRequest,
    ConvocateError,
    InternalError,
    ProtocolError,
    error_from_code,
)
from convocate.common.framing import bounded_text, decode_object, json_type
from convocate.common.timefmt import format_rfc3339

# Subsystem names (DESIGN §2).
RPC_SUBSYSTEM = "convocate-agent-rpc"
ATTACH_SUBSYSTEM = "convocate-agent-attach"
STATUS_SUBSYSTEM = "convocate-status"
#: A session's home moving between agents, through the shell (issue 18; convocate_agent/transfer.py).
TRANSFER_SUBSYSTEM = "convocate-agent-transfer"

#: Largest SSH packet, in bytes, a client lets the agent send it on an RPC channel (the channel's
#: ``max_pktsize``, RFC 4254 §5.1). asyncssh's default, 32 KiB, cuts a ``list`` of 500 (187 kB) into
#: six packets, each some Python work at both ends; 256 KiB took 0.55 ms off that list's p50 and more
#: than half off its p99 (docs/benchmarks.md). The window stays asyncssh's (2 MiB).
RPC_MAX_PKTSIZE = 256 << 10

#: Exit statuses of an attach channel (the SSH ``exit-status`` request, RFC 4254 §6.10): 0 when
#: tmux's client ended (the operator detached, or the session is over); 75 (EX_TEMPFAIL) when the
#: agent is stopping under the operator, who may attach again; 3 when the operator was detached
#: because the session is moving to another agent (``convocate move``, issue 18), where the client
#: attaches again once it runs there.
ATTACH_EXIT_DETACHED = 0
ATTACH_EXIT_AGENT_STOPPING = 75
ATTACH_EXIT_MOVING = 3


NO_ID = object()


@dataclass(frozen=True)
class Request:
    """An RPC request ``{"op", "params", "id"}`` (DESIGN §3).

    Attributes:
        op: Operation name, e.g. ``"list"``.
        params: The op's parameters, not yet validated against the op.
        id: The caller's correlation value (ext); echoed in the response.
            :data:`NO_ID` when the request carried none.
    """

    op: str
    params: dict[str, Any] = field(default_factory=dict)
    id: Any = NO_ID

    @property
    def has_id(self) -> bool:
        """Whether the request carried an ``id`` (which may be ``null``)."""
        return self.id is not NO_ID

    @classmethod
    def parse(cls, line: bytes) -> Request:
        """Parse one request line.

        A missing ``params`` means ``{}``; any other top-level field is an error.

        Raises:
            BadRequest: ``malformed request: ...`` naming what was wrong.
        """
        obj = decode_object(line, refusal=lambda detail: BadRequest(messages.MALFORMED_REQUEST.format(detail=detail)))
        unknown = sorted(set(obj) - {"op", "params", "id"})
        if unknown:
            raise BadRequest(messages.MALFORMED_REQUEST.format(detail=messages.UNKNOWN_FIELD.format(field=unknown[0])))
        op = obj.get("op")
        if not isinstance(op, str):
            detail = messages.MISSING_FIELD.format(field="op") if op is None else messages.WRONG_TYPE.format(
                field="op", expected="a string", got=json_type(op)
            )
            raise BadRequest(messages.MALFORMED_REQUEST.format(detail=detail))
        params = obj.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise BadRequest(
                messages.MALFORMED_REQUEST.format(
                    detail=messages.WRONG_TYPE.format(field="params", expected="an object", got=json_type(params))
                )
            )
        return cls(op=op, params=params, id=obj.get("id", NO_ID))

    @staticmethod
    def salvage_id(line: bytes) -> Any:
        """Best-effort ``id`` of a request that failed to parse, so the error can carry it."""
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return NO_ID
        return obj.get("id", NO_ID) if isinstance(obj, dict) else NO_ID

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON object for this request."""
        wire: dict[str, Any] = {"op": self.op, "params": self.params}
        if self.has_id:
            wire["id"] = self.id
        return wire


@dataclass(frozen=True)
class Response:
    """An RPC response ``{"ok", "result", "error", "code", "id"}`` (DESIGN §3)."""

    ok: bool
    result: Any = None
    error: str | None = None
    code: str | None = None
    id: Any = NO_ID

    @classmethod
    def success(cls, result: Any = None, request_id: Any = NO_ID) -> Response:
        """A successful response carrying ``result`` (omitted on the wire when ``None``)."""
        return cls(ok=True, result=result, id=request_id)

    @classmethod
    def failure(cls, error: ConvocateError, request_id: Any = NO_ID) -> Response:
        """An error response carrying the error's message and stable code.

        Codes outside the wire set of DESIGN §3 (a local ``config`` error, say)
        travel as ``internal``; the message still says what is wrong.
        """
        code = error.code if error.code in WIRE_CODES else InternalError.code
        return cls(ok=False, error=bounded_text(error.message), code=code, id=request_id)

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON object, omitting absent fields as the original agents do."""
        wire: dict[str, Any] = {"ok": self.ok}
        if self.ok:
            if self.result is not None:
                wire["result"] = self.result
        else:
            wire["error"] = self.error or ""
            if self.code:
                wire["code"] = self.code
        if self.id is not NO_ID:
            wire["id"] = self.id
        return wire

    @classmethod
    def parse(cls, line: bytes) -> Response:
        """Parse a response line received from an agent.

        Raises:
            ProtocolError: the line is not a response object.
        """
        obj = decode_object(line, what="response", refusal=lambda detail: ProtocolError(f"malformed response: {detail}"))
        ok = obj.get("ok")
        if not isinstance(ok, bool):
            raise ProtocolError('malformed response: field "ok" must be a boolean')
        error = obj.get("error")
        if not ok and not isinstance(error, str):
            raise ProtocolError('malformed response: an error response needs a string "error"')
        code = obj.get("code")
        return cls(ok=ok, result=obj.get("result"), error=error, code=code if isinstance(code, str) else None,
                   id=obj.get("id", NO_ID))

    def raise_for_error(self) -> Any:
        """Return ``result`` or raise the error the agent reported.

        Raises:
            ConvocateError: the subclass matching ``code``.
        """
        if self.ok:
            return self.result
        raise error_from_code(self.code, self.error or "")


# Event types (DESIGN §3, convocate-status).
AGENT_STARTED = "agent.started"
AGENT_HEARTBEAT = "agent.heartbeat"
AGENT_SHUTDOWN = "agent.shutdown"
CONTAINER_CREATED = "container.created"
CONTAINER_EDITED = "container.edited"
CONTAINER_STARTED = "container.started"
CONTAINER_STOPPED = "container.stopped"
CONTAINER_DELETED = "container.deleted"
SESSION_ATTACHED = "session.attached"
SESSION_DETACHED = "session.detached"
SESSION_ACTIVITY = "session.activity"

# Shell-local messages on the status socket (never sent by agents).
AGENT_STATUS = "agent.status"
REPLAY_DONE = "replay.done"

EVENT_TYPES = frozenset(
    {
        AGENT_STARTED,
        AGENT_HEARTBEAT,
        AGENT_SHUTDOWN,
        CONTAINER_CREATED,
        CONTAINER_EDITED,
        CONTAINER_STARTED,
        CONTAINER_STOPPED,
        CONTAINER_DELETED,
        SESSION_ATTACHED,
        SESSION_DETACHED,
        SESSION_ACTIVITY,
    }
)


@dataclass(frozen=True)
class Event:
    """A status event ``{"type", "agent_id", "session_id", "timestamp", "data"}``.

    Attributes:
        type: One of :data:`EVENT_TYPES`.
        agent_id: The 8-character ID of the agent it happened on.
        session_id: The session's UUID, or ``None`` for agent-level events.
        timestamp: RFC 3339 UTC time with nanoseconds.
        data: Type-specific payload (metadata for container events), or ``None``.
    """

    type: str
    agent_id: str
    session_id: str | None = None
    timestamp: str = ""
    data: Any = None

    @classmethod
    def now(cls, type: str, agent_id: str, session_id: str | None = None, data: Any = None) -> Event:
        """Build an event stamped with the current time."""
        return cls(type=type, agent_id=agent_id, session_id=session_id, timestamp=format_rfc3339(time.time_ns()),
                   data=data)

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON object, omitting ``session_id`` and ``data`` when absent."""
        wire: dict[str, Any] = {"type": self.type, "agent_id": self.agent_id}
        if self.session_id is not None:
            wire["session_id"] = self.session_id
        wire["timestamp"] = self.timestamp
        if self.data is not None:
            wire["data"] = self.data
        return wire

    @classmethod
    def parse(cls, line: bytes) -> Event:
        """Parse an event line.

        Raises:
            BadRequest: the line is not an event object.
        """
        obj = decode_object(line, what="event", refusal=lambda detail: BadRequest(f"malformed event: {detail}"))
        kind, agent = obj.get("type"), obj.get("agent_id")
        if not isinstance(kind, str) or not isinstance(agent, str):
            raise BadRequest('malformed event: an event needs string "type" and "agent_id"')
        sid = obj.get("session_id")
        return cls(type=kind, agent_id=agent, session_id=sid if isinstance(sid, str) else None,
                   timestamp=str(obj.get("timestamp", "")), data=obj.get("data"))
