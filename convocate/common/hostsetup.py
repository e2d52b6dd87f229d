"""What the role install steps share: the ``claude`` account, modes, idempotent writes, systemd.

``convocate-agent install`` and ``convocate install`` run from the packages' postinst on every
configure (install, upgrade, ``dpkg-reconfigure``) and by hand. Each must be idempotent: a second
run changes nothing and says so. The helpers here change a file, an owner or a mode only when it
differs from what is wanted, and record every step in a :class:`StepReport` as changed or kept.

:func:`ensure_account` and :func:`daemon_reload` act on the live system; the install steps call
them only when ``Paths.relocated`` is false (tests and the demo run under ``CONVOCATE_ROOT``).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from convocate.common import messages
from convocate.common.errors import BadRequest, ConfigError
from convocate.common.fsutil import atomic_write
from convocate.common.paths import CLAUDE_GID, CLAUDE_UID, CLAUDE_USER, Paths

T = TypeVar("T")


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


#: What debconf's confmodule puts in a maintainer script's environment. A child that inherits them
#: believes it runs under a debconf frontend it cannot reach: debootstrap's chroot looped in
#: pam-auth-update on end of input that way (MACHINE-NOTES). debconf-devel(7), "ENVIRONMENT".
DEBCONF_VARIABLES = ("DEBIAN_HAS_FRONTEND", "DEBCONF_REDIR", "DEBCONF_OLD_FD_BASE", "DEBCONF_FRONTEND",
                     "DEBIAN_FRONTEND", "DEBCONF_PRIORITY", "DEBCONF_RECONFIGURE", "DEBCONF_SYSTEMRC")


def child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a command an install step starts: this one without debconf's variables.

    Args:
        environ: The environment to start from (default ``os.environ``).

    Returns:
        A copy without :data:`DEBCONF_VARIABLES`.
    """
    env = dict(os.environ if environ is None else environ)
    for name in DEBCONF_VARIABLES:
        env.pop(name, None)
    return env


