"""The agent's operations on sessions: what each RPC op does.

:class:`AgentService` ties the session store, the lifecycle locks, the Docker
runtime, admission control and the event sink together. Every op method takes
its op's decoded params object (:mod:`convocate.common.ops.params`) and returns a
JSON-ready result or raises a :class:`~convocate.common.errors.ConvocateError`.
Lifecycle ops hold the session's lock for their whole duration.

Reads (``list``, ``get``, ``ping``, ``capacity``) answer from :class:`~convocate_agent.state.SessionState`,
the agent's in-memory state, without a Docker call or a file read on the request path while Docker's
event stream is up (issue 17); lifecycle ops write the records through it, off the event loop.

The ops live in one module per group, and this one keeps the core (construction, the session
views, ``ping``, ``list``, ``get``, ``capacity``, ``recover``, ``on_container_event``):

- :mod:`convocate_agent.ops_lifecycle`: ``create``, ``edit``, ``clone``, ``delete``, ``kill``,
  ``restart``, ``background``, ``override``, with their drain check;
- :mod:`convocate_agent.ops_sessionenv`: their credential check and a start's ``credential.env``;
- :mod:`convocate_agent.ops_names`: the DNS name and port checks (lifecycle's, ``restore``'s, a move's);
- :mod:`convocate_agent.ops_attach`: ``open_attach``/``close_attach``, the move marks, ``capture``, ``send``;
- :mod:`convocate_agent.ops_activity`: ``on_report``, the activity, the resume after a limit, ``logs``;
- :mod:`convocate_agent.ops_admin`: settings, credentials and the trash.

Each group is a mixin of :class:`AgentService`, not a part it holds, and says with class-level
annotations which shared parts and which other groups' methods it uses. Composition was weighed
and costs more than it buys here: the groups share state that changes under them (``settings``
is replaced by ``settings-set``; ``cgroup`` arrives after construction; every view reads the
attach counts; ``restart`` reads the move marks that ``override`` writes; an attach waits on the
start that lifecycle runs) and call across (lifecycle cancels activity's resume timers, a
resume types through ``send``, ``settings-set`` replans the resumes, ``recover`` purges the trash).
Parts held apart would each need that state passed back as one shared, mutable context object
(the same coupling under another name) and :class:`AgentService` would repeat some 25 op
signatures as forwarders. As mixins every op still runs on one object, so each keeps its
messages, the order of its side effects and its locks exactly, and ``rpc.py``'s handler table,
``attach.py``, ``transfer.py`` and the tests call ``service.create(...)`` as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Protocol

from convocate.common import messages
from convocate.common.credentials import CredentialStore, resolved_name
from convocate.common.errors import ConfigError, Conflict, DockerError, NotFound
from convocate.common.fsutil import read_token
from convocate.common.model import SessionMeta, SessionView
from convocate.common.ops import OPS
from convocate.common.ops.params import CapacityParams, GetParams, ListParams, PingParams
from convocate.common.paths import Paths
from convocate.common.protocol import CONTAINER_STOPPED, Event
from convocate.common.timefmt import format_rfc3339, now_ns
from convocate.common.version import PROTOCOL_VERSION, __version__
from convocate_agent.activity import ReportSockets
from convocate_agent.activityrules import CRASHED, EXITED, Activity
from convocate_agent.admission import Admission, HostResources, Reservation, outside_memory_mb, read_meminfo
from convocate_agent.audit import AuditLog
from convocate_agent.cgroups import CgroupParent
from convocate_agent.locks import SessionLocks
from convocate_agent.ops_activity import ActivityOps
from convocate_agent.ops_admin import AdminOps
from convocate_agent.ops_attach import AttachOps
from convocate_agent.ops_lifecycle import LifecycleOps
from convocate_agent.ops_names import NameChecks
from convocate_agent.ops_sessionenv import SessionEnvOps
from convocate_agent.recorderset import RecordingHook
from convocate_agent.recordings import Recordings
from convocate_agent.runtime import ContainerState, DockerRuntime
from convocate_agent.settings import Settings
from convocate_agent.state import SessionState
from convocate_agent.store import SessionStore

log = logging.getLogger(__name__)
#: Sessions whose stale attaches :meth:`AgentService.recover` sweeps at once: half the Docker
#: runtime's 16 worker threads, so that the event stream and the start's other calls still get one.
RECOVER_SWEEPS = 8


class EventSink(Protocol):
    """Where the agent's status events go (the status emitter, or the log)."""

    def publish(self, event: Event) -> None: ...  # pragma: no cover - protocol


class LogEventSink:
    """Writes every event to the agent's log; used when no shell host is configured."""

    def publish(self, event: Event) -> None:
        log.info("event %s session=%s", event.type, event.session_id or "-")


