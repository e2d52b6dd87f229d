"""Migration of the metadata of agents before issue 14: ``<home>/session.json`` into the agent's records, once.

Agents before issue 14 kept a session's metadata in its home, where the session could write it. The
migration reads each such file only for a home (or trash entry) without a record, without following a
symlink, validates it like any record, and removes it once its record is written (DESIGN §8, issue 14:
the agent never reads a name, limit, port or DNS name from a home otherwise).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from convocate.common import messages
from convocate.common.errors import BadRequest, ConfigError
from convocate.common.model import SessionMeta, parse_trash_id
from convocate.common.paths import LEGACY_SESSION_FILE
from convocate_agent.homecopy import DIR_FLAGS

if TYPE_CHECKING:
    from convocate_agent.store import SessionStore

log = logging.getLogger("convocate_agent.store")  # the name the migration's log lines had before the split

#: The largest legacy ``session.json`` read during migration (a real one is < 1 KiB).
LEGACY_FILE_MAX = 64 * 1024


@dataclass
class MigrationReport:
    """What :func:`migrate_legacy` did.

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


def migrate_legacy(store: SessionStore) -> MigrationReport:
    """Move each ``<home>/session.json`` of an agent before issue 14 into the records, once.

    Only a home (or trash entry) without a record is looked at, so a ``session.json`` a
    session writes later is never read. Each file is read without following a symlink and
    validated like any record (:meth:`SessionMeta.from_json`, the UUID must be the home's);
    one that fails is reported and its session left out (and its file left where it is).
    A DNS name or port another session holds already (the older session keeps it) is
    cleared and reported: the session may have forged it before the upgrade. After the record
    is written, ``session.json`` is removed from the home, so nothing stale is left there.

    Args:
        store: The agent's session store.

    Returns:
        What was migrated, refused and cleared.
    """
    report = MigrationReport()
    _migrate_homes(store, report)
    _migrate_trash(store, report)
    for line in [messages.LEGACY_RECORD_MIGRATED.format(id=sid, path=store.paths.session_record(sid))
                 for sid in report.migrated] + report.notes:
        log.info("%s", line)
    for _, line in report.refused:
        log.warning("%s", line)
    return report


def _migrate_homes(store: SessionStore, report: MigrationReport) -> None:
    """Turn the ``session.json`` of each unrecorded home into its record, oldest session first."""
    candidates: list[tuple[SessionMeta, Path]] = []
    for home in store.unrecorded_homes():
        try:
            meta = read_legacy(home, home.name)
        except FileNotFoundError:
            continue
        except ConfigError as e:
            report.refused.append((home.name, messages.LEGACY_RECORD_REFUSED.format(
                id=home.name, path=home / LEGACY_SESSION_FILE, detail=e.message)))
            continue
        candidates.append((meta, home))
    if not candidates:
        return
    taken, _ = store.load_all()
    for meta, home in sorted(candidates, key=lambda c: (c[0].created_at, c[0].uuid)):
        meta = _clear_taken(meta, taken, report)
        store.save(meta)
        remove_legacy(home)
        taken.append(meta)
        report.migrated.append(meta.uuid)


def _clear_taken(meta: SessionMeta, taken: list[SessionMeta], report: MigrationReport) -> SessionMeta:
    """``meta`` without the DNS name and port another session in ``taken`` holds already (noted in ``report``)."""
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
    return meta.with_changes(**changes)


def _migrate_trash(store: SessionStore, report: MigrationReport) -> None:
    """Turn the ``session.json`` of each trash entry without a trash record into its trash record."""
    try:
        trash_names = sorted(os.listdir(store.paths.trash_dir))
    except FileNotFoundError:
        trash_names = []
    for name in trash_names:
        try:
            sid, _ = parse_trash_id(name)
        except BadRequest:
            continue
        entry = store.paths.trash_dir / name
        if os.path.lexists(store.trash_record(name)):
            continue
        try:
            meta = read_legacy(entry, sid)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except ConfigError as e:
            report.refused.append((sid, messages.LEGACY_RECORD_REFUSED.format(
                id=sid, path=entry / LEGACY_SESSION_FILE, detail=e.message)))
            continue
        store.save_trash_record(name, meta)
        remove_legacy(entry)
        report.trash_migrated.append(name)


def read_legacy(directory: Path, session_id: str) -> SessionMeta:
    """Read ``directory/session.json`` without following a symlink at either step.

    Args:
        directory: A session home or trash entry.
        session_id: The UUID the file must carry.

    Raises:
        FileNotFoundError: there is none.
        ConfigError: it is not a regular file, too big (over :data:`LEGACY_FILE_MAX` bytes), or invalid.
    """
    path = directory / LEGACY_SESSION_FILE
    dir_fd = os.open(directory, DIR_FLAGS)
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


def remove_legacy(directory: Path) -> None:
    """Remove ``directory/session.json`` (through the directory's fd, never through a symlink), if there."""
    dir_fd = os.open(directory, DIR_FLAGS)
    try:
        os.unlink(LEGACY_SESSION_FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dir_fd)
