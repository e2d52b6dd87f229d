"""The agent's sessions: a record each in the agent's state dir, a home each under ``/home/claude``.

A session is its record, ``/var/lib/convocate-agent/sessions/<uuid>.json`` (the metadata: name,
limits, port, DNS name), and its home, ``/home/claude/<uuid>/``, bind-mounted into its container.
The session owns its home and nothing else (DESIGN §8, issue 14): the agent never reads a name,
limit, port or DNS name from the home, and only the agent writes records. A record without a home,
or a home without a record, is not a session.

New homes are assembled under ``.staging/`` (from the skel, or as a copy of another session)
and renamed into place only when complete, their record written just before that rename; deleted
homes are renamed into ``.trash/`` and their record into ``/var/lib/convocate-agent/trash/``
(:mod:`convocate_agent.trash`). What a
crash between the two renames leaves is finished by :meth:`SessionStore.finish_interrupted` at
the agent's start. Copies of a home never follow a symlink the session planted: every step goes
through a directory fd with ``O_NOFOLLOW``. Records are written atomically. The store caches parsed
metadata by the record's (inode, size, mtime) so ``list`` over hundreds of sessions does not
re-parse unchanged files. A listener (:meth:`SessionStore.add_listener`, the agent's in-memory state,
convocate_agent.state) hears of every record written, published or removed through the store.

Agents before issue 14 kept the metadata in the home (``session.json``);
:meth:`SessionStore.migrate_legacy` moves each such file into the records once, validating it
(:mod:`convocate_agent.legacyrecords`). Homes are copied by :mod:`convocate_agent.homecopy`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from collections.abc import Callable, Set
from dataclasses import dataclass
from pathlib import Path

from convocate.common import messages
from convocate.common.errors import BadRequest, ConfigError, Conflict, NotFound
from convocate.common.fsutil import atomic_write, fsync_dir
from convocate.common.model import SessionMeta, is_uuid4, parse_trash_id, validate_uuid
from convocate.common.paths import LEGACY_SESSION_FILE, Paths
from convocate.common.timefmt import now_ns
from convocate_agent.homecopy import HomeCopier
from convocate_agent.legacyrecords import MigrationReport, migrate_legacy
from convocate_agent.trash import SessionTrash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokenSession:
    """A session whose record cannot be used.

    Attributes:
        uuid: The session's UUID.
        reason: What is wrong, for the log and for ``get``.
    """

    uuid: str
    reason: str


class SessionStore(SessionTrash):
    """Reads and writes session records and homes.

    Args:
        paths: The installation layout.
        uid: Owner given to new homes and their files (the ``claude`` user).
        gid: Group given to new homes and their files.
        record_owner: ``(uid, gid)`` given to the records and their directories, or None to keep the
            writer's (the agent writes as itself; ``install`` runs as root and passes the service's user).
    """

    def __init__(self, paths: Paths, uid: int, gid: int, record_owner: tuple[int, int] | None = None) -> None:
        self.paths = paths
        self.uid = uid
        self.gid = gid
        # Only root can give files away; an agent running as the claude user owns what it makes already.
        self._chown = os.geteuid() == 0
        self._record_owner = record_owner if self._chown else None
        self._copier = HomeCopier(uid, gid, self._chown)
        self._cache: dict[str, tuple[tuple[int, int, int], SessionMeta]] = {}
        self._listeners: list[Callable[[str, str, SessionMeta | None], None]] = []

    # --- listeners -----------------------------------------------------------------
    #: What a listener is told: a record was rewritten (``SAVED``), a session appeared (``ADDED``: a
    #: create, clone or restore published it), or went (``REMOVED``: trashed, or a publish undone).
    SAVED, ADDED, REMOVED = "saved", "added", "removed"

    def add_listener(self, listener: Callable[[str, str, SessionMeta | None], None]) -> None:
        """Call ``listener(kind, session_id, meta_or_None)`` after each change of a record made here.

        It may be called from any thread (the store's writes run on worker threads); ``meta`` is None
        for :attr:`REMOVED`.
        """
        self._listeners.append(listener)

    def _changed(self, kind: str, session_id: str, meta: SessionMeta | None) -> None:
        for listener in self._listeners:
            listener(kind, session_id, meta)

    # --- reading -------------------------------------------------------------------
    def _record_ids(self, directory: Path, skip: Set[str] = frozenset()) -> list[str]:
        """UUIDs of the records in ``directory``, sorted, apart from ``skip`` (dropped before the UUID check)."""
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        stems = (n[:-5] for n in names if n.endswith(".json"))
        return sorted(sid for sid in stems if sid not in skip and is_uuid4(sid))

    def _home_exists(self, session_id: str) -> bool:
        try:
            return stat.S_ISDIR(os.lstat(self.paths.session_dir(session_id)).st_mode)
        except FileNotFoundError:
            return False

    def session_ids(self, excluding: Set[str] = frozenset()) -> list[str]:
        """UUIDs of every session (a record with a home), apart from ``excluding``.

        Args:
            excluding: Sessions the caller knows already: their homes are not looked at (one
                ``lstat`` each otherwise; the in-memory state asks after every change of the
                records directory, so this keeps its reads from touching every home).
        """
        return [sid for sid in self._record_ids(self.paths.session_records_dir, excluding)
                if self._home_exists(sid)]

    def exists(self, session_id: str) -> bool:
        return self.paths.session_record(session_id).is_file() and self._home_exists(session_id)

    def load(self, session_id: str) -> SessionMeta:
        """Load one session's metadata from its record (never from its home).

        Raises:
            BadRequest: ``session_id`` is not a UUIDv4.
            NotFound: no record, or no home.
            ConfigError: the record exists but is invalid.
        """
        path = self.paths.session_record(validate_uuid(session_id))
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            self._cache.pop(session_id, None)
            raise NotFound(messages.SESSION_NOT_FOUND.format(id=session_id)) from None
        if not self._home_exists(session_id):
            raise NotFound(messages.SESSION_NOT_FOUND.format(id=session_id))
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cache.get(session_id)
        if cached and cached[0] == key:
            return cached[1]
        meta = self._read_record(path, session_id, st)
        self._cache[session_id] = (key, meta)
        return meta

    @staticmethod
    def _read_record(path: Path, session_id: str, st: os.stat_result | None = None) -> SessionMeta:
        """Parse and validate one record.

        Raises:
            ConfigError: not a regular file, unreadable, or invalid.
        """
        try:
            st = st or os.stat(path, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(messages.INVALID_SESSION_FILE.format(path=path, detail="not a regular file"))
            return SessionMeta.from_json(json.loads(path.read_bytes()), expected_uuid=session_id)
        except (ValueError, BadRequest, OSError) as e:
            raise ConfigError(messages.INVALID_SESSION_FILE.format(path=path, detail=e)) from e

    def load_all(self) -> tuple[list[SessionMeta], list[BrokenSession]]:
        """Load every session; the broken ones are reported, not fatal."""
        good: list[SessionMeta] = []
        broken: list[BrokenSession] = []
        for sid in self.session_ids():
            try:
                good.append(self.load(sid))
            except NotFound:
                continue  # deleted while we listed
            except ConfigError as e:
                broken.append(BrokenSession(sid, e.message))
        return good, broken

    # --- writing ---------------------------------------------------------------
    def _ensure_record_dirs(self) -> None:
        for directory in (self.paths.session_records_dir, self.paths.trash_records_dir):
            if not directory.is_dir():
                directory.mkdir(mode=0o750, parents=True, exist_ok=True)
                if self._record_owner is not None:
                    os.chown(directory, *self._record_owner)

    def save(self, meta: SessionMeta, *, notify: bool = True) -> None:
        """Write the session's record atomically (mode 0640, in the agent's state dir), fsynced.

        Args:
            meta: The record's new contents.
            notify: Tell the listeners (:attr:`SAVED`); the in-memory state passes False for the
                writes it queued itself, which it knows of already.
        """
        self._ensure_record_dirs()
        owner = self._record_owner or (None, None)
        atomic_write(self.paths.session_record(meta.uuid), (json.dumps(meta.to_json(), indent=2) + "\n").encode(),
                     mode=0o640, uid=owner[0], gid=owner[1])
        self._cache.pop(meta.uuid, None)
        if notify:
            self._changed(self.SAVED, meta.uuid, meta)

    def touch(self, session_id: str) -> SessionMeta:
        """Set ``last_accessed`` to now and persist it."""
        meta = self.load(session_id).with_changes(last_accessed=now_ns())
        self.save(meta)
        return meta

    def create(self, meta: SessionMeta) -> None:
        """Make a new home from the skel and write its record.

        The home is built in ``.staging/<uuid>``; the record is written, then the home renamed
        into place, so the session appears complete or not at all (a crash in between is
        finished by :meth:`finish_interrupted`).

        Raises:
            Conflict: a session of that UUID exists already.
        """
        staged = self._staging_for(meta.uuid)
        staged.mkdir(mode=0o750)
        self._own(staged, self.uid, self.gid)
        skel = self.paths.skel_dir
        if skel.is_dir():
            self._copier.copy_tree(skel, staged)
        self._publish(staged, meta)

    def clone(self, source_id: str, meta: SessionMeta) -> None:
        """Copy ``source_id``'s home (modes, owners, symlinks) into a new session ``meta``.

        Symlinks are copied as links and never followed, even one the session swaps in while
        the copy runs. Sockets, FIFOs and device nodes are skipped: they belong to the
        source's running processes.

        Raises:
            NotFound: the source does not exist.
        """
        if not self.exists(source_id):
            raise NotFound(messages.SESSION_NOT_FOUND.format(id=source_id))
        source = self.paths.session_dir(source_id)
        staged = self._staging_for(meta.uuid)
        staged.mkdir(mode=0o750)
        st = os.lstat(source)
        os.chmod(staged, stat.S_IMODE(st.st_mode))
        self._own(staged, st.st_uid, st.st_gid)
        self._copier.copy_tree(source, staged, keep_owner=True)
        self._publish(staged, meta)

    # --- start-up -------------------------------------------------------------------
    def finish_interrupted(self) -> list[str]:
        """Finish what a crash left between a record's rename and its home's (before :meth:`sweep_staging`).

        - a record whose home is still in ``.staging/``: a create or clone that did not finish;
          the record goes (the staged home is swept next).
        - a record whose home is in the trash without a trash record: a delete (or a restore)
          that did not finish; the record joins its home in the trash.
        - any other record without a home, and a home without a record, are reported and left
          alone.

        Returns:
            One line per finding, for the start-up log.
        """
        notes: list[str] = []
        trashed: dict[str, list[str]] = {}
        try:
            for name in os.listdir(self.paths.trash_dir):
                try:
                    sid, _ = parse_trash_id(name)
                except BadRequest:
                    continue
                if not self.trash_record(name).exists():
                    trashed.setdefault(sid, []).append(name)
        except FileNotFoundError:
            pass
        for sid in self._record_ids(self.paths.session_records_dir):
            if self._home_exists(sid):
                continue
            record = self.paths.session_record(sid)
            if (self.paths.staging_dir / sid).exists():
                self._unlink(record)
                notes.append(f"session {sid}: an interrupted create or clone removed")
            elif sid in trashed:
                trash_id = sorted(trashed[sid])[-1]
                os.rename(record, self.trash_record(trash_id))
                notes.append(f"session {sid}: an interrupted delete finished ({trash_id})")
            else:
                notes.append(messages.RECORD_WITHOUT_HOME.format(id=sid, path=record,
                                                                 home=self.paths.session_dir(sid)))
        for home in self.unrecorded_homes():
            if not (home / LEGACY_SESSION_FILE).exists():
                notes.append(messages.HOME_WITHOUT_RECORD.format(home=home, records=self.paths.session_records_dir))
        for note in notes:
            log.warning("%s", note)
        return notes

    def unrecorded_homes(self) -> list[Path]:
        """Homes (UUID-named directories, not symlinks) without a record, sorted."""
        try:
            entries = list(os.scandir(self.paths.session_base))
        except FileNotFoundError:
            return []
        return sorted(Path(e.path) for e in entries
                      if is_uuid4(e.name) and e.is_dir(follow_symlinks=False)
                      and not os.path.lexists(self.paths.session_record(e.name)))

    def migrate_legacy(self) -> MigrationReport:
        """Move each ``<home>/session.json`` of an agent before issue 14 into the records, once.

        See :func:`convocate_agent.legacyrecords.migrate_legacy`.

        Returns:
            What was migrated, refused and cleared.
        """
        return migrate_legacy(self)

    def sweep_staging(self) -> list[str]:
        """Remove homes left half-built by a crash (called at agent start, before serving)."""
        removed: list[str] = []
        try:
            entries = list(self.paths.staging_dir.iterdir())
        except FileNotFoundError:
            return removed
        for entry in entries:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        return removed

    # --- helpers ----------------------------------------------------------------
    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _own(self, path: Path, uid: int, gid: int) -> None:
        if self._chown:
            os.lchown(path, uid, gid)

    def _staging_for(self, session_id: str) -> Path:
        self.paths.staging_dir.mkdir(mode=0o700, exist_ok=True)
        return self.paths.staging_dir / validate_uuid(session_id)

    def _publish(self, staged: Path, meta: SessionMeta) -> None:
        """Write the record of a staged home, then rename the home into place.

        Raises:
            Conflict: a session of that UUID exists already (nothing of it is touched).
        """
        record = self.paths.session_record(meta.uuid)
        target = self.paths.session_dir(meta.uuid)
        if os.path.lexists(record) or os.path.lexists(target):
            shutil.rmtree(staged, ignore_errors=True)
            raise Conflict(f'session "{meta.uuid}" exists already')
        self.save(meta, notify=False)
        try:
            # rename(2) onto an existing non-empty directory fails: an existing home is never overwritten.
            os.rename(staged, target)
        except OSError:
            self._unlink(record)
            raise
        fsync_dir(self.paths.session_base)
        self._changed(self.ADDED, meta.uuid, meta)
