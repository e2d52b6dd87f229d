"""The session account ``claude``, GID/UID 1337, set up the same way on this machine or another (DESIGN §4).

The IDs are fixed because session containers run as 1337 on every host and session homes move
between hosts. They lie in Debian's range of dynamically allocated accounts (Debian Policy §9.2.2),
so a clash with an existing account is refused, never resolved silently (adduser warns that 1337
lies above ``SYS_UID_MAX``; that is expected). The password stays locked: logins are by SSH key only.

:func:`account_steps` decides, from what the host's group(5) and passwd(5) databases hold, what to
run and what to report. :func:`ensure_account` runs the steps here (``convocate install`` and
``convocate-agent install``, from the packages' postinst); ``convocate_host.prepare`` runs them on
a deploy target, reading the databases with getent(1) (:data:`GETENT_QUERIES`).
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convocate.common import messages
from convocate.common.errors import ConfigError
from convocate.common.paths import CLAUDE_GID, CLAUDE_UID, CLAUDE_USER
from convocate.common.systemd import run_command

if TYPE_CHECKING:
    from convocate.common.hostsetup import StepReport

#: getent(1) arguments for each field of :class:`AccountLookups`, in order.
GETENT_QUERIES: tuple[tuple[str, str], ...] = (
    ("group", CLAUDE_USER), ("group", str(CLAUDE_GID)), ("passwd", CLAUDE_USER), ("passwd", str(CLAUDE_UID)),
)


def group_command() -> list[str]:
    """addgroup(8) for the group ``claude`` with GID 1337 (run where it is missing)."""
    return ["addgroup", "--system", "--gid", str(CLAUDE_GID), CLAUDE_USER]


def user_command(home: str, login_shell: str, *, create_home: bool) -> list[str]:
    """adduser(8) ``--system`` for the user ``claude`` with UID 1337 in the group ``claude``.

    ``--system``: the password is disabled and no subordinate UID/GID range (subuid(5)) is given,
    which useradd(8) gives every non-system user; the session user never runs user namespaces itself.

    Args:
        home: The home directory (``/home/claude``).
        login_shell: ``/usr/bin/convocate`` on a shell host, ``/usr/sbin/nologin`` elsewhere.
        create_home: Make the home directory (convocate-host install) or leave it to the caller.
    """
    return ["adduser", "--system", "--uid", str(CLAUDE_UID), "--ingroup", CLAUDE_USER, "--home", home,
            *([] if create_home else ["--no-create-home"]), "--shell", login_shell, "--gecos",
            "convocate sessions", CLAUDE_USER]


@dataclass(frozen=True)
class AccountEntry:
    """One group(5) or passwd(5) entry: its name, its ID (GID or UID), its primary GID and shell.

    A group's ``gid`` is its own ID and its ``shell`` is ``""``.
    """

    name: str
    id: int
    gid: int
    shell: str = ""

    @classmethod
    def from_getent(cls, text: str) -> AccountEntry | None:
        """Read getent(1)'s output for one key: None when it printed nothing (no such entry).

        Raises:
            ConfigError: the line is neither a group(5) line (4 fields) nor a passwd(5) line (7).
        """
        line = text.strip()
        if not line:
            return None
        fields = line.split(":")
        try:
            if len(fields) == 7:
                return cls(fields[0], int(fields[2]), int(fields[3]), fields[6])
            if len(fields) == 4:
                return cls(fields[0], int(fields[2]), int(fields[2]))
        except ValueError:
            pass
        raise ConfigError(f"getent printed {line[:200]!r}, which is no group(5) or passwd(5) entry")


@dataclass(frozen=True)
class AccountLookups:
    """What the account databases hold: ``claude``'s group and user, and whoever has GID/UID 1337."""

    group: AccountEntry | None
    group_with_gid: AccountEntry | None
    user: AccountEntry | None
    user_with_uid: AccountEntry | None

    @classmethod
    def here(cls) -> AccountLookups:
        """This machine's databases (NSS, through the grp and pwd modules)."""
        def group(entry: Any) -> AccountEntry:
            return AccountEntry(entry.gr_name, entry.gr_gid, entry.gr_gid)

        def user(entry: Any) -> AccountEntry:
            return AccountEntry(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_shell)

        return cls(_entry(grp.getgrnam, CLAUDE_USER, group), _entry(grp.getgrgid, CLAUDE_GID, group),
                   _entry(pwd.getpwnam, CLAUDE_USER, user), _entry(pwd.getpwuid, CLAUDE_UID, user))


