"""The agent's operations on sessions: what each RPC op does.

:class:`AgentService` ties the session store, the lifecycle locks, the Docker
runtime, admission control and the event sink together. Every method takes
already-decoded params (see :mod:`convocate.common.ops`) and returns a
JSON-ready result or raises a :class:`~convocate.common.errors.ConvocateError`.
Lifecycle ops hold the session's lock for their whole duration.

Reads (``list``, ``get``, ``ping``, ``capacity``) answer from :class:`~convocate_agent.state.SessionState`,
the agent's in-memory state, without a Docker call or a file read on the request path while Docker's
event stream is up (issue 17); lifecycle ops write the records through it, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from convocate.common import messages
from convocate.common.credentials import (
    Credential,
    CredentialStore,
    render_env_file,
    resolved_name,
    session_env,
    summaries,
)
from convocate.common.errors import AdmissionDenied, ConfigError, Conflict, ConvocateError, DockerError, NotFound
from convocate.common.fsutil import atomic_write, read_token
from convocate.common.model import (
    AUTO_PORT_LOW,
    PORT_AUTO,
    PORT_MAX,
    SessionMeta,
    SessionView,
    new_uuid,
    parse_trash_id,
    validate_uuid,
)
from convocate.common.ops import OPS
from convocate.common.paths import Paths
from convocate.common.protocol import (
    CONTAINER_CREATED,
    CONTAINER_DELETED,
    CONTAINER_EDITED,
    CONTAINER_STARTED,
    CONTAINER_STOPPED,
    SESSION_ACTIVITY,
    SESSION_ATTACHED,
    SESSION_DETACHED,
    Event,
)
from convocate.common.timefmt import format_rfc3339, now_ns, parse_rfc3339
from convocate.common.version import PROTOCOL_VERSION, __version__
from convocate_agent.admission import Admission, HostResources, Reservation, outside_memory_mb, read_meminfo
from convocate_agent.audit import AuditLog
from convocate_agent.cgroups import CgroupParent
from convocate_agent.insight import (
    ACTIVITY_LOG,
    CRASHED,
    EXITED,
    IDLE,
    LIMITED,
    SUPERVISOR_LOG,
    Activity,
    ReportSockets,
    append_log,
    merge_logs,
    next_activity,
    read_log_tail,
    report_line,
)
from convocate_agent.locks import SessionLocks
from convocate_agent.recorder import RecordingHook
from convocate_agent.recordings import Recordings
from convocate_agent.runtime import TMUX_SESSION, ContainerState, DockerRuntime, ExecStream, SessionSpec
from convocate_agent.settings import Settings, save_settings
from convocate_agent.state import SessionState
from convocate_agent.store import NS_PER_DAY, SessionStore

log = logging.getLogger(__name__)

#: Name of the systemd credential carrying the session env file (LoadCredential=).
SESSION_ENV_CREDENTIAL = "session.env"
#: Seconds a started session may take to accept attaches.
READY_TIMEOUT_S = 20.0
#: Seconds after a limit's reset before ``resume_after_limit`` types its message (clocks differ a little).
RESUME_GRACE_S = 3.0


class EventSink(Protocol):
    """Where the agent's status events go (the status emitter, or the log)."""

    def publish(self, event: Event) -> None: ...  # pragma: no cover - protocol


class LogEventSink:
    """Writes every event to the agent's log; used when no shell host is configured."""

    def publish(self, event: Event) -> None:
        log.info("event %s session=%s", event.type, event.session_id or "-")


@dataclass(frozen=True)
class AttachRequest:
    """A decoded attach header (DESIGN §3, convocate-agent-attach).

    Attributes:
        session_id: The session UUID.
        cols: Terminal width; 0 means 80.
        rows: Terminal height; 0 means 24.
        read_only: Attach as an observer.
        term: ``TERM`` of the operator's terminal.
    """

    session_id: str
    cols: int = 80
    rows: int = 24
    read_only: bool = False
    term: str = "xterm-256color"