def run_command(args: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
    """Run a system command; a failure becomes a :class:`ConfigError` naming it.

    Args:
        args: The command and its arguments (no shell).
        what: What the command was for, for the message.

    Raises:
        ConfigError: the command is missing or exited non-zero; the message holds its stderr.
    """
    try:
        result = subprocess.run(list(args), capture_output=True, text=True, check=False, env=child_env(),
                                stdin=subprocess.DEVNULL)
    except OSError as e:
        raise ConfigError(messages.COMMAND_FAILED.format(what=what, command=" ".join(args), status="-",
                                                         detail=e)) from e
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or "no output"
        raise ConfigError(messages.COMMAND_FAILED.format(what=what, command=" ".join(args),
                                                         status=result.returncode, detail=detail))
    return result


# --- the claude account -------------------------------------------------------------------------
def group_command() -> list[str]:
    """addgroup(8) for the group ``claude`` with GID 1337 (run where it is missing)."""
    return ["addgroup", "--system", "--gid", str(CLAUDE_GID), CLAUDE_USER]


def user_command(home: str, login_shell: str, *, create_home: bool) -> list[str]:
    """adduser(8) ``--system`` for the user ``claude`` with UID 1337 in the group ``claude``.

    ``--system``: the password is disabled and no subordinate UID/GID range (subuid(5)) is given,
    which useradd(8) gives every non-system user; the session user never runs user namespaces itself.
    adduser warns that 1337 lies above ``SYS_UID_MAX``; that is expected.

    Args:
        home: The home directory (``/home/claude``).
        login_shell: ``/usr/bin/convocate`` on a shell host, ``/usr/sbin/nologin`` elsewhere.
        create_home: Make the home directory (convocate-host install) or leave it to the caller.
    """
    return ["adduser", "--system", "--uid", str(CLAUDE_UID), "--ingroup", CLAUDE_USER, "--home", home,
            *([] if create_home else ["--no-create-home"]), "--shell", login_shell, "--gecos",
            "convocate sessions", CLAUDE_USER]


def _entry(lookup: Callable[[Any], T], key: Any) -> T | None:
    """The group or passwd entry ``lookup(key)`` finds (grp/pwd), or None where there is none."""
    try:
        return lookup(key)
    except KeyError:
        return None


def ensure_account(home: Path, login_shell: str, *, set_shell: bool, report: StepReport) -> None:
    """Group and user ``claude`` with GID/UID 1337, created with addgroup(8)/adduser(8) ``--system``.

    The IDs are fixed because session containers run as 1337 on every host (DESIGN §4) and
    session homes move between hosts. They lie in Debian's range of dynamically allocated
    accounts (Debian Policy §9.2.2), so a clash with an existing account is refused, never
    resolved silently (adduser warns that 1337 lies above ``SYS_UID_MAX``; that is expected). The
    password stays locked: logins are by SSH key only.

    Args:
        home: The user's home (``/home/claude``); created by the caller, not here.
        login_shell: Login shell for a new user.
        set_shell: Also give an existing user ``login_shell`` (the shell host's TUI); else an
            existing user's shell is left alone.
        report: Where the steps are recorded.

    Raises:
        ConfigError: ``claude`` exists with other IDs, or the IDs belong to another account, or
            addgroup/adduser/usermod failed.
    """
    group = _entry(grp.getgrnam, CLAUDE_USER)
    if group is not None and group.gr_gid != CLAUDE_GID:
        raise ConfigError(messages.ACCOUNT_ID_MISMATCH.format(kind="group", name=CLAUDE_USER, id_name="GID",
                                                              actual=group.gr_gid, wanted=CLAUDE_GID))
    if group is None:
        other = getattr(_entry(grp.getgrgid, CLAUDE_GID), "gr_name", None)
        if other is not None:
            raise ConfigError(messages.ACCOUNT_ID_TAKEN.format(id_name="GID", wanted=CLAUDE_GID, kind="group",
                                                               other=other, name=CLAUDE_USER))
        run_command(group_command(), f"creating group {CLAUDE_USER}")
        report.changed(f"group {CLAUDE_USER} (GID {CLAUDE_GID}) created")
    else:
        report.kept(f"group {CLAUDE_USER} (GID {CLAUDE_GID}) kept")

    user = _entry(pwd.getpwnam, CLAUDE_USER)
    if user is not None and user.pw_uid != CLAUDE_UID:
        raise ConfigError(messages.ACCOUNT_ID_MISMATCH.format(kind="user", name=CLAUDE_USER, id_name="UID",
                                                              actual=user.pw_uid, wanted=CLAUDE_UID))
    if user is not None and user.pw_gid != CLAUDE_GID:
        raise ConfigError(messages.ACCOUNT_ID_MISMATCH.format(kind="user", name=CLAUDE_USER, id_name="primary GID",
                                                              actual=user.pw_gid, wanted=CLAUDE_GID))
    if user is None:
        other = getattr(_entry(pwd.getpwuid, CLAUDE_UID), "pw_name", None)
        if other is not None:
            raise ConfigError(messages.ACCOUNT_ID_TAKEN.format(id_name="UID", wanted=CLAUDE_UID, kind="user",
                                                               other=other, name=CLAUDE_USER))
        run_command(user_command(str(home), login_shell, create_home=False), f"creating user {CLAUDE_USER}")
        report.changed(f"user {CLAUDE_USER} (UID {CLAUDE_UID}, shell {login_shell}) created")
    elif set_shell and user.pw_shell != login_shell:
        run_command(["usermod", "--shell", login_shell, CLAUDE_USER], f"setting the login shell of {CLAUDE_USER}")
        report.changed(f"user {CLAUDE_USER}: login shell {user.pw_shell} -> {login_shell}")
    else:
        report.kept(f"user {CLAUDE_USER} (UID {CLAUDE_UID}, shell {user.pw_shell}) kept")


def check_port_free(port: int, unit: str, report: StepReport) -> None:
    """Fail early when another program listens on the TCP port ``unit`` is to listen on.

    The port may be held by ``unit`` itself (a reconfigure or an upgrade of a running service):
    the owner of the listening socket is looked up in ``/proc/net/tcp{,6}`` and ``/proc/*/fd``
    (proc(5)) and compared with the unit's ``MainPID``.

    Args:
        port: The TCP port.
        unit: The service that will listen there.
        report: Where the step is recorded.

    Raises:
        ConfigError: another process listens there; the message names it and says what to do.
    """
    inodes = _listening_inodes(port)
    if not inodes:
        report.kept(f"TCP port {port} is free for {unit}")
        return
    main_pid = _main_pid(unit)
    owners = _socket_owners(inodes)
    others = {pid: name for pid, name in owners.items() if pid != main_pid}
    if owners and not others:
        report.kept(f"TCP port {port} is held by {unit} itself")
        return
    who = ", ".join(f"{name} (PID {pid})" for pid, name in sorted(others.items())) or "another program"
    raise ConfigError(messages.LISTEN_PORT_IN_USE.format(port=port, who=who, unit=unit))


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN (include/net/tcp_states.h).
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(fields[9])
    return inodes


def _socket_owners(inodes: set[str]) -> dict[int, str]:
    owners: dict[int, str] = {}
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in wanted for fd in (proc / "fd").iterdir()):
                owners[int(proc.name)] = (proc / "comm").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
    return owners


