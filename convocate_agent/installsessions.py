"""The session side of ``convocate-agent install``: the session base and skel, the record store, the env file.

Steps of :func:`convocate_agent.install.install`, each idempotent and reporting what it changed or kept
(:class:`convocate.common.hostsetup.StepReport`). The records live in the agent's state directory, which
no session container mounts (DESIGN §8, issue 14).
"""

from __future__ import annotations

import errno
import os
from importlib import resources
from pathlib import Path

from convocate.common import hostsetup, messages
from convocate.common.fsutil import atomic_write
from convocate.common.hostsetup import StepReport
from convocate.common.paths import Paths
from convocate_agent.locks import SessionLocks
from convocate_agent.store import SessionStore


def _chown(path: Path, uid: int, gid: int, report: StepReport) -> None:
    try:
        os.chown(path, uid, gid)
    except PermissionError:
        report.note(f"cannot give {path} to {uid}:{gid} (not root); sessions may not write their homes")
    except OSError as e:
        if e.errno != errno.EPERM:
            raise


def ensure_session_base(paths: Paths, report: StepReport, uid: int, gid: int, system: bool) -> None:
    """The session base (``/home/claude``) and its skel with ``CLAUDE.md``, owned by the session user."""
    base = paths.session_base
    if system:
        hostsetup.ensure_dir(base, mode=0o755, uid=uid, gid=gid, report=report, what="session base")
    else:
        base_existed = base.is_dir()
        base.mkdir(parents=True, exist_ok=True, mode=0o755)
        if base_existed:
            report.kept(f"session base {base} kept")
        else:
            _chown(base, uid, gid, report)
            report.changed(f"session base {base} created")

    skel_file = paths.skel_dir / "CLAUDE.md"
    if skel_file.exists():
        report.kept(f"skel {skel_file} kept")
        return
    paths.skel_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    _chown(paths.skel_dir, uid, gid, report)
    text = resources.files("convocate_agent").joinpath("skel", "CLAUDE.md").read_bytes()
    root = os.geteuid() == 0
    atomic_write(skel_file, text, mode=0o644, uid=uid if root else None, gid=gid if root else None)
    report.changed(f"skel {skel_file} written")


def ensure_session_records(paths: Paths, report: StepReport, owner: tuple[int | None, int | None],
                            uid: int, gid: int) -> None:
    """The agent's record store, and the metadata of an agent before issue 14 moved into it (once).

    The records, the locks and the trash records live in the state directory, which no session
    container mounts; older agents kept ``session.json`` in each home, where the session could
    rewrite it. Each such file is validated (an invalid one is reported and its session left out)
    and becomes a record owned by the service's user; stale lock files beside the homes go.
    """
    for directory, what in ((paths.session_records_dir, "session records"),
                            (paths.session_locks_dir, "session locks"),
                            (paths.trash_records_dir, "trash records")):
        hostsetup.ensure_dir(directory, mode=0o750, uid=owner[0], gid=owner[1], report=report, what=what)
    record_owner = (owner[0], owner[1]) if owner[0] is not None and owner[1] is not None else None
    migration = SessionStore(paths, uid, gid, record_owner=record_owner).migrate_legacy()
    for sid in migration.migrated:
        report.changed(messages.LEGACY_RECORD_MIGRATED.format(id=sid, path=paths.session_record(sid)))
    for trash_id in migration.trash_migrated:
        report.changed(f"trash entry {trash_id}: its session.json moved into {paths.trash_records_dir}")
    for note in migration.notes:
        report.changed(note)
    for _, line in migration.refused:
        report.note(line)
    for sid in SessionLocks(paths).sweep_legacy():
        report.changed(f"stale lock {paths.legacy_lock_file(sid)} of an older agent removed")


def ensure_session_env(paths: Paths, report: StepReport) -> None:
    """Root-only env file of the sessions; the unit's ``LoadCredential=`` needs it to exist."""
    path = paths.session_env_file
    if not path.exists():
        atomic_write(path, b"", mode=0o600, uid=0, gid=0)
        report.changed(f"session env file {path} created (empty; root-only, for e.g. ANTHROPIC_API_KEY=)")
    elif hostsetup.fix_owner_mode(path, mode=0o600, uid=0, gid=0):
        report.changed(f"session env file {path}: made root-only (0600), it holds secrets")
    else:
        report.kept(f"session env file {path} kept")
