"""Shell-side client of the agents: one SSH connection per agent, one held RPC channel on it.

:class:`AgentClient` holds a persistent asyncssh connection to one agent,
authenticated with the shell's key for it and checking the pinned host key.
The idempotent read ops (:data:`HELD_OPS`) go over one RPC channel held open
on that connection, pipelined and matched to their answers by ``id``
(``convocate_agent.rpc``); every other op (create, delete, send...: slow or
state-changing) and every attach opens a new channel (DESIGN §2), so a slow
lifecycle op never queues the TUI's reads behind it. :class:`Cluster` does the same for every registered agent at
once and finds sessions across them by UUID, unique UUID prefix, or name.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import asyncssh

from convocate.common import messages
from convocate.common.attachheader import AttachHeader
from convocate.common.cli import no_permission
from convocate.common.errors import (
    ConfigError,
    ConvocateError,
    ProtocolError,
    Unreachable,
)
from convocate.common.framing import encode_line, read_frames
from convocate.common.ops.base import OpParams, run_op
from convocate.common.paths import Paths
from convocate.common.protocol import ATTACH_SUBSYSTEM, RPC_MAX_PKTSIZE, RPC_SUBSYSTEM, Request, Response
from convocate.common.sshclient import CONNECT_TIMEOUT_S, connect_pinned
from convocate.operator import OperatorClaim, claim
from convocate.registry import AgentRecord, load_agent

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Ops sent on the held channel: they change nothing and may be sent again, so a call whose channel died
#: before its answer is retried once on a new channel. Not ``capture`` (an audited read of a session's
#: screen: a retry would record it twice) nor anything that changes state.
HELD_OPS = frozenset({
    "ping", "list", "get", "capacity", "settings-get", "logs", "trash", "credential_list",
    "recording_list", "recording_read", "recording_grep", "audit_read", "operator_whoami",
})


class ChannelDied(Exception):
    """The held channel ended (or answered out of turn) before a request's answer; ``cause`` says why."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class HeldChannel:
    """One open ``convocate-agent-rpc`` channel carrying pipelined requests.

    Requests are written as they come (each with a fresh integer ``id``);
    one reader task takes the answers, which the agent sends in request
    order, and hands each to its request's future after checking its id.
    Any surprise (an answer without the expected id, a too-long line, EOF,
    a transport error) kills the channel and fails every pending request
    with :class:`ChannelDied`.

    Args:
        process: The opened channel (``encoding=None``).
        agent_id: For error messages.
    """

    def __init__(self, process: asyncssh.SSHClientProcess, agent_id: str) -> None:
        self.process = process
        self.agent_id = agent_id
        self.dead: BaseException | None = None
        self._ids = itertools.count(1)
        self._pending: deque[tuple[int, asyncio.Future[Response]]] = deque()
        self._reader = asyncio.ensure_future(self._read())

    def send(self, op: str, params: dict[str, Any]) -> asyncio.Future[Response]:
        """Write one request; returns the future of its :class:`Response`.

        Raises:
            ChannelDied: the channel is already dead.
        """
        if self.dead is not None:
            raise ChannelDied(self.dead)
        request_id = next(self._ids)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending.append((request_id, future))
        try:
            self.process.stdin.write(encode_line(Request(op, params, request_id).to_wire()))
        except (OSError, asyncssh.Error) as e:
            self._die(e)
        return future

    async def _read(self) -> None:
        error: BaseException
        try:
            async for frame in read_frames(self.process.stdout):
                if not isinstance(frame, bytes):
                    error = ProtocolError(f"agent {self.agent_id}: response line too long")
                    break
                response = Response.parse(frame)
                if not self._pending or response.id != self._pending[0][0]:
                    detail = response.error if not response.ok else f"unexpected id {response.id!r}"
                    error = ProtocolError(f"agent {self.agent_id}: held channel out of step: {detail}")
                    break
                _, future = self._pending.popleft()
                if not future.done():  # its caller may have given up (cancelled)
                    future.set_result(response)
            else:
                error = ProtocolError(f"agent {self.agent_id} closed the held channel")
        except ConvocateError as e:
            error = e
        except (OSError, asyncssh.Error) as e:
            error = e
        self._die(error)

    def _die(self, error: BaseException) -> None:
        if self.dead is None:
            self.dead = error
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(ChannelDied(error))
        self.process.close()

    def close(self) -> None:
        """Close the channel; pending requests fail with :class:`ChannelDied`."""
        self._die(ProtocolError(f"agent {self.agent_id}: held channel closed by this client"))
        self._reader.cancel()


def _warn_stderr(text: str) -> None:
    print(f"convocate: warning: {text}", file=sys.stderr)


