"""The agent's in-memory state: what ``list``, ``get``, ``ping`` and ``capacity`` answer from (issue 17).

Reads never wait on dockerd or the disk. :class:`SessionState` holds

- every session's metadata by UUID, loaded once from the records at start (the records on disk stay
  the source of truth across restarts) and kept current by the store's listener: every record the
  store writes, publishes or removes (create, clone, edit, delete, restore, activity, touch) goes
  through it;
- every session container's state by session UUID, kept current by Docker's event stream
  (:meth:`DockerRuntime.watch`: ``create``, ``start``, ``die``, ``stop``, ``pause``, ``unpause``,
  ``destroy``) and by the agent's own lifecycle calls (:meth:`note_container`), with a re-list of
  the containers each time the stream (re)connects, since events are lost while dockerd is away.
  While the stream is down (dockerd restarting, or no watch at all: a service driven without a
  server) the container state is not trusted and reads ask dockerd, as before: a Docker outage is
  still answered with ``docker_error``, never with a stale ``running``;
- record writes of running ops, queued on one writer thread in the order they were made
  (:meth:`save`), so no fsync runs on the event loop and two writes of one record never cross.

Ordering of container updates: each session's entry carries the time of what set it (the event's
``timeNano``, or the agent's clock when its own Docker call returned); an event older than the
entry is not applied, so an event delivered late (the stream is a separate connection) cannot undo
what a newer ``stop`` or ``start`` call returned. This assumes dockerd and the agent read the same
clock (the same host; the case of ``docker_path_prefix`` is the same kernel too).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from convocate.common import messages
from convocate.common.errors import ConfigError, NotFound
from convocate.common.framing import EncodedObject
from convocate.common.model import SessionMeta, validate_uuid
from convocate.common.timefmt import now_ns
from convocate_agent.runtime import (
    LABEL_CLAUDE_CODE,
    LABEL_CPUS,
    LABEL_MEMORY,
    ContainerEvent,
    ContainerState,
    DockerRuntime,
)
from convocate_agent.store import SessionStore

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Docker event → (running, status) of the container after it; ``None``: the container is gone.
_AFTER: dict[str, tuple[bool, str] | None] = {
    "create": (False, "created"), "start": (True, "running"), "unpause": (True, "running"),
    "die": (False, "exited"), "stop": (False, "exited"), "pause": (False, "paused"), "destroy": None,
}
#: Attempts, and seconds between them, of the re-list after the event stream connects.
RESYNC_ATTEMPTS = 5
RESYNC_RETRY_S = 1.0
#: How long after the records directory's mtime a listing must start to be trusted until the mtime
#: changes: two ticks of the kernel's coarse clock, which stamps mtimes (clock_getres(2) of
#: CLOCK_REALTIME_COARSE, clockid 5 in linux/time.h, which Python names from 3.13 on: 4 ms at HZ=250),
#: and at least 10 ms.
RACY_MTIME_NS = max(10_000_000, 2 * round(time.clock_getres(getattr(time, "CLOCK_REALTIME_COARSE", 5)) * 1e9))
#: The same for a file system that stamps whole seconds (an mtime with no sub-second part): FAT's 2 s.
RACY_WHOLE_SECONDS_NS = 2_000_000_000


class SessionState:
    """Sessions' metadata and containers' state, in memory, for the agent's reads.

    Args:
        store: The session records (its listener feeds this state).
        runtime: Docker access, asked only while the event stream is down.
    """

    def __init__(self, store: SessionStore, runtime: DockerRuntime) -> None:
        self.store = store
        self.runtime = runtime
        self._lock = threading.Lock()  # the store's listener runs on worker threads
        self._metas: dict[str, SessionMeta] = {}
        self._broken: dict[str, str] = {}
        self._loaded = False
        self._dir_mtime: int | None = None  # the records dir as last listed: a change there not made by us is read
        self._dir_settled = False  # that listing started long enough after that mtime to be trusted
        self._leaving: set[str] = set()  # sessions being deleted: a late activity write must not recreate them
        self._containers: dict[str, tuple[ContainerState | None, int]] = {}  # sid → (state or gone, stamp ns)
        self._live = False  # the container map follows the event stream
        self._resync: asyncio.Task[None] | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="records")
        self._wire: dict[str, tuple[tuple[Any, ...], EncodedObject]] = {}
        store.add_listener(self._on_store)

    # --- metadata -----------------------------------------------------------------------
    def reload(self) -> None:
        """(Re)load every record from disk: at the agent's start, after recovery touched the records."""
        self._listing(self._records_mtime())
        good, broken = self.store.load_all()
        with self._lock:
            self._metas = {m.uuid: m for m in good}
            self._broken = {b.uuid: b.reason for b in broken}
            self._wire.clear()
            self._loaded = True

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.reload()
            return
        mtime = self._records_mtime()
        if mtime is not None and mtime == self._dir_mtime and self._dir_settled:
            return
        self._listing(mtime)  # a record added from outside (migrate-session), or ours
        self._adopt_new_records()

    def _records_mtime(self) -> int | None:
        """The records directory's mtime (ns), or None where it cannot be read (then every read lists it)."""
        try:
            return os.stat(self.store.paths.session_records_dir).st_mtime_ns
        except OSError:
            return None

    def _listing(self, mtime: int | None) -> None:
        """Note a listing of the records directory that starts now, after its mtime read ``mtime``.

        Git's "racily clean" rule: a record another process writes within the same timestamp tick
        as the directory's last change leaves the mtime as it was, so only a listing that started
        :data:`RACY_MTIME_NS` after that mtime (the kernel's clock was then past its tick) is
        trusted until the mtime changes; an earlier one is repeated at the next read. So a busy
        directory costs at most two listings per change, not one per read.
        """
        margin = RACY_MTIME_NS if mtime is None or mtime % 1_000_000_000 else RACY_WHOLE_SECONDS_NS
        self._dir_mtime = mtime
        self._dir_settled = mtime is not None and now_ns() - mtime >= margin

    def _adopt_new_records(self) -> None:
        """Load the records on disk this state does not know (one listing; the known ones are not read)."""
        with self._lock:
            known = set(self._metas) | set(self._broken) | self._leaving
        for session_id in self.store.session_ids(excluding=known):
            try:
                meta = self.store.load(session_id)
            except NotFound:
                continue
            except ConfigError as e:
                with self._lock:
                    self._broken[session_id] = str(e)
                continue
            with self._lock:
                self._metas.setdefault(session_id, meta)

    def _on_store(self, kind: str, session_id: str, meta: SessionMeta | None) -> None:
        with self._lock:
            if not self._loaded:
                return  # the first read loads everything, this included
            if kind == SessionStore.REMOVED:
                self._metas.pop(session_id, None)
                self._broken.pop(session_id, None)
                self._wire.pop(session_id, None)
            elif meta is not None and (kind == SessionStore.ADDED or session_id in self._metas):
                self._metas[session_id] = meta
                self._broken.pop(session_id, None)

    def meta(self, session_id: str) -> SessionMeta:
        """One session's metadata.

        Raises:
            BadRequest: ``session_id`` is not a UUIDv4.
            NotFound: no such session.
            ConfigError: its record is invalid (as found at start).
        """
        self._ensure_loaded()
        meta = self._metas.get(validate_uuid(session_id))
        if meta is not None:
            return meta
        reason = self._broken.get(session_id)
        if reason is not None:
            raise ConfigError(reason)
        raise NotFound(messages.SESSION_NOT_FOUND.format(id=session_id))

    def metas(self) -> list[SessionMeta]:
        """Every session's metadata (no order)."""
        self._ensure_loaded()
        with self._lock:
            return list(self._metas.values())

    def broken(self) -> dict[str, str]:
        """UUID → reason of the sessions whose record could not be used.

        As the last :meth:`metas` or :meth:`meta` found the records directory: ``list`` asks right after
        :meth:`metas`, so a directory that just changed is listed once per ``list``, not twice.
        """
        if not self._loaded:
            self.reload()
        with self._lock:
            return dict(self._broken)

    def _put(self, meta: SessionMeta) -> bool:
        with self._lock:
            if meta.uuid in self._leaving or (self._loaded and meta.uuid not in self._metas):
                return False
            if self._loaded:
                self._metas[meta.uuid] = meta
            return True

    async def save(self, meta: SessionMeta) -> None:
        """Make ``meta`` the session's metadata now, and return once its record is written and fsynced.

        Raises:
            OSError: the write failed (the record on disk is unchanged; memory has the new one).
        """
        if self._put(meta):
            await asyncio.wrap_future(self._writer.submit(self.store.save, meta, notify=False))

    def save_soon(self, meta: SessionMeta) -> Future[None] | None:
        """Make ``meta`` the session's metadata now and queue its record's write (for callers off a coroutine).

        A session being deleted (or unknown) is not written: its record must not come back.
        """
        if not self._put(meta):
            return None
        future = self._writer.submit(self.store.save, meta, notify=False)
        future.add_done_callback(_log_failed_write)
        return future

    async def on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the record writer, after every write queued before it (trash, restore)."""
        return await asyncio.wrap_future(self._writer.submit(fn, *args))

    def leaving(self, session_id: str, leaving: bool = True) -> None:
        """Mark a session as being deleted (no more queued writes of its record), or not any more."""
        with self._lock:
            if leaving:
                self._leaving.add(session_id)
            else:
                self._leaving.discard(session_id)

    # --- containers ---------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """Whether the container map follows Docker's event stream now (else reads ask dockerd)."""
        return self._live

    async def container(self, session_id: str) -> ContainerState | None:
        """The session's container: from memory while the event stream is up, else from dockerd.

        Raises:
            DockerError: the stream is down and dockerd cannot be reached.
        """
        if self._live:
            entry = self._containers.get(session_id)
            return entry[0] if entry is not None else None
        return await self.runtime.container(session_id)

    async def containers(self) -> dict[str, ContainerState]:
        """Every session container (UUID → state), as :meth:`container` decides where from."""
        if self._live:
            return {sid: c for sid, (c, _) in self._containers.items() if c is not None}
        return await self.runtime.containers()

    def note_container(self, session_id: str, state: ContainerState | None, since: int | None = None) -> None:
        """What one of the agent's own Docker calls returned (a start, a stop, a removal).

        Args:
            session_id: The session.
            state: The container as the call left it (None: removed).
            since: When the call began, ns since the epoch (None: now). A start's answer stands for the
                moment it was asked: an event dockerd sent after that (the container died while the start
                waited for tmux) is newer and wins, whether it arrived before or after the answer.
        """
        stamp = now_ns() if since is None else since
        entry = self._containers.get(session_id)
        if since is not None and entry is not None and entry[1] > stamp:
            return
        self._containers[session_id] = (state, stamp)

    def stopped(self, session_id: str) -> None:
        """The agent's own stop returned: the container is there, not running."""
        entry = self._containers.get(session_id)
        if entry is not None and entry[0] is not None:
            self.note_container(session_id, replace(entry[0], running=False, status="exited"))

    def on_container_event(self, event: ContainerEvent) -> None:
        """Apply one event of Docker's stream, unless something newer set the entry already."""
        after = _AFTER.get(event.action, False)
        if after is False:
            return
        entry = self._containers.get(event.session_id)
        if entry is not None and entry[1] > event.time_ns:
            return
        if after is None:
            if entry is None or entry[0] is None or entry[0].container_id in ("", event.container_id):
                self._containers[event.session_id] = (None, event.time_ns)
            return
        running, status = after
        previous = entry[0] if entry is not None else None
        if previous is not None and previous.container_id not in ("", event.container_id) and event.action != "create":
            return  # an event of a container this session had before its current one
        self._containers[event.session_id] = (_state_from_event(event, running, status, previous), event.time_ns)

    def stream_connected(self) -> None:
        """The event stream is (re)subscribed: re-list the containers, then trust the map again."""
        if self._resync is not None and not self._resync.done():
            self._resync.cancel()
        self._resync = asyncio.get_running_loop().create_task(self._relist(), name="state-relist")

    def stream_disconnected(self) -> None:
        """The event stream ended: until it is back and re-listed, reads ask dockerd."""
        self._live = False
        if self._resync is not None and not self._resync.done():
            self._resync.cancel()

    async def _relist(self) -> None:
        for attempt in range(RESYNC_ATTEMPTS):
            stamp = now_ns()
            try:
                listed = await self.runtime.containers()
            except Exception as e:  # DockerError mostly; the stream will reconnect and call again
                log.warning("cannot re-list the containers after the event stream connected (%s); attempt %d of %d",
                            e, attempt + 1, RESYNC_ATTEMPTS)
                await asyncio.sleep(RESYNC_RETRY_S)
                continue
            self._merge(listed, stamp)
            self._live = True
            log.info("container state follows Docker's event stream (%d containers)", len(listed))
            return

    def _merge(self, listed: dict[str, ContainerState], stamp: int) -> None:
        """Take a re-list made at ``stamp``; entries set by something newer (an event, an op) stay."""
        for sid in set(self._containers) | set(listed):
            entry = self._containers.get(sid)
            if entry is not None and entry[1] > stamp:
                continue
            self._containers[sid] = (listed.get(sid), stamp)

    def forget_gone(self, keep: Iterable[str]) -> None:
        """Drop container tombstones of sessions not in ``keep`` (bounded memory over a long run)."""
        keep = set(keep)
        for sid in [s for s, (c, _) in self._containers.items() if c is None and s not in keep]:
            del self._containers[sid]

    # --- wire views --------------------------------------------------------------------
    def cached_wire(self, key: tuple[Any, ...], session_id: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The session's wire view for ``key`` (what it is derived from), built only when ``key`` changed.

        Args:
            key: Every input of the view (the caller's to make complete: a view is served while its key
                compares equal).
            session_id: The session.
            build: Makes the view; called only on a miss.

        Returns:
            An :class:`~convocate.common.framing.EncodedObject`, the same object while ``key`` holds: its
            JSON is encoded once, and a ``list`` answer joins those bytes (``convocate_agent.rpc``). It
            must not be changed.
        """
        cached = self._wire.get(session_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        wire = EncodedObject(build())
        self._wire[session_id] = (key, wire)
        return wire

    def close(self) -> None:
        """Finish the queued record writes and stop the writer thread."""
        self._writer.shutdown(wait=True)


def _log_failed_write(future: Future[None]) -> None:
    error = future.exception()
    if error is not None:
        log.error("cannot write a session record: %s", error)


def _state_from_event(event: ContainerEvent, running: bool, status: str,
                      previous: ContainerState | None) -> ContainerState:
    """The container's state after ``event``; labels (copied into the event's attributes) give its limits."""
    attrs = event.attributes
    if previous is not None and previous.container_id in ("", event.container_id):
        return replace(previous, container_id=event.container_id or previous.container_id, running=running,
                       status=status)
    try:
        cpus = float(attrs.get(LABEL_CPUS, "0"))
        memory = int(attrs.get(LABEL_MEMORY, "0"))
    except ValueError:
        cpus, memory = 0.0, 0
    return ContainerState(event.session_id, event.container_id, running, status, str(attrs.get("image", "")), cpus,
                          memory, str(attrs.get(LABEL_CLAUDE_CODE, "")))
