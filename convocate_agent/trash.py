"""The trash of deleted sessions: homes in ``.trash/<uuid>.<ns>/``, their records in the agent's trash dir.

A deleted home is renamed into ``.trash/`` and its record beside the other trash records; a restore
renames both back, and entries older than the retention (the agent setting
``trash_retention_days``) are purged. :class:`SessionTrash` is a mixin of
:class:`convocate_agent.store.SessionStore`, using its paths, record reading and listeners.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from convocate.common import messages
from convocate.common.errors import BadRequest, ConfigError, Conflict, NotFound
from convocate.common.fsutil import atomic_write, fsync_dir
from convocate.common.model import SessionMeta, parse_trash_id
from convocate.common.timefmt import now_ns

if TYPE_CHECKING:
    from convocate.common.paths import Paths

NS_PER_DAY = 86_400 * 1_000_000_000


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



class SessionTrash:
    """Moves sessions into the trash and back (a mixin of ``SessionStore``)."""

    if TYPE_CHECKING:
        paths: Paths
        REMOVED: str
        ADDED: str
        _cache: dict[str, tuple[tuple[int, int, int], SessionMeta]]
        _record_owner: tuple[int, int] | None
        _changed: Callable[[str, str, SessionMeta | None], None]

        def exists(self, session_id: str) -> bool: ...

        def _ensure_record_dirs(self) -> None: ...

        @staticmethod
        def _read_record(path: Path, session_id: str) -> SessionMeta: ...

        @staticmethod
        def _unlink(path: Path) -> None: ...

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
        os.rename(self.paths.session_record(session_id), self.trash_record(trash_id))
        fsync_dir(self.paths.session_records_dir)
        fsync_dir(self.paths.trash_records_dir)
        self._cache.pop(session_id, None)
        self._changed(self.REMOVED, session_id, None)
        return target

    def trash_record(self, trash_id: str) -> Path:
        """Where the record of trash entry ``trash_id`` lives.

        Raises:
            BadRequest: not a trash entry ID.
        """
        parse_trash_id(trash_id)
        return self.paths.trash_records_dir / f"{trash_id}.json"

    def save_trash_record(self, trash_id: str, meta: SessionMeta) -> None:
        """Write the record of trash entry ``trash_id`` atomically (mode 0640, like :meth:`save`)."""
        self._ensure_record_dirs()
        owner = self._record_owner or (None, None)
        atomic_write(self.trash_record(trash_id), (json.dumps(meta.to_json(), indent=2) + "\n").encode(),
                     mode=0o640, uid=owner[0], gid=owner[1])

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
                meta: SessionMeta | None = self._read_record(self.trash_record(name), sid)
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
                self._unlink(self.trash_record(entry.trash_id))
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
        record = self.trash_record(trash_id)
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