class AgentClient:
    """A persistent SSH connection to one agent.

    Args:
        record: The registry entry (address, port, key, pinned host key).
        connect_timeout: Seconds allowed for TCP connect plus SSH handshake.
        paths: When given, the entry is read again from the registry before
            every new connection (an agent re-provisioned on another port, say).
        identify: Claim the operator's identity on every new connection (:mod:`convocate.operator`):
            the operators' CLI and TUI do, status-serve does not.
        warn: Where a refused claim's one warning goes (stderr by default; the TUI's status line).

    Attributes:
        operator: The last connection's claim (None before the first connection, or without ``identify``).
    """

    def __init__(self, record: AgentRecord, connect_timeout: float = CONNECT_TIMEOUT_S,
                 paths: Paths | None = None, identify: bool = False,
                 warn: Callable[[str], None] | None = None) -> None:
        self.record = record
        self.paths = paths
        self.connect_timeout = connect_timeout
        self.identify = identify
        self.warn = warn or _warn_stderr
        self.operator: OperatorClaim | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._held: HeldChannel | None = None
        self._held_conn: asyncssh.SSHClientConnection | None = None
        self._held_lock = asyncio.Lock()
        #: RPC channels this client opened (held ones and per-call ones): tests and benchmarks read it.
        self.channels_opened = 0

    @property
    def agent_id(self) -> str:
        return self.record.agent_id

    async def connect(self) -> asyncssh.SSHClientConnection:
        """Open the connection if it is not open; with ``identify``, claim the operator's identity on it.

        Raises:
            ConfigError: the key or the pinned host key is missing or invalid.
            NoPermission: this account may not read the key or the pinned host key.
            HostKeyMismatch: the agent presented another host key.
            Unreachable: the agent cannot be reached or refused the login.
        """
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                if self.paths is not None:
                    with contextlib.suppress(ConfigError):
                        self.record = load_agent(self.paths, self.record.agent_id)
                rec = self.record
                try:
                    self._conn = await connect_pinned(
                        host=rec.address, port=rec.port, key_path=rec.key_path, known_host_path=rec.known_host_path,
                        peer=f"agent {rec.agent_id}", connect_timeout=self.connect_timeout,
                        keepalive_interval=15, keepalive_count_max=3)
                except ConfigError as e:  # a key this account may not read: say whose it is
                    if isinstance(e.__cause__, PermissionError):
                        raise no_permission(e.__cause__) from e
                    raise
                if self.identify:
                    conn = self._conn
                    await self._claim(conn)  # a channel failing in it drops self._conn: the caller's next one fails
                    return conn
            return self._conn

    async def _claim(self, conn: asyncssh.SSHClientConnection) -> None:
        """Identify the operator on the new connection; a refusal is one warning, never an error."""
        async def call_here(op: str, params: dict[str, Any]) -> Any:
            return await self._call_on(conn, op, params)

        self.operator = await claim(call_here, self.agent_id, self.paths or Paths.from_env())
        if self.operator.failed:
            self.warn(messages.OPERATOR_CLAIM_FAILED.format(agent=self.agent_id, detail=self.operator.reason))

    def _unreachable(self, error: Exception) -> Unreachable:
        return Unreachable(messages.PEER_UNREACHABLE.format(peer=f"agent {self.agent_id}",
                                                            address=self.record.endpoint, detail=error))

    async def call(self, op: str, params: dict[str, Any] | None = None) -> Any:
        """Run one op on the agent and return its result.

        The ops of :data:`HELD_OPS` go over the held channel (opened on first
        use, opened again after it died); one whose channel died before its
        answer is sent once more on a new channel. Every other op runs on a
        new channel of its own and is never sent twice. Safe to call from
        several tasks at once; with ``identify``, the operator claim is made
        on each new connection before any call runs on it. An agent of the Go
        original (protocol 1, learned from ``ping`` once per connection) gets
        one request per channel, adapted by :mod:`convocate.compat`.

        Args:
            op: The op's name (``convocate.common.ops``).
            params: Its parameters (None: none).

        Returns:
            The response's ``result``, as the agent sent it: a JSON value (dict,
            list, str, number, bool or None) whose shape is the op's (DESIGN §3;
            ``list`` a list of session objects, ``ping`` a dict with
            ``agent_id``, ``version``, ``server_time``...).

        Raises:
            ConvocateError: the agent's error, rebuilt from its ``code``; or
                Unreachable / ProtocolError for transport problems.
        """
        from convocate import compat  # protocol-1 (Go v0.0.5) agents: learned from ping, adapted there

        return await compat.call(self, await self.connect(), op, params)

    async def request(self, params: OpParams[R]) -> R:
        """Run the op ``params`` is for and return its result as that op's type.

        The typed face of :meth:`call`, which it uses: the request on the wire is ``params.to_wire()``
        (the fields set), and the answer is read by the op's result type
        (``convocate.common.ops.results``), e.g. ``await client.request(GetParams(id=uuid))`` is a
        :class:`SessionView`. One generic method rather than one per op: the params class already
        names its op and result, so a method per op would repeat the table.

        Raises:
            ConvocateError: as :meth:`call`; ProtocolError when the result is not of the op's shape.
        """
        return await run_op(self.call, params, self.agent_id)

    async def _request(self, op: str, params: dict[str, Any] | None) -> Any:
        """Send ``op`` to an agent of our protocol: a read on the held channel, anything else on a channel of its own.

        Raises:
            ConvocateError: the agent's error; Unreachable / ProtocolError for transport problems.
        """
        if op not in HELD_OPS:
            try:
                return await self._call_on(await self.connect(), op, params)
            finally:  # a change: `ls` reads it back from the agents until status-serve has listed again
                from convocate.localstatus import note_write

                note_write(self.agent_id)
        for attempt in range(2):
            channel = await self._held_channel()
            try:
                response = await channel.send(op, params or {})
            except ChannelDied as e:
                log.info("agent %s: held channel died under %s (%s)%s", self.agent_id, op, e,
                         "" if attempt else "; sending it again on a new channel")
                if attempt:
                    if isinstance(e.cause, ConvocateError):
                        raise e.cause from e
                    raise self._unreachable(e.cause) from e
                continue
            return response.raise_for_error()
        raise AssertionError("unreachable")  # pragma: no cover


    async def _held_channel(self) -> HeldChannel:
        """The held RPC channel on the current connection, opened if there is none alive."""
        conn = await self.connect()
        async with self._held_lock:
            held = self._held
            if held is None or held.dead is not None or self._held_conn is not conn:
                if held is not None:
                    held.close()
                self._held = None
                process = await self._open_channel(RPC_SUBSYSTEM, conn)
                self._held, self._held_conn = HeldChannel(process, self.agent_id), conn
            return self._held

    async def _call_on(self, conn: asyncssh.SSHClientConnection, op: str, params: dict[str, Any] | None) -> Any:
        """:meth:`call` on ``conn`` (the connection being set up holds the lock :meth:`connect` takes)."""
        process = await self._open_channel(RPC_SUBSYSTEM, conn)
        try:
            process.stdin.write(encode_line(Request(op, params or {}).to_wire()))
            process.stdin.write_eof()
            async for frame in read_frames(process.stdout):
                if not isinstance(frame, bytes):
                    raise ProtocolError(f"agent {self.agent_id}: response line too long")
                return Response.parse(frame).raise_for_error()
            raise ProtocolError(f"agent {self.agent_id} closed the channel without answering {op}")
        except (OSError, asyncssh.Error) as e:
            raise self._unreachable(e) from e
        finally:
            process.close()

    async def open_attach(self, session_id: str, *, cols: int, rows: int, term: str,
                          read_only: bool = False) -> asyncssh.SSHClientProcess:
        """Open an attach channel and send its header; the caller relays the bytes.

        Raises:
            Unreachable: the channel could not be opened.
        """
        from convocate import compat  # a protocol-1 agent would ignore read_only: refuse it here

        await compat.check_attach(self, read_only)
        process = await self._open_channel(ATTACH_SUBSYSTEM)
        header = AttachHeader(session_id, cols=cols, rows=rows, read_only=read_only, term=term)
        process.stdin.write(encode_line(header.to_wire()))
        return process

    async def _open_channel(self, subsystem: str,
                            conn: asyncssh.SSHClientConnection | None = None) -> asyncssh.SSHClientProcess:
        """A new channel running ``subsystem`` on ``conn``, or on the connection (opened if needed).

        A failure drops the connection, so the next call reconnects.

        Raises:
            Unreachable: no connection, or the agent refused the channel.
        """
        conn = conn or await self.connect()
        options = {"max_pktsize": RPC_MAX_PKTSIZE} if subsystem == RPC_SUBSYSTEM else {}
        try:
            process = await conn.create_process(subsystem=subsystem, encoding=None, **options)
        except (OSError, asyncssh.Error) as e:
            await self._drop()
            raise self._unreachable(e) from e
        if subsystem == RPC_SUBSYSTEM:
            self.channels_opened += 1
        return process

    async def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        """Close the held channel and the connection."""
        if self._held is not None:
            self._held.close()
            self._held = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()
