"""Session containers through the Docker Engine API (docker SDK).

Every docker SDK call is blocking HTTP over the engine's Unix socket, so each
runs on this module's own thread pool, never on the event loop. Docker's
errors become :class:`DockerError` in :meth:`DockerRuntime._call`, through
:mod:`convocate_agent.dockererrors` (or ``None`` for "no such container" where
absence is an answer).

Containers are named, labelled and hardened (DESIGN §8, a session is
untrusted) by the create body of :mod:`convocate_agent.containerspec`;
commands and terminals inside them are :mod:`convocate_agent.containerexec`,
a mixin of :class:`DockerRuntime`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker
from docker.types import LogConfig

from convocate.common import messages
from convocate.common.constants import (
    LABEL_AGENT,
    LABEL_CLAUDE_CODE,
    LABEL_CPUS,
    LABEL_MEMORY,
    LABEL_SESSION,
)
from convocate.common.errors import DockerError
from convocate.common.paths import Paths
from convocate.common.syslog import docker_log_options
from convocate_agent.containerexec import TMUX_SESSION, ContainerExec
from convocate_agent.containerspec import SessionSpec, container_name, create_options
from convocate_agent.dockererrors import SDK_ERRORS, docker_errors

log = logging.getLogger(__name__)
T = TypeVar("T")

# LABEL_CLAUDE_CODE is the session image's label with its Claude Code version (packaging/image/build-image.sh);
# Docker copies an image's labels into each container made from it, so the container list carries it.

#: Seconds ``docker stop`` waits after SIGTERM before SIGKILL (DESIGN §3, kill).
STOP_TIMEOUT_S = 10


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


class DockerRuntime(ContainerExec):
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
        kwargs = create_options(spec, self.agent_id, self.paths.root if self.paths.relocated else None,
                                self.docker_path, self.log_config(spec.session_id))
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
