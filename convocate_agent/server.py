"""The agent's SSH server: ``convocate-agent serve``.

:class:`ServeConfig` holds every setting (the CLI only builds it);
:class:`AgentServer` owns the listener, recovers state at start, serves until
a signal, and shuts down within a bounded time. SSH rules (DESIGN §2): ed25519
host key, public-key authentication with ed25519 client keys listed in
``authorized_keys`` (re-read when it changes, no restart needed), ``session``
channels only, and in them only the two agent subsystems. Shell, exec, sftp,
port/agent/X11 forwarding are refused at the protocol level.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from convocate.common import keys
from convocate.common.errors import ConfigError
from convocate.common.fsutil import read_token
from convocate.common.paths import CLAUDE_GID, CLAUDE_UID, Paths
from convocate.common.protocol import ATTACH_SUBSYSTEM, RPC_SUBSYSTEM
from convocate.common.version import __version__
from convocate_agent.admission import HostResources
from convocate_agent.attach import serve_attach_channel
from convocate_agent.locks import SessionLocks
from convocate_agent.rpc import RpcDispatcher, serve_rpc_channel
from convocate_agent.runtime import DockerRuntime
from convocate_agent.service import AgentService, EventSink, LogEventSink
from convocate_agent.settings import load_settings
from convocate_agent.store import SessionStore

log = logging.getLogger(__name__)

SUBSYSTEMS = (RPC_SUBSYSTEM, ATTACH_SUBSYSTEM)


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
            raise ConfigError(f"--listen {value!r}: unbalanced '['")
        host, rest = value[1:end], value[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"--listen {value!r}: expected ':PORT' after ']'")
            port = rest[1:]
    elif ":" in value:
        host, port = value.rsplit(":", 1)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen {value!r}: port must be 0-65535")
    return host, int(port)


@dataclass
class ServeConfig:
    """Everything ``convocate-agent serve`` needs (DESIGN §4 flags and defaults).

    Attributes:
        paths: Installation layout (``CONVOCATE_ROOT`` aware).
        listen: ``HOST:PORT`` of the SSH listener; ``:222`` is every address, port 222.
        host_key: The agent's ed25519 host key.
        auth_keys: ``authorized_keys`` of the shell hosts allowed in.
        shell_host: Where to push status events (None: read ``shell-host``; empty: none).
        shell_port: The shell's status listener port.
        shell_key: Private key for the status connection.
        shell_known_host: The shell's pinned status host key.
        uid: UID of the ``claude`` user in session containers.
        gid: GID of the ``claude`` user in session containers.
        shutdown_timeout: Seconds to wait for open channels at shutdown.
    """

    paths: Paths
    listen: str = ":222"
    host_key: Path | None = None
    auth_keys: Path | None = None
    shell_host: str | None = None
    shell_port: int = 223
    shell_key: Path | None = None
    shell_known_host: Path | None = None
    uid: int = CLAUDE_UID
    gid: int = CLAUDE_GID
    shutdown_timeout: float = 10.0
    login_timeout: float = 30.0

    def __post_init__(self) -> None:
        p = self.paths
        self.host_key = self.host_key or p.agent_host_key
        self.auth_keys = self.auth_keys or p.agent_authorized_keys
        self.shell_key = self.shell_key or p.agent_to_shell_key
        self.shell_known_host = self.shell_known_host or p.shell_known_host
        if self.shell_host is None:
            self.shell_host = read_token(p.shell_host_file)


class AuthorizedKeysFile:
    """``authorized_keys`` re-read whenever the file changes (by inode, size and mtime).

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
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
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


class AgentSession(asyncssh.SSHServerProcess):
    """A session channel that accepts only the agent's subsystems."""

    def __init__(self, handler: Any, caller: str) -> None:
        super().__init__(handler, None, 0, False)
        self._caller = caller

    def shell_requested(self) -> bool:
        log.info("refused shell request from %s", self._caller)
        return False

    def exec_requested(self, command: str) -> bool:
        log.info("refused exec request from %s: %r", self._caller, command[:200])
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem in SUBSYSTEMS:
            return True
        log.info("refused subsystem %r from %s", subsystem[:64], self._caller)
        return False


class _Connection(asyncssh.SSHServer):
    """Per-connection SSH policy: who may log in, and what they may open."""

    def __init__(self, server: AgentServer) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer = "?"
        self._keys: keys.AuthorizedKeys | None = None
        self._candidate = ""
        self.caller = "unauthenticated"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._server.connections.add(conn)
        peer = conn.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._server.connections.discard(self._conn)
        if self.caller != "unauthenticated":
            log.debug("connection from %s (%s) closed", self._peer, self.caller)

    def begin_auth(self, username: str) -> bool:
        self._keys = self._server.authorized_keys.current()
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
        if authorized is None:
            return False
        host, addr = self._peer.rsplit(":", 1)[0], self._peer.rsplit(":", 1)[0]
        if authorized.validate(key, host, addr) is None:
            log.info("refused unknown key %s from %s", keys.fingerprint(key), self._peer)
            return False
        self._candidate = keys.fingerprint(key)
        return True

    def auth_completed(self) -> None:
        self.caller = self._candidate or "?"
        log.info("connection from %s authenticated with key %s", self._peer, self.caller)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        log.info("refused port forward to %s:%d from %s", dest_host, dest_port, self.caller)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        "port forwarding is not permitted on a convocate agent")

    def unix_connection_requested(self, dest_path: str) -> bool:
        log.info("refused unix socket forward from %s", self.caller)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        "socket forwarding is not permitted on a convocate agent")

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        log.info("refused remote port forward on %s:%d from %s", listen_host, listen_port, self.caller)
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        log.info("refused remote socket forward from %s", self.caller)
        return False

    def session_requested(self) -> AgentSession:
        return AgentSession(self._server.handle_process, self.caller)