class AgentService(LifecycleOps, SessionEnvOps, NameChecks, AttachOps, ActivityOps, AdminOps):
    """Implements the RPC ops for one agent.

    It owns the runtime, the report sockets, the session state and, once attached, the cgroup
    parent: :meth:`close` closes them. Admission control is the one part that calls back into
    the service, deliberately: :class:`~convocate_agent.admission.Admission` asks
    ``_running_reservations`` (what dockerd says runs) and ``_outside_memory`` (the host memory
    the sessions' cgroup does not account for) at each admission, so it decides on what is true then.

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
        self.audit: AuditLog | None = None  # the audit trail (convocate_agent.audit): attach_parts
        self.cgroup: CgroupParent | None = None  # attach_parts, once Docker's driver is known
        self.reports = ReportSockets(paths, self.on_report, uid=uid, gid=gid, container_of=self._container_id)
        self.credentials = CredentialStore(paths.agent_credentials_dir)
        self.state = SessionState(store, runtime)  # what reads answer from (issue 17)
        self._fingerprint_cache: tuple[int, dict[str, str]] | None = None  # (credential dir mtime, fingerprints)
        self.admission = Admission(host, self._running_reservations, self._outside_memory)
        self.recordings = Recordings(paths, store, runtime)  # recording_list, _read, _grep (issue 19)
        self._attached: dict[str, int] = {}
        self._moving = self._load_moving()  # session -> the agent a move takes it to (agent_moving_dir)
        self._starting: dict[str, asyncio.Event] = {}  # session -> set when its start is over
        self.recorder: RecordingHook | None = None  # attach_parts (issue 19): the attach relay's input goes there
        self._names_lock = asyncio.Lock()
        self._creating: dict[str, SessionMeta] = {}  # creates between their name check and their record
        self._expected_stops: dict[str, float] = {}  # session → monotonic time its stop was asked
        # resume_after_limit (issue 15): at most one pending resume per session, and the tasks typing one.
        self._resumes: dict[str, asyncio.TimerHandle] = {}
        self._resuming: set[asyncio.Task[None]] = set()

    def attach_parts(self, *, audit: AuditLog | None = None, cgroup: CgroupParent | None = None,
                     recorder: RecordingHook | None = None) -> None:
        """Give the service the parts the server makes after constructing it; None leaves one as it is.

        Args:
            audit: The audit trail (:mod:`convocate_agent.audit`), read by the attach channel.
            cgroup: The sessions' cgroup parent, once Docker's cgroup driver is known (capacity layer 2);
                the service owns it from here on (:meth:`close` cleans it up).
            recorder: Where the attach relay's input goes (issue 19).
        """
        if audit is not None:
            self.audit = audit
        if cgroup is not None:
            self.cgroup = cgroup
        if recorder is not None:
            self.recorder = recorder

    async def close(self) -> None:
        """Close what the service owns, at the agent's end; session containers keep running.

        Queued record writes reach the disk first; then the report sockets, the Docker runtime's
        connections and the cgroup parent (if attached) are closed.
        """
        self.state.close()
        self.reports.close_all()
        self.runtime.close()
        if self.cgroup is not None:
            self.cgroup.cleanup()

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

    async def _require_running(self, session_id: str) -> ContainerState:
        self.state.meta(session_id)
        state = await self.state.container(session_id)
        if state is None or not state.running:
            raise Conflict(messages.SESSION_NOT_RUNNING.format(id=session_id))
        return state

    # --- reads ------------------------------------------------------------------------
    async def ping(self, params: PingParams) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "version": __version__,
            "server_time": format_rfc3339(now_ns()),
            "protocol": PROTOCOL_VERSION,
            "capabilities": sorted(OPS) + ["attach.read_only", "rpc.multi_request"],
        }

    async def list(self, params: ListParams) -> list[dict[str, Any]]:
        """Every session, newest ``last_accessed`` first, from memory (one Docker call while the event stream is down)."""
        containers = await self.state.containers()
        sessions = self.state.metas()
        for uuid, reason in self.state.broken().items():
            log.warning("skipping session %s: %s", uuid, reason)
        locked = self.locks.locked_ids()
        fingerprints = self._fingerprints()
        sessions.sort(key=lambda m: m.last_accessed, reverse=True)
        return [self._cached_wire(m, containers.get(m.uuid), m.uuid in locked, fingerprints) for m in sessions]

    async def get(self, params: GetParams) -> dict[str, Any]:
        meta = self.state.meta(params.id)
        container = await self.state.container(meta.uuid)
        return self._cached_wire(meta, container, self.locks.is_locked(meta.uuid), self._fingerprints())

    async def capacity(self, params: CapacityParams) -> dict[str, Any]:
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
        running: list[str] = []
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
                running.append(sid)
        report["running"] = len(running)
        report["stale_attaches"] = await self._detach_stale_attaches(running)
        return report

    async def _detach_stale_attaches(self, session_ids: list[str]) -> int:
        """Detach the tmux clients a previous agent's attaches left in these sessions; returns how many.

        Sessions are swept :data:`RECOVER_SWEEPS` at a time, each with one ``tmux list-clients``:
        one after the other, an agent restarted after many attaches had ended under it took
        ~1.1 s per stale client before it listened (43.6 s for 10 sessions of 0.05 CPUs with 4
        each; 6.8 s swept this way, docs/benchmarks.md).
        """
        sweeps = asyncio.Semaphore(RECOVER_SWEEPS)

        async def sweep(session_id: str) -> int:
            async with sweeps:
                stale = await self.runtime.stale_attach_execs(session_id)
                return await self.runtime.detach_exec_clients(session_id, stale) if stale else 0

        return sum(await asyncio.gather(*(sweep(sid) for sid in session_ids)))
