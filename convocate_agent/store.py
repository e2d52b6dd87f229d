"""The agent's sessions: a record each in the agent's state dir, a home each under ``/home/claude``.

A session is its record, ``/var/lib/convocate-agent/sessions/<uuid>.json`` (the metadata: name,
limits, port, DNS name), and its home, ``/home/claude/<uuid>/``, bind-mounted into its container.
The session owns its home and nothing else (DESIGN §8, issue 14): the agent never reads a name,
limit, port or DNS name from the home, and only the agent writes records. A record without a home,
or a home without a record, is not a session.

New homes are assembled under ``.staging/`` (from the skel, or as a copy of another session)
and renamed into place only when complete, their record written just before that rename; deleted
homes are renamed into ``.trash/`` and their record into ``/var/lib/convocate-agent/trash/``. What a
crash between the two renames leaves is finished by :meth:`SessionStore.finish_interrupted` at
the agent's start. Copies of a home never follow a symlink the session planted: every step goes
through a directory fd with ``O_NOFOLLOW``. Records are written atomically. The store caches parsed
metadata by the record's (inode, size, mtime) so ``list`` over hundreds of sessions does not
re-parse unchanged files. A listener (:meth:`SessionStore.add_listener`, the agent's in-memory state,
convocate_agent.state) hears of every record written, published or removed through the store.

Agents before issue 14 kept the metadata in the home (``session.json``);
:meth:`SessionStore.migrate_legacy` moves each such file into the records once, validating it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from convocate.common import messages
from convocate.common.errors import BadRequest, ConfigError, Conflict, NotFound
from convocate.common.fsutil import atomic_write, fsync_dir
from convocate.common.model import SessionMeta, is_uuid4, parse_trash_id, validate_uuid
from convocate.common.paths import LEGACY_SESSION_FILE, Paths
from convocate.common.timefmt import now_ns

log = logging.getLogger(__name__)


NS_PER_DAY = 86_400 * 1_000_000_000
#: The largest legacy ``session.json`` read during migration (a real one is < 1 KiB).
LEGACY_FILE_MAX = 64 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class TrashEntry:
    """A deleted session waiting in the trash.

    Attributes:
        trash_id: ``<uuid>.<deleted-at-ns>``, the entry's directory name.
        uuid: The session's UUID.
        deleted_at: When it was deleted, ns since the epoch.
        meta: Its metadata, or None if its record is missing or unreadable.
    """

    trash_id: str
    uuid: str
    deleted_at: int
    meta: SessionMeta | None


@dataclass(frozen=True)
class BrokenSession:
    """A session whose record cannot be used.

    Attributes:
        uuid: The session's UUID.
        reason: What is wrong, for the log and for ``get``.
    """

    uuid: str
    reason: str


@dataclass
class MigrationReport:
    """What :meth:`SessionStore.migrate_legacy` did.

    Attributes:
        migrated: Sessions whose ``session.json`` became a record.
        trash_migrated: Trash entries whose ``session.json`` became a trash record.
        refused: ``(uuid, message)`` of legacy files that failed validation (the session is left out).
        notes: Fields cleared because another session held them already.
    """

    migrated: list[str] = field(default_factory=list)
    trash_migrated: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.migrated or self.trash_migrated)


class SessionStore:
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
    def _record_ids(self, directory: Path) -> list[str]:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and is_uuid4(n[:-5]))

    def _home_exists(self, session_id: str) -> bool:
        try:
            return stat.S_ISDIR(os.lstat(self.paths.session_dir(session_id)).st_mode)
        except FileNotFoundError:
            return False

    def session_ids(self) -> list[str]:
        """UUIDs of every session: a record with a home."""
        return [sid for sid in self._record_ids(self.paths.session_records_dir) if self._home_exists(sid)]

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
            self._copy_tree(skel, staged)
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
        self._copy_tree(source, staged, keep_owner=True)
        self._publish(staged, meta)

    def trash(self, session_id: str) -> Path:
        """Move a session's home into the trash and its record beside the other trash records.

        The trash entry is named ``<uuid>.<ns>`` so a restored-and-deleted-again session does
        not collide with its earlier copy.

        Returns:
            The home's new path.
        """
        source = self.paths.session_dir(session_id)
        if not self.exists(session_id):
            raise NotFound(messages.SESSION_NOT_FOUND.format(id=session_id))
        self.paths.trash_dir.mkdir(mode=0o700, exist_ok=True)
        self._ensure_record_dirs()
        trash_id = f"{session_id}.{now_ns()}"
        target = self.paths.trash_dir / trash_id
        os.rename(source, target)
        fsync_dir(self.paths.session_base)
        os.rename(self.paths.session_record(session_id), self._trash_record(trash_id))
        fsync_dir(self.paths.session_records_dir)
        fsync_dir(self.paths.trash_records_dir)
        self._cache.pop(session_id, None)
        self._changed(self.REMOVED, session_id, None)
        return target

    def _trash_record(self, trash_id: str) -> Path:
        parse_trash_id(trash_id)
        return self.paths.trash_records_dir / f"{trash_id}.json"

    def trash_entries(self) -> list[TrashEntry]:
        """Everything in the trash, most recently deleted first."""
        try:
            names = os.listdir(self.paths.trash_dir)
        except FileNotFoundError:
            return []
        entries = []
        for name in names:
            try:
                sid, deleted_at = parse_trash_id(name)
            except BadRequest:
                continue
            try:
                meta: SessionMeta | None = self._read_record(self._trash_record(name), sid)
            except ConfigError:
                meta = None
            entries.append(TrashEntry(name, sid, deleted_at, meta))
        return sorted(entries, key=lambda e: e.deleted_at, reverse=True)

    def purge_trash(self, retention_days: int, now: int | None = None) -> list[str]:
        """Remove trash entries deleted more than ``retention_days`` ago; returns their IDs."""
        now = now_ns() if now is None else now
        purged = []
        for entry in self.trash_entries():
            if now - entry.deleted_at >= retention_days * NS_PER_DAY:
                shutil.rmtree(self.paths.trash_dir / entry.trash_id, ignore_errors=True)
                self._unlink(self._trash_record(entry.trash_id))
                purged.append(entry.trash_id)
        return purged

    def restore(self, trash_id: str) -> SessionMeta:
        """Move a trash entry back to be a session again.

        Raises:
            BadRequest: not a trash entry ID.
            NotFound: no such entry (purged, or never there).
            Conflict: a session with that UUID exists already.
            ConfigError: the entry has no valid record.
        """
        sid, _ = parse_trash_id(trash_id)
        source = self.paths.trash_dir / trash_id
        if not source.is_dir():
            raise NotFound(f'trash entry "{trash_id}" does not exist (restored already, or purged)')
        if self.paths.session_dir(sid).exists() or self.paths.session_record(sid).exists():
            raise Conflict(f'session "{sid}" exists already; it cannot be restored over')
        record = self._trash_record(trash_id)
        if not record.exists():
            raise ConfigError(messages.NO_TRASH_RECORD.format(id=trash_id, path=self.paths.trash_records_dir))
        meta = self._read_record(record, sid)
        self._ensure_record_dirs()
        os.rename(record, self.paths.session_record(sid))
        fsync_dir(self.paths.trash_records_dir)
        os.rename(source, self.paths.session_dir(sid))
        fsync_dir(self.paths.session_base)
        fsync_dir(self.paths.session_records_dir)
        self._changed(self.ADDED, sid, meta)
        return meta

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
                if not self._trash_record(name).exists():
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
                os.rename(record, self._trash_record(trash_id))
                notes.append(f"session {sid}: an interrupted delete finished ({trash_id})")
            else:
                notes.append(messages.RECORD_WITHOUT_HOME.format(id=sid, path=record,
                                                                 home=self.paths.session_dir(sid)))
        for home in self._unrecorded_homes():
            if not (home / LEGACY_SESSION_FILE).exists():
                notes.append(messages.HOME_WITHOUT_RECORD.format(home=home, records=self.paths.session_records_dir))
        for note in notes:
            log.warning("%s", note)
        return notes

    def _unrecorded_homes(self) -> list[Path]:
        try:
            entries = list(os.scandir(self.paths.session_base))
        except FileNotFoundError:
            return []
        return sorted(Path(e.path) for e in entries
                      if is_uuid4(e.name) and e.is_dir(follow_symlinks=False)
                      and not os.path.lexists(self.paths.session_record(e.name)))

    def migrate_legacy(self) -> MigrationReport:
        """Move each ``<home>/session.json`` of an agent before issue 14 into the records, once.

        Only a home (or trash entry) without a record is looked at, so a ``session.json`` a
        session writes later is never read. Each file is read without following a symlink and
        validated like any record (:meth:`SessionMeta.from_json`, the UUID must be the home's);
        one that fails is reported and its session left out (and its file left where it is).
        A DNS name or port another session holds already (the older session keeps it) is
        cleared and reported: the session may have forged it before the upgrade. After the record
        is written, ``session.json`` is removed from the home, so nothing stale is left there.

        Returns:
            What was migrated, refused and cleared.
        """
        report = MigrationReport()
        candidates: list[tuple[SessionMeta, Path]] = []
        for home in self._unrecorded_homes():
            try:
                meta = self._read_legacy(home, home.name)
            except FileNotFoundError:
                continue
            except ConfigError as e:
                report.refused.append((home.name, messages.LEGACY_RECORD_REFUSED.format(
                    id=home.name, path=home / LEGACY_SESSION_FILE, detail=e.message)))
                continue
            candidates.append((meta, home))
        if candidates:
            taken, _ = self.load_all()
            for meta, home in sorted(candidates, key=lambda c: (c[0].created_at, c[0].uuid)):
                changes: dict[str, object] = {}
                for other in taken:
                    if meta.dns_name and other.dns_name == meta.dns_name and "dns_name" not in changes:
                        changes["dns_name"] = ""
                        report.notes.append(messages.LEGACY_RECORD_CLEARED.format(
                            id=meta.uuid, field="dns_name", value=meta.dns_name, owner=other.uuid))
                    if meta.port and (other.port, other.protocol) == (meta.port, meta.protocol) \
                            and "port" not in changes:
                        changes["port"] = 0
                        report.notes.append(messages.LEGACY_RECORD_CLEARED.format(
                            id=meta.uuid, field="port", value=meta.port, owner=other.uuid))
                meta = meta.with_changes(**changes)
                self.save(meta)
                self._remove_legacy(home)
                taken.append(meta)
                report.migrated.append(meta.uuid)
        try:
            trash_names = sorted(os.listdir(self.paths.trash_dir))
        except FileNotFoundError:
            trash_names = []
        for name in trash_names:
            try:
                sid, _ = parse_trash_id(name)
            except BadRequest:
                continue
            entry = self.paths.trash_dir / name
            if os.path.lexists(self._trash_record(name)):
                continue
            try:
                meta = self._read_legacy(entry, sid)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except ConfigError as e:
                report.refused.append((sid, messages.LEGACY_RECORD_REFUSED.format(
                    id=sid, path=entry / LEGACY_SESSION_FILE, detail=e.message)))
                continue
            self._ensure_record_dirs()
            owner = self._record_owner or (None, None)
            atomic_write(self._trash_record(name), (json.dumps(meta.to_json(), indent=2) + "\n").encode(),
                         mode=0o640, uid=owner[0], gid=owner[1])
            self._remove_legacy(entry)
            report.trash_migrated.append(name)
        for line in [messages.LEGACY_RECORD_MIGRATED.format(id=sid, path=self.paths.session_record(sid))
                     for sid in report.migrated] + report.notes:
            log.info("%s", line)
        for _, line in report.refused:
            log.warning("%s", line)
        return report

    @staticmethod
    def _read_legacy(directory: Path, session_id: str) -> SessionMeta:
        """Read ``directory/session.json`` without following a symlink at either step.

        Raises:
            FileNotFoundError: there is none.
            ConfigError: it is not a regular file, too big, or invalid.
        """
        path = directory / LEGACY_SESSION_FILE
        dir_fd = os.open(directory, _DIR_FLAGS)
        try:
            try:
                fd = os.open(LEGACY_SESSION_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dir_fd)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    raise FileNotFoundError(path) from e
                raise ConfigError(messages.INVALID_SESSION_FILE.format(path=path, detail=e.strerror)) from e
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(messages.INVALID_SESSION_FILE.format(path=path, detail="not a regular file"))
            if st.st_size > LEGACY_FILE_MAX:
                raise ConfigError(messages.INVALID_SESSION_FILE.format(
                    path=path, detail=f"{st.st_size} bytes, more than {LEGACY_FILE_MAX}"))
            data = os.read(fd, LEGACY_FILE_MAX + 1)
        finally:
            os.close(fd)
        try:
            return SessionMeta.from_json(json.loads(data), expected_uuid=session_id)
        except (ValueError, BadRequest) as e:
            raise ConfigError(messages.INVALID_SESSION_FILE.format(path=path, detail=e)) from e

    @staticmethod
    def _remove_legacy(directory: Path) -> None:
        dir_fd = os.open(directory, _DIR_FLAGS)
        try:
            os.unlink(LEGACY_SESSION_FILE, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dir_fd)

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

    def _copy_tree(self, source: Path, target: Path, *, keep_owner: bool = False) -> None:
        """Copy the contents of ``source`` into the existing, agent-made dir ``target``.

        Owners are copied when ``keep_owner``; otherwise everything becomes ``uid:gid``.
        ``source`` may belong to a session that changes it while the copy runs: every entry is
        opened relative to its parent's fd with ``O_NOFOLLOW``, so a symlink is copied as a
        link and never followed, and an entry swapped for something else between its ``lstat``
        and its ``open`` is skipped.
        """
        src_fd = os.open(source, _DIR_FLAGS)
        try:
            dst_fd = os.open(target, _DIR_FLAGS)
            try:
                self._copy_dir_fd(src_fd, dst_fd, str(source), keep_owner)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def _copy_dir_fd(self, src_fd: int, dst_fd: int, where: str, keep_owner: bool) -> None:
        for name in os.listdir(src_fd):
            try:
                st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            uid, gid = (st.st_uid, st.st_gid) if keep_owner else (self.uid, self.gid)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                try:
                    child_src = os.open(name, _DIR_FLAGS, dir_fd=src_fd)
                except OSError as e:  # swapped for a symlink or a file since the stat
                    log.info("copy: skipping %s/%s: %s", where, name, e.strerror)
                    continue
                try:
                    os.mkdir(name, 0o700, dir_fd=dst_fd)
                    child_dst = os.open(name, _DIR_FLAGS, dir_fd=dst_fd)
                    try:
                        self._copy_dir_fd(child_src, child_dst, f"{where}/{name}", keep_owner)
                        self._copy_metadata(child_dst, os.fstat(child_src), uid, gid)
                    finally:
                        os.close(child_dst)
                finally:
                    os.close(child_src)
            elif stat.S_ISLNK(mode):
                try:
                    link = os.readlink(name, dir_fd=src_fd)
                except OSError:
                    continue
                os.symlink(link, name, dir_fd=dst_fd)
                if self._chown:
                    os.chown(name, uid, gid, dir_fd=dst_fd, follow_symlinks=False)
            elif stat.S_ISREG(mode):
                self._copy_file_fd(src_fd, dst_fd, name, uid, gid, where)
            else:
                log.info("copy: skipping special file %s/%s", where, name)

    def _copy_metadata(self, fd: int, st: os.stat_result, uid: int, gid: int) -> None:
        """Give the copy at ``fd`` the source's mode and times (``st``), and the session's owner when chowning."""
        if self._chown:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _copy_file_fd(self, src_fd: int, dst_fd: int, name: str, uid: int, gid: int, where: str) -> None:
        try:
            fd_in = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src_fd)
        except OSError as e:
            log.info("copy: skipping %s/%s: %s", where, name, e.strerror)
            return
        try:
            st = os.fstat(fd_in)
            if not stat.S_ISREG(st.st_mode):
                log.info("copy: skipping %s/%s: no longer a regular file", where, name)
                return
            fd_out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dst_fd)
            try:
                with open(fd_in, "rb", closefd=False) as src, open(fd_out, "wb", closefd=False) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                self._copy_metadata(fd_out, st, uid, gid)
            finally:
                os.close(fd_out)
        finally:
            os.close(fd_in)
