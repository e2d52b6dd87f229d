"""The SSH server policy both convocate daemons share (DESIGN §2).

``convocate-agent serve`` (tcp/222) and ``convocate status-serve`` (tcp/223)
accept the same thing and nothing else: an ed25519 host key; public-key
logins with ed25519 keys listed in an ``authorized_keys`` file that is re-read
whenever it changes; ``session`` channels carrying one of the daemon's
subsystems. Shell, exec, sftp, port, socket, agent and X11 forwarding, ``env``
and ``pty-req`` are refused at the protocol level, and every refusal is logged.

Before authentication nobody is trusted (DESIGN §8): :class:`~convocate.common.preauth.StartupGate`
caps the connections that have not authenticated yet, in total and per
source address, the way sshd's ``MaxStartups`` / ``PerSourceMaxStartups``
do; a connection over either cap is closed before the SSH version exchange,
and :class:`~convocate.common.preauth.FloodReport` turns a flood of such refusals into one log line.
An unauthenticated connection lives at most :data:`LOGIN_GRACE_S` seconds
(sshd's ``LoginGraceTime``), and an authenticated one holds at most
:data:`MAX_CHANNELS` channels at a time (sshd's ``MaxSessions``).

:class:`SubsystemListener` owns the listening sockets and the open
connections; the daemon gives it a handler that receives each accepted
channel together with the :class:`Caller` that opened it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh

from convocate.common import keys, messages
from convocate.common.preauth import (
    FLOOD_QUIET_S,
    FLOOD_REPORT_S,
    MAX_STARTUPS,
    PER_SOURCE_MAX_STARTUPS,
    FloodReport,
    StartupGate,
    source_block,
)
from convocate.common.sshclient import CIPHERS
from convocate.common.sshpeers import AuthorizedKeysFile, Caller, format_address, parse_listen

log = logging.getLogger(__name__)

#: The listening socket's backlog (listen(2); asyncssh's default is 100). asyncio accepts up to
#: this many connections in one pass of its loop before any of them reaches the caps, so it is
#: also the burst of descriptors a flood takes for a moment: kept well below the 1024 of a unit
#: without LimitNOFILE=. A full queue makes an honest client retransmit its SYN (1 s later).
LISTEN_BACKLOG = 128
#: Seconds a connection may take from TCP accept to completed authentication (sshd's
#: ``LoginGraceTime``, default 120 s). Honest peers need milliseconds (~9 ms on loopback).
LOGIN_GRACE_S = 10.0
#: Channels one authenticated connection may hold open at once (sshd's ``MaxSessions``, default
#: 10, the wall agent-deck's users hit at 34 sessions on one host). The documented scale is 200
#: sessions with an operator attached to each and 200 RPC calls in flight, and a client may carry
#: all of them on one connection (the TUI keeps one per agent), so the cap is that with room: 1024
#: (it was 64, which refused the 65th). It is a guard against a runaway client, not a memory bound:
#: an idle channel costs the agent ~13 KiB (1000 held: +12.7 MiB RSS), and what a peer can make the
#: agent buffer is a channel window (2 MiB) per channel on any number of connections.
#: ``bench_scale`` ramps one connection past this cap; the channel over it is refused at once
#: (``OPEN_RESOURCE_SHORTAGE``, :data:`messages.TOO_MANY_CHANNELS`), never left hanging.
MAX_CHANNELS = 1024
#: Open files the daemons want at least (``LimitNOFILE=`` in the units is 8192): the
#: unauthenticated cap plus the documented scale (200 sessions, 200 attached operators) with room.
WANTED_NOFILE = 4096

#: The message asyncio's accept loop reports when ``accept(2)`` fails for lack of resources
#: (EMFILE, ENFILE, ENOBUFS, ENOMEM); it would log a traceback for each retry.
_ACCEPT_EXHAUSTED = "socket.accept() out of system resource"


Handler = Callable[[asyncssh.SSHServerProcess, Caller], Any]


class _PolicyChannel(asyncssh.SSHServerChannel):
    """A session channel that refuses ``env`` requests instead of keeping them (DESIGN §2).

    asyncssh stores every ``env`` request a client sends and has no option to
    refuse them (``pty-req`` it refuses with ``allow_pty=False``); a client
    could grow a channel's environment without bound, and none of convocate's
    subsystems reads it. This overrides asyncssh's handler for that one
    request, ``_process_env_request`` (asyncssh is pinned, 2.24.1; the
    security tests send ``env`` through asyncssh and OpenSSH, so a change
    there fails them). ``on_env`` is set by :meth:`_PolicyConnection.session_requested`.
    """

    on_env: Callable[[bytes], None] | None = None

    def _process_env_request(self, packet: Any) -> bool:
        name = packet.get_string()
        packet.get_string()
        packet.check_end()
        if self.on_env is not None:
            self.on_env(name)
        return False


class SubsystemSession(asyncssh.SSHServerProcess):
    """A session channel that accepts only the listener's subsystems.

    Args:
        handler: Runs the accepted subsystem.
        caller: Who opened the channel.
        subsystems: The subsystem names accepted.
        on_close: Called once when the channel is gone (the connection's channel count).
    """

    def __init__(self, handler: Callable[[asyncssh.SSHServerProcess], Any], caller: Caller,
                 subsystems: frozenset[str], on_close: Callable[[], None] | None = None) -> None:
        super().__init__(handler, None, 0, False)
        self._caller = caller
        self._subsystems = subsystems
        self._on_close = on_close
        self._env_refused = 0

    def env_refused(self, name: bytes) -> None:
        """Log an ``env`` request refused on this channel (the first one; later ones are counted)."""
        self._env_refused += 1
        if self._env_refused == 1:
            log.info("refused env request %r from %s", name[:64].decode(errors="replace"), self._caller)

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        # Not reached while the listener passes allow_pty=False (asyncssh refuses first); kept as a
        # second line: no convocate subsystem uses a pty (attach takes its size from the header).
        log.info("refused pty request from %s", self._caller)
        return False

    def shell_requested(self) -> bool:
        log.info("refused shell request from %s", self._caller)
        return False

    def exec_requested(self, command: str) -> bool:
        log.info("refused exec request from %s: %r", self._caller, command[:200])
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem in self._subsystems:
            return True
        log.info("refused subsystem %r from %s", subsystem[:64], self._caller)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._env_refused > 1:
            log.info("refused %d env requests in all on that channel from %s", self._env_refused, self._caller)
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()


class _PolicyConnection(asyncssh.SSHServer):
    """Per-connection policy: who may log in, and what they may open."""

    def __init__(self, listener: SubsystemListener) -> None:
        self._listener = listener
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer = "?"
        self._keys: keys.AuthorizedKeys | None = None
        self._candidate: Caller | None = None
        self._startup: str | None = None  # the source group while counted as unauthenticated
        self._channels = 0
        self.caller = Caller("unauthenticated")

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        peer = conn.get_extra_info("peername")
        self._peer = format_address((peer[0], peer[1])) if peer else "?"
        source = source_block(peer[0]) if peer else "?"
        refused_by = self._listener.gate.admit(source)
        if refused_by is not None:  # closed before the version exchange, like sshd past MaxStartups
            self._listener.note_refusal(source, refused_by)
            conn.abort()
            return
        self._startup = source
        self._conn = conn
        self._listener.connections.add(conn)

    def _end_startup(self) -> None:
        if self._startup is not None:
            self._listener.gate.release(self._startup)
            self._startup = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_startup()
        if self._conn is not None:
            self._listener.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        self._keys = self._listener.authorized_keys.current()
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if key.algorithm != b"ssh-ed25519":
            log.info("refused %s client key from %s", key.algorithm.decode(errors="replace"), self._peer)
            return False
        authorized = self._keys.keys if self._keys else None
        host = self._peer.rsplit(":", 1)[0].strip("[]")
        if authorized is None or authorized.validate(key, host, host) is None:
            log.info("refused unknown key %s from %s", keys.fingerprint(key), self._peer)
            return False
        fp = keys.fingerprint(key)
        self._candidate = Caller(fp, self._keys.comments.get(fp, "") if self._keys else "", self._peer)
        return True

    def auth_completed(self) -> None:
        self._end_startup()
        self.caller = self._candidate or Caller("?", peer=self._peer)
        log.info("connection from %s authenticated with key %s", self._peer, self.caller.fingerprint)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        log.info("refused port forward to %s:%d from %s", dest_host, dest_port, self.caller)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        "port forwarding is not permitted here")

    def unix_connection_requested(self, dest_path: str) -> bool:
        log.info("refused unix socket forward from %s", self.caller)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        "socket forwarding is not permitted here")

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        log.info("refused remote port forward on %s:%d from %s", listen_host, listen_port, self.caller)
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        log.info("refused remote socket forward from %s", self.caller)
        return False

    def session_requested(self) -> tuple[asyncssh.SSHServerChannel, SubsystemSession]:
        caller = self.caller
        limit = self._listener.max_channels
        if self._channels >= limit:
            log.info("refused channel %d from %s: %d channels are open", self._channels + 1, caller, limit)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE,
                                            messages.TOO_MANY_CHANNELS.format(limit=limit))
        assert self._conn is not None
        self._channels += 1
        session = SubsystemSession(lambda process: self._listener.handler(process, caller), caller,
                                   self._listener.subsystems, on_close=self._channel_closed)
        chan = self._conn.create_server_channel()
        chan.__class__ = _PolicyChannel  # a subclass adding no state: only the env handler differs
        chan.on_env = session.env_refused  # type: ignore[attr-defined]
        return chan, session

    def _channel_closed(self) -> None:
        self._channels -= 1


class SubsystemListener:
    """An SSH listener that serves a fixed set of subsystems to authorized ed25519 keys.

    Args:
        listen: ``HOST:PORT`` (see :func:`parse_listen`).
        default_port: Port used when ``listen`` has none.
        host_key: The daemon's ed25519 host key.
        authorized_keys: Path of the ``authorized_keys`` file.
        subsystems: The subsystem names accepted.
        handler: Called with each accepted channel and its caller; may return
            an awaitable, which asyncssh runs as a task.
        server_version: SSH software version string (``convocate-agent_0.1.0``).
        max_startups: Unauthenticated connections at most, in total (:data:`MAX_STARTUPS`).
        per_source_max_startups: Of those, at most from one source (:data:`PER_SOURCE_MAX_STARTUPS`).
        max_channels: Open channels at most per connection (:data:`MAX_CHANNELS`).
    """

    def __init__(self, *, listen: str, default_port: int, host_key: asyncssh.SSHKey, authorized_keys: Path,
                 subsystems: frozenset[str], handler: Handler, server_version: str,
                 max_startups: int = MAX_STARTUPS, per_source_max_startups: int = PER_SOURCE_MAX_STARTUPS,
                 max_channels: int = MAX_CHANNELS) -> None:
        self.listen = listen
        self.default_port = default_port
        self.host_key = host_key
        self.authorized_keys = AuthorizedKeysFile(authorized_keys)
        self.subsystems = subsystems
        self.handler = handler
        self.server_version = server_version
        self.gate = StartupGate(max_startups, per_source_max_startups)
        self.max_channels = max_channels
        self.flood = FloodReport()
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._flood_timer: asyncio.TimerHandle | None = None
        self.addresses: list[tuple[str, int]] = []

    async def start(self, login_timeout: float = LOGIN_GRACE_S) -> list[tuple[str, int]]:
        """Bind and start accepting; returns the bound ``(host, port)`` addresses.

        Args:
            login_timeout: Seconds from accept to completed authentication (:data:`LOGIN_GRACE_S`).

        Raises:
            ConfigError: the listen address is invalid.
            OSError: it cannot be bound.
        """
        host, port = parse_listen(self.listen, self.default_port)
        self.authorized_keys.current()
        _check_nofile()
        self._watch_accept_errors()
        self._acceptor = await asyncssh.create_server(
            lambda: _PolicyConnection(self), host or None, port,
            server_host_keys=[self.host_key],
            encoding=None, line_editor=False,
            password_auth=False, kbdint_auth=False, public_key_auth=True,
            agent_forwarding=False, x11_forwarding=False, allow_scp=False, allow_pty=False,
            login_timeout=login_timeout, keepalive_interval=30, keepalive_count_max=3, backlog=LISTEN_BACKLOG,
            encryption_algs=list(CIPHERS),
            server_version=self.server_version,
        )
        self.addresses = [(a[0], a[1]) for a in self._acceptor.get_addresses()]
        return self.addresses

    def note_refusal(self, source: str, cap: str) -> None:
        """Count a connection refused before authentication; the summary is logged later, once.

        Args:
            source: The source group (:func:`source_block`).
            cap: ``total``, ``per-source``, or ``accept`` (``accept(2)`` itself failed).
        """
        loop = asyncio.get_running_loop()
        if self.flood.note(source, cap, time.monotonic()) and self._flood_timer is None:
            self._flood_timer = loop.call_later(FLOOD_QUIET_S, self._flood_tick)

    def _flood_tick(self) -> None:
        self._flood_timer = None
        now = time.monotonic()
        if self.flood.due(now):
            log.warning("%s", self.flood.summary(now, self.gate))
        else:
            wait = min(FLOOD_QUIET_S - (now - self.flood.last), FLOOD_REPORT_S - (now - (self.flood.started or now)))
            self._flood_timer = asyncio.get_running_loop().call_later(max(wait, 0.05), self._flood_tick)

    def _watch_accept_errors(self) -> None:
        """Count ``accept(2)`` failures for lack of file descriptors into the flood summary.

        asyncio reports each one through the loop's exception handler, which
        logs a traceback every time (one per retry, each second, for as long
        as the descriptors are gone). Other reports go to the handler that
        was there before, or asyncio's default.
        """
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        if getattr(previous, "_convocate_accept_watch", False):
            return

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if context.get("message") == _ACCEPT_EXHAUSTED and isinstance(exc, OSError):
                self.note_refusal(errno.errorcode.get(exc.errno or 0, "accept"), "accept")
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        handler._convocate_accept_watch = True  # type: ignore[attr-defined]
        loop.set_exception_handler(handler)

    async def stop_accepting(self) -> None:
        """Close the listening sockets; open connections stay."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None

    async def close_connections(self) -> None:
        """Close every open connection and wait until they are gone."""
        if self._flood_timer is not None:
            self._flood_timer.cancel()
            self._flood_timer = None
            if self.flood.started is not None:
                log.warning("%s", self.flood.summary(time.monotonic(), self.gate))
        for conn in list(self.connections):
            conn.close()
        await asyncio.gather(*(conn.wait_closed() for conn in list(self.connections)), return_exceptions=True)


def _check_nofile() -> None:
    """Warn when the open-file limit is below what the documented scale needs (:data:`WANTED_NOFILE`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < WANTED_NOFILE:
        log.warning("%s", messages.LOW_NOFILE.format(limit=soft, wanted=WANTED_NOFILE))
