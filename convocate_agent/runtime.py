"""Session containers through the Docker Engine API (docker SDK).

Every docker SDK call is blocking HTTP over the engine's Unix socket, so each
runs on this module's own thread pool, never on the event loop. Docker's
errors become :class:`DockerError` in :meth:`DockerRuntime._call`, through
:mod:`convocate_agent.dockererrors` (or ``None`` for "no such container" where
absence is an answer).

Containers are named ``convocate-session-<uuid>`` and labelled with the
session UUID, the agent ID, the session's CPU and memory reservation, and,
under a relocated root (tests, the demo), that root, so every container an
installation made can be found with one label query.

Hardening (DESIGN §8, a session is untrusted): a container starts as the
session user (``User=1337:1337``; the image has the user built in and its
entrypoint needs no privilege then, packaging/image/entrypoint) with every
capability dropped and none added back (``CapDrop=["ALL"]``), with
``no-new-privileges`` (setuid and file-capability binaries give nothing),
Docker's default seccomp profile (never ``seccomp=unconfined``), AppArmor's
``docker-default`` where the host has AppArmor (Docker applies it by default;
the agent names it so that a changed daemon default cannot drop it), a
read-only root file system with tmpfs on ``/run`` (owned by the session user:
the entrypoint's ``/run/convocate``), ``/tmp`` and ``/var/tmp``, the home as
the only writable bind mount, and a pids limit (``PidsLimit``, the agent
setting ``pids_limit``). Docker exec processes (the agent's attach, capture
and send) inherit the container's capability set, ``no-new-privileges``,
seccomp and AppArmor profiles: the Engine API's exec (1.41) takes only
``User``, ``Privileged``, ``Env``, ``WorkingDir`` and the TTY fields, so the
agent sets ``User`` to the session user and ``Privileged`` to false (and
Docker refuses a privileged exec in such a container anyway).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import docker
from docker.types import LogConfig, Mount

from convocate.common import messages
from convocate.common.constants import (
    CLAUDE_GID,
    CLAUDE_UID,
    CONTAINER_PREFIX,
    LABEL_AGENT,
    LABEL_CLAUDE_CODE,
    LABEL_CPUS,
    LABEL_MEMORY,
    LABEL_ROOT,
    LABEL_SESSION,
)
from convocate.common.errors import DockerError
from convocate.common.paths import Paths
from convocate.common.syslog import docker_log_options
from convocate_agent.dockererrors import SDK_ERRORS, docker_errors

log = logging.getLogger(__name__)
T = TypeVar("T")

# LABEL_CLAUDE_CODE is the session image's label with its Claude Code version (packaging/image/build-image.sh);
# Docker copies an image's labels into each container made from it, so the container list carries it.

#: tmux session that the image's entrypoint creates (packaging/image/).
TMUX_SESSION = "main"
#: Where the session home is mounted in the container.
CONTAINER_HOME = "/home/claude"
#: Where the host's shared Claude settings (and fallback credentials) are mounted, read-only.
CONTAINER_CLAUDE_SHARED = "/opt/convocate/claude-shared"
#: Where the session's report socket directory is mounted.
CONTAINER_REPORT_DIR = "/run/convocate-agent"
#: argv[0] given to attach execs, so a restarted agent can find the ones its predecessor left.
ATTACH_MARKER = "convocate-attach"
#: Seconds ``docker stop`` waits after SIGTERM before SIGKILL (DESIGN §3, kill).
STOP_TIMEOUT_S = 10

_TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
#: Capabilities a session container keeps: none (it starts as the session user, see the module doc).
CAP_ADD: tuple[str, ...] = ()
#: Docker's ``HostConfig.SecurityOpt`` of a session: no privilege gain (AppArmor is added where present).
SECURITY_OPT = ("no-new-privileges:true",)
#: AppArmor profile Docker ships and loads (``docker-default``), named where the host has AppArmor.
APPARMOR_PROFILE = "docker-default"
#: Size of the ``/run`` tmpfs: the entrypoint's status file and nothing else.
RUN_TMPFS_SIZE = "16m"


def container_name(session_id: str) -> str:
    """``convocate-session-<uuid>``."""
    return CONTAINER_PREFIX + session_id


@dataclass(frozen=True)
class ContainerState:
    """What one Docker list call tells about a session container.

    Attributes:
        session_id: The session UUID (from the label).
        container_id: Docker's ID.
        running: The container is up.
        status: Docker's status word (``running``, ``exited``, ``created`` ...).
        image: Image reference it was created from.
        cpus: CPU reservation recorded at start, in cores.
        memory_mb: Memory reservation recorded at start, in MiB.
        claude_code: The Claude Code version of its image (label ``convocate.claude-code``: ``X.Y.Z``,
            ``none`` for the stand-in), ``""`` when the image has no such label.
    """

    session_id: str
    container_id: str
    running: bool
    status: str
    image: str
    cpus: float
    memory_mb: int
    claude_code: str = ""


#: Docker container events the agent's in-memory state follows (Engine API ``/events``, ``type=container``):
#: what changes whether a container exists or runs. ``oom`` and ``health_status`` change nothing the state
#: keeps (``die`` follows an OOM kill; session containers have no health check) but are followed so the
#: handlers hear of them.
WATCHED_EVENTS = ("create", "start", "die", "stop", "kill", "oom", "pause", "unpause", "destroy", "health_status")


@dataclass(frozen=True)
class ContainerEvent:
    """One Docker event about a session container, as the event stream delivered it.

    Attributes:
        action: Docker's ``Action`` (``start``, ``die``, ``destroy``, ``health_status: healthy`` ...).
        session_id: The session UUID (the container's ``convocate.session`` label).
        container_id: Docker's container ID (the event's ``Actor.ID``).
        time_ns: When dockerd saw it (``timeNano``), ns since the epoch.
        attributes: ``Actor.Attributes``: the container's labels, ``image``, ``name``, ``exitCode`` ...
    """

    action: str
    session_id: str
    container_id: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(frozen=True)
class SessionSpec:
    """Everything needed to start one session container.

    Attributes:
        session_id: The session UUID.
        image: Image tag (from ``current-image``).
        home: Host path of the session home, mounted at ``/home/claude``.
        cpus: CPU limit in cores (Docker ``NanoCpus``).
        memory_mb: Memory limit in MiB (Docker ``Memory``; swap not allowed beyond it).
        port: Port published on the host (same number), 0 for none.
        protocol: ``tcp`` or ``udp``.
        hostname: Container hostname.
        agent_command: Command the supervisor runs.
        environment: Extra Docker environment, never a secret (``docker inspect`` shows it): the
            session's credential and the session env file reach it through ``credential.env`` in
            ``report_dir`` instead (convocate_agent.service, issue 15).
        claude_shared: Host directory with shared Claude settings (and the fallback credentials file,
            used when no cluster credential is configured), mounted read-only, or None.
        uid: UID of the ``claude`` user inside the container.
        gid: GID of the ``claude`` user inside the container.
        cgroup_parent: Docker ``HostConfig.CgroupParent`` (capacity layer 2), or None.
        report_dir: Host directory holding the session's report socket, mounted read-only
            at ``/run/convocate-agent`` (convocate_agent.activity), or None.
        restart_backoff_s: The supervisor's first restart delay (``CONVOCATE_BACKOFF_BASE``).
        pids_limit: Most tasks (processes and threads) in the container (Docker ``PidsLimit``).
        work_dir: The directory Claude Code works in, inside the container (``CONVOCATE_WORK_DIR``).
        skip_permissions: Run the agent command with ``--dangerously-skip-permissions``
            (``CONVOCATE_SKIP_PERMISSIONS`` ``1``/``0``).
    """

    session_id: str
    image: str
    home: Path
    cpus: float
    memory_mb: int
    port: int = 0
    protocol: str = "tcp"
    hostname: str = ""
    agent_command: str = "claude"
    environment: dict[str, str] = field(default_factory=dict)
    claude_shared: Path | None = None
    uid: int = CLAUDE_UID
    gid: int = CLAUDE_GID
    cgroup_parent: str | None = None
    report_dir: Path | None = None
    restart_backoff_s: float = 1.0
    pids_limit: int = 4096
    work_dir: str = CONTAINER_HOME + "/work"
    skip_permissions: bool = False


def tmpfs_mounts(uid: int, gid: int, memory_mb: int) -> dict[str, str]:
    """Docker's ``HostConfig.Tmpfs`` of a session: the writable places of its read-only root.

    ``/run`` belongs to the session user (the entrypoint makes ``/run/convocate`` there) and is
    ``noexec``; ``/tmp`` and ``/var/tmp`` are world-writable and sticky like on any host, and keep
    ``exec`` because build tools run what they put there. Every tmpfs page counts against the
    container's memory limit; the sizes only stop one of them from taking all of it.

    Args:
        uid: The session user's UID.
        gid: The session user's GID.
        memory_mb: The container's memory limit, in MiB.
    """
    half = max(16, memory_mb // 2)
    return {
        "/run": f"rw,nosuid,nodev,noexec,size={RUN_TMPFS_SIZE},mode=0755,uid={uid},gid={gid}",
        "/tmp": f"rw,nosuid,nodev,exec,size={half}m,mode=1777",
        "/var/tmp": f"rw,nosuid,nodev,exec,size={half}m,mode=1777",
    }


def apparmor_enabled(path: Path = Path("/sys/module/apparmor/parameters/enabled")) -> bool:
    """Whether the host kernel has AppArmor on (where Docker applies ``docker-default``)."""
    try:
        return path.read_text().strip().upper().startswith("Y")
    except OSError:
        return False


class ExecPipe(asyncio.Protocol):
    """An attach exec's socket, read by callbacks: the session's bytes go on in the loop's own callback.

    A stream reader wakes a task for each chunk (one more turn of the event loop per keystroke's
    echo); this protocol hands each chunk to a consumer from ``data_received`` itself. Until a
    consumer is set with :meth:`start`, the bytes are held (tmux's first screen can arrive before
    the relay has started) and reading stops past :data:`HOLD_MAX` bytes.

    A consumer has ``data_received(bytes)``, ``connection_lost(exc)``, ``pause_writing()`` and
    ``resume_writing()``, as :class:`asyncio.Protocol` calls them: the last two say that the
    socket's send buffer passed its high-water mark and came back (the consumer stops feeding it
    meanwhile).
    """

    #: Bytes held before a consumer is set, after which reading pauses.
    HOLD_MAX = 1 << 20

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._consumer: Any = None
        self._held: list[bytes] = []
        self._held_len = 0
        self._lost: tuple[Exception | None] | None = None
        self._write_paused = False
        self._hold_paused = False  # reading paused by this protocol, holding HOLD_MAX bytes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._consumer is not None:
            self._consumer.data_received(data)
            return
        self._held.append(data)
        self._held_len += len(data)
        if self._held_len > self.HOLD_MAX and self.transport is not None and not self._hold_paused:
            self._hold_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close the transport: Docker's end of the stream is the end of the attach

    def connection_lost(self, exc: Exception | None) -> None:
        if self._consumer is not None:
            self._consumer.connection_lost(exc)
        else:
            self._lost = (exc,)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._consumer is not None:
            self._consumer.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._consumer is not None:
            self._consumer.resume_writing()

    def start(self, consumer: Any) -> None:
        """Hand what was held, then every later chunk and the end, to ``consumer``."""
        self._consumer = consumer
        held, self._held, self._held_len = self._held, [], 0
        for data in held:
            consumer.data_received(data)
        if self._write_paused:
            consumer.pause_writing()
        if self._lost is not None:
            consumer.connection_lost(self._lost[0])
        elif self._hold_paused and self.transport is not None and not self.transport.is_closing():
            self._hold_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Send ``data`` to the exec's terminal (buffered by the transport when the socket is full)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


@dataclass
class ExecStream:
    """A started exec, as an asyncio stream pair (the recorder's) or an :class:`ExecPipe` (an attach's).

    Attributes:
        exec_id: Docker's exec ID (for resize and inspect).
        reader: Bytes from the exec's terminal (``None`` for an attach: see ``pipe``).
        writer: Bytes to the exec's terminal (``None`` for an attach: see ``pipe``).
        pipe: An attach's socket, read by callbacks (``None`` for a stream pair).
    """

    exec_id: str
    reader: asyncio.StreamReader | None
    writer: asyncio.StreamWriter | None
    _wrapper: Any = None
    pipe: ExecPipe | None = None

    def close(self) -> None:
        """Close the socket and the SDK's wrapper around it (both hold the fd)."""
        if self.writer is not None:
            self.writer.close()
        if self.pipe is not None and self.pipe.transport is not None:
            self.pipe.transport.close()
        try:
            if self._wrapper is not None:
                self._wrapper.close()
        except OSError:
            pass