def _main_pid(unit: str) -> int:
    result = subprocess.run(["systemctl", "show", "--property=MainPID", "--value", unit], capture_output=True,
                            text=True, check=False, env=child_env(), stdin=subprocess.DEVNULL)
    text = result.stdout.strip()
    return int(text) if result.returncode == 0 and text.isdigit() else 0


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


# --- systemd ------------------------------------------------------------------------------------------
def systemd_running(paths: Paths) -> bool:
    """Whether systemd is the running init (``/run/systemd/system`` exists, sd_booted(3))."""
    return paths.systemd_runtime_dir.is_dir()


def daemon_reload(paths: Paths, report: StepReport) -> None:
    """``systemctl daemon-reload`` when systemd runs, so changed unit files and drop-ins take effect."""
    if not systemd_running(paths):
        report.note("systemd is not running: unit changes take effect at its next start")
        return
    run_command(["systemctl", "daemon-reload"], "reloading systemd's units")
    report.changed("systemd: daemon-reload")


def unit_active_since(unit: str) -> float | None:
    """When ``unit`` last became active (seconds since the epoch), or None if it is not active.

    Reads ``ActiveEnterTimestamp`` with ``systemctl show --timestamp=unix`` (systemd >= 251).
    """
    result = subprocess.run(["systemctl", "show", "--timestamp=unix", "--property=ActiveState,ActiveEnterTimestamp",
                             unit], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return None
    props = dict(line.partition("=")[::2] for line in result.stdout.splitlines())
    stamp = props.get("ActiveEnterTimestamp", "").lstrip("@")
    if props.get("ActiveState") != "active" or not stamp.isdigit():
        return None
    return float(stamp)


def restart_if_inputs_changed(paths: Paths, unit: str, run_dir: Path, inputs: Sequence[tuple[str, Path]],
                              report: StepReport) -> bool:
    """Restart a running ``unit`` when what it reads at start changed since it started.

    The service records the digest of its start inputs in ``run_dir``
    (:mod:`convocate.common.startinputs`); a service that recorded none (an older version) is
    restarted. A stopped service is left to debhelper's start. systemd re-reads the unit files first
    (``daemon-reload``), so an upgraded unit takes effect.

    Args:
        paths: The layout (``paths.systemd_runtime_dir`` tells whether systemd runs).
        unit: The service, e.g. ``convocate-agent.service``.
        run_dir: Its runtime directory, where it recorded what it started with.
        inputs: Its start inputs (``Paths.agent_start_inputs()``).
        report: Where the step is recorded.

    Returns:
        True if the service was restarted.

    Raises:
        ConfigError: systemctl failed.
    """
    from convocate.common import startinputs

    if not systemd_running(paths):
        return False
    active = subprocess.run(["systemctl", "is-active", "--quiet", unit], check=False, env=child_env(),
                            stdin=subprocess.DEVNULL).returncode == 0
    if not active:
        report.kept(f"{unit} is not running; nothing to restart")
        return False
    if not startinputs.changed_since_start(run_dir, inputs):
        report.kept(f"{unit} kept running: nothing it reads at start changed")
        return False
    run_command(["systemctl", "daemon-reload"], "reloading systemd's units")
    run_command(["systemctl", "try-restart", unit], f"restarting {unit}")
    report.changed(f"{unit} restarted: what it reads at start changed")
    return True