class AgentService:
    """Implements the RPC ops for one agent.

    Args:
        paths: Installation layout.
        agent_id: This agent's 8-character ID.
        settings: Current settings (replaced by ``settings-set``).
        store: Session directories.
        locks: Lifecycle locks.
        runtime: Docker access.
        host: The host's CPU and memory totals.
        events: Where lifecycle events go.
        uid: UID of the ``claude`` user in sessions.
        gid: GID of the ``claude`` user in sessions.
    """

    def __init__(self, *, paths: Paths, agent_id: str, settings: Settings, store: SessionStore, locks: SessionLocks,
                 runtime: DockerRuntime, host: HostResources, events: EventSink, uid: int, gid: int) -> None:
        self.paths = paths
        self.agent_id = agent_id
        self.settings = settings
        self.store = store
        self.locks = locks
        self.runtime = runtime
        self.host = host
        self.events = events
        self.uid = uid
        self.gid = gid
        self.audit: AuditLog | None = None  # the audit trail (convocate_agent.audit), set by the server
        self.cgroup: CgroupParent | None = None  # set by the server once Docker's driver is known
        self.reports = ReportSockets(paths, self.on_report, uid=uid, gid=gid, container_of=self._container_id)
        self.credentials = CredentialStore(paths.agent_credentials_dir)
        self.state = SessionState(store, runtime)  # what reads answer from (issue 17)
        self._fingerprint_cache: tuple[int, dict[str, str]] | None = None  # (credential dir mtime, fingerprints)
        self.admission = Admission(host, self._running_reservations, self._outside_memory)
        self.recordings = Recordings(paths, store, runtime)  # recording_list, _read, _grep (issue 19)
        self._attached: dict[str, int] = {}
        self._moving = self._load_moving()  # session -> the agent a move takes it to (agent_moving_dir)
        self._starting: dict[str, asyncio.Event] = {}  # session -> set when its start is over
        self.recorder: RecordingHook | None = None  # set by the server (issue 19): the attach relay's input goes there
        self._names_lock = asyncio.Lock()
        self._creating: dict[str, SessionMeta] = {}  # creates between their name check and their record
        self._expected_stops: dict[str, float] = {}  # session → monotonic time its stop was asked
        # resume_after_limit (issue 15): at most one pending resume per session, and the tasks typing one.
        self._resumes: dict[str, asyncio.TimerHandle] = {}
        self._resuming: set[asyncio.Task[None]] = set()

    # --- helpers ---------------------------------------------------------------
    async def _container_id(self, session_id: str) -> str | None:
        """The ID of the session's running container (a report's sender must live in it), or None."""
        state = await self.state.container(session_id)
        return state.container_id if state is not None and state.running else None

    async def _running_reservations(self) -> dict[str, Reservation]:
        """Reservations of the running sessions, from dockerd (admission decides on what Docker says)."""
        return {sid: Reservation(c.cpus, c.memory_mb) for sid, c in (await self.runtime.containers()).items()
                if c.running}

    def _outside_memory(self) -> int:
        return outside_memory_mb(self.cgroup.memory_usage_bytes() if self.cgroup else None)

    def _fingerprints(self) -> dict[str, str]:
        """Name → fingerprint of the credentials this agent holds (an unreadable store counts as empty).

        Read from disk once, then kept until ``credential_set`` or ``credential_delete`` changes the store
        (or the store directory's mtime moves: a credential file added or removed by hand).
        """
        try:
            mtime = os.stat(self.credentials.directory).st_mtime_ns
        except OSError:
            mtime = -1
        cached = self._fingerprint_cache
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            fingerprints = self.credentials.fingerprints()
        except OSError as e:
            log.warning("cannot read the credential store %s: %s", self.credentials.directory, e)
            return {}
        self._fingerprint_cache = (mtime, fingerprints)
        return fingerprints

    def _view(self, meta: SessionMeta, container: ContainerState | None, locked: bool | None = None,
              fingerprints: dict[str, str] | None = None) -> SessionView:
        running = bool(container and container.running)
        current = self._fingerprints() if fingerprints is None else fingerprints
        name = resolved_name(meta.credential)
        return SessionView(
            meta=meta,
            running=running,
            attached_count=self._attached.get(meta.uuid, 0) if running else 0,
            locked=self.locks.is_locked(meta.uuid) if locked is None else locked,
            claude_code=container.claude_code if container is not None else "",
            credential_stale=running and meta.credential_fingerprint != current.get(name, ""),
            credential_missing=bool(meta.credential) and meta.credential not in current,
        )

    def _cached_wire(self, meta: SessionMeta, container: ContainerState | None, locked: bool,
                     fingerprints: dict[str, str]) -> dict[str, Any]:
        """The wire view of a read (``list``, ``get``), rebuilt only when something it shows changed."""
        running = bool(container and container.running)
        name = resolved_name(meta.credential)
        key = (id(meta), id(container), running, locked, self._attached.get(meta.uuid, 0) if running else 0,
               fingerprints.get(name, ""), meta.credential in fingerprints, meta, container)
        return self.state.cached_wire(key, meta.uuid,
                                      lambda: self._view(meta, container, locked, fingerprints).to_wire())

    async def _wire(self, meta: SessionMeta, locked: bool | None = None) -> dict[str, Any]:
        return self._view(meta, await self.state.container(meta.uuid), locked).to_wire()

    def _emit(self, kind: str, session_id: str | None = None, data: Any = None) -> None:
        self.events.publish(Event.now(kind, self.agent_id, session_id, data))

    def current_image(self) -> str:
        """The tag new containers start from (``/var/lib/convocate-agent/current-image``).

        Raises:
            ConfigError: the file is missing or empty.
        """
        image = read_token(self.paths.current_image_file)
        if not image:
            raise ConfigError(messages.NO_IMAGE.format(path=self.paths.current_image_file))
        return image

    def _session_environment(self) -> dict[str, str]:
        """``KEY=VALUE`` lines of the root-only session env file (e.g. ``ANTHROPIC_API_KEY``).

        Under systemd the unit hands the file over with ``LoadCredential=session.env:...``
        (systemd.exec(5)), so an agent running as an unprivileged user reads it
        from ``$CREDENTIALS_DIRECTORY``; otherwise it is read from its path.
        """
        env: dict[str, str] = {}
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        path = self.paths.session_env_file
        try:
            if credentials and (Path(credentials) / SESSION_ENV_CREDENTIAL).is_file():
                path = Path(credentials) / SESSION_ENV_CREDENTIAL
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except FileNotFoundError:
            return env
        except OSError as e:  # e.g. a credential systemd could not hand over: start sessions without it
            log.warning("session env file: cannot read %s (%s); sessions start without it", path, e)
            return env
        if mode & 0o077 and not credentials:
            log.warning("%s is readable by others (mode %o); it holds secrets: chmod 600 it", path, mode & 0o777)
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            key = key.strip().removeprefix("export ").strip()
            if key.isidentifier():
                env[key] = value.strip().strip('"').strip("'")
        return env

    async def _require_running(self, session_id: str) -> ContainerState:
        self.state.meta(session_id)
        state = await self.state.container(session_id)
        if state is None or not state.running:
            raise Conflict(messages.SESSION_NOT_RUNNING.format(id=session_id))
        return state

    # --- names and ports -----------------------------------------------------------
    def _check_dns(self, dns_name: str, others: list[SessionMeta]) -> None:
        if not dns_name:
            return
        for other in others:
            if other.dns_name == dns_name:
                raise Conflict(messages.DNS_NAME_IN_USE.format(dns_name=dns_name, owner=other.uuid))

    def _resolve_port(self, port: int, protocol: str, others: list[SessionMeta]) -> int:
        """Turn a requested port into the one to store (DESIGN §3 port rules).

        Args:
            port: 0 none, -1 auto, 1-65535 explicit.
            protocol: ``tcp`` or ``udp``.
            others: The agent's other sessions.

        Raises:
            Conflict: an explicit port is used by another session or busy on the host;
                no free port is left for auto.
        """
        if port == 0:
            return 0
        used = {o.port: o for o in others if o.port and o.protocol == protocol}
        if port == PORT_AUTO:
            for candidate in range(AUTO_PORT_LOW, PORT_MAX + 1):
                if candidate not in used and _port_free_on_host(candidate, protocol):
                    return candidate
            raise Conflict(messages.NO_FREE_PORT.format(protocol=protocol, low=AUTO_PORT_LOW))
        if port in used:
            raise Conflict(messages.PORT_IN_USE.format(port=port, protocol=protocol, owner=used[port].uuid))
        if not _port_free_on_host(port, protocol):
            raise Conflict(messages.PORT_BUSY_ON_HOST.format(port=port, protocol=protocol))
        return port

    def _refuse_if_draining(self) -> None:
        """Raise AdmissionDenied while the ``draining`` setting is on (issue 18: no new session here)."""
        if self.settings.draining:
            raise AdmissionDenied(messages.AGENT_DRAINING.format(agent=self.agent_id))

    def _others(self, exclude: str) -> list[SessionMeta]:
        """The other sessions, and the creates still writing theirs (their names and ports are taken)."""
        return [m for m in self.state.metas() + list(self._creating.values()) if m.uuid != exclude]

    # --- ops ------------------------------------------------------------------------
    async def ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "version": __version__,
            "server_time": format_rfc3339(now_ns()),
            "protocol": PROTOCOL_VERSION,
            "capabilities": sorted(OPS) + ["attach.read_only", "rpc.multi_request"],
        }

    async def list(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every session, newest ``last_accessed`` first, from memory (one Docker call while the event stream is down)."""
        containers = await self.state.containers()
        sessions = self.state.metas()
        for uuid, reason in self.state.broken().items():
            log.warning("skipping session %s: %s", uuid, reason)
        locked = self.locks.locked_ids()
        fingerprints = self._fingerprints()
        sessions.sort(key=lambda m: m.last_accessed, reverse=True)
        return [self._cached_wire(m, containers.get(m.uuid), m.uuid in locked, fingerprints) for m in sessions]

    async def get(self, params: dict[str, Any]) -> dict[str, Any]:
        meta = self.state.meta(params["id"])
        container = await self.state.container(meta.uuid)
        return self._cached_wire(meta, container, self.locks.is_locked(meta.uuid), self._fingerprints())

    async def create(self, params: dict[str, Any]) -> dict[str, Any]:
        """Make a session; start it too when ``start`` is true (admission-checked first)."""
        settings = self.settings
        self._refuse_if_draining()
        session_id = new_uuid()
        start = params.get("start", False)
        with self.locks.hold(session_id, "create"):
            async with self._names_lock:
                others = self._others(session_id)
                dns_name = params.get("dns_name", "")
                self._check_dns(dns_name, others)
                self._check_credential(params.get("credential", ""))
                protocol = params.get("protocol", "tcp")
                port = self._resolve_port(params.get("port", 0), protocol, others)
                now = now_ns()
                meta = SessionMeta(
                    uuid=session_id, name=params["name"], created_at=now, last_accessed=now, port=port,
                    protocol=protocol, dns_name=dns_name, cpus=params.get("cpus", settings.default_cpus),
                    memory_mb=params.get("memory_mb", settings.default_memory_mb),
                    credential=params.get("credential", ""),
                )
                if start:
                    image = self.current_image()  # fail before anything is made
                self._creating[session_id] = meta  # its DNS name and port are taken from here on
            try:
                await asyncio.to_thread(self.store.create, meta)
            finally:
                self._creating.pop(session_id, None)
            if not start:
                wire = self._view(meta, None, False).to_wire()
                self._emit(CONTAINER_CREATED, session_id, wire)
                return wire
            try:
                meta = await self._start(meta, image)
            except BaseException:
                # The caller asked for a running session and gets an error: leave nothing behind,
                # even when dockerd is what failed (the container, if any, is swept at the next start).
                self._expect_stop(session_id)
                try:
                    await self.runtime.remove(session_id)
                except DockerError as e:
                    log.warning("create %s: cannot remove its container: %s", session_id, e)
                self.state.note_container(session_id, None)
                self.state.leaving(session_id)
                try:
                    await self.state.on_writer(self.store.trash, session_id)
                finally:
                    self.state.leaving(session_id, False)
                self.reports.close(session_id)
                raise
            started = await self.state.container(session_id) or ContainerState(
                session_id, "", True, "running", image, meta.cpus, meta.memory_mb)
            wire = self._view(meta, started, False).to_wire()
            self._emit(CONTAINER_CREATED, session_id, wire)
            self._emit(CONTAINER_STARTED, session_id, wire)
            return wire

    def _check_credential(self, name: str) -> None:
        """Refuse a session credential named explicitly that this agent does not hold.

        Raises:
            NotFound: no credential of that name (``""``, the default, is never refused).
        """
        if name and self.credentials.get(name) is None:
            raise NotFound(messages.CREDENTIAL_NOT_ON_AGENT.format(name=name))

    def _session_credential(self, meta: SessionMeta) -> Credential | None:
        """The credential a session starts with: its own, else ``default``; None (logged) when there is none."""
        name = resolved_name(meta.credential)
        try:
            credential = self.credentials.get(name)
        except (ConfigError, OSError) as e:
            log.warning("session %s: cannot read its credential %s (%s); it starts without one", meta.uuid, name, e)
            return None
        if credential is None and meta.credential:
            log.warning(messages.CREDENTIAL_MISSING_AT_START.format(id=meta.uuid, name=name))
        return credential

    def _write_credential_env(self, meta: SessionMeta) -> str:
        """Write the session's ``credential.env`` for its next container start; returns the fingerprint in it.

        Holds the session env file's lines and the session's credential (convocate.common.credentials);
        nothing of it goes into Docker's environment, labels or the session's record.
        """
        credential = self._session_credential(meta)
        env, skipped = session_env(self._session_environment(), credential)
        if skipped:
            log.warning("session env file: %s not passed to sessions (only Claude Code's, proxy and CA variables "
                        "are)", ", ".join(sorted(skipped)))
        self.reports.write_credential_env(meta.uuid, render_env_file(env) if env else None)
        if credential is not None:
            log.info("session %s starts with credential %s (%s, %s)", meta.uuid, credential.name, credential.kind,
                     credential.fingerprint)
        return credential.fingerprint if credential is not None else ""

    async def _start(self, meta: SessionMeta, image: str) -> SessionMeta:
        """Admit, start and wait for a session's container; persists the image and credential fingerprint used.

        The session's ``credential.env`` exists from just before the container starts until it is
        ready (its entrypoint has read it by then) and is removed after, whatever happened.
        """
        report_dir = await self.reports.ensure(meta.uuid)
        self._cancel_resume(meta.uuid)
        fingerprint = self._write_credential_env(meta)
        meta = meta.with_changes(activity="", activity_detail="", activity_at=now_ns(), activity_until=0)
        await self.state.save(meta)
        spec = SessionSpec(
            session_id=meta.uuid, image=image, home=self.paths.session_dir(meta.uuid), cpus=meta.cpus,
            memory_mb=meta.memory_mb, port=meta.port, protocol=meta.protocol,
            hostname=meta.dns_name.split(".")[0] if meta.dns_name else f"session-{meta.uuid[:8]}",
            agent_command=self.settings.agent_command,
            claude_shared=self.paths.claude_shared_dir if self.paths.claude_shared_dir.is_dir() else None,
            uid=self.uid, gid=self.gid, cgroup_parent=self.cgroup.docker_value if self.cgroup else None,
            report_dir=report_dir, restart_backoff_s=self.settings.restart_backoff_s,
            pids_limit=self.settings.pids_limit, work_dir=self.settings.work_dir,
            skip_permissions=self.settings.skip_permissions,
        )
        started = self._starting[meta.uuid] = asyncio.Event()
        try:
            async with self.admission.admit(meta.uuid, Reservation(meta.cpus, meta.memory_mb)):
                began = now_ns()
                self.state.note_container(meta.uuid, await self.runtime.start(spec), since=began)
                waited = await self.runtime.wait_ready(meta.uuid, READY_TIMEOUT_S)
        finally:
            started.set()
            if self._starting.get(meta.uuid) is started:
                del self._starting[meta.uuid]
            self.reports.write_credential_env(meta.uuid, None)
        log.info("session %s ready in %.0f ms (image %s)", meta.uuid, waited * 1000, image)
        meta = self.state.meta(meta.uuid).with_changes(image=image, last_accessed=now_ns(),  # reports may have come
                                                       credential_fingerprint=fingerprint)
        await self.state.save(meta)
        return meta

    async def edit(self, params: dict[str, Any]) -> dict[str, Any]:
        """Change name, port, protocol, DNS name, CPUs or memory; limits and ports apply at the next restart."""
        session_id = params["id"]
        with self.locks.hold(session_id, "edit"):
            async with self._names_lock:
                meta = self.state.meta(session_id)
                others = self._others(session_id)
                changes: dict[str, Any] = {}
                for key in ("name", "cpus", "memory_mb"):
                    if key in params:
                        changes[key] = params[key]
                if "credential" in params and params["credential"] != meta.credential:
                    self._check_credential(params["credential"])
                    changes["credential"] = params["credential"]
                if "dns_name" in params and params["dns_name"] != meta.dns_name:
                    self._check_dns(params["dns_name"], others)
                    changes["dns_name"] = params["dns_name"]
                protocol = params.get("protocol", meta.protocol)
                port = params.get("port", meta.port)
                if (port, protocol) != (meta.port, meta.protocol):
                    changes["port"] = self._resolve_port(port, protocol, others)
                    changes["protocol"] = protocol
                meta = meta.with_changes(**changes)
                await self.state.save(meta)
            wire = await self._wire(meta, locked=False)
        self._emit(CONTAINER_EDITED, session_id, wire)
        return wire

    async def clone(self, params: dict[str, Any]) -> dict[str, Any]:
        """Copy a session's home into a new session (new UUID, no port, no DNS name)."""
        self._refuse_if_draining()
        source_id = params["source_id"]
        source = self.state.meta(source_id)
        session_id = new_uuid()
        with self.locks.hold(source_id, "clone"), self.locks.hold(session_id, "clone"):
            now = now_ns()
            meta = SessionMeta(uuid=session_id, name=params["name"], created_at=now, last_accessed=now,
                               cpus=source.cpus, memory_mb=source.memory_mb, credential=source.credential)
            await asyncio.to_thread(self.store.clone, source_id, meta)
        wire = self._view(meta, None, False).to_wire()
        self._emit(CONTAINER_CREATED, session_id, wire)
        return wire

    async def delete(self, params: dict[str, Any]) -> dict[str, Any]:
        """Move a stopped session's home to the trash and remove its container."""
        session_id = params["id"]
        self.state.meta(session_id)
        with self.locks.hold(session_id, "delete"):
            state = await self.runtime.container(session_id)
            for _ in range(40):  # dockerd sends "die" a moment before its own state says so: the events win
                if state is None or not state.running or (await self.state.container(session_id) or state).running:
                    break
                await asyncio.sleep(0.05)
                state = await self.runtime.container(session_id)
            if state is not None and state.running:
                raise Conflict(messages.SESSION_RUNNING.format(id=session_id))
            self._set_moving(session_id, None)  # a move's source copy goes to the trash here
            await self.runtime.remove(session_id)
            self.state.note_container(session_id, None)
            self.state.leaving(session_id)
            try:
                trashed = await self.state.on_writer(self.store.trash, session_id)
            finally:
                self.state.leaving(session_id, False)
            self.reports.close(session_id)
            self._cancel_resume(session_id)
        self._emit(CONTAINER_DELETED, session_id)
        return {"uuid": session_id, "trash": trashed.name}

    async def kill(self, params: dict[str, Any]) -> dict[str, Any]:
        """Stop a session's container (SIGTERM, SIGKILL after 10 s). Stopping a stopped session is a no-op."""
        session_id = params["id"]
        meta = self.state.meta(session_id)
        with self.locks.hold(session_id, "kill"):
            self._expect_stop(session_id)
            was_running = await self.runtime.stop(session_id)
            if was_running:
                self.state.stopped(session_id)
                await self.state.save(self.state.meta(session_id).with_changes(last_accessed=now_ns()))
                written = self._set_activity(session_id, Activity(EXITED, "stopped by the operator", now_ns()))
                if written is not None:
                    await asyncio.wrap_future(written)
            meta = self.state.meta(session_id)
            wire = await self._wire(meta, locked=False)
        if was_running:
            self._emit(CONTAINER_STOPPED, session_id, wire)
        return wire

    async def restart(self, params: dict[str, Any]) -> dict[str, Any]:
        """(Re)start a session's container from the current image; admission-checked."""
        session_id = params["id"]
        meta = self.state.meta(session_id)
        if session_id in self._moving:  # the other copy may be the one now (a pending move, issue 18)
            raise Conflict(messages.SESSION_MOVING.format(id=session_id, agent=self._moving[session_id]))
        with self.locks.hold(session_id, "restart"):
            image = self.current_image()
            self._expect_stop(session_id)
            if await self.runtime.stop(session_id):
                self.state.stopped(session_id)
                self._emit(CONTAINER_STOPPED, session_id, self._view(meta, None, True).to_wire())
            meta = await self._start(meta, image)
            wire = await self._wire(meta, locked=False)
        self._emit(CONTAINER_STARTED, session_id, wire)
        return wire

    async def background(self, params: dict[str, Any]) -> dict[str, Any]:
        """Detach every operator from the session; it keeps running."""
        session_id = params["id"]
        await self._require_running(session_id)
        await self.runtime.detach_all(session_id)
        return await self._wire(self.state.meta(session_id))

    async def override(self, params: dict[str, Any]) -> dict[str, Any]:
        """Take a session over: clear a stale lock, and detach whoever is attached.

        With ``moving_to`` (a move, issue 18), those attach channels end with
        :data:`~convocate.common.protocol.ATTACH_EXIT_MOVING`, the clients attach again where the
        session runs next, and ``restart`` refuses the copy here (persisted in
        ``agent_moving_dir``, so also after an agent restart) until the move clears it: ``moving_to``
        ``""`` (its rollback) does only that, detaching nobody; ``delete`` (its end) too.
        """
        session_id = params["id"]
        meta = self.state.meta(session_id)
        if params.get("moving_to") == "":
            self._set_moving(session_id, None)
            return {"session": await self._wire(meta), "cleared_lock": "", "detached": 0}
        if params.get("moving_to"):
            self._set_moving(session_id, params["moving_to"])
        cleared = self.locks.clear_stale(session_id)
        detached = 0
        state = await self.runtime.container(session_id)
        if state is not None and state.running:
            detached = await self.runtime.detach_all(session_id)
        wire = await self._wire(meta)
        return {"session": wire, "cleared_lock": cleared.describe() if cleared else "", "detached": detached}

    async def settings_get(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.settings.to_json()

    async def settings_set(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate a partial update, persist it atomically, and return the new settings."""
        updated = self.settings.updated(params)
        await asyncio.to_thread(save_settings, self.paths.agent_settings, updated)
        self.settings = updated
        log.info("settings changed: %s", ", ".join(sorted(params)) or "nothing")
        if {"resume_after_limit", "resume_message"} & set(params):
            self.reschedule_resumes()
        return updated.to_json()

    # --- credentials (issue 15) ------------------------------------------------------------
    async def credential_set(self, params: dict[str, Any]) -> dict[str, Any]:
        """Store (or replace) a credential; new and restarted sessions get it. Never returns the secret."""
        credential = await asyncio.to_thread(self.credentials.put, params["name"], params["kind"], params["secret"])
        self._fingerprint_cache = None
        log.info("credential %s (%s) set: %s", credential.name, credential.kind, credential.fingerprint)
        await self._announce_credential_change(credential.name)
        return credential.summary()

    async def credential_list(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """``[{name, kind, fingerprint, set_at}]`` of every credential this agent holds, by name."""
        return summaries(await asyncio.to_thread(self.credentials.all))

    async def credential_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        """Remove a credential; sessions started with it keep it until they stop.

        Raises:
            NotFound: there is no credential of that name.
        """
        try:
            await asyncio.to_thread(self.credentials.delete, params["name"])
        finally:
            self._fingerprint_cache = None
        log.info("credential %s removed", params["name"])
        await self._announce_credential_change(params["name"])
        return {"name": params["name"], "deleted": True}

    async def _announce_credential_change(self, name: str) -> None:
        """Publish ``container.edited`` for each session using ``name``, so TUIs mark (or unmark) the stale ones."""
        try:
            containers = await self.state.containers()
        except DockerError as e:
            log.warning("credential %s changed; cannot tell which sessions use it: %s", name, e)
            return
        fingerprints = self._fingerprints()
        for meta in self.state.metas():
            if resolved_name(meta.credential) == name:
                self._emit(CONTAINER_EDITED, meta.uuid,
                           self._view(meta, containers.get(meta.uuid), fingerprints=fingerprints).to_wire())

    async def capture(self, params: dict[str, Any]) -> dict[str, Any]:
        """The session pane's text; ``lines`` > 0 includes that many lines of history."""
        session_id = params["id"]
        await self._require_running(session_id)
        args = ["capture-pane", "-p", "-J", "-t", TMUX_SESSION]
        if params.get("lines", 0) > 0:
            args += ["-S", f"-{params['lines']}"]
        out = await self.runtime.tmux(session_id, *args)
        return {"uuid": session_id, "text": out.decode("utf-8", "replace")}

    async def send(self, params: dict[str, Any]) -> dict[str, Any]:
        """Type ``text`` into the session (tmux ``send-keys -l``), then Enter if asked."""
        session_id = params["id"]
        await self._require_running(session_id)
        if params["text"]:
            await self.runtime.tmux(session_id, "send-keys", "-t", TMUX_SESSION, "-l", "--", params["text"])
        if params.get("enter", False):
            await self.runtime.tmux(session_id, "send-keys", "-t", TMUX_SESSION, "Enter")
        return {"uuid": session_id, "sent": len(params["text"]), "enter": params.get("enter", False)}

    async def capacity(self, params: dict[str, Any]) -> dict[str, Any]:
        """Host totals, reservations of running sessions, live usage and the 90% limits."""
        running = {sid: Reservation(c.cpus, c.memory_mb) for sid, c in (await self.state.containers()).items()
                   if c.running}
        reserved = Reservation()
        for r in running.values():
            reserved = reserved + r
        limits = self.host.limits
        meminfo = read_meminfo()  # /proc: no disk, and no queue behind the lifecycle ops' threads
        load1, load5, load15 = os.getloadavg()
        sessions_bytes = self.cgroup.memory_usage_bytes() if self.cgroup else None
        return {
            "host": {"cpus": self.host.cpus, "memory_mb": self.host.memory_mb},
            "limits": {"cpus": limits.cpus, "memory_mb": limits.memory_mb, "fraction": 0.9},
            "reserved": {"cpus": reserved.cpus, "memory_mb": reserved.memory_mb, "sessions": len(running)},
            "usage": {
                "load1": load1, "load5": load5, "load15": load15,
                "memory_used_mb": (meminfo.get("MemTotal", 0) - meminfo.get("MemAvailable", 0)) // 1024,
                "memory_available_mb": meminfo.get("MemAvailable", 0) // 1024,
                "sessions_memory_mb": None if sessions_bytes is None else sessions_bytes >> 20,
                "outside_memory_mb": outside_memory_mb(sessions_bytes, meminfo),
            },
            "cgroup_parent": self.cgroup.docker_value if self.cgroup else None,
            "draining": self.settings.draining,
            "defaults": {"cpus": self.settings.default_cpus, "memory_mb": self.settings.default_memory_mb},
        }

    # --- trash ------------------------------------------------------------------------
    async def purge_trash(self) -> list[str]:
        """Remove trash entries older than the retention setting; returns their IDs."""
        purged = await asyncio.to_thread(self.store.purge_trash, self.settings.trash_retention_days)
        for trash_id in purged:
            log.info("purged %s from the trash (retention %d days)", trash_id, self.settings.trash_retention_days)
        return purged

    async def trash(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Deleted sessions still in the trash, newest first, with when each will be purged."""
        await self.purge_trash()
        retention = self.settings.trash_retention_days * NS_PER_DAY
        out = []
        for entry in await asyncio.to_thread(self.store.trash_entries):
            item: dict[str, Any] = {"trash_id": entry.trash_id, "uuid": entry.uuid,
                                    "deleted_at": format_rfc3339(entry.deleted_at),
                                    "purge_after": format_rfc3339(entry.deleted_at + retention)}
            if entry.meta is not None:
                item.update(name=entry.meta.name, dns_name=entry.meta.dns_name, port=entry.meta.port)
            out.append(item)
        return out

    async def restore(self, params: dict[str, Any]) -> dict[str, Any]:
        """Bring a deleted session back from the trash, as it was.

        A port or DNS name another session took in the meantime is cleared (and named in ``cleared``).
        """
        self._refuse_if_draining()
        trash_id = params["trash_id"]
        session_id, _ = parse_trash_id(trash_id)
        await self.purge_trash()
        with self.locks.hold(session_id, "restore"):
            async with self._names_lock:
                meta = await self.state.on_writer(self.store.restore, trash_id)
                others = self._others(session_id)
                changes: dict[str, Any] = {"last_accessed": now_ns()}
                if meta.dns_name and any(o.dns_name == meta.dns_name for o in others):
                    changes["dns_name"] = ""
                if meta.port and any((o.port, o.protocol) == (meta.port, meta.protocol) for o in others):
                    changes["port"] = 0
                cleared = sorted(k for k in changes if k != "last_accessed")
                meta = meta.with_changes(**changes)
                await self.state.save(meta)
        wire = await self._wire(meta, locked=False)
        self._emit(CONTAINER_CREATED, session_id, wire)
        return {"session": wire, "cleared": cleared}

    # --- attach ----------------------------------------------------------------
    async def open_attach(self, request: AttachRequest) -> ExecStream:
        """Start an attach exec for ``request`` and count the operator as attached.

        An attach that comes while the session is starting waits for the start to end (at most
        ``READY_TIMEOUT_S``), so that it finds tmux up rather than ``no sessions``: an operator a
        move detached attaches again as soon as the target's container runs (issue 18).

        Raises:
            NotFound: no such session.
            Conflict: the session is not running.
            DockerError: the exec could not be started.
        """
        starting = self._starting.get(request.session_id)
        if starting is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(starting.wait(), READY_TIMEOUT_S)
        await self._require_running(request.session_id)
        stream = await self.runtime.open_attach(request.session_id, cols=request.cols, rows=request.rows,
                                                term=request.term, read_only=request.read_only,
                                                uid=self.uid, gid=self.gid)
        sid = request.session_id
        self._attached[sid] = self._attached.get(sid, 0) + 1
        try:
            meta = self.state.meta(sid).with_changes(last_accessed=now_ns())
            self.state.save_soon(meta)
        except (NotFound, ConfigError, OSError) as e:
            log.warning("attach %s: cannot record last access: %s", sid, e)
        else:
            self._emit(SESSION_ATTACHED, sid, {"read_only": request.read_only,
                                               "attached_count": self._attached[sid], "name": meta.name})
        return stream

    def moving_to(self, session_id: str) -> str | None:
        """The agent a move takes the session to, while it is moving (see :meth:`override`)."""
        return self._moving.get(session_id)

    def _load_moving(self) -> dict[str, str]:
        moving: dict[str, str] = {}
        try:
            names = os.listdir(self.paths.agent_moving_dir)
        except FileNotFoundError:
            return moving
        for name in names:
            target = read_token(self.paths.agent_moving_dir / name)
            if target:
                moving[name] = target
        return moving

    def _set_moving(self, session_id: str, target: str | None) -> None:
        """Mark (or, with None, unmark) the session as moving to ``target``; written before it counts."""
        path = self.paths.agent_moving_dir / validate_uuid(session_id)
        if target is None:
            path.unlink(missing_ok=True)
            self._moving.pop(session_id, None)
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, f"{target}\n".encode(), mode=0o600)
        self._moving[session_id] = target

    def close_attach(self, session_id: str) -> None:
        """Count an operator as detached."""
        count = max(0, self._attached.get(session_id, 0) - 1)
        if count:
            self._attached[session_id] = count
        else:
            self._attached.pop(session_id, None)
        self._emit(SESSION_DETACHED, session_id, {"attached_count": count})

    # --- what the agent inside a session reports --------------------------------------------------
    def on_report(self, session_id: str, source: str, event: str, data: dict[str, Any]) -> None:
        """A report from inside a session (called by its own socket): log it, update its activity."""
        home = self.paths.session_dir(session_id)
        try:
            append_log(home, ACTIVITY_LOG, report_line(source, event, data), (self.uid, self.gid))
        except OSError as e:
            log.info("session %s: cannot append to its activity log: %s", session_id, e)
        try:
            meta = self.state.meta(session_id)
        except (NotFound, ConfigError):
            return
        current = Activity(meta.activity, meta.activity_detail, meta.activity_at, meta.activity_until)
        new = next_activity(current, source, event, data, now_ns(), limit_retry_s=self.settings.limit_retry_s)
        if new is not None:
            self._set_activity(session_id, new, meta)

    def _set_activity(self, session_id: str, activity: Activity, meta: SessionMeta | None = None) -> Any:
        """Record a new activity (in memory now, its record's write queued) and publish ``session.activity``.

        Returns:
            The write's future (a ``concurrent.futures.Future``), or None when the session is gone.
        """
        try:
            meta = meta or self.state.meta(session_id)
        except (NotFound, ConfigError):
            return None
        previous = meta.activity
        meta = meta.with_changes(activity=activity.state, activity_detail=activity.detail, activity_at=activity.at,
                                 activity_until=activity.until if activity.state == LIMITED else 0)
        written = self.state.save_soon(meta)
        data = {"activity": activity.state, "detail": activity.detail, "previous": previous, "name": meta.name,
                "at": format_rfc3339(activity.at)}
        if meta.activity_until:
            data["until"] = format_rfc3339(meta.activity_until)
        self._emit(SESSION_ACTIVITY, session_id, data)
        self._schedule_resume(meta)
        return written

    # --- resume after a usage limit (issue 15) ------------------------------------------------------
    def _cancel_resume(self, session_id: str) -> None:
        handle = self._resumes.pop(session_id, None)
        if handle is not None:
            handle.cancel()

    def _schedule_resume(self, meta: SessionMeta) -> None:
        """(Re)plan the end of a session's limit: at ``activity_until`` + :data:`RESUME_GRACE_S` while it is limited.

        Then, with ``resume_after_limit``, ``resume_message`` is typed into it; without, it becomes
        ``idle`` (the limit is over and it waits for a prompt), so no session shows a reset time that
        has passed. Any other activity, or no event loop (a synchronous caller), cancels it. Timers
        live in memory only; :meth:`recover` plans them again from the stored activities.
        """
        self._cancel_resume(meta.uuid)
        if not (meta.activity == LIMITED and meta.activity_until):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = max(0.0, (meta.activity_until - now_ns()) / 1e9) + RESUME_GRACE_S
        self._resumes[meta.uuid] = loop.call_later(delay, self._start_resume, meta.uuid, meta.activity_at)

    def reschedule_resumes(self) -> int:
        """Plan the resumes of every stored ``limited`` session (after a restart or a settings change).

        Returns:
            How many are pending now.
        """
        for session_id in list(self._resumes):
            self._cancel_resume(session_id)
        for meta in self.state.metas():
            self._schedule_resume(meta)
        return len(self._resumes)

    def _start_resume(self, session_id: str, limited_at: int) -> None:
        self._resumes.pop(session_id, None)
        task = asyncio.get_running_loop().create_task(self._resume(session_id, limited_at))
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)

    async def _resume(self, session_id: str, limited_at: int) -> None:
        """Type ``resume_message`` into a session still limited since ``limited_at``, as ``send`` does."""
        try:
            meta = self.state.meta(session_id)
        except (NotFound, ConfigError):
            return
        if meta.activity != LIMITED or meta.activity_at != limited_at:
            return
        if not self.settings.resume_after_limit:
            self._set_activity(session_id, Activity(IDLE, messages.LIMIT_OVER.format(
                until=format_rfc3339(meta.activity_until)), now_ns()), meta)
            return
        text = self.settings.resume_message
        try:
            await self.send({"id": session_id, "text": text, "enter": True})
        except ConvocateError as e:
            log.info("session %s: cannot resume after its limit: %s", session_id, e)
            return
        log.info("session %s: limit reset at %s, typed %r", session_id, format_rfc3339(meta.activity_until), text)
        try:
            append_log(self.paths.session_dir(session_id), ACTIVITY_LOG,
                       report_line("agent", "resume", {"message": text,
                                                       "until": format_rfc3339(meta.activity_until)}),
                       (self.uid, self.gid))
        except OSError as e:
            log.info("session %s: cannot append to its activity log: %s", session_id, e)

    async def logs(self, params: dict[str, Any]) -> dict[str, Any]:
        """The session's supervisor, activity and report logs, merged by time (newest last)."""
        session_id = params["id"]
        self.state.meta(session_id)
        home = self.paths.session_dir(session_id)
        texts = await asyncio.to_thread(lambda: {name.removesuffix(".log"): read_log_tail(home, name)
                                                 for name in (SUPERVISOR_LOG, ACTIVITY_LOG, "report.log")})
        since = parse_rfc3339(params["since"]) if params.get("since") else 0
        lines = merge_logs(texts, since, params.get("lines", 0) or (0 if since else 200))
        last = lines[-1].split(": ", 1)[1].split(" ", 1)[0] if lines else params.get("since", "")
        return {"uuid": session_id, "lines": lines, "last": last}

    # --- containers that change on their own ------------------------------------------------
    def _expect_stop(self, session_id: str) -> None:
        """Note that this agent is stopping the container, so its ``die`` event is not news."""
        now = time.monotonic()
        self._expected_stops = {sid: t for sid, t in self._expected_stops.items() if now - t < 120}
        self._expected_stops[session_id] = now

    def on_container_event(self, action: str, session_id: str, attributes: dict[str, Any]) -> None:
        """Publish what Docker reports about a container that this agent did not cause.

        A session whose agent command ended (a clean exit, or the supervisor
        gave up) stops its container by itself: that ``die`` becomes
        ``container.stopped`` with the exit code.
        """
        if action != "die":
            return
        if self._expected_stops.pop(session_id, None) is not None:
            return
        try:
            meta = self.state.meta(session_id)
        except (NotFound, ConfigError):
            return
        self._attached.pop(session_id, None)
        exit_code = attributes.get("exitCode", "")
        log.info("session %s stopped by itself (exit code %s)", session_id, exit_code or "?")
        if str(exit_code) == "0" and meta.activity != EXITED:
            self._set_activity(session_id, Activity(EXITED, "the session ended", now_ns()))
        elif str(exit_code) != "0" and meta.activity != CRASHED:
            self._set_activity(session_id, Activity(CRASHED, f"the container exited with status {exit_code}",
                                                    now_ns()))
        meta = self.state.meta(session_id)
        data = self._view(meta, None).to_wire()
        data["exit_code"] = int(exit_code) if str(exit_code).isdigit() else None
        self._emit(CONTAINER_STOPPED, session_id, data)

    # --- start-up -------------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """Clean up after a crash and re-discover containers; run once before serving.

        Moves the metadata an older agent kept in the homes into the records (once, validated),
        finishes a create, clone or delete a crash interrupted, removes half-built homes and stale locks, removes stopped containers whose
        session is gone, and detaches tmux clients left by a previous agent's attaches.

        Returns:
            Counts of what was found and cleaned, for the start-up log.
        """
        migrated = await asyncio.to_thread(self.store.migrate_legacy)
        legacy_locks = self.locks.sweep_legacy()
        interrupted = await asyncio.to_thread(self.store.finish_interrupted)
        staged = self.store.sweep_staging()
        stale = self.locks.sweep()
        await asyncio.to_thread(self.state.reload)  # every record, once: reads answer from memory from here on
        await self.purge_trash()
        report = {"records_migrated": len(migrated.migrated) + len(migrated.trash_migrated),
                  "records_refused": len(migrated.refused), "interrupted": len(interrupted),
                  "staging_removed": len(staged), "stale_locks": len(stale) + len(legacy_locks), "containers": 0,
                  "running": 0, "orphan_containers_removed": 0, "stale_attaches": 0}
        try:
            containers = await self.runtime.containers()
        except DockerError as e:
            log.warning("cannot re-discover containers: %s", e)
            return report
        report["containers"] = len(containers)
        for meta in self.state.metas():
            await self.reports.ensure(meta.uuid)
            self.reports.write_credential_env(meta.uuid, None)  # left by a start this agent did not finish
        report["resumes_planned"] = self.reschedule_resumes()
        for sid, state in containers.items():
            if not self.store.exists(sid):
                if state.running:
                    log.warning("container %s runs for session %s, whose directory is gone; left running",
                                state.container_id[:12], sid)
                else:
                    await self.runtime.remove(sid)
                    report["orphan_containers_removed"] += 1
                continue
            if state.running:
                report["running"] += 1
                for exec_id in await self.runtime.stale_attach_execs(sid):
                    if await self.runtime.detach_exec_client(sid, exec_id):
                        report["stale_attaches"] += 1
        return report


def _port_free_on_host(port: int, protocol: str) -> bool:
    """Whether ``port`` can be bound on all IPv4 addresses for ``protocol`` right now."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True
