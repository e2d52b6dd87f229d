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
import concurrent.futures
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from convocate.common import keys, startinputs
from convocate.common.constants import AGENT_PORT, STATUS_PORT
from convocate.common.daemon import serve_until_signalled
from convocate.common.errors import ConfigError, ConvocateError
from convocate.common.fsutil import read_token
from convocate.common.ops.params import CapacityParams
from convocate.common.paths import CLAUDE_GID, CLAUDE_UID, Paths
from convocate.common.protocol import ATTACH_SUBSYSTEM, RPC_SUBSYSTEM, TRANSFER_SUBSYSTEM
from convocate.common.sshpeers import Caller, format_address
from convocate.common.sshserver import LOGIN_GRACE_S, SubsystemListener
from convocate.common.version import __version__
from convocate_agent import cgroups
from convocate_agent.admission import HostResources
from convocate_agent.attach import serve_attach_channel
from convocate_agent.audit import AuditLog
from convocate_agent.locks import SessionLocks
from convocate_agent.recorderset import RecorderSet
from convocate_agent.rpc import IDLE_TIMEOUT_S, REQUEST_TIMEOUT_S, RpcDispatcher, serve_rpc_channel
from convocate_agent.runtime import DockerRuntime
from convocate_agent.service import AgentService, EventSink, LogEventSink
from convocate_agent.settings import load_settings
from convocate_agent.status import EmitterConfig, StatusEmitter
from convocate_agent.store import SessionStore
from convocate_agent.transferchannel import serve_transfer_channel

log = logging.getLogger(__name__)