@dataclass(frozen=True)
class AccountStep:
    """One step of the set-up: a command to run (None: nothing, the account is kept) and its report line."""

    command: list[str] | None
    what: str
    line: str


def account_steps(found: AccountLookups, home: str, login_shell: str, *, set_shell: bool,
                  create_home: bool) -> list[AccountStep]:
    """The steps that give the host group and user ``claude`` with GID/UID 1337.

    Args:
        found: What the host's databases hold now.
        home: The user's home (``/home/claude``).
        login_shell: Login shell for a new user.
        set_shell: Also give an existing user ``login_shell`` (the shell host's TUI); else an
            existing user's shell is left alone.
        create_home: Let adduser make the home (else the caller does).

    Returns:
        The group's step, then the user's.

    Raises:
        ConfigError: ``claude`` exists with other IDs, or another account has GID/UID 1337.
    """
    group = _checked("group", "GID", found.group, found.group_with_gid, CLAUDE_GID)
    user = _checked("user", "UID", found.user, found.user_with_uid, CLAUDE_UID)
    if user is not None:
        _require_id("user", "primary GID", user.gid, CLAUDE_GID)
    steps = [AccountStep(None, "", f"group {CLAUDE_USER} (GID {CLAUDE_GID}) kept") if group is not None else
             AccountStep(group_command(), f"creating group {CLAUDE_USER}",
                         f"group {CLAUDE_USER} (GID {CLAUDE_GID}) created")]
    if user is None:
        steps.append(AccountStep(user_command(home, login_shell, create_home=create_home),
                                 f"creating user {CLAUDE_USER}", f"user {CLAUDE_USER} (UID {CLAUDE_UID}) created"))
    elif set_shell and user.shell != login_shell:
        steps.append(AccountStep(["usermod", "--shell", login_shell, CLAUDE_USER],
                                 f"setting the login shell of {CLAUDE_USER}",
                                 f"user {CLAUDE_USER}: login shell {user.shell} -> {login_shell}"))
    else:
        steps.append(AccountStep(None, "", f"user {CLAUDE_USER} (UID {CLAUDE_UID}, shell {user.shell}) kept"))
    return steps


def ensure_account(home: Path, login_shell: str, *, set_shell: bool, report: StepReport) -> None:
    """Give this machine group and user ``claude`` (:func:`account_steps`), run with addgroup/adduser/usermod.

    Args:
        home: The user's home; created by the caller, not here.
        login_shell: Login shell for a new user.
        set_shell: Also give an existing user ``login_shell``.
        report: Where each step is recorded, as changed or kept.

    Raises:
        ConfigError: a clash (:func:`account_steps`), or a command failed.
    """
    for step in account_steps(AccountLookups.here(), str(home), login_shell, set_shell=set_shell,
                              create_home=False):
        if step.command is None:
            report.kept(step.line)
        else:
            run_command(step.command, step.what)
            report.changed(step.line)


def _entry(lookup: Callable[[Any], Any], key: Any, convert: Callable[[Any], AccountEntry]) -> AccountEntry | None:
    try:
        return convert(lookup(key))
    except KeyError:
        return None


def _checked(kind: str, id_name: str, entry: AccountEntry | None, with_id: AccountEntry | None,
             wanted: int) -> AccountEntry | None:
    """``claude``'s entry of this kind, checked; None when there is none and ``wanted`` is free."""
    if entry is not None:
        _require_id(kind, id_name, entry.id, wanted)
        return entry
    if with_id is not None:
        raise ConfigError(messages.ACCOUNT_ID_TAKEN.format(id_name=id_name, wanted=wanted, kind=kind,
                                                           other=with_id.name, name=CLAUDE_USER))
    return None


def _require_id(kind: str, id_name: str, actual: int, wanted: int) -> None:
    if actual != wanted:
        raise ConfigError(messages.ACCOUNT_ID_MISMATCH.format(kind=kind, name=CLAUDE_USER, id_name=id_name,
                                                              actual=actual, wanted=wanted))
