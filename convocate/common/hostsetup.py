"""What the role install steps share: modes, idempotent writes, ``/etc/default`` files.

``convocate-agent install`` and ``convocate install`` run from the packages' postinst on every
configure (install, upgrade, ``dpkg-reconfigure``) and by hand. Each must be idempotent: a second
run changes nothing and says so. The helpers here change a file, an owner or a mode only when it
differs from what is wanted, and record every step in a :class:`StepReport` as changed or kept.

:func:`convocate.common.account.ensure_account` (the ``claude`` account) and :func:`daemon_reload`
act on the live system; the install steps call them only when ``Paths.relocated`` is false (tests and the demo run under ``CONVOCATE_ROOT``).
Commands, listening ports and systemd units live in :mod:`convocate.common.systemd`; the names the
install steps call are re-exported here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from convocate.common import messages
from convocate.common.errors import BadRequest
from convocate.common.fsutil import atomic_write
from convocate.common.systemd import DEBCONF_VARIABLES as DEBCONF_VARIABLES
from convocate.common.systemd import check_port_free as check_port_free
from convocate.common.systemd import child_env as child_env
from convocate.common.systemd import daemon_reload as daemon_reload
from convocate.common.systemd import restart_if_inputs_changed as restart_if_inputs_changed
from convocate.common.systemd import run_command as run_command
from convocate.common.systemd import systemd_running as systemd_running
from convocate.common.systemd import unit_active_since as unit_active_since


@dataclass
class StepReport:
    """What an install step did, one line per step.

    Attributes:
        steps: Human-readable lines, in order.
        changes: How many steps changed something on disk or in the system.
    """

    steps: list[str] = field(default_factory=list)
    changes: int = 0

    def changed(self, line: str) -> None:
        """Record a step that changed something."""
        self.steps.append(line)
        self.changes += 1

    def kept(self, line: str) -> None:
        """Record a step that found everything as wanted."""
        self.steps.append(line)

    def note(self, line: str) -> None:
        """Record something the operator should know; changes nothing."""
        self.steps.append(f"note: {line}")

    def summary(self) -> str:
        """The closing line: how many steps changed something."""
        return f"{self.changes} change(s)" if self.changes else "nothing changed"


def print_install_report(prog: str, report: StepReport, as_json: bool, indent: int | None = None) -> int:
    """Print what ``PROG install`` did: each step and the summary, or one JSON object with ``--json``.

    Args:
        prog: The command, for the summary line.
        report: The steps.
        as_json: Print the JSON object instead.
        indent: JSON indentation (the shell's CLI indents all its JSON by 2); None: one line.

    Returns:
        0, the command's exit status (a failed step raised before this).
    """
    import json

    if as_json:
        print(json.dumps({"ok": True, "steps": report.steps, "changes": report.changes, "summary": report.summary()},
                         indent=indent, ensure_ascii=False))
        return 0
    for step in report.steps:
        print(step)
    print(f"{prog} install: {report.summary()}")
    return 0


def move_state(old: Path, new: Path, report: StepReport) -> None:
    """Move a state file an older version kept in ``/etc`` to its place under ``/var/lib`` (FHS §5.8).

    Nothing happens when ``old`` is gone; when both exist the newer place wins and ``old`` is left for
    the operator to look at (reported).
    """
    if not old.exists():
        return
    if new.exists():
        report.note(f"{old} is left over from an older version; {new} is used")
        return
    shutil.move(old, new)  # rename(2) on one file system
    report.changed(f"{old.name} moved to {new} (state belongs under /var/lib)")


# --- files ----------------------------------------------------------------------------------------
def ensure_dir(path: Path, *, mode: int, uid: int | None, gid: int | None, report: StepReport, what: str) -> None:
    """A directory with the given mode and owner; created (with parents) if missing.

    Args:
        path: The directory.
        mode: Permission bits.
        uid: Owner, or None to leave the owner alone (relocated installs, non-root).
        gid: Group, or None to leave it alone.
        report: Where the step is recorded.
        what: What the directory is, for the report.
    """
    if path.is_dir():
        if fix_owner_mode(path, mode=mode, uid=uid, gid=gid):
            report.changed(f"{what} {path}: owner/mode fixed")
        else:
            report.kept(f"{what} {path} kept")
        return
    path.mkdir(parents=True, mode=mode)
    fix_owner_mode(path, mode=mode, uid=uid, gid=gid)
    report.changed(f"{what} {path} created")


def fix_owner_mode(path: Path, *, mode: int | None, uid: int | None, gid: int | None) -> bool:
    """Give ``path`` (not following a symlink) the mode and owner wanted; returns True if it changed any.

    Args:
        path: An existing file or directory.
        mode: Permission bits, or None to leave them.
        uid: Owner, or None to leave it.
        gid: Group, or None to leave it.
    """
    st = path.lstat()
    changed = False
    if (uid is not None and st.st_uid != uid) or (gid is not None and st.st_gid != gid):
        os.lchown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        changed = True
    if mode is not None and (st.st_mode & 0o7777) != mode and not path.is_symlink():
        os.chmod(path, mode)
        changed = True
    return changed


def write_if_changed(path: Path, data: bytes, *, mode: int, uid: int | None = None, gid: int | None = None,
                     report: StepReport, what: str) -> bool:
    """Write ``data`` atomically unless the file already holds it; fix its mode and owner either way.

    Args:
        path: The file; its directory must exist.
        data: The complete content wanted.
        mode: Permission bits.
        uid: Owner, or None to leave it (a new file belongs to the writer).
        gid: Group, or None to leave it.
        report: Where the step is recorded.
        what: What the file is, for the report.

    Returns:
        True if the content was (re)written.
    """
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        current = None
    if current == data:
        if fix_owner_mode(path, mode=mode, uid=uid, gid=gid):
            report.changed(f"{what} {path}: owner/mode fixed")
        else:
            report.kept(f"{what} {path} unchanged")
        return False
    atomic_write(path, data, mode=mode, uid=uid, gid=gid)
    report.changed(f"{what} {path} {'written' if current is None else 'updated'}")
    return True


def render_env_file(current: str, values: Mapping[str, str], header: str) -> str:
    """Set ``KEY=VALUE`` lines of an ``/etc/default`` file, keeping every other line as it is.

    The file is read by systemd (``EnvironmentFile=``, systemd.exec(5)): one assignment per
    line, ``#`` comments. A key already assigned is rewritten in place (its last assignment, the
    one that counts); a missing key is appended. Lines the operator added stay.

    Args:
        current: The file's content (``""`` if it does not exist; ``header`` then starts it).
        values: Key → value; values must not need quoting (no spaces, quotes or backslashes).
        header: Comment block for a new file, each line starting with ``#``.

    Returns:
        The new content.
    """
    lines = current.splitlines() if current else header.rstrip("\n").splitlines()
    for key, value in values.items():
        assignment = f"{key}={value}"
        found = [i for i, line in enumerate(lines) if line.strip().startswith(f"{key}=")]
        if found:
            lines[found[-1]] = assignment
        else:
            lines.append(assignment)
    return "\n".join(lines) + "\n"


def ensure_service_defaults(path: Path, *, relocated: bool, package: str, asked: Mapping[str, str],
                            first: Mapping[str, str], header: str, report: StepReport) -> None:
    """Write a role's ``/etc/default`` file for ``install``, or leave it to its package.

    On a real host the package owns the file: its postinst writes it from the debconf answers with
    ucf(1), which keeps an administrator's edits (DESIGN §7), so ``install`` changes nothing there
    and refuses options that would. Under ``CONVOCATE_ROOT`` (tests, the demo) ``install`` keeps it:
    a new file gets ``first`` then ``asked``; an existing one only the keys in ``asked``.

    Args:
        path: The file (``/etc/default/convocate`` or ``/etc/default/convocate-agent``).
        relocated: True under ``CONVOCATE_ROOT``.
        package: The package that owns the file on a real host, for the refusal.
        asked: Keys the operator's options set, already checked.
        first: Every key's default, for a file that does not exist yet.
        header: Comment block of a new file.
        report: Where the step is recorded.

    Raises:
        BadRequest: options were given on a real host, where debconf owns the values.
    """
    if not relocated:
        if asked:
            raise BadRequest(messages.DEFAULTS_BY_DEBCONF.format(path=path, package=package))
        report.kept(f"service settings {path}: kept by the package (ucf)")
        return
    values = dict(asked)
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = ""
        values = {**first, **asked}
    if not values:
        report.kept(f"service settings {path} kept")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_if_changed(path, render_env_file(current, values, header).encode(), mode=0o644, report=report,
                     what="service settings")


def env_file_port(path: Path, key: str, default: int) -> int:
    """The port of a ``KEY=[HOST]:PORT`` (or ``KEY=PORT``) line of an ``/etc/default`` file.

    Args:
        path: The file; a missing one gives ``default``.
        key: The variable, e.g. ``CONVOCATE_AGENT_LISTEN``.
        default: The port when the file or the key is absent, or its value ends in no number.

    Returns:
        The port of the key's last assignment (the one systemd's ``EnvironmentFile=`` keeps).
    """
    port = default
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            name, _, value = line.strip().partition("=")
            if name == key and value.rpartition(":")[2].isdigit():
                port = int(value.rpartition(":")[2])
    except FileNotFoundError:
        pass
    return port