SUBSYSTEMS = frozenset({RPC_SUBSYSTEM, ATTACH_SUBSYSTEM, TRANSFER_SUBSYSTEM})
#: Threads of the agent's default executor (``asyncio.to_thread``: home copies, audit appends).
DEFAULT_THREADS = 32
#: Seconds the shutdown may take after the open channels' ``shutdown_timeout``: recorders, the status
#: emitter, the SSH connections, the state's queued writes. 10 + 10 s stays under the unit's
#: ``TimeoutStopSec=30s``.
SHUTDOWN_TAIL_S = 10.0


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
        status_queue_limit: Events kept while the shell is unreachable.
        uid: UID of the ``claude`` user in session containers.
        gid: GID of the ``claude`` user in session containers.
        shutdown_timeout: Seconds to wait for open channels at shutdown.
        login_timeout: Seconds from TCP accept to completed authentication (sshd's LoginGraceTime).
        rpc_request_timeout: Seconds an RPC channel has for each complete request line.
        rpc_idle_timeout: Seconds a held RPC channel may stay silent between requests.
        docker_path_prefix: Where this host's files appear on dockerd's host, when the agent
            drives another host's dockerd (see :class:`DockerRuntime`); empty normally.
        log_socket: The rsyslog socket session containers log to, or None for Docker's default.
        host_cpus: The CPUs admission control and the sessions' cgroup cap count the host as having
            (``--host-cpus``); None: the CPUs this process may use (``sched_getaffinity``).
    """

    paths: Paths
    listen: str = f":{AGENT_PORT}"
    host_key: Path | None = None
    auth_keys: Path | None = None
    shell_host: str | None = None
    shell_port: int = STATUS_PORT
    shell_key: Path | None = None
    shell_known_host: Path | None = None
    uid: int = CLAUDE_UID
    gid: int = CLAUDE_GID
    status_queue_limit: int = 10_000
    shutdown_timeout: float = 10.0
    login_timeout: float = LOGIN_GRACE_S
    rpc_request_timeout: float = REQUEST_TIMEOUT_S
    rpc_idle_timeout: float = IDLE_TIMEOUT_S
    docker_path_prefix: str = ""
    log_socket: Path | None = None
    host_cpus: float | None = None

    def __post_init__(self) -> None:
        p = self.paths
        self.host_key = self.host_key or p.agent_host_key
        self.auth_keys = self.auth_keys or p.agent_authorized_keys
        self.shell_key = self.shell_key or p.agent_to_shell_key
        self.shell_known_host = self.shell_known_host or p.shell_known_host
        if self.shell_host is None:
            self.shell_host = read_token(p.shell_host_file)


class AgentServer:
    """Serves the agent's two subsystems until shut down.

    Args:
        config: The settings to run with.
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.service: AgentService | None = None
        self.dispatcher: RpcDispatcher | None = None
        self.emitter: StatusEmitter | None = None
        self.listener: SubsystemListener | None = None
        self._rpc_tasks: set[asyncio.Task[Any]] = set()
        self._attach_tasks: set[asyncio.Task[Any]] = set()
        self._watch_task: asyncio.Task[None] | None = None
        self._purge_task: asyncio.Task[None] | None = None
        self.recorders: RecorderSet | None = None

    def _events(self, agent_id: str) -> EventSink:
        """The status emitter when a shell host is configured, else the log."""
        cfg = self.config
        if not cfg.shell_host:
            log.info("no shell host configured (%s is empty): events go to the log only", cfg.paths.shell_host_file)
            return LogEventSink()
        self.emitter = StatusEmitter(
            EmitterConfig(agent_id=agent_id, shell_host=cfg.shell_host, shell_port=cfg.shell_port,
                          key_path=cfg.shell_key, known_host_path=cfg.shell_known_host),  # type: ignore[arg-type]
            heartbeat_interval=lambda: float(self.service.settings.heartbeat_interval_s) if self.service else 30.0,
            started_data=self._started_data, queue_limit=cfg.status_queue_limit,
        )
        return self.emitter

    async def _started_data(self) -> dict[str, Any]:
        assert self.service is not None
        data: dict[str, Any] = {"version": __version__, "image": read_token(self.config.paths.current_image_file)}
        try:
            data["capacity"] = await self.service.capacity(CapacityParams())
        except ConvocateError as e:
            data["capacity"] = {"error": str(e)}
        return data

    async def start(self) -> list[tuple[str, int]]:
        """Load identity and settings, recover, start the status emitter, and open the listener.

        Returns:
            The bound ``(host, port)`` addresses.

        Raises:
            ConfigError: the agent is not installed or a key/setting is invalid.
            OSError: the listen address cannot be bound.
        """
        cfg, paths = self.config, self.config.paths
        # asyncio.to_thread's pool (store copies, audit fsyncs): min(32, cpus + 4) threads by default, 6 on
        # two cores, too few for 20 clients' lifecycle ops at once (issue 17); reads use no thread at all.
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=DEFAULT_THREADS, thread_name_prefix="agent"))
        started_with = startinputs.digest(paths.agent_start_inputs())
        agent_id = read_token(paths.agent_id_file)
        if not agent_id:
            raise ConfigError(f"{paths.agent_id_file} is missing: run `convocate-agent install` first")
        host_key = keys.load_private_key(cfg.host_key)  # type: ignore[arg-type]
        settings = load_settings(paths.agent_settings)
        runtime = await self._open_docker(agent_id)
        self.service = AgentService(
            paths=paths, agent_id=agent_id, settings=settings, store=SessionStore(paths, cfg.uid, cfg.gid),
            locks=SessionLocks(paths), runtime=runtime, host=self._host(), events=self._events(agent_id),
            uid=cfg.uid, gid=cfg.gid,
        )
        # Audit records go to rsyslog's audit socket where convocate-host set up log forwarding.
        self.service.attach_parts(audit=AuditLog(paths.agent_audit_log, agent_id,
                                                 forward_socket=paths.agent_audit_socket if cfg.log_socket else None))
        self.dispatcher = RpcDispatcher(self.service, self.service.audit)
        await self._enrol_sessions(runtime, agent_id)
        report = await self.service.recover()
        log.info("recovered: %s", ", ".join(f"{k}={v}" for k, v in report.items()))
        await self._start_background(self.service, runtime)
        self.listener = SubsystemListener(
            listen=cfg.listen, default_port=AGENT_PORT, host_key=host_key, authorized_keys=cfg.auth_keys,  # type: ignore[arg-type]
            subsystems=SUBSYSTEMS, handler=self.handle_process, server_version=f"convocate-agent_{__version__}",
        )
        addresses = await self.listener.start(cfg.login_timeout)
        for addr in addresses:
            log.info("convocate-agent %s (agent %s) listening on %s", __version__, agent_id, format_address(addr))
        try:
            startinputs.record(paths.agent_run_dir, started_with)
        except OSError as e:  # only dpkg-reconfigure's restart decision needs it
            log.warning("cannot record what the agent started with in %s: %s", paths.agent_run_dir, e)
        return addresses

    async def _open_docker(self, agent_id: str) -> DockerRuntime:
        """The Docker runtime; dockerd not answering yet is logged, not fatal (ops report it one by one)."""
        cfg = self.config
        runtime = DockerRuntime(agent_id, cfg.paths, docker_path_prefix=cfg.docker_path_prefix,
                                log_socket=cfg.log_socket)
        try:
            api = await runtime.ping()
            log.info("dockerd reachable (API %s)", api)
        except ConvocateError as e:  # keep serving: ops report Docker errors one by one
            log.warning("dockerd is not reachable yet: %s", e)
        return runtime

    async def _start_background(self, service: AgentService, runtime: DockerRuntime) -> None:
        """Start the recorders, the Docker event stream, the hourly trash purge and the status emitter."""
        self.recorders = self._recorders(service)
        service.attach_parts(recorder=self.recorders)
        await self.recorders.resume(await self._running_sessions(runtime))
        state = service.state  # kept current by the stream, re-listed at each (re)connect (issue 17)
        self._watch_task = asyncio.create_task(
            runtime.watch(self._on_container_event, on_container=state.on_container_event,
                          on_connected=state.stream_connected, on_disconnected=state.stream_disconnected),
            name="docker-events")
        self._purge_task = asyncio.create_task(self._purge_hourly(), name="trash-purge")
        if self.emitter is not None:
            self.emitter.start()

    def _host(self) -> HostResources:
        """The host's CPUs and memory as admission counts them (``host_cpus`` replaces the probed CPUs)."""
        probed = HostResources.probe()
        if self.config.host_cpus is None:
            return probed
        log.info("admission counts %g CPUs (--host-cpus; this host has %g)", self.config.host_cpus, probed.cpus)
        return HostResources(self.config.host_cpus, probed.memory_mb)

    def _recorders(self, service: AgentService) -> RecorderSet:
        """The recorders (issue 19): settings read at each start; a session's recordings stay while it
        exists or waits in the trash."""
        store = service.store

        def keep() -> set[str]:
            return set(store.session_ids()) | {e.uuid for e in store.trash_entries()}

        recorders = RecorderSet(service.paths, service.runtime, lambda: service.settings,
                                lambda sid: store.load(sid).name, keep, uid=service.uid, gid=service.gid)
        with contextlib.suppress(OSError):
            recorders.purge()
        return recorders

    @staticmethod
    async def _running_sessions(runtime: DockerRuntime) -> list[str]:
        try:
            return [sid for sid, state in (await runtime.containers()).items() if state.running]
        except ConvocateError as e:
            log.warning("cannot find the running sessions to record: %s", e)
            return []

    def _on_container_event(self, action: str, session_id: str, attributes: dict[str, Any]) -> None:
        assert self.service is not None
        self.service.on_container_event(action, session_id, attributes)
        if self.recorders is not None:
            self.recorders.on_container_event(action, session_id, attributes)

    async def _purge_hourly(self) -> None:
        assert self.service is not None
        while True:
            await asyncio.sleep(3600)
            try:
                await self.service.purge_trash()
                if self.recorders is not None:
                    self.recorders.purge()
            except OSError as e:
                log.warning("trash purge failed: %s", e)

    async def _enrol_sessions(self, runtime: DockerRuntime, agent_id: str) -> None:
        """Capacity layer 2: find the cgroup parent for Docker's driver and put its 90% caps in place.

        A relocated installation (tests, the demo) gets a parent of its own, so
        it never changes the limits of a real installation on the same host.
        """
        assert self.service is not None
        try:
            info = await runtime.info()
        except ConvocateError as e:
            log.warning("cannot ask Docker for its cgroup driver (%s); sessions start without a common parent", e)
            return
        name = f"convocate-sessions-{agent_id}" if self.config.paths.relocated else None
        parent = cgroups.detect(info, name)
        limits = self.service.host.limits
        parent.apply_limits(limits.cpus, limits.memory_mb << 20, cgroups.sessions_tasks_max())
        self.service.attach_parts(cgroup=parent)

    def handle_process(self, process: asyncssh.SSHServerProcess, caller: Caller) -> Any:
        """Route an accepted channel to its subsystem handler."""
        assert self.service is not None and self.dispatcher is not None
        if process.subsystem == RPC_SUBSYSTEM:
            coro = serve_rpc_channel(process, self.dispatcher, caller, self.config.rpc_request_timeout,
                                     self.config.rpc_idle_timeout)
            tasks = self._rpc_tasks
        elif process.subsystem == TRANSFER_SUBSYSTEM:  # a move (issue 18): its lock ends with the channel
            coro, tasks = serve_transfer_channel(process, self.service, caller), self._rpc_tasks
        else:
            coro, tasks = serve_attach_channel(process, self.service, caller), self._attach_tasks
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def serve(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then shut down (:func:`.serve_until_signalled`).

        The shutdown may take ``shutdown_timeout`` seconds for open channels plus
        :data:`SHUTDOWN_TAIL_S` for the rest; a second signal during it ends the agent at once.

        Raises:
            ConfigError: see :meth:`start`.
            OSError: see :meth:`start`.
        """
        await serve_until_signalled(self.start, self.shutdown, name="convocate-agent",
                                    shutdown_timeout_s=self.config.shutdown_timeout + SHUTDOWN_TAIL_S)

    async def shutdown(self) -> None:
        """Stop accepting; end attaches; give running ops ``shutdown_timeout`` seconds; say goodbye; close.

        Session containers keep running: they belong to dockerd. Attached
        operators are disconnected and their tmux clients detached.
        """
        if self.listener is not None:
            await self.listener.stop_accepting()
        for task in list(self._attach_tasks):
            task.cancel()
        if self.dispatcher is not None:  # held channels waiting for a request: nothing of theirs is running
            for task in list(self.dispatcher.idle_channels):
                task.cancel()
        pending = set(self._rpc_tasks) | set(self._attach_tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.config.shutdown_timeout)
            for task in late:
                log.warning("shutdown: %s still running after %g s, cancelled", task.get_coro(),
                            self.config.shutdown_timeout)
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in (self._watch_task, self._purge_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.recorders is not None:
            await self.recorders.shutdown()
        if self.emitter is not None:
            await self.emitter.stop()
        if self.listener is not None:
            await self.listener.close_connections()
        if self.service is not None:
            await self.service.close()  # queued record writes reach the disk before the agent ends
        log.info("convocate-agent stopped")
