"""Newline-delimited JSON framing and the request, response and event messages.

The three convocate subsystems (DESIGN §3) carry one UTF-8 JSON object per
line, at most :data:`MAX_LINE_BYTES` long. :class:`LineDecoder` splits a byte
stream into lines without touching a socket; :func:`read_frames` drives it from
any reader with an ``async read(n)``. The message classes parse and render the
envelope and nothing else: the meaning of ``params`` belongs to
:mod:`convocate.common.ops`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from convocate.common import messages
from convocate.common.errors import (
    WIRE_CODES,
    BadRequest,
    ConvocateError,
    InternalError,
    ProtocolError,
    error_from_code,
)
from convocate.common.timefmt import format_rfc3339

#: Largest line, newline excluded, any convocate peer accepts (DESIGN §3): 1 MiB.
MAX_LINE_BYTES = 1 << 20

#: Longest error text an error response carries, in characters; a longer one loses its middle.
ERROR_TEXT_MAX = 8192

#: Bytes asked of a reader per call by :func:`read_frames` (4 MiB): more than an SSH channel's
#: receive window (asyncssh's default, 2 MiB), so that each read of an asyncssh channel empties
#: all it holds. asyncssh (2.24) lets a paused channel resume as soon as the reader takes a
#: little, and then opens the whole window again however much the channel still buffers: a
#: reader that takes less than that per read, and awaits other work between reads (a server
#: that yields to its other clients, or waits on what it forwards to), lets a fast peer send
#: without bound (measured: hundreds of MiB buffered in seconds). A read returns what is
#: there, so this costs nothing when little is.
READ_CHUNK = 4 << 20

# Subsystem names (DESIGN §2).
RPC_SUBSYSTEM = "convocate-agent-rpc"
ATTACH_SUBSYSTEM = "convocate-agent-attach"
STATUS_SUBSYSTEM = "convocate-status"
#: A session's home moving between agents, through the shell (issue 18; convocate_agent/transfer.py).
TRANSFER_SUBSYSTEM = "convocate-agent-transfer"

#: Exit statuses of an attach channel (the SSH ``exit-status`` request, RFC 4254 §6.10): 0 when
#: tmux's client ended (the operator detached, or the session is over); 75 (EX_TEMPFAIL) when the
#: agent is stopping under the operator, who may attach again; 3 when the operator was detached
#: because the session is moving to another agent (``convocate move``, issue 18), where the client
#: attaches again once it runs there.
ATTACH_EXIT_DETACHED = 0
ATTACH_EXIT_AGENT_STOPPING = 75
ATTACH_EXIT_MOVING = 3


class LineTooLong(BadRequest):
    """A line exceeded :data:`MAX_LINE_BYTES`; its bytes were discarded."""

    def __init__(self, limit: int) -> None:
        super().__init__(messages.MALFORMED_REQUEST.format(detail=messages.LINE_TOO_LONG.format(limit=limit)))
        self.limit = limit


class LineDecoder:
    """Split a byte stream into newline-terminated lines of bounded length.

    Feed it chunks as they arrive; it returns the complete lines. A line
    longer than ``max_line`` is not buffered: its bytes are dropped up to the
    next newline and a :class:`LineTooLong` takes its place in the output, so
    one oversized request costs a bounded amount of memory and the stream
    stays in step for the next line.

    Args:
        max_line: Maximum line length in bytes, newline excluded.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max = max_line
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        """Add ``data`` and return every line it completed.

        Args:
            data: The next chunk of the stream.

        Returns:
            Complete lines without their ``\\n`` (a trailing ``\\r`` is kept),
            in stream order, with a :class:`LineTooLong` instance standing for
            each oversized line.
        """
        out: list[bytes | LineTooLong] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if self._discarding:
                self._discarding = False
            elif len(self._buf) + (nl - start) > self._max:
                self._buf.clear()
                out.append(LineTooLong(self._max))
            else:
                self._buf += data[start:nl]
                out.append(bytes(self._buf))
                self._buf.clear()
            start = nl + 1
        rest = len(data) - start
        if self._discarding:
            return out
        if len(self._buf) + rest > self._max:
            self._buf.clear()
            self._discarding = True
            out.append(LineTooLong(self._max))
        else:
            self._buf += data[start:]
        return out

    def pending(self) -> bytes:
        """Return and forget the bytes after the last complete line."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    @property
    def partial(self) -> bool:
        """True while bytes of an unfinished line are held (or an oversized one is being skipped)."""
        return bool(self._buf) or self._discarding

    @property
    def discarding(self) -> bool:
        """True while the rest of an oversized line is being skipped."""
        return self._discarding


class ByteReader(Protocol):
    """Anything with ``async read(n) -> bytes`` that returns ``b""`` at EOF."""

    async def read(self, n: int = -1) -> bytes: ...  # pragma: no cover - protocol


async def read_frame_batches(reader: ByteReader, decoder: LineDecoder | None = None, read_size: int = READ_CHUNK,
                             batch_bytes: int | None = None) -> AsyncIterator[list[bytes | LineTooLong]]:
    """Yield the lines of ``reader`` in batches, until EOF.

    The batch form of :func:`read_frames`, for a server that handles many
    lines per read: one ``await`` per batch instead of one per line, and a
    natural point to yield to other tasks. A large read can be split into
    batches of about ``batch_bytes`` each, so that a caller may take all a
    reader holds in one read and still hand the loop back often.

    Args:
        reader: The byte stream, e.g. an asyncssh ``SSHReader`` opened with
            ``encoding=None``.
        decoder: The decoder to use; a new one with the default limit if omitted.
        read_size: Bytes asked of ``reader`` per read (:data:`READ_CHUNK` by default).
        batch_bytes: Bytes of input per batch; None for one batch per read.

    Yields:
        Non-empty lists of complete lines, in stream order (bytes without the
        newline, or :class:`LineTooLong` for each oversized line); last, the
        unterminated tail if it holds more than whitespace.
    """
    decoder = decoder or LineDecoder()
    step = batch_bytes or read_size
    while True:
        chunk = await reader.read(read_size)
        if not chunk:
            break
        for offset in range(0, len(chunk), step):
            items = decoder.feed(chunk[offset:offset + step] if len(chunk) > step else chunk)
            if items:
                yield items
    if not decoder.discarding:
        tail = decoder.pending()
        if tail.strip():
            yield [tail]


async def read_frames(reader: ByteReader, decoder: LineDecoder | None = None) -> AsyncIterator[bytes | LineTooLong]:
    """Yield the lines of ``reader`` until EOF.

    An unterminated last line is yielded too (a client that writes one request
    without a newline and closes its side is still answered).

    Args:
        reader: The byte stream, e.g. an asyncssh ``SSHReader`` opened with
            ``encoding=None``.
        decoder: The decoder to use; a new one with the default limit if omitted.

    Yields:
        Lines as bytes, or :class:`LineTooLong` for each oversized line.
    """
    async for items in read_frame_batches(reader, decoder):
        for item in items:
            yield item


def encode_line(obj: Any) -> bytes:
    """Render ``obj`` as one compact JSON line, newline included.

    Args:
        obj: A JSON-serialisable value.

    Returns:
        UTF-8 bytes ending in ``\\n``.

    Raises:
        ProtocolError: the rendering exceeds :data:`MAX_LINE_BYTES`.
    """
    try:
        data = _ENCODER.encode(obj).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a "\ud800" escape a peer sent) has no UTF-8 form; escaped,
        # it is still JSON (RFC 8259 §7), so the line can carry it back.
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if len(data) > MAX_LINE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the {MAX_LINE_BYTES}-byte line limit")
    return data + b"\n"


def decode_object(line: bytes, what: str = "request") -> dict[str, Any]:
    """Parse one line as a JSON object.

    Args:
        line: One frame, without its newline.
        what: Word used in the error message.

    Returns:
        The decoded object.

    Raises:
        BadRequest: the line is not UTF-8, not JSON, or not an object; the
            message names the problem without a prefix, for the caller to frame.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"{what} is not valid UTF-8 ({e.reason})") from e
    try:
        if text.startswith("\ufeff"):  # as json.loads says it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        obj = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise BadRequest(f"{what} is not valid JSON: {e}") from e
    except ValueError as e:  # an integer literal beyond Python's digit limit (sys.get_int_max_str_digits)
        raise BadRequest(f"{what} is not valid JSON: a number has more than {sys.get_int_max_str_digits()} "
                         "digits") from e
    except RecursionError as e:
        raise BadRequest(f"{what} nests too deeply") from e
    if not isinstance(obj, dict):
        raise BadRequest(f"{what} must be a JSON object, got {json_type(obj)}")
    return obj


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; RFC 8259 §6 does not.
    raise json.JSONDecodeError(f"{name} is not a JSON value", name, 0)