class DockerRuntime:
    """Starts, stops, inspects and attaches to session containers.

    Args:
        agent_id: This agent's ID, put in every container's labels.
        paths: Installation layout; a relocated root is recorded in a label.
        client: A docker SDK client; by default one from the environment
            (``DOCKER_HOST`` or the local socket).
        workers: Threads for blocking SDK calls.
        docker_path_prefix: Where this host's file system appears on dockerd's host, for an
            agent that runs in a container and drives the outer host's dockerd through its
            socket ("Docker outside of Docker"): bind-mount sources and the log socket are
            given to dockerd as ``prefix + path``. Empty on a normal host.
        log_socket: The agent host's rsyslog socket for session logs (forwarded to the shell
            host over TLS); when it exists at start, containers log through Docker's ``syslog``
            driver to it, else through the default driver.
    """

    def __init__(self, agent_id: str, paths: Paths, client: docker.DockerClient | None = None, workers: int = 16,
                 *, docker_path_prefix: str = "", log_socket: Path | None = None) -> None:
        self.agent_id = agent_id
        self.paths = paths
        self.docker_path_prefix = docker_path_prefix.rstrip("/")
        self.log_socket = log_socket
        self._client = client
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docker")
        self._workers = workers

    # --- plumbing ----------------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            with docker_errors(""):
                self._client = docker.DockerClient.from_env(timeout=60, max_pool_size=self._workers)
        return self._client

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call on the pool, translating Docker's errors.

        Raises:
            DockerError: the engine refused the call or cannot be reached.
        """
        loop = asyncio.get_running_loop()
        with docker_errors(what):
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def docker_path(self, path: Path) -> str:
        """``path`` as dockerd's host sees it (see ``docker_path_prefix``)."""
        return f"{self.docker_path_prefix}{path}" if self.docker_path_prefix else str(path)

    def log_config(self, session_id: str) -> LogConfig | None:
        """Docker's ``HostConfig.LogConfig`` for a session: the syslog driver when the log socket is there.

        The driver sends RFC 5424 messages tagged with the session (Docker's syslog logging driver
        options ``syslog-address``, ``syslog-format``, ``tag``); with Docker >= 20.10 ``docker logs``
        keeps working through its local cache ("dual logging").
        """
        if self.log_socket is None:
            return None
        if not self.log_socket.is_socket():
            log.warning("log socket %s is missing (is rsyslog running?): session %s logs through Docker's default "
                        "driver only", self.log_socket, session_id)
            return None
        return LogConfig(type="syslog", config=docker_log_options(session_id, self.docker_path(self.log_socket)))

    def labels_filter(self) -> dict[str, Any]:
        """Label filter matching this agent's session containers."""
        return {"label": [f"{LABEL_AGENT}={self.agent_id}"]}

    def close(self) -> None:
        """Release the thread pool and the HTTP connections."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()

    # --- queries ----------------------------------------------------------------
    async def ping(self) -> str:
        """The engine's API version.

        Raises:
            DockerError: dockerd cannot be reached.
        """
        info = await self._call("docker version", self.api.version)
        return str(info.get("ApiVersion", ""))

    async def info(self) -> dict[str, Any]:
        """The engine's ``GET /info`` (cgroup driver and version among it).

        Raises:
            DockerError: dockerd cannot be reached.
        """
        return await self._call("docker info", self.api.info)

    async def containers(self) -> dict[str, ContainerState]:
        """Every session container of this agent, running or not, in ONE engine call.

        Returns:
            Session UUID → state.
        """
        rows = await self._call("list containers", self.api.containers, all=True, filters=self.labels_filter())
        out: dict[str, ContainerState] = {}
        for row in rows:
            state = _state_from_row(row)
            if state is not None:
                out[state.session_id] = state
        return out

    async def container(self, session_id: str) -> ContainerState | None:
        """One session's container, or None if it has none."""
        filters = {"label": [f"{LABEL_AGENT}={self.agent_id}", f"{LABEL_SESSION}={session_id}"]}
        rows = await self._call("list containers", self.api.containers, all=True, filters=filters)
        states = [s for s in (_state_from_row(r) for r in rows) if s is not None]
        return states[0] if states else None

    # --- lifecycle --------------------------------------------------------------
    async def start(self, spec: SessionSpec) -> ContainerState:
        """Create and start a session's container, replacing a stopped one.

        Raises:
            DockerError: the engine refused (unknown image, port taken, ...).
        """
        await self.remove(spec.session_id)
        labels = {
            LABEL_SESSION: spec.session_id,
            LABEL_AGENT: self.agent_id,
            LABEL_CPUS: f"{spec.cpus:g}",
            LABEL_MEMORY: str(spec.memory_mb),
        }
        if self.paths.relocated:
            labels[LABEL_ROOT] = str(self.paths.root)
        env = dict(spec.environment)
        env.update(
            CLAUDE_UID=str(spec.uid),
            CLAUDE_GID=str(spec.gid),
            CONVOCATE_SESSION_ID=spec.session_id,
            CONVOCATE_AGENT_COMMAND=spec.agent_command,
            CONVOCATE_BACKOFF_BASE=f"{spec.restart_backoff_s:g}",
            CONVOCATE_WORK_DIR=spec.work_dir,
            CONVOCATE_SKIP_PERMISSIONS="1" if spec.skip_permissions else "0",
        )
        mounts = [Mount(target=CONTAINER_HOME, source=self.docker_path(spec.home), type="bind")]
        if spec.report_dir is not None:
            mounts.append(Mount(target=CONTAINER_REPORT_DIR, source=self.docker_path(spec.report_dir), type="bind",
                                read_only=True))
        if spec.claude_shared is not None:
            mounts.append(Mount(target=CONTAINER_CLAUDE_SHARED, source=self.docker_path(spec.claude_shared),
                                type="bind", read_only=True))
        memory = spec.memory_mb * 1024 * 1024
        security_opt = list(SECURITY_OPT)
        if apparmor_enabled():
            security_opt.append(f"apparmor={APPARMOR_PROFILE}")
        kwargs: dict[str, Any] = dict(
            name=container_name(spec.session_id),
            hostname=spec.hostname or None,
            labels=labels,
            environment=env,
            mounts=mounts,
            init=True,
            detach=True,
            nano_cpus=int(spec.cpus * 1e9),
            mem_limit=memory,
            memswap_limit=memory,
            stop_signal="SIGTERM",
            user=f"{spec.uid}:{spec.gid}",
            cap_drop=["ALL"],
            cap_add=list(CAP_ADD) or None,
            security_opt=security_opt,
            read_only=True,
            tmpfs=tmpfs_mounts(spec.uid, spec.gid, spec.memory_mb),
            pids_limit=spec.pids_limit,
            privileged=False,
        )
        if spec.port:
            kwargs["ports"] = {f"{spec.port}/{spec.protocol}": spec.port}
        if spec.cgroup_parent:
            kwargs["cgroup_parent"] = spec.cgroup_parent
        log_config = self.log_config(spec.session_id)
        if log_config is not None:
            kwargs["log_config"] = log_config
        container = await self._call(f"create container for session {spec.session_id}",
                                     self.client.containers.create, spec.image, **kwargs)
        try:
            await self._call(f"start container for session {spec.session_id}", container.start)
        except DockerError:
            await self.remove(spec.session_id)
            raise
        # The create's inspect carries the image's labels (Docker copies them into the container's).
        labels_seen = ((getattr(container, "attrs", None) or {}).get("Config") or {}).get("Labels") or {}
        return ContainerState(spec.session_id, container.id, True, "running", spec.image, spec.cpus, spec.memory_mb,
                              str(labels_seen.get(LABEL_CLAUDE_CODE, "")))

    async def wait_ready(self, session_id: str, timeout: float = 15.0) -> float:
        """Wait until the session's tmux session accepts attaches.

        Returns:
            Seconds waited.

        Raises:
            DockerError: the container exited, or the timeout passed; the
                message carries the container's last log lines.
        """
        started = time.monotonic()
        delay = 0.01
        while True:
            code, _ = await self.exec(session_id, ["tmux", "has-session", "-t", TMUX_SESSION])
            if code == 0:
                return time.monotonic() - started
            state = await self.container(session_id)
            if state is None or not state.running:
                detail = f"container {state.status if state else 'vanished'}; {await self._tail_logs(session_id)}"
                raise DockerError(messages.SESSION_NOT_READY.format(id=session_id, seconds=time.monotonic() - started,
                                                                    detail=detail))
            if time.monotonic() - started > timeout:
                raise DockerError(messages.SESSION_NOT_READY.format(id=session_id, seconds=timeout,
                                                                    detail=await self._tail_logs(session_id)))
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    async def _tail_logs(self, session_id: str, lines: int = 5) -> str:
        try:
            raw = await self._call("container logs", self.api.logs, container_name(session_id), tail=lines)
        except DockerError as e:
            return str(e)
        text = raw.decode("utf-8", "replace").strip().replace("\n", " | ")
        return f"last log lines: {text}" if text else "no log output"

    async def stop(self, session_id: str, timeout: int = STOP_TIMEOUT_S) -> bool:
        """Stop a session's container: SIGTERM, then SIGKILL after ``timeout`` seconds.

        Returns:
            True if it was running.
        """
        state = await self.container(session_id)
        if state is None or not state.running:
            return False
        try:
            await self._call(f"stop session {session_id}", self.api.stop, state.container_id, timeout=timeout)
        except DockerError as e:
            if e.status == 404:  # gone meanwhile
                return False
            raise
        return True

    async def remove(self, session_id: str) -> bool:
        """Force-remove a session's container if it has one. Returns True if one was removed."""
        state = await self.container(session_id)
        if state is None:
            return False
        try:
            await self._call(f"remove container of session {session_id}", self.api.remove_container,
                             state.container_id, force=True)
        except DockerError as e:
            if e.status == 404:  # gone meanwhile
                return False
            raise
        return True

    # --- events --------------------------------------------------------------------
    async def watch(self, on_event: Callable[[str, str, dict[str, Any]], None],
                    backoff: tuple[float, float] = (1.0, 30.0), *,
                    on_container: Callable[[ContainerEvent], None] | None = None,
                    on_connected: Callable[[], None] | None = None,
                    on_disconnected: Callable[[], None] | None = None) -> None:
        """Follow Docker's event stream for this agent's containers until cancelled.

        Calls ``on_event(action, session_id, attributes)`` on the event loop for each container
        ``start``, ``die`` and ``oom``, and ``on_container`` for every event of
        :data:`WATCHED_EVENTS`. ``on_connected`` is called once dockerd has accepted the
        subscription (the ``GET /events`` response's headers are in, so every later event will
        come: a re-list of the containers made after it misses nothing), and ``on_disconnected``
        when the stream ends. The stream is re-opened with a backoff when dockerd goes away (a
        restart of dockerd, say); events while it was away are lost, hence the re-list.
        """
        loop = asyncio.get_running_loop()
        filters = {"type": "container", "event": list(WATCHED_EVENTS), **self.labels_filter()}
        delay = backoff[0]
        while True:
            stream: Any = None

            def follow() -> None:
                nonlocal stream
                stream = self.api.events(filters=filters, decode=True)
                if on_connected is not None:
                    loop.call_soon_threadsafe(on_connected)
                for ev in stream:
                    actor = ev.get("Actor") or {}
                    attrs = actor.get("Attributes") or {}
                    sid = attrs.get(LABEL_SESSION)
                    if not sid:
                        continue
                    action = str(ev.get("Action", ""))
                    if on_container is not None:
                        event = ContainerEvent(action, str(sid), str(actor.get("ID") or ev.get("id") or ""),
                                               int(ev.get("timeNano") or 0) or int(ev.get("time") or 0) * 10**9,
                                               attrs)
                        loop.call_soon_threadsafe(on_container, event)
                    if action in ("start", "die", "oom"):
                        loop.call_soon_threadsafe(on_event, action, sid, attrs)

            future = loop.run_in_executor(self._pool, follow)
            try:
                await future
                delay = backoff[0]
            except asyncio.CancelledError:
                if stream is not None:
                    stream.close()
                raise
            except SDK_ERRORS as e:
                log.warning("docker event stream ended: %s; again in %g s", e, delay)
            finally:
                if on_disconnected is not None:
                    on_disconnected()
            await asyncio.sleep(delay)
            delay = min(delay * 2, backoff[1])

    # --- inside the container ---------------------------------------------------
    async def exec(self, session_id: str, cmd: list[str], *, uid: int = CLAUDE_UID, gid: int = CLAUDE_GID) -> tuple[int, bytes]:
        """Run a command in the session's container as the session user.

        Returns:
            ``(exit code, combined stdout and stderr)``; exit code -1 when the
            container is not running.
        """
        doing = f"exec in session {session_id}"

        def run() -> tuple[int, bytes]:
            try:
                with docker_errors(doing):
                    created = self.api.exec_create(container_name(session_id), cmd, user=f"{uid}:{gid}",
                                                   privileged=False, environment={"HOME": CONTAINER_HOME})
            except DockerError as e:
                if e.status in (404, 409):  # no such container / not running
                    return -1, str(e).encode()
                raise
            output = self.api.exec_start(created["Id"])
            code = self.api.exec_inspect(created["Id"]).get("ExitCode")
            return (code if isinstance(code, int) else -1), output or b""

        return await self._call(doing, run)

    async def tmux(self, session_id: str, *args: str) -> bytes:
        """Run ``tmux ARGS`` in the session's container.

        Raises:
            DockerError: tmux failed; the message carries its output.
        """
        code, out = await self.exec(session_id, ["tmux", *args])
        if code != 0:
            raise DockerError(f"tmux {args[0]} in session {session_id} failed ({code}): "
                              f"{out.decode('utf-8', 'replace').strip()}")
        return out

    async def detach_all(self, session_id: str) -> int:
        """Detach every operator's tmux client of the session; returns how many there were.

        Control-mode clients (``#{client_control_mode}`` 1: the agent's recorder, issue 19) are
        not operators and stay attached.
        """
        out = await self.tmux(session_id, "list-clients", "-t", TMUX_SESSION, "-F",
                              "#{client_control_mode} #{client_name}")
        names = [parts[1] for parts in (line.split(" ", 1) for line in out.decode("utf-8", "replace").splitlines())
                 if len(parts) == 2 and parts[0] == "0"]
        for name in names:
            await self.exec(session_id, ["tmux", "detach-client", "-t", name])
        return len(names)

    async def open_control(self, session_id: str, uid: int = CLAUDE_UID, gid: int = CLAUDE_GID) -> ExecStream:
        """Start the recorder's read-only tmux control-mode client (``tmux -C attach -r``), no TTY.

        Its stdout comes in Docker's multiplexed framing (8-byte headers); closing the stream is
        EOF on its stdin, which ends the client. It sets no size, so tmux ignores it when sizing
        the window (tmux(1) CONTROL MODE, ``refresh-client -C``).

        Raises:
            DockerError: the exec could not be created or started.
        """
        def start() -> tuple[str, Any]:
            created = self.api.exec_create(container_name(session_id), ["tmux", "-C", "attach-session", "-r", "-t",
                                                                        TMUX_SESSION],
                                           stdin=True, tty=False, user=f"{uid}:{gid}", privileged=False,
                                           environment={"HOME": CONTAINER_HOME, "LANG": "C.UTF-8"})
            wrapper = self.api.exec_start(created["Id"], socket=True, tty=False)
            return created["Id"], wrapper

        exec_id, wrapper = await self._call(f"record session {session_id}", start)
        raw: socket.socket = getattr(wrapper, "_sock", wrapper)
        reader, writer = await asyncio.open_connection(sock=raw, limit=1 << 20)
        return ExecStream(exec_id, reader, writer, wrapper)

    async def open_attach(self, session_id: str, *, cols: int, rows: int, term: str, read_only: bool,
                          uid: int = CLAUDE_UID, gid: int = CLAUDE_GID) -> ExecStream:
        """Start ``tmux attach-session`` in the container on a TTY and return its stream.

        The command sets the pty size with ``stty`` before tmux starts, so tmux
        draws once at the right size (MACHINE-NOTES: attach).

        Args:
            session_id: The session UUID.
            cols: Terminal width in columns.
            rows: Terminal height in rows.
            term: ``TERM`` for the tmux client.
            read_only: Attach with ``tmux attach -r`` (an observer).

        Returns:
            The exec with its socket as an :class:`ExecPipe` (``pipe``; no stream pair).

        Raises:
            DockerError: the exec could not be created or started.
        """
        if not _TERM.fullmatch(term):
            term = "xterm-256color"
        attach = "tmux attach-session " + ("-r " if read_only else "") + f"-t {TMUX_SESSION}"
        script = f"stty rows {int(rows)} cols {int(cols)} 2>/dev/null; exec {attach}"

        def start() -> tuple[str, Any]:
            created = self.api.exec_create(container_name(session_id), ["sh", "-c", script, ATTACH_MARKER],
                                           stdin=True, tty=True, user=f"{uid}:{gid}", privileged=False,
                                           environment={"TERM": term, "HOME": CONTAINER_HOME, "LANG": "C.UTF-8"})
            wrapper = self.api.exec_start(created["Id"], socket=True, tty=True)
            return created["Id"], wrapper

        exec_id, wrapper = await self._call(f"attach to session {session_id}", start)
        raw: socket.socket = getattr(wrapper, "_sock", wrapper)
        _, pipe = await asyncio.get_running_loop().create_connection(ExecPipe, sock=raw)
        return ExecStream(exec_id, None, None, wrapper, pipe=pipe)

    async def resize_exec(self, exec_id: str, cols: int, rows: int) -> None:
        """Resize an exec's TTY (Docker ``POST /exec/{id}/resize``)."""
        if cols > 0 and rows > 0:
            await self._call("resize attach", self.api.exec_resize, exec_id, height=rows, width=cols)

    async def detach_exec_client(self, session_id: str, exec_id: str) -> bool:
        """Detach the tmux client an exec started, when its stream was closed under it.

        Docker cannot kill an exec; closing its socket leaves tmux's client
        attached forever. The exec's host PID (``exec_inspect``) is mapped to its
        PID inside the container (``NSpid`` in ``/proc/<pid>/status``) and
        matched against ``tmux list-clients``.

        Returns:
            True if a client was detached.
        """
        try:
            info = await self._call("inspect attach", self.api.exec_inspect, exec_id)
        except DockerError:
            return False
        if not info.get("Running") or not info.get("Pid"):
            return False
        inner = _namespaced_pid(int(info["Pid"]))
        if inner is None:
            return False
        code, out = await self.exec(session_id, ["tmux", "list-clients", "-F", "#{client_pid} #{client_tty}"])
        if code != 0:
            return False
        for line in out.decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == str(inner):
                code, _ = await self.exec(session_id, ["tmux", "detach-client", "-t", parts[1]])
                return code == 0
        return False

    async def stale_attach_execs(self, session_id: str) -> list[str]:
        """IDs of running attach execs in a container (from a previous agent process)."""
        try:
            info = await self._call("inspect container", self.api.inspect_container, container_name(session_id))
        except DockerError:
            return []
        found = []
        for exec_id in info.get("ExecIDs") or []:
            try:
                ex = await self._call("inspect exec", self.api.exec_inspect, exec_id)
            except DockerError:
                continue
            if ex.get("Running") and ATTACH_MARKER in (ex.get("ProcessConfig") or {}).get("arguments", []):
                found.append(exec_id)
        return found


def _state_from_row(row: dict[str, Any]) -> ContainerState | None:
    labels = row.get("Labels") or {}
    sid = labels.get(LABEL_SESSION)
    if not sid:
        return None
    try:
        cpus = float(labels.get(LABEL_CPUS, "0"))
        memory = int(labels.get(LABEL_MEMORY, "0"))
    except ValueError:
        cpus, memory = 0.0, 0
    status = str(row.get("State", ""))
    return ContainerState(sid, row.get("Id", ""), status == "running", status, str(row.get("Image", "")), cpus, memory,
                          str(labels.get(LABEL_CLAUDE_CODE, "")))


def _namespaced_pid(host_pid: int) -> int | None:
    """The innermost PID of ``host_pid`` (last ``NSpid`` field), or None if unknown."""
    try:
        with open(f"/proc/{host_pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None
