"""The ``convocate-agent-rpc`` subsystem: newline-JSON requests in, responses out.

A client may send one request and close its side (the original clients do),
or keep the channel open and send several; requests on one channel are
answered in order. A channel that has not delivered a complete request line
within :data:`REQUEST_TIMEOUT_S` of opening, or of its previous response, is
answered with a ``bad_request`` error and closed: an unterminated line cannot
hold a channel (and up to 1 MiB of the agent's memory) forever. Every failure becomes an error response with a stable
``code``; nothing a client sends can stop the agent. Each op is logged with
the caller's key fingerprint, its outcome and its duration.
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
from convocate.common.ops import decode_params
from convocate.common.protocol import (
    MAX_LINE_BYTES,
    NO_ID,
    LineTooLong,
    Request,
    Response,
    encode_line,
    read_frames,
)
from convocate.common.sshserver import Caller
from convocate_agent.audit import AuditLog, check_read_params
from convocate_agent.identity import OperatorOps
from convocate_agent.service import AgentService

log = logging.getLogger(__name__)

#: Seconds a client has to deliver a complete request line, from the channel's opening or from the
#: previous response (sshd's LoginGraceTime, for one request). Every convocate client writes its
#: request in one go right after opening the channel; 1 MiB, the longest line, takes 8 s at 1 Mbit/s.
REQUEST_TIMEOUT_S = 10.0

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
#: An op that acts on the connection rather than a session: it gets the channel's :class:`Caller` too.
CallerHandler = Callable[[dict[str, Any], Caller | str], Awaitable[Any]]


class RpcDispatcher:
    """Maps op names to :class:`AgentService` methods and turns outcomes into responses.

    Args:
        service: The agent's operations.
        audit: The audit trail every recorded op goes to (``convocate_agent.audit``), or None.
    """

    def __init__(self, service: AgentService, audit: AuditLog | None = None) -> None:
        self.service = service
        self.audit = audit
        self.handlers: dict[str, Handler] = {
            "ping": service.ping,
            "list": service.list,
            "get": service.get,
            "create": service.create,
            "edit": service.edit,
            "clone": service.clone,
            "delete": service.delete,
            "kill": service.kill,
            "background": service.background,
            "override": service.override,
            "restart": service.restart,
            "settings-get": service.settings_get,
            "settings-set": service.settings_set,
            "capture": service.capture,
            "send": service.send,
            "capacity": service.capacity,
            "logs": service.logs,
            "trash": service.trash,
            "restore": service.restore,
            "credential_set": service.credential_set,
            "credential_list": service.credential_list,
            "credential_delete": service.credential_delete,
            "recording_list": service.recordings.list,
            "recording_read": service.recordings.read,
            "recording_grep": service.recordings.grep,
            "audit_read": self._audit_read,
        }
        self.caller_handlers: dict[str, CallerHandler] = OperatorOps(service.paths, service.agent_id).handlers()

    async def _audit_read(self, params: dict[str, Any]) -> Any:
        if self.audit is None:  # a dispatcher built without a trail (unit tests): it has no records
            check_read_params(params)
            return {"records": [], "next_seq": params.get("after_seq", 0), "more": False}
        return await self.audit.read_op(params)

    async def handle_frame(self, frame: bytes | LineTooLong, caller: Caller | str) -> Response:
        """Answer one received frame (a request line, or an oversized-line marker).

        Never raises: every error, including a bug, becomes an error response.
        """
        started = time.monotonic()
        request_id: Any = Request.salvage_id(frame) if isinstance(frame, bytes) else NO_ID
        op, params, result = "?", None, None
        try:
            if isinstance(frame, LineTooLong):
                raise frame
            request = Request.parse(frame)
            request_id, op, params = request.id, request.op, request.params
            decoded = decode_params(request.op, request.params)
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
        log.info("rpc op=%s caller=%s %s (%.1f ms)", _printable(op), caller, outcome, elapsed_ms)
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

    def __init__(self, seconds: float) -> None:
        super().__init__(messages.MALFORMED_REQUEST.format(detail=messages.RPC_REQUEST_TIMEOUT.format(seconds=seconds)))
        self.seconds = seconds


class DeadlineReader:
    """A reader whose reads fail once a deadline has passed; the deadline restarts on request.

    Not an idle timeout per read: a client that trickles one byte at a time
    gets no more time than one that sends nothing.

    Args:
        reader: The channel's reader.
        seconds: Time allowed from each :meth:`restart` (and from creation).
    """

    def __init__(self, reader: DataReader, seconds: float) -> None:
        self._reader = reader
        self.seconds = seconds
        self._deadline = time.monotonic() + seconds

    def restart(self) -> None:
        """Give the client ``seconds`` again from now (after a response went out)."""
        self._deadline = time.monotonic() + self.seconds

    async def read(self, n: int = -1) -> bytes:
        """Read like the wrapped reader.

        Raises:
            RequestTimeout: the deadline passed before or during the read.
        """
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout(self.seconds)
        try:
            return await asyncio.wait_for(self._reader.read(n), remaining)
        except TimeoutError:
            raise RequestTimeout(self.seconds) from None


def _render(response: Response) -> bytes:
    """The response line; an answer too long for one line becomes an error that fits.

    A result too large is the agent's problem (``internal``); an ``id`` too
    large to echo back is the client's (``bad_request``, sent without the id).
    """
    try:
        return encode_line(response.to_wire())
    except ProtocolError as e:
        too_long = e
    if response.id is not NO_ID:
        try:
            encode_line(replace(response, id=NO_ID).to_wire())
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


async def serve_rpc_channel(process: asyncssh.SSHServerProcess, dispatcher: RpcDispatcher, caller: Caller | str,
                            request_timeout: float = REQUEST_TIMEOUT_S) -> None:
    """Answer requests on one channel until the client closes its side, then close.

    Args:
        process: The accepted channel.
        dispatcher: Answers each request.
        caller: Who opened the channel (a bare string names a caller with no connection state: tests).
        request_timeout: Seconds allowed for each complete request line (:data:`REQUEST_TIMEOUT_S`).
    """
    reader = DeadlineReader(DataReader(process.stdin), request_timeout)
    try:
        try:
            async for frame in read_frames(reader):
                response = await dispatcher.handle_frame(frame, caller)
                process.stdout.write(_render(response))
                await process.stdout.drain()
                reader.restart()
        except RequestTimeout as e:
            log.info("rpc channel from %s closed: %s", caller, messages.RPC_REQUEST_TIMEOUT.format(seconds=e.seconds))
            process.stdout.write(_render(Response.failure(e)))
            await process.stdout.drain()
    except (BrokenPipeError, ConnectionError, asyncssh.Error) as e:
        log.info("rpc channel from %s ended: %s", caller, e)
    process.exit(0)