def _finite_float(text: str) -> float:
    # 1e999 reads as infinity, which no JSON peer could read back when echoed (RFC 8259 §6).
    value = float(text)
    if value in (math.inf, -math.inf):
        raise json.JSONDecodeError(f"number {text[:40]} is out of range", text, 0)
    return value


# One encoder and one decoder for every line: ``json.dumps``/``json.loads`` with
# non-default arguments build a new one per call, a third of the cost of a small event.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def bounded_text(text: str, limit: int = ERROR_TEXT_MAX) -> str:
    """``text`` cut to about ``limit`` characters by dropping its middle.

    Error messages quote what the client sent; a value near the line limit
    would make the error itself too long to send. The head (which names the
    field) and the tail (which states the rule) are kept.
    """
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]}…[{len(text) - head - tail} characters cut]…{text[-tail:]}"


def json_type(value: Any) -> str:
    """Name the JSON type of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


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
        try:
            obj = decode_object(line)
        except BadRequest as e:
            raise BadRequest(messages.MALFORMED_REQUEST.format(detail=e.message)) from e
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
        try:
            obj = decode_object(line, what="response")
        except BadRequest as e:
            raise ProtocolError(f"malformed response: {e.message}") from e
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
        try:
            obj = decode_object(line, what="event")
        except BadRequest as e:
            raise BadRequest(f"malformed event: {e.message}") from e
        kind, agent = obj.get("type"), obj.get("agent_id")
        if not isinstance(kind, str) or not isinstance(agent, str):
            raise BadRequest('malformed event: an event needs string "type" and "agent_id"')
        sid = obj.get("session_id")
        return cls(type=kind, agent_id=agent, session_id=sid if isinstance(sid, str) else None,
                   timestamp=str(obj.get("timestamp", "")), data=obj.get("data"))
