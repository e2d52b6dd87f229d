"""Session directories on the agent host: ``/home/claude/<uuid>/session.json``.

A session directory is the session's home, bind-mounted into its container.
New homes are assembled under ``.staging/`` (from the skel, or as a copy of
another session) and renamed into place only when complete, so a crash never
leaves a half-made session; deleted homes are renamed into ``.trash/``.
``session.json`` is always written atomically. The store caches parsed
metadata by the file's (inode, size, mtime) so ``list`` over hundreds of
sessions does not re-parse unchanged files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from convocate.common import messages
from convocate.common.errors import BadRequest, ConfigError, Conflict, NotFound
from convocate.common.fsutil import atomic_write, fsync_dir
from convocate.common.model import SessionMeta, is_uuid4, parse_trash_id, validate_uuid
from convocate.common.paths import Paths
from convocate.common.timefmt import now_ns

log = logging.getLogger(__name__)


NS_PER_DAY = 86_400 * 1_000_000_000


@dataclass(frozen=True)
class TrashEntry:
    """A deleted session waiting in the trash.

    Attributes:
        trash_id: ``<uuid>.<deleted-at-ns>``, the entry's directory name.
        uuid: The session's UUID.
        deleted_at: When it was deleted, ns since the epoch.
        meta: Its metadata, or None if ``session.json`` is unreadable.
    """

    trash_id: str
    uuid: str
    deleted_at: int
    meta: SessionMeta | None


@dataclass(frozen=True)
class BrokenSession:
    """A session directory whose ``session.json`` cannot be used.

    Attributes:
        uuid: The directory's UUID.
        reason: What is wrong, for the log and for ``get``.
    """

    uuid: str
    reason: str


class SessionStore:
    """Reads and writes session directories under ``paths.session_base``.

    Args:
        paths: The installation layout.
        uid: Owner given to new homes and their files (the ``claude`` user).
        gid: Group given to new homes and their files.
    """

    def __init__(self, paths: Paths, uid: int, gid: int) -> None:
        self.paths = paths
        self.uid = uid
        self.gid = gid
        # Only root can give files away; an agent running as the claude user owns what it makes already.
        self._chown = os.geteuid() == 0
        self._cache: dict[str, tuple[tuple[int, int, int], SessionMeta]] = {}

    # --- reading -------------------------------------------------------------------
    def session_ids(self) -> list[str]:
        """UUIDs of every directory under the base that holds a ``session.json``."""
        try:
            entries = os.scandir(self.paths.session_base)
        except FileNotFoundError:
            return []
        with entries:
            return sorted(
                e.name for e in entries
                if is_uuid4(e.name) and e.is_dir(follow_symlinks=False)
                and os.path.exists(os.path.join(e.path, "session.json"))
            )

    def exists(self, session_id: str) -> bool:
        return self.paths.session_file(session_id).is_file()

    def load(self, session_id: str) -> SessionMeta:
        """Load one session's metadata.

        Raises:
            BadRequest: ``session_id`` is not a UUIDv4.
            NotFound: no such session directory.
            ConfigError: ``session.json`` exists but is invalid.
        """
        path = self.paths.session_file(validate_uuid(session_id))
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            self._cache.pop(session_id, None)
            raise NotFound(messages.SESSION_NOT_FOUND.format(id=session_id)) from None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cache.get(session_id)
        if cached and cached[0] == key:
            return cached[1]
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(messages.INVALID_SESSION_FILE.format(path=path, detail="not a regular file"))
        try:
            meta = SessionMeta.from_json(json.loads(path.read_bytes()), expected_uuid=session_id)
        except (ValueError, BadRequest, OSError) as e:
            raise ConfigError(messages.INVALID_SESSION_FILE.format(path=path, detail=e)) from e
        self._cache[session_id] = (key, meta)
        return meta

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
    def save(self, meta: SessionMeta) -> None:
        """Write ``session.json`` atomically (owned by root, mode 0644)."""
        self._write_meta(self.paths.session_dir(meta.uuid), meta)

    def _write_meta(self, directory: Path, meta: SessionMeta) -> None:
        path = directory / "session.json"
        atomic_write(path, (json.dumps(meta.to_json(), indent=2) + "\n").encode(), mode=0o644)
        self._cache.pop(meta.uuid, None)

    def touch(self, session_id: str) -> SessionMeta:
        """Set ``last_accessed`` to now and persist it."""
        meta = self.load(session_id).with_changes(last_accessed=now_ns())
        self.save(meta)
        return meta

    def create(self, meta: SessionMeta) -> None:
        """Make a new home from the skel and write its metadata.

        The home is built in ``.staging/<uuid>`` and renamed into place, so it
        appears complete or not at all.
        """
        staged = self._staging_for(meta.uuid)
        staged.mkdir(mode=0o750)
        self._own(staged, self.uid, self.gid)
        skel = self.paths.skel_dir
        if skel.is_dir():
            self._copy_tree(skel, staged)
        self._write_meta(staged, meta)
        self._publish(staged, meta.uuid)

    def clone(self, source_id: str, meta: SessionMeta) -> None:
        """Copy ``source_id``'s home (modes, owners, symlinks) into a new session ``meta``.

        Sockets, FIFOs and device nodes are skipped: they belong to the source's
        running processes.

        Raises:
            NotFound: the source does not exist.
        """
        source = self.paths.session_dir(source_id)
        if not (source / "session.json").is_file():
            raise NotFound(messages.SESSION_NOT_FOUND.format(id=source_id))
        staged = self._staging_for(meta.uuid)
        staged.mkdir(mode=0o750)
        st = os.stat(source)
        os.chmod(staged, stat.S_IMODE(st.st_mode))
        self._own(staged, st.st_uid, st.st_gid)
        self._copy_tree(source, staged, skip={"session.json"}, keep_owner=True)
        self._write_meta(staged, meta)
        self._publish(staged, meta.uuid)

    def trash(self, session_id: str) -> Path:
        """Move a session's home into the trash; returns its new path.

        The trash entry is named ``<uuid>.<ns>`` so a restored-and-deleted-again
        session does not collide with its earlier copy.
        """
        source = self.paths.session_dir(session_id)
        if not source.is_dir():
            raise NotFound(messages.SESSION_NOT_FOUND.format(id=session_id))
        self.paths.trash_dir.mkdir(mode=0o700, exist_ok=True)
        target = self.paths.trash_dir / f"{session_id}.{now_ns()}"
        os.rename(source, target)
        fsync_dir(self.paths.session_base)
        self._cache.pop(session_id, None)
        return target

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
                meta = SessionMeta.from_json(json.loads((self.paths.trash_dir / name / "session.json").read_bytes()))
            except (OSError, ValueError, BadRequest):
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
                purged.append(entry.trash_id)
        return purged

    def restore(self, trash_id: str) -> SessionMeta:
        """Move a trash entry back to be a session again.

        Raises:
            BadRequest: not a trash entry ID.
            NotFound: no such entry (purged, or never there).
            Conflict: a session with that UUID exists already.
            ConfigError: the entry's ``session.json`` is unreadable.
        """
        sid, _ = parse_trash_id(trash_id)
        source = self.paths.trash_dir / trash_id
        if not source.is_dir():
            raise NotFound(f'trash entry "{trash_id}" does not exist (restored already, or purged)')
        if self.paths.session_dir(sid).exists():
            raise Conflict(f'session "{sid}" exists already; it cannot be restored over')
        try:
            meta = SessionMeta.from_json(json.loads((source / "session.json").read_bytes()), expected_uuid=sid)
        except (OSError, ValueError, BadRequest) as e:
            raise ConfigError(messages.INVALID_SESSION_FILE.format(path=source / "session.json", detail=e)) from e
        os.rename(source, self.paths.session_dir(sid))
        fsync_dir(self.paths.session_base)
        return meta

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
    def _own(self, path: Path, uid: int, gid: int) -> None:
        if self._chown:
            os.lchown(path, uid, gid)

    def _staging_for(self, session_id: str) -> Path:
        self.paths.staging_dir.mkdir(mode=0o700, exist_ok=True)
        return self.paths.staging_dir / validate_uuid(session_id)

    def _publish(self, staged: Path, session_id: str) -> None:
        target = self.paths.session_dir(session_id)
        # rename(2) onto an existing non-empty directory fails, so an existing
        # session can never be overwritten.
        os.rename(staged, target)
        fsync_dir(self.paths.session_base)

    def _copy_tree(self, source: Path, target: Path, *, skip: set[str] = frozenset(), keep_owner: bool = False) -> None:
        """Copy the contents of ``source`` into the existing dir ``target``.

        Owners are copied when ``keep_owner``; otherwise everything becomes
        ``uid:gid``. Symlinks are copied as links, never followed.
        """
        for name in os.listdir(source):
            if name in skip:
                continue
            src, dst = source / name, target / name
            st = os.lstat(src)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(dst, 0o700)
                self._copy_tree(src, dst, keep_owner=keep_owner)
                shutil.copystat(src, dst, follow_symlinks=False)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(src), dst)
            elif stat.S_ISREG(mode):
                shutil.copy2(src, dst, follow_symlinks=False)
            else:
                log.info("clone: skipping special file %s", src)
                continue
            uid, gid = (st.st_uid, st.st_gid) if keep_owner else (self.uid, self.gid)
            self._own(dst, uid, gid)
