"""The processes and systemd units the install steps drive: commands, listening ports, restarts.

:func:`run_command` runs a system command in :func:`child_env` (without debconf's variables,
debconf-devel(7)); :func:`check_port_free` finds who listens on a TCP port from ``/proc``
(proc(5)); the rest asks ``systemctl`` (systemd.unit(5), systemctl(1)) whether systemd runs, when a
unit became active, and restarts a unit whose start inputs changed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from convocate.common import messages
from convocate.common.errors import ConfigError
from convocate.common.paths import Paths

if TYPE_CHECKING:
    from convocate.common.hostsetup import StepReport


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