class AgentServer:
    """Serves the agent's two subsystems until shut down.

    Args:
        config: The settings to run with.
        events: Where lifecycle events go (the status emitter); the log by default.
    """

    def __init__(self, config: ServeConfig, events: EventSink | None = None) -> None:
        self.config = config
        self.events = events or LogEventSink()
        self.authorized_keys = AuthorizedKeysFile(config.auth_keys)  # type: ignore[arg-type]
        self.service: AgentService | None = None
        self.dispatcher: RpcDispatcher | None = None
        self._listener: asyncssh.SSHAcceptor | None = None
        self._stopping = asyncio.Event()
        self._rpc_tasks: set[asyncio.Task[Any]] = set()
        self._attach_tasks: set[asyncio.Task[Any]] = set()
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self.addresses: list[tuple[str, int]] = []

    async def start(self) -> list[tuple[str, int]]:
        """Load identity and settings, recover, and open the listener.

        Returns:
            The bound ``(host, port)`` addresses.

        Raises:
            ConfigError: the agent is not installed or a key/setting is invalid.
            OSError: the listen address cannot be bound.
        """
        cfg, paths = self.config, self.config.paths
        agent_id = read_token(paths.agent_id_file)
        if not agent_id:
            raise ConfigError(f"{paths.agent_id_file} is missing: run `convocate-agent install` first")
        host_key = keys.load_private_key(cfg.host_key)  # type: ignore[arg-type]
        settings = load_settings(paths.agent_settings)
        runtime = DockerRuntime(agent_id, paths)
        try:
            api = await runtime.ping()
            log.info("dockerd reachable (API %s)", api)
        except Exception as e:  # keep serving: ops report Docker errors one by one
            log.warning("dockerd is not reachable yet: %s", e)
        self.service = AgentService(
            paths=paths, agent_id=agent_id, settings=settings, store=SessionStore(paths, cfg.uid, cfg.gid),
            locks=SessionLocks(paths), runtime=runtime, host=HostResources.probe(), events=self.events,
            uid=cfg.uid, gid=cfg.gid,
        )
        self.dispatcher = RpcDispatcher(self.service)
        report = await self.service.recover()
        log.info("recovered: %s", ", ".join(f"{k}={v}" for k, v in report.items()))
        self.authorized_keys.current()
        host, port = parse_listen(cfg.listen, 222)
        self._listener = await asyncssh.create_server(
            lambda: _Connection(self), host or None, port,
            server_host_keys=[host_key],
            encoding=None, line_editor=False,
            password_auth=False, kbdint_auth=False, public_key_auth=True,
            agent_forwarding=False, x11_forwarding=False, allow_scp=False,
            login_timeout=cfg.login_timeout, keepalive_interval=30, keepalive_count_max=3,
            server_version=f"convocate-agent_{__version__}",
        )
        self.addresses = [(a[0], a[1]) for a in self._listener.get_addresses()]
        for addr in self.addresses:
            log.info("convocate-agent %s (agent %s) listening on %s", __version__, agent_id, _format_addr(addr))
        return self.addresses

    def handle_process(self, process: asyncssh.SSHServerProcess) -> Any:
        """Route a started channel to its subsystem handler (called by asyncssh)."""
        caller = process.get_extra_info("connection").get_owner().caller
        assert self.service is not None and self.dispatcher is not None
        if process.subsystem == RPC_SUBSYSTEM:
            coro, tasks = serve_rpc_channel(process, self.dispatcher, caller), self._rpc_tasks
        else:
            coro, tasks = serve_attach_channel(process, self.service, caller), self._attach_tasks
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def serve_forever(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting; end attaches; give running ops ``shutdown_timeout`` seconds; close connections.

        Session containers keep running: they belong to dockerd. Attached
        operators are disconnected and their tmux clients detached.
        """
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None
        for task in list(self._attach_tasks):
            task.cancel()
        pending = set(self._rpc_tasks) | set(self._attach_tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.config.shutdown_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for conn in list(self.connections):
            conn.close()
        for conn in list(self.connections):
            await conn.wait_closed()
        if self.service is not None:
            self.service.runtime.close()
        log.info("convocate-agent stopped")


def _format_addr(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
