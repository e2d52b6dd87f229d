"""The ``convocate-agent-attach`` subsystem: a raw terminal relay into a session's tmux.

The client writes one JSON header line ``{"id", "cols", "rows", "read_only",
"term"}``; then the channel is a byte pipe to ``tmux attach-session`` running
in the container under a Docker exec with a TTY. Bytes the client sent right
after the header are forwarded first. SSH ``window-change`` requests resize
the exec's TTY. The relay ends when tmux's client exits (detach, prefix + d):
the channel closes cleanly and the session keeps running. If the SSH side goes
away first, the orphaned tmux client is found and detached.

The client's EOF is never turned into a half-close towards Docker: that would
end Docker's stream while tmux's client lived on (MACHINE-NOTES: attach).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncssh

from convocate.common import messages
from convocate.common.attachheader import HEADER_MAX, AttachHeader, parse_header
from convocate.common.constants import RELAY_CHUNK
from convocate.common.errors import BadRequest, ConvocateError, InternalError
from convocate.common.framing import LineDecoder, LineTooLong, encode_line
from convocate.common.protocol import ATTACH_EXIT_AGENT_STOPPING, ATTACH_EXIT_DETACHED, ATTACH_EXIT_MOVING, Response
from convocate.common.sshpeers import Caller
from convocate_agent.attach_relay import TerminalRelay
from convocate_agent.attach_trace import HopTrace
from convocate_agent.audit import attach_ended
from convocate_agent.execpipe import ExecStream
from convocate_agent.rpc import REQUEST_TIMEOUT_S, DataReader, DeadlineReader, RequestTimeout
from convocate_agent.service import AgentService

log = logging.getLogger(__name__)

async def _read_header(stdin: DataReader, timeout: float) -> tuple[bytes | LineTooLong | None, bytes]:
    """Read up to the first newline; returns ``(header, bytes after it)``.

    At EOF, bytes without a newline are the header all the same (as :func:`read_frames` treats
    the RPC's last line), so such a client gets its answer; nothing at all gives ``None``.

    Args:
        stdin: The channel's reader.
        timeout: Seconds allowed for the whole header, however it trickles in (the RPC's
            request deadline, :data:`convocate_agent.rpc.REQUEST_TIMEOUT_S`).

    Raises:
        BadRequest: ``bad attach header: no complete request line within N s``.
    """
    decoder = LineDecoder(HEADER_MAX)
    reader = DeadlineReader(stdin, timeout)
    while True:
        try:
            chunk = await reader.read(RELAY_CHUNK)
        except RequestTimeout:
            raise BadRequest(messages.ATTACH_BAD_HEADER.format(
                detail=messages.RPC_REQUEST_TIMEOUT.format(seconds=timeout))) from None
        if not chunk:
            tail = decoder.pending()
            return (tail if tail.strip() else None), b""
        frames = decoder.feed(chunk)
        if frames:
            if isinstance(frames[0], LineTooLong):
                return frames[0], b""
            # The stream's first newline is in this chunk; what follows it is terminal input.
            return frames[0], chunk[chunk.index(b"\n") + 1:]


async def serve_attach_channel(process: asyncssh.SSHServerProcess, service: AgentService, caller: Caller | str,
                               header_timeout: float = REQUEST_TIMEOUT_S) -> None:
    """Run one attach: header, relay, clean-up. Always ends by closing the channel.

    Args:
        process: The SSH channel of the ``convocate-agent-attach`` subsystem.
        service: The agent's service.
        caller: Who opened the channel (a bare string names a caller with no connection state: tests).
        header_timeout: Seconds allowed for the header line; a channel that sends none in time
            gets the refusal line and is closed (a held, silent channel costs the agent a slot).
    """
    pending_size: list[tuple[int, int]] = []

    async def remember_size(cols: int, rows: int) -> None:
        pending_size.append((cols, rows))

    reader = DataReader(process.stdin, remember_size)
    opened = await _open_attach(process, service, caller, reader, header_timeout)
    if opened is not None:
        request, stream, leftover = opened
        await _relay_attach(process, service, caller, request, stream, leftover, pending_size)


async def _open_attach(process: asyncssh.SSHServerProcess, service: AgentService, caller: Caller | str,
                       reader: DataReader, header_timeout: float) -> tuple[AttachHeader, ExecStream, bytes] | None:
    """Read the header and open the exec: ``(request, stream, input after the header)``.

    Returns None when the channel was answered already (refused, or gone before its header).
    """
    audit, request = service.audit, None
    try:
        header, leftover = await _read_header(reader, header_timeout)
        if header is None:
            process.exit(0)
            return None
        if isinstance(header, LineTooLong):
            raise BadRequest(messages.ATTACH_BAD_HEADER.format(detail=messages.LINE_TOO_LONG.format(limit=HEADER_MAX)))
        request = parse_header(header)
        stream = await service.open_attach(request)
    except ConvocateError as e:
        log.info("attach caller=%s refused: %s", caller, e)
        if audit is not None:
            await audit.record_attach(caller, request and request.session_id, bool(request and request.read_only),
                                      {}, f"{e.code}: {e.message}")
        await _refuse(process, e)
        return None
    except (BrokenPipeError, ConnectionError, asyncssh.Error):
        process.exit(0)
        return None
    except Exception as e:  # a bug must not take the agent down
        log.exception("attach failed unexpectedly")
        await _refuse(process, InternalError(f"internal error: {type(e).__name__}: {e}"))
        return None
    return request, stream, leftover


async def _relay_attach(process: asyncssh.SSHServerProcess, service: AgentService, caller: Caller | str,
                        request: AttachHeader, stream: ExecStream, leftover: bytes,
                        pending_size: list[tuple[int, int]]) -> None:
    """Relay the operator's terminal and the exec's until either ends, then clean up (:func:`_end_attach`)."""
    sid = request.session_id
    log.info("attach caller=%s session=%s %dx%d%s", caller, sid, request.cols, request.rows,
             " read-only" if request.read_only else "")
    runtime = service.runtime
    opened = time.monotonic()
    trace = HopTrace.from_env(sid)
    if service.audit is not None:
        await service.audit.record_attach(caller, sid, request.read_only,
                                          {"cols": request.cols, "rows": request.rows, "term": request.term}, "ok")

    async def resize(cols: int, rows: int) -> None:
        try:
            await runtime.resize_exec(stream.exec_id, cols, rows)
        except ConvocateError as e:
            log.info("attach %s: resize to %dx%d failed: %s", sid, cols, rows, e)

    assert stream.pipe is not None
    recorder = None if request.read_only else service.recorder
    relay = TerminalRelay(process, stream.pipe, resize, trace=trace,
                          record_input=None if recorder is None else (lambda data: recorder.input(sid, data)))
    for cols, rows in pending_size:
        relay.resize(cols, rows)
    relay.start(leftover)
    closed = asyncio.create_task(process.channel.wait_closed())
    detached_by_tmux = False
    try:
        await asyncio.wait({relay.ended, closed}, return_when=asyncio.FIRST_COMPLETED)
        detached_by_tmux = (relay.ended.done() and not relay.ended.cancelled() and relay.ended.result()
                            and not closed.done())
    finally:
        closed.cancel()
        await asyncio.gather(closed, return_exceptions=True)
        await _end_attach(process, service, caller, request, stream, relay, trace,
                          opened, len(leftover), detached_by_tmux)


async def _end_attach(process: asyncssh.SSHServerProcess, service: AgentService, caller: Caller | str,
                      request: AttachHeader, stream: ExecStream, relay: TerminalRelay, trace: HopTrace | None,
                      opened: float, leftover_bytes: int, detached_by_tmux: bool) -> None:
    """Stop the relay, close the exec (detaching tmux's client of a vanished operator), audit, exit."""
    sid, runtime, audit = request.session_id, service.runtime, service.audit
    error = await relay.stop()
    if error is not None:
        log.warning("attach %s relay error: %s: %s", sid, type(error).__name__, error)
    input_bytes, output_bytes = leftover_bytes + relay.input_bytes, relay.output_bytes
    stream.close()
    if trace is not None:
        with contextlib.suppress(OSError):
            trace.save()
    if not detached_by_tmux:
        # The operator vanished: tmux's client would stay attached forever.
        with contextlib.suppress(ConvocateError):
            if await runtime.detach_exec_clients(sid, [stream.exec_id]):
                log.info("attach %s: detached the tmux client of a vanished operator", sid)
    service.close_attach(sid)
    log.info("detach caller=%s session=%s (%s)", caller, sid, "detached" if detached_by_tmux else "channel closed")
    if audit is not None:
        await audit.record_attach_end(caller, sid, request.read_only, started=opened, input_bytes=input_bytes,
                                      output_bytes=output_bytes, ended=attach_ended(detached_by_tmux))
    with contextlib.suppress(Exception):
        # tmux's client ended (detach, session over, or a move's override); otherwise the agent
        # is stopping under the operator, who may attach again.
        if not detached_by_tmux:
            process.exit(ATTACH_EXIT_AGENT_STOPPING)
        else:
            process.exit(ATTACH_EXIT_MOVING if service.moving_to(sid) else ATTACH_EXIT_DETACHED)


async def _refuse(process: asyncssh.SSHServerProcess, error: ConvocateError) -> None:
    """Write the error line of DESIGN §3 and close the channel."""
    with contextlib.suppress(Exception):
        process.stdout.write(encode_line(Response.failure(error).to_wire()))
        await process.stdout.drain()
    with contextlib.suppress(Exception):
        process.exit(1)
