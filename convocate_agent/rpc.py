"""The ``convocate-agent-rpc`` subsystem: newline-JSON requests in, responses out.

A client may send one request and close its side (the original clients do),
or keep the channel open and send several (a *held* channel). Requests on one
channel are answered one at a time, in the order they arrived, each answer
echoing its request's ``id``; a client may pipeline, i.e. write N requests
before reading any answer. The agent reads at most :data:`RPC_READ_BYTES` of
requests ahead of its answers; past that it stops reading the channel and SSH
flow control (the channel window) makes the client's writes wait: never an
error. A channel that has not delivered a complete request line within
:data:`REQUEST_TIMEOUT_S` of opening, or of its previous response, is answered
with a ``bad_request`` error and closed: an unterminated line cannot hold a
channel (and up to 1 MiB of the agent's memory) forever. Once a request on a
channel carried an ``id`` (convocate's held-channel client numbers every
request), the channel is held: between requests, with nothing of a line
received, it may stay silent for :data:`IDLE_TIMEOUT_S` (sshd's ClientAlive,
for one channel) before it is answered ``bad_request`` and closed; a started
line still has :data:`REQUEST_TIMEOUT_S`. Every failure becomes an error
response with a stable ``code``; nothing a client sends can stop the agent.
Each op is logged with the caller's key fingerprint, its outcome and its
duration (a polled read's success on a held channel, after the channel's first
request, at DEBUG: :data:`QUIET_OPS`), and the end
of each channel that answered other than one request with that number.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import asyncssh

from convocate.common import messages
from convocate.common.errors import BadRequest, ConvocateError, InternalError, ProtocolError
from convocate.common.framing import (
    MAX_LINE_BYTES,
    EncodedObject,
    LineDecoder,
    LineTooLong,
    encode_line,
    encode_value,
    finish_line,
    read_frame_batches,
)
from convocate.common.ops import PARAMS, OpParams, decode_request
from convocate.common.ops.params import AuditReadParams
from convocate.common.protocol import NO_ID, Request, Response
from convocate.common.sshpeers import Caller
from convocate_agent.audit import NOT_RECORDED, AuditLog
from convocate_agent.identity import OperatorOps
from convocate_agent.service import AgentService

log = logging.getLogger(__name__)

#: Seconds a client has to deliver a complete request line, from the channel's opening or from the
#: previous response (sshd's LoginGraceTime, for one request). Every convocate client writes its
#: request in one go right after opening the channel; 1 MiB, the longest line, takes 8 s at 1 Mbit/s.
REQUEST_TIMEOUT_S = 10.0

#: Seconds a held channel (one whose requests carry an ``id``) may stay silent between requests, with no
#: part of a line received. Long enough for a TUI between polls or an operator reading a screen, short
#: enough that a client gone without closing frees its channel slot (MAX_CHANNELS) within minutes.
IDLE_TIMEOUT_S = 600.0

#: Bytes of requests the agent reads ahead of its answers on one channel: the pipelining cap. Requests are
#: answered one at a time, so a read holds at most ~1,600 pings (40 bytes each) or one 64 KiB params object;
#: the agent reads the channel again only when all of them are answered, and meanwhile the client's writes
#: wait on the SSH window. Small enough that a flood costs little memory, large enough that a TUI's
#: handful of pipelined reads arrive in one read.
RPC_READ_BYTES = 64 << 10

#: Ops whose successes are logged at DEBUG, not INFO: the reads a TUI polls, which the audit trail leaves
#: out too (``convocate_agent.audit.NOT_RECORDED``). A line per poll was half of a held ping's cost in the
#: agent (cProfile, docs/benchmarks.md); their failures are still logged at INFO.
QUIET_OPS = NOT_RECORDED

#: An op's handler: it takes the op's params object (``convocate.common.ops.params``), decoded.
Handler = Callable[[Any], Awaitable[Any]]
#: An op that acts on the connection rather than a session: it gets the channel's :class:`Caller` too.
CallerHandler = Callable[[Any, Caller | str], Awaitable[Any]]


class RpcDispatcher:
    """Maps op names to :class:`AgentService` methods and turns outcomes into responses.

    Args:
        service: The agent's operations.
        audit: The audit trail every recorded op goes to (``convocate_agent.audit``), or None.
    """

    def __init__(self, service: AgentService, audit: AuditLog | None = None) -> None:
        self.service = service
        self.audit = audit
        self.caller_handlers: dict[str, CallerHandler] = OperatorOps(service.paths, service.agent_id).handlers()
        # Dispatch from the one op table (convocate.common.ops.PARAMS): an op is the service's method of its
        # name ("settings-get" -> settings_get) unless it is served elsewhere; an op without a handler is an
        # AttributeError here, at start-up, not a client's error later.
        elsewhere: dict[str, Handler] = {
            "recording_list": service.recordings.list,
            "recording_read": service.recordings.read,
            "recording_grep": service.recordings.grep,
            "audit_read": self._audit_read,
        }
        self.handlers: dict[str, Handler] = {
            name: elsewhere.get(name) or getattr(service, name.replace("-", "_"))
            for name in PARAMS if name not in self.caller_handlers}
        #: The channels' tasks waiting for a request with nothing of one received: a shutdown ends them at
        #: once instead of waiting for a held channel's client (status-serve holds one) to hang up.
        self.idle_channels: set[asyncio.Task[Any]] = set()

    async def _audit_read(self, params: AuditReadParams) -> Any:
        if self.audit is None:  # a dispatcher built without a trail (unit tests): it has no records
            return {"records": [], "next_seq": params.after_seq, "more": False}
        return await self.audit.read_op(params)

    async def handle_frame(self, frame: bytes | LineTooLong, caller: Caller | str, quiet: bool = False) -> Response:
        """Answer one received frame (a request line, or an oversized-line marker).

        Args:
            frame: The line, or the marker of one too long.
            caller: Who sent it.
            quiet: Log a successful :data:`QUIET_OPS` read at DEBUG (the later requests of a held channel:
                the first one on each channel is logged at INFO with the caller's key, as every op is).

        Never raises: every error, including a bug, becomes an error response.
        """
        started = time.monotonic()
        request_id: Any = NO_ID
        op, params, result = "?", None, None
        try:
            if isinstance(frame, LineTooLong):
                raise frame
            try:
                request = Request.parse(frame)
            except ConvocateError:  # echo the id of a request that is not one, if it has one
                request_id = Request.salvage_id(frame)
                raise
            request_id, op, params = request.id, request.op, request.params
            decoded: OpParams[Any] = decode_request(request.op, request.params)
            handler = self.handlers.get(request.op)
            caller_handler = self.caller_handlers.get(request.op)
            if handler is not None:
                result = await handler(decoded)
            elif caller_handler is not None:
                result = await caller_handler(decoded, caller)
            else:  # declared in OPS but not wired: a bug, not a client error
                raise BadRequest(messages.UNKNOWN_OP.format(op=request.op))
            response = Response.success(result, request_id)
        except ConvocateError as e:
            response = Response.failure(e, request_id)
        except Exception as e:  # a bug must not take the agent down
            log.exception("op %s failed unexpectedly", op)
            response = Response.failure(InternalError(f"internal error: {type(e).__name__}: {e}"), request_id)
        elapsed_ms = (time.monotonic() - started) * 1000
        outcome = "ok" if response.ok else f"{response.code}: {_one_line(response.error or '')}"
        level = logging.DEBUG if quiet and response.ok and op in QUIET_OPS else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "rpc op=%s caller=%s %s (%.1f ms)", _printable(op), caller, outcome, elapsed_ms)
        if self.audit is not None:
            await self.audit.record_rpc(caller, op, params, result, outcome, elapsed_ms)
        return response


def _printable(op: str) -> str:
    return op if op.isprintable() and len(op) <= 64 else repr(op[:64])


def _one_line(text: str) -> str:
    """``text`` with control characters escaped: an error that quotes a client's bytes stays one log line."""
    return text if text.isprintable() else repr(text)[1:-1]


class DataReader:
    """Wraps an asyncssh stdin so channel requests (window change, break, signal) do not end a read loop.

    Args:
        stdin: The channel's ``SSHReader`` opened with ``encoding=None``.
        on_resize: Called with ``(cols, rows)`` when the client's terminal size changes.
    """

    def __init__(self, stdin: asyncssh.SSHReader, on_resize: Callable[[int, int], Awaitable[None]] | None = None) -> None:
        self._stdin = stdin
        self._on_resize = on_resize

    async def read(self, n: int = -1) -> bytes:
        while True:
            try:
                return await self._stdin.read(n)
            except asyncssh.TerminalSizeChanged as e:
                if self._on_resize is not None:
                    await self._on_resize(e.width, e.height)
            except (asyncssh.BreakReceived, asyncssh.SignalReceived):
                continue


class RequestTimeout(BadRequest):
    """No complete request line arrived in time (see :data:`REQUEST_TIMEOUT_S`)."""

    def __init__(self, seconds: float, idle: bool = False) -> None:
        detail = (messages.RPC_IDLE_TIMEOUT if idle else messages.RPC_REQUEST_TIMEOUT).format(seconds=seconds)
        super().__init__(messages.MALFORMED_REQUEST.format(detail=detail))
        self.seconds = seconds
        self.idle = idle
        self.detail = detail


class DeadlineReader:
    """A reader whose reads fail once a deadline has passed; the deadline restarts on request.

    Not an idle timeout per read: a client that trickles one byte at a time
    gets no more time than one that sends nothing. After ``restart(idle=True)``
    the reader waits up to ``idle_seconds`` for the first byte of the next
    request; that byte starts the ``seconds`` deadline for the rest.

    Args:
        reader: The channel's reader.
        seconds: Time allowed from each :meth:`restart` (and from creation) for a complete line.
        idle_seconds: Time a held channel may stay silent between requests (None: no idle grace).
    """

    def __init__(self, reader: DataReader, seconds: float, idle_seconds: float | None = None) -> None:
        self._reader = reader
        self.seconds = seconds
        self.idle_seconds = idle_seconds
        self._idle = False
        self._deadline = time.monotonic() + seconds

    def restart(self, idle: bool = False) -> None:
        """Give the client ``seconds`` again from now (after a response went out).

        Args:
            idle: Nothing of a next line is held: wait ``idle_seconds`` for it to start (when set).
        """
        self._idle = idle and self.idle_seconds is not None
        self._deadline = time.monotonic() + (self.idle_seconds if self._idle else self.seconds)  # type: ignore[operator]

    async def read(self, n: int = -1) -> bytes:
        """Read like the wrapped reader.

        Raises:
            RequestTimeout: the deadline passed before or during the read.
        """
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._timeout()
        try:
            data = await asyncio.wait_for(self._reader.read(n), remaining)
        except TimeoutError:
            raise self._timeout() from None
        if self._idle and data:  # a line has started: it has ``seconds`` to complete
            self._idle = False
            self._deadline = time.monotonic() + self.seconds
        return data

    def _timeout(self) -> RequestTimeout:
        if self._idle:
            return RequestTimeout(self.idle_seconds, idle=True)  # type: ignore[arg-type]
        return RequestTimeout(self.seconds)


def _render(response: Response) -> bytes:
    """The response line; an answer too long for one line becomes an error that fits.

    A result too large is the agent's problem (``internal``); an ``id`` too
    large to echo back is the client's (``bad_request``, sent without the id).
    """
    try:
        return _encode(response)
    except ProtocolError as e:
        too_long = e
    if response.id is not NO_ID:
        try:
            _encode(replace(response, id=NO_ID))
        except ProtocolError:
            pass
        else:  # the echo alone is what does not fit
            detail = messages.ID_TOO_LARGE.format(limit=MAX_LINE_BYTES)
            return encode_line(Response.failure(BadRequest(messages.MALFORMED_REQUEST.format(detail=detail))).to_wire())
    failure = Response.failure(InternalError(f"result too large: {too_long}"), response.id)
    try:
        return encode_line(failure.to_wire())
    except ProtocolError:
        return encode_line(replace(failure, id=NO_ID).to_wire())


#: How every success line with an array result begins (``Response.to_wire``: ``ok``, then ``result``).
_ARRAY_RESULT_HEAD = b'{"ok":true,"result":['


def _encode(response: Response) -> bytes:
    """``encode_line(response.to_wire())``, byte for byte.

    A result that is an array of :class:`~convocate.common.framing.EncodedObject` (``list``'s session
    views, kept by ``convocate_agent.state``) is not encoded again: its elements' kept bytes are joined
    into the line, as the encoder would have written them (``[``, the elements, ``,`` between, ``]``).
    Encoding 500 views took 2-3 ms of a ``list``'s answer; the join takes 0.1 ms (docs/benchmarks.md).

    Raises:
        ProtocolError: the line exceeds :data:`MAX_LINE_BYTES`.
    """
    parts = _kept_encodings(response.result) if response.ok else None
    if parts is not None:
        envelope = encode_value(Response.success([], response.id).to_wire())  # {"ok":true,"result":[]...}
        if envelope is not None and envelope.startswith(_ARRAY_RESULT_HEAD):
            return finish_line(b"".join((_ARRAY_RESULT_HEAD, b",".join(parts), envelope[len(_ARRAY_RESULT_HEAD):])))
    return encode_line(response.to_wire())


def _kept_encodings(result: Any) -> list[bytes] | None:
    """The kept bytes of each element of a non-empty array of :class:`EncodedObject`, else None."""
    if type(result) is not list or not result:
        return None
    parts: list[bytes] = []
    for item in result:
        encoded = item.encoded() if type(item) is EncodedObject else None
        if encoded is None:  # not a kept object, or one with a lone surrogate (the line goes out as ASCII)
            return None
        parts.append(encoded)
    return parts


async def serve_rpc_channel(process: asyncssh.SSHServerProcess, dispatcher: RpcDispatcher, caller: Caller | str,
                            request_timeout: float = REQUEST_TIMEOUT_S, idle_timeout: float = IDLE_TIMEOUT_S,
                            read_bytes: int = RPC_READ_BYTES) -> None:
    """Answer requests on one channel, one at a time and in order, until the client closes its side, then close.

    Args:
        process: The accepted channel.
        dispatcher: Answers each request.
        caller: Who opened the channel (a bare string names a caller with no connection state: tests).
        request_timeout: Seconds allowed for each complete request line (:data:`REQUEST_TIMEOUT_S`).
        idle_timeout: Seconds a held channel may stay silent between requests (:data:`IDLE_TIMEOUT_S`).
        read_bytes: Bytes of requests read ahead of the answers (:data:`RPC_READ_BYTES`).
    """
    reader = DeadlineReader(DataReader(process.stdin), request_timeout, idle_timeout)
    decoder = LineDecoder()
    held = False
    answered = 0
    task = asyncio.current_task()
    idle = dispatcher.idle_channels
    try:
        try:
            if task is not None:
                idle.add(task)
            async for batch in read_frame_batches(reader, decoder, read_size=read_bytes):
                idle.discard(task)  # type: ignore[arg-type]
                for frame in batch:
                    response = await dispatcher.handle_frame(frame, caller, quiet=answered > 0)
                    held = held or response.id is not NO_ID
                    process.stdout.write(_render(response))
                    answered += 1
                await process.stdout.drain()
                reader.restart(idle=held and not decoder.partial)
                if task is not None and not decoder.partial:
                    idle.add(task)
        except RequestTimeout as e:
            log.info("rpc channel from %s closed: %s", caller, e.detail)
            process.stdout.write(_render(Response.failure(e)))
            await process.stdout.drain()
    except (BrokenPipeError, ConnectionError, asyncssh.Error) as e:
        log.info("rpc channel from %s ended: %s", caller, e)
    finally:
        idle.discard(task)  # type: ignore[arg-type]
    # A held or pipelined channel's end is worth a line; the one-request form's op line says it all.
    log.log(logging.DEBUG if answered == 1 else logging.INFO, "rpc channel from %s done: %d request(s)", caller,
            answered)
    process.exit(0)
