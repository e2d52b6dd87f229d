"""Session lifecycle ops: ``create``, ``edit``, ``clone``, ``delete``, ``kill``, ``restart``, ``background``, ``override``.

Part of :class:`~convocate_agent.service.AgentService` as a mixin (why, in that module's docstring).
Also here is the refusal while the agent drains (issue 18). What those ops check and write on the
way is in sibling groups: a named credential and a start's ``credential.env`` in
:mod:`convocate_agent.ops_sessionenv`; the DNS name and port checks, which ``restore`` and a move's
import share, in :mod:`convocate_agent.ops_names`. Each op holds the session's lifecycle lock
for its whole duration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from convocate.common import messages
from convocate.common.errors import AdmissionDenied, Conflict, DockerError
from convocate.common.model import SessionMeta, SessionView, new_uuid
from convocate.common.ops.params import (
    BackgroundParams,
    CloneParams,
    CreateParams,
    DeleteParams,
    EditParams,
    KillParams,
    OverrideParams,
    RestartParams,
)
from convocate.common.paths import Paths
from convocate.common.protocol import (
    CONTAINER_CREATED,
    CONTAINER_DELETED,
    CONTAINER_EDITED,
    CONTAINER_STARTED,
    CONTAINER_STOPPED,
)
from convocate.common.timefmt import now_ns
from convocate_agent.activity import ReportSockets
from convocate_agent.activityrules import EXITED, Activity
from convocate_agent.admission import Admission, Reservation
from convocate_agent.cgroups import CgroupParent
from convocate_agent.containerspec import SessionSpec
from convocate_agent.locks import SessionLocks
from convocate_agent.runtime import ContainerState, DockerRuntime
from convocate_agent.settings import Settings
from convocate_agent.state import SessionState
from convocate_agent.store import SessionStore

log = logging.getLogger("convocate_agent.service")  # the name the agent's op log lines had before the split

#: Seconds a started session may take to accept attaches.
READY_TIMEOUT_S = 20.0


class LifecycleOps:
    """The ops that make, change, start, stop and remove sessions, with their checks.

    Owns ``_starting`` (session → set when its start is over; ``open_attach`` waits on it) and
    ``_creating`` (the creates between their name check and their record). The annotations below
    are every shared part it uses; :class:`~convocate_agent.service.AgentService` provides them.
    """

    # Shared parts (AgentService.__init__; ``cgroup`` from attach_parts, ``settings`` replaced by settings_set).
    paths: Paths
    agent_id: str
    settings: Settings
    store: SessionStore
    locks: SessionLocks
    runtime: DockerRuntime
    state: SessionState
    reports: ReportSockets
    admission: Admission
    cgroup: CgroupParent | None
    uid: int
    gid: int
    _names_lock: asyncio.Lock
    _creating: dict[str, SessionMeta]
    _starting: dict[str, asyncio.Event]
    _moving: dict[str, str]
    # Of the core (AgentService).
    _view: Callable[..., SessionView]
    _wire: Callable[..., Awaitable[dict[str, Any]]]
    _emit: Callable[..., None]
    current_image: Callable[[], str]
    _require_running: Callable[[str], Awaitable[ContainerState]]
    _expect_stop: Callable[[str], None]
    # Of the session env group (SessionEnvOps), the names group (NameChecks), the activity group
    # (ActivityOps) and the attach group (AttachOps).
    _check_credential: Callable[[str], None]
    _write_credential_env: Callable[[SessionMeta], str]
    _check_dns: Callable[[str, list[SessionMeta]], None]
    _resolve_port: Callable[[int, str, list[SessionMeta]], int]
    _others: Callable[[str], list[SessionMeta]]
    _cancel_resume: Callable[[str], None]
    _set_activity: Callable[..., Any]
    _set_moving: Callable[[str, str | None], None]

    # --- the draining refusal (issue 18) ------------------------------------------------------
    def _refuse_if_draining(self) -> None:
        """Raise AdmissionDenied while the ``draining`` setting is on (issue 18: no new session here)."""
        if self.settings.draining:
            raise AdmissionDenied(messages.AGENT_DRAINING.format(agent=self.agent_id))

    # --- ops ------------------------------------------------------------------------
    async def create(self, params: CreateParams) -> dict[str, Any]:
        """Make a session; start it too when ``start`` is true (admission-checked first)."""
        settings = self.settings
        self._refuse_if_draining()
        session_id = new_uuid()
        start = params.start
        with self.locks.hold(session_id, "create"):
            async with self._names_lock:
                others = self._others(session_id)
                self._check_dns(params.dns_name, others)
                self._check_credential(params.credential)
                port = self._resolve_port(params.port, params.protocol, others)
                now = now_ns()
                meta = SessionMeta(
                    uuid=session_id, name=params.name, created_at=now, last_accessed=now, port=port,
                    protocol=params.protocol, dns_name=params.dns_name,
                    cpus=settings.default_cpus if params.cpus is None else params.cpus,
                    memory_mb=settings.default_memory_mb if params.memory_mb is None else params.memory_mb,
                    credential=params.credential,
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

    async def edit(self, params: EditParams) -> dict[str, Any]:
        """Change name, port, protocol, DNS name, CPUs or memory; limits and ports apply at the next restart.

        A field of ``params`` that is ``None`` (left out) keeps the session's value.
        """
        session_id = params.id
        with self.locks.hold(session_id, "edit"):
            async with self._names_lock:
                meta = self.state.meta(session_id)
                others = self._others(session_id)
                changes: dict[str, Any] = {key: value for key in ("name", "cpus", "memory_mb")
                                           if (value := getattr(params, key)) is not None}
                if params.credential is not None and params.credential != meta.credential:
                    self._check_credential(params.credential)
                    changes["credential"] = params.credential
                if params.dns_name is not None and params.dns_name != meta.dns_name:
                    self._check_dns(params.dns_name, others)
                    changes["dns_name"] = params.dns_name
                protocol = meta.protocol if params.protocol is None else params.protocol
                port = meta.port if params.port is None else params.port
                if (port, protocol) != (meta.port, meta.protocol):
                    changes["port"] = self._resolve_port(port, protocol, others)
                    changes["protocol"] = protocol
                meta = meta.with_changes(**changes)
                await self.state.save(meta)
            wire = await self._wire(meta, locked=False)
        self._emit(CONTAINER_EDITED, session_id, wire)
        return wire

    async def clone(self, params: CloneParams) -> dict[str, Any]:
        """Copy a session's home into a new session (new UUID, no port, no DNS name)."""
        self._refuse_if_draining()
        source_id = params.source_id
        source = self.state.meta(source_id)
        session_id = new_uuid()
        with self.locks.hold(source_id, "clone"), self.locks.hold(session_id, "clone"):
            now = now_ns()
            meta = SessionMeta(uuid=session_id, name=params.name, created_at=now, last_accessed=now,
                               cpus=source.cpus, memory_mb=source.memory_mb, credential=source.credential)
            await asyncio.to_thread(self.store.clone, source_id, meta)
        wire = self._view(meta, None, False).to_wire()
        self._emit(CONTAINER_CREATED, session_id, wire)
        return wire

    async def delete(self, params: DeleteParams) -> dict[str, Any]:
        """Move a stopped session's home to the trash and remove its container."""
        session_id = params.id
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

    async def kill(self, params: KillParams) -> dict[str, Any]:
        """Stop a session's container (SIGTERM, SIGKILL after 10 s). Stopping a stopped session is a no-op."""
        session_id = params.id
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

    async def restart(self, params: RestartParams) -> dict[str, Any]:
        """(Re)start a session's container from the current image; admission-checked."""
        session_id = params.id
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

    async def background(self, params: BackgroundParams) -> dict[str, Any]:
        """Detach every operator from the session; it keeps running."""
        session_id = params.id
        await self._require_running(session_id)
        await self.runtime.detach_all(session_id)
        return await self._wire(self.state.meta(session_id))

    async def override(self, params: OverrideParams) -> dict[str, Any]:
        """Take a session over: clear a stale lock, and detach whoever is attached.

        With ``moving_to`` (a move, issue 18), those attach channels end with
        :data:`~convocate.common.protocol.ATTACH_EXIT_MOVING`, the clients attach again where the
        session runs next, and ``restart`` refuses the copy here (persisted in
        ``agent_moving_dir``, so also after an agent restart) until the move clears it: ``moving_to``
        ``""`` (its rollback) does only that, detaching nobody; ``delete`` (its end) too.
        """
        session_id = params.id
        meta = self.state.meta(session_id)
        if params.moving_to == "":
            self._set_moving(session_id, None)
            return {"session": await self._wire(meta), "cleared_lock": "", "detached": 0}
        if params.moving_to:
            self._set_moving(session_id, params.moving_to)
        cleared = self.locks.clear_stale(session_id)
        detached = 0
        state = await self.runtime.container(session_id)
        if state is not None and state.running:
            detached = await self.runtime.detach_all(session_id)
        wire = await self._wire(meta)
        return {"session": wire, "cleared_lock": cleared.describe() if cleared else "", "detached": detached}
