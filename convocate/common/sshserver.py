"""The SSH server policy both convocate daemons share (DESIGN §2).

``convocate-agent serve`` (tcp/222) and ``convocate status-serve`` (tcp/223)
accept the same thing and nothing else: an ed25519 host key; public-key
logins with ed25519 keys listed in an ``authorized_keys`` file that is re-read
whenever it changes; ``session`` channels carrying one of the daemon's
subsystems. Shell, exec, sftp, port, socket, agent and X11 forwarding are
refused at the protocol level, and every refusal is logged.

:class:`SubsystemListener` owns the listening sockets and the open
connections; the daemon gives it a handler that receives each accepted
channel together with the :class:`Caller` that opened it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from convocate.common import keys
from convocate.common.errors import ConfigError
from convocate.common.sshclient import CIPHERS

log = logging.getLogger(__name__)


def parse_listen(value: str, default_port: int) -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``:PORT``, ``[V6]:PORT`` or ``HOST``.

    An empty host means every address. Port 0 asks the kernel for a free port.

    Raises:
        ConfigError: not a valid address.
    """
    host, port = value, str(default_port)
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ConfigError(f"listen address {value!r}: unbalanced '['")
        host, rest = value[1:end], value[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"listen address {value!r}: expected ':PORT' after ']'")
            port = rest[1:]
    elif ":" in value:
        host, port = value.rsplit(":", 1)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {value!r}: port must be 0-65535")
    return host, int(port)


def format_address(addr: tuple[str, int]) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AuthorizedKeysFile:
    """An ``authorized_keys`` file re-read whenever it changes (by inode, size and mtime).

    Args:
        path: The file; a missing file authorizes nobody.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._current = keys.AuthorizedKeys(keys=None)

    def current(self) -> keys.AuthorizedKeys:
        """The keys as of now; reloads if the file changed, keeps the last good set if it became unreadable."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            try:
                loaded = keys.read_authorized_keys(self.path)
            except ConfigError as e:
                log.error("%s; keeping the previous %d key(s)", e, self._current.count)
                return self._current
            for note in loaded.skipped:
                log.warning("%s", note)
            if self._stamp is not None or loaded.count:
                log.info("authorized keys: %d ed25519 key(s) from %s", loaded.count, self.path)
            self._stamp, self._current = stamp, loaded
        return self._current


@dataclass(frozen=True)
class Caller:
    """Who opened a channel.

    Attributes:
        fingerprint: SHA-256 fingerprint of the client key (``SHA256:...``).
        comment: The comment of the matching ``authorized_keys`` line (for logs only: it names
            nobody; status-serve binds a key to its agent through the shell's registry).
        peer: ``host:port`` the connection came from.
    """

    fingerprint: str
    comment: str = ""
    peer: str = ""
    def __str__(self) -> str:
        return self.fingerprint


Handler = Callable[[asyncssh.SSHServerProcess, Caller], Any]


class SubsystemSession(asyncssh.SSHServerProcess):
    """A session channel that accepts only the listener's subsystems."""

    def __init__(self, handler: Callable[[asyncssh.SSHServerProcess], Any], caller: Caller,
                 subsystems: frozenset[str]) -> None:
        super().__init__(handler, None, 0, False)
        self._caller = caller
        self._subsystems = subsystems

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


class _PolicyConnection(asyncssh.SSHServer):
    """Per-connection policy: who may log in, and what they may open."""

    def __init__(self, listener: SubsystemListener) -> None:
        self._listener = listener
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer = "?"
        self._keys: keys.AuthorizedKeys | None = None
        self._candidate: Caller | None = None
        self.caller = Caller("unauthenticated")

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._listener.connections.add(conn)
        peer = conn.get_extra_info("peername")
        self._peer = format_address((peer[0], peer[1])) if peer else "?"

    def connection_lost(self, exc: Exception | None) -> None:
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

    def session_requested(self) -> SubsystemSession:
        caller = self.caller
        return SubsystemSession(lambda process: self._listener.handler(process, caller), caller,
                                self._listener.subsystems)


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
    """

    def __init__(self, *, listen: str, default_port: int, host_key: asyncssh.SSHKey, authorized_keys: Path,
                 subsystems: frozenset[str], handler: Handler, server_version: str) -> None:
        self.listen = listen
        self.default_port = default_port
        self.host_key = host_key
        self.authorized_keys = AuthorizedKeysFile(authorized_keys)
        self.subsystems = subsystems
        self.handler = handler
        self.server_version = server_version
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self.addresses: list[tuple[str, int]] = []

    async def start(self, login_timeout: float = 30.0) -> list[tuple[str, int]]:
        """Bind and start accepting; returns the bound ``(host, port)`` addresses.

        Raises:
            ConfigError: the listen address is invalid.
            OSError: it cannot be bound.
        """
        host, port = parse_listen(self.listen, self.default_port)
        self.authorized_keys.current()
        self._acceptor = await asyncssh.create_server(
            lambda: _PolicyConnection(self), host or None, port,
            server_host_keys=[self.host_key],
            encoding=None, line_editor=False,
            password_auth=False, kbdint_auth=False, public_key_auth=True,
            agent_forwarding=False, x11_forwarding=False, allow_scp=False,
            login_timeout=login_timeout, keepalive_interval=30, keepalive_count_max=3,
            encryption_algs=list(CIPHERS),
            server_version=self.server_version,
        )
        self.addresses = [(a[0], a[1]) for a in self._acceptor.get_addresses()]
        return self.addresses

    async def stop_accepting(self) -> None:
        """Close the listening sockets; open connections stay."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None

    async def close_connections(self) -> None:
        """Close every open connection and wait until they are gone."""
        for conn in list(self.connections):
            conn.close()
        await asyncio.gather(*(conn.wait_closed() for conn in list(self.connections)), return_exceptions=True)
