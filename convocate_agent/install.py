"""``convocate-agent install``: idempotent bootstrap of an agent host (DESIGN §4, §7).

The convocate-agent package's postinst runs it on every configure (first install, upgrade,
``dpkg-reconfigure``), passing the debconf answers as options; an operator may run it by hand.
It creates what the agent needs, keeps what exists (the agent ID and the host key are never
replaced), rewrites only what differs, and reports each step as changed or kept, so a second run
changes nothing. It does not mint peering keys, install the TLS client certificate, or start the
service: ``convocate-host init-agent`` does those, and debhelper starts the unit.

System mode (``/``), as root:

- Docker must be reachable and the group ``docker`` must exist (the unit's
  ``SupplementaryGroups=docker``); otherwise a clear error.
- group and user ``claude`` (adduser ``--system``), GID/UID 1337, home ``/home/claude``, shell
  ``/usr/sbin/nologin`` for a new user (an existing user's shell is left: the shell host's TUI may be it).
- ``/etc/convocate-agent/`` owned by ``claude`` (the service runs as ``claude`` and writes
  ``settings.json`` there); agent ID and host key (0600) owned by ``claude``;
  ``session.env`` root-only 0600 (the unit hands it over with ``LoadCredential=``, which needs
  the file to exist, so an empty one is created).
- the shell host (``shell-host``), when given as an option. ``/etc/default/convocate-agent``
  (listen address, shell port) is the package's: its postinst renders it (``--print-defaults``)
  and merges it with ucf; only a relocated install writes it here.
- the session base ``/home/claude`` and its skel, owned by ``claude``.
- the slice's CPU limit: ``CPUQuota`` = usable CPUs × 90% of this host, in a drop-in of
  ``convocate-sessions.slice`` (``MemoryMax=90%`` is static in the slice); ``systemctl
  daemon-reload`` if it changed and systemd runs (:mod:`convocate_agent.installslice`).
- the state directory ``/var/lib/convocate-agent`` (settings, current image, image spool), with
  the files older versions kept in ``/etc/convocate-agent`` moved there.
- a check that the listen port is free (or held by the agent itself).
- the agent restarted when something it reads at start changed (``convocate.common.startinputs``),
  never otherwise: a restart ends the attached operators' relays.
- checks that the packaged units (service, slice, image prune timer), the cron job and the
  are in place; they are static files of the package, not written here.
- the agent's record store (``/var/lib/convocate-agent/sessions``, ``locks``, ``trash``, owned by
  ``claude``), and the ``session.json`` an agent before issue 14 kept in each home moved into it,
  once and validated (an invalid one is reported and its session left out); these session-side
  steps are :mod:`convocate_agent.installsessions`.
- counts the sessions it adopts.

Relocated (``CONVOCATE_ROOT``, tests and the demo): the same files under the root, with the
invoking user's ownership; no account, no systemctl, and the packaged files are not checked.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import re
import secrets
import string
from dataclasses import dataclass

import docker

from convocate.common import account, hostsetup, keys, messages
from convocate.common.constants import AGENT_PORT, NOLOGIN, STATUS_PORT
from convocate.common.errors import BadRequest, ConfigError
from convocate.common.fsutil import atomic_write, read_token
from convocate.common.hostsetup import StepReport
from convocate.common.model import PORT_MAX
from convocate.common.paths import CLAUDE_GID, CLAUDE_UID, Paths
from convocate_agent.dockererrors import docker_errors
from convocate_agent.installsessions import ensure_session_base, ensure_session_env, ensure_session_records
from convocate_agent.installslice import ensure_slice_dropin
from convocate_agent.store import SessionStore

AGENT_ID_LENGTH = 8
_AGENT_ID = re.compile(r"[a-z0-9]{8}")
_ALPHABET = string.ascii_lowercase + string.digits
_HOST_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")

#: The packaged files ``install`` expects in system mode (DESIGN §7).
SLICE = "convocate-sessions.slice"
AGENT_UNIT = "convocate-agent.service"
UNITS = (AGENT_UNIT, SLICE, "convocate-image-prune.timer", "convocate-image-prune.service")
DEFAULTS_HEADER = """\
# Settings of convocate-agent.service (systemd.exec(5) EnvironmentFile=).
#
# `convocate-agent install` writes the CONVOCATE_AGENT_* lines from the debconf answers:
# change them with `dpkg-reconfigure convocate-agent`, which rewrites them and restarts the
# service. Other lines you add here are kept, e.g. CONVOCATE_LOG_LEVEL=debug.
# The shell host that receives status events is in /etc/convocate-agent/shell-host.
"""


def new_agent_id() -> str:
    """A fresh random agent ID: 8 characters of ``a-z0-9``."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(AGENT_ID_LENGTH))


def valid_agent_id(value: str) -> bool:
    """Whether ``value`` has the agent ID form (8 of ``a-z0-9``)."""
    return bool(_AGENT_ID.fullmatch(value))


def check_port(value: int | str, option: str) -> int:
    """A TCP port 1-65535, written in ASCII digits.

    ``str.isdigit`` alone would take ``"２２２"`` (full-width digits, which ``int`` reads as 222)
    from a debconf answer or an ``/etc/default`` file and write it back to files that sshd, ufw and
    systemd read as bytes.

    Raises:
        BadRequest: anything else; the message names ``option``.
    """
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= PORT_MAX:
        raise BadRequest(messages.BAD_INSTALL_PORT.format(option=option, value=value))
    return int(text)


def check_host(value: str, option: str) -> str:
    """A host name (RFC 1123 §2.1 labels) or an IPv4/IPv6 address; ``""`` means none.

    Raises:
        BadRequest: anything else; the message names ``option``.
    """
    host = value.strip()
    if host == "" or _HOST_NAME.fullmatch(host):
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise BadRequest(messages.BAD_INSTALL_HOST.format(option=option, value=value)) from None
    return host


@dataclass(frozen=True)
class InstallOptions:
    """What ``install`` is told; None leaves the current setting as it is.

    Attributes:
        shell_host: Shell host for status events (``""``: none); debconf
            ``convocate-agent/shell-host``.
        listen_port: SSH port of the agent; debconf ``convocate-agent/listen-port``.
        shell_port: Status port on the shell host; debconf ``convocate-agent/shell-port``.
    """

    shell_host: str | None = None
    listen_port: int | None = None
    shell_port: int | None = None


@dataclass
class InstallReport(StepReport):
    """What ``install`` did.

    Attributes:
        agent_id: The agent's ID (new or kept).
        adopted: Existing session directories found under the session base.
    """

    agent_id: str = ""
    adopted: int = 0


def check_docker() -> str:
    """Ping dockerd (``DOCKER_HOST``, else ``/var/run/docker.sock``).

    Returns:
        The daemon's version.

    Raises:
        DockerError: dockerd does not answer; the message says what to do.
    """
    with docker_errors("", message=messages.DOCKER_UNREACHABLE):
        client = docker.from_env(timeout=15)
    try:
        with docker_errors(os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock",
                           message=messages.DOCKER_UNREACHABLE):
            return str(client.version().get("Version", "?"))
    finally:
        client.close()


def install(paths: Paths, *, uid: int = CLAUDE_UID, gid: int = CLAUDE_GID,
            options: InstallOptions | None = None) -> InstallReport:
    """Bootstrap the agent host described by ``paths``.

    Args:
        paths: Installation layout (``CONVOCATE_ROOT`` relocates it).
        uid: Owner of the session base and skel (the ``claude`` user).
        gid: Group of the session base and skel.
        options: Settings to apply (the debconf answers); None keeps them all.

    Returns:
        The report of what was done.

    Raises:
        DockerError: dockerd is not reachable.
        ConfigError: the account ``claude`` clashes with an existing one, the group ``docker``
            is missing (system mode), or an existing agent ID or host key is invalid (it is
            left as it is for the operator to look at).
        BadRequest: an option is invalid.
    """
    options = options or InstallOptions()
    _check_options(options)
    system = not paths.relocated
    report = InstallReport()

    report.kept(f"Docker {check_docker()} reachable")
    if system:
        _check_system(paths, report)
    # Files the service (user claude) reads or writes: owned by claude in system mode.
    owner = (uid, gid) if system else (None, None)
    _ensure_config(paths, options, report, owner, uid, gid, system)
    ensure_session_base(paths, report, uid, gid, system)
    _ensure_slice_limits(paths, report, system)
    _adopt_sessions(paths, report, owner, uid, gid)
    if system:
        hostsetup.restart_if_inputs_changed(paths, AGENT_UNIT, paths.agent_run_dir, paths.agent_start_inputs(),
                                            report)
    else:
        report.kept(f"relocated root {paths.root}: system users and units left untouched")
    return report


def _check_options(options: InstallOptions) -> None:
    """Refuse a bad shell host or port before anything is changed (raises BadRequest)."""
    if options.shell_host is not None:
        check_host(options.shell_host, "--shell-host")
    for value, option in ((options.listen_port, "--listen-port"), (options.shell_port, "--shell-port")):
        if value is not None:
            check_port(value, option)


def _check_system(paths: Paths, report: InstallReport) -> None:
    """System mode: the ``docker`` group exists, the ``claude`` account is there, the listen port is free."""
    try:
        grp.getgrnam("docker")
    except KeyError:
        raise ConfigError(messages.NO_DOCKER_GROUP) from None
    account.ensure_account(paths.session_base, NOLOGIN, set_shell=False, report=report)
    hostsetup.check_port_free(listen_port_of(paths), AGENT_UNIT, report)


def _ensure_config(paths: Paths, options: InstallOptions, report: InstallReport,
                   owner: tuple[int | None, int | None], uid: int, gid: int, system: bool) -> None:
    """The config and state directories, the agent ID, the host key, the shell host and the settings."""
    hostsetup.ensure_dir(paths.agent_etc, mode=0o750 if system else 0o755, uid=owner[0], gid=owner[1],
                         report=report, what="config directory")
    hostsetup.ensure_dir(paths.agent_state_dir, mode=0o750 if system else 0o755, uid=owner[0], gid=owner[1],
                         report=report, what="state directory")
    for old_path, new_path in ((paths.agent_etc / "settings.json", paths.agent_settings),
                               (paths.agent_etc / "current-image", paths.current_image_file)):
        hostsetup.move_state(old_path, new_path, report)
    _ensure_agent_id(paths, report, owner)
    _ensure_host_key(paths, report, owner)
    if system:
        _ensure_claude_owns(paths, report, uid, gid)
        ensure_session_env(paths, report)
    if options.shell_host is not None:
        host = check_host(options.shell_host, "--shell-host")
        hostsetup.write_if_changed(paths.shell_host_file, (host + "\n").encode() if host else b"", mode=0o644,
                                   uid=owner[0], gid=owner[1], report=report,
                                   what=f"shell host ({host or 'none'})")
    _ensure_defaults(paths, options, report)


def _ensure_slice_limits(paths: Paths, report: InstallReport, system: bool) -> None:
    """The sessions slice's drop-in with this host's limits; systemd reloaded when it changed (system mode)."""
    changed = ensure_slice_dropin(paths, report)
    if system:
        if changed:
            hostsetup.daemon_reload(paths, report)
        _check_packaged_files(paths, report)


def _adopt_sessions(paths: Paths, report: InstallReport, owner: tuple[int | None, int | None],
                    uid: int, gid: int) -> None:
    """The session records (migrated from older agents), and the count of sessions found, in ``report``."""
    ensure_session_records(paths, report, owner, uid, gid)
    sessions, broken = SessionStore(paths, uid, gid).load_all()
    report.adopted = len(sessions)
    report.kept(f"adopted {len(sessions)} existing session(s)"
                + (f"; {len(broken)} unreadable: " + ", ".join(b.uuid for b in broken) if broken else ""))


def _ensure_agent_id(paths: Paths, report: InstallReport, owner: tuple[int | None, int | None]) -> None:
    current = read_token(paths.agent_id_file)
    if current:
        if not valid_agent_id(current):
            raise ConfigError(f"{paths.agent_id_file} holds {current!r}, not an 8-character agent ID; "
                              "fix or remove it")
        if hostsetup.fix_owner_mode(paths.agent_id_file, mode=0o644, uid=owner[0], gid=owner[1]):
            report.changed(f"agent ID {current} kept ({paths.agent_id_file}); owner/mode fixed")
        else:
            report.kept(f"agent ID {current} kept ({paths.agent_id_file})")
    else:
        current = new_agent_id()
        atomic_write(paths.agent_id_file, (current + "\n").encode(), mode=0o644, uid=owner[0], gid=owner[1])
        report.changed(f"agent ID {current} generated ({paths.agent_id_file})")
    report.agent_id = current


def _ensure_host_key(paths: Paths, report: InstallReport, owner: tuple[int | None, int | None]) -> None:
    key, created = keys.ensure_private_key(paths.agent_host_key, comment=f"convocate-agent {report.agent_id}",
                                           uid=owner[0], gid=owner[1])
    line = f"host key {keys.fingerprint(key)} {'generated' if created else 'kept'} ({paths.agent_host_key})"
    if created:
        report.changed(line)
        return
    fixed = hostsetup.fix_owner_mode(paths.agent_host_key, mode=0o600, uid=owner[0], gid=owner[1])
    public = paths.agent_host_key.with_name(paths.agent_host_key.name + ".pub")
    if public.exists():
        fixed = hostsetup.fix_owner_mode(public, mode=0o644, uid=owner[0], gid=owner[1]) or fixed
    if fixed:
        report.changed(line + "; owner/mode fixed")
    else:
        report.kept(line)


def _ensure_claude_owns(paths: Paths, report: InstallReport, uid: int, gid: int) -> None:
    """What ``convocate-host init-agent`` or an earlier root install left, made usable by the service.

    The service (user claude) writes ``settings.json`` and reads its status key: both are given
    to claude. The files it only reads stay as they are if claude can read them already.
    """
    for path, mode in ((paths.agent_to_shell_key, 0o600), (paths.agent_settings, 0o644)):
        if path.exists() and hostsetup.fix_owner_mode(path, mode=mode, uid=uid, gid=gid):
            report.changed(f"{path}: given to the service user")
    for path in (paths.agent_authorized_keys, paths.shell_known_host, paths.shell_host_file,
                 paths.current_image_file):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_uid != uid and not st.st_mode & 0o004:
            hostsetup.fix_owner_mode(path, mode=None, uid=uid, gid=gid)
            report.changed(f"{path}: given to the service user, which could not read it")


def render_defaults(listen_port: int | None = None, shell_port: int | None = None) -> str:
    """``/etc/default/convocate-agent`` as the debconf answers make it (the postinst merges it with ucf).

    Args:
        listen_port: SSH port of the agent (debconf ``convocate-agent/listen-port``); None: 222.
        shell_port: Status port of the shell host (``convocate-agent/shell-port``); None: 223.

    Raises:
        BadRequest: a port is not 1-65535.
    """
    values = {"CONVOCATE_AGENT_LISTEN": f":{check_port(listen_port or AGENT_PORT, '--listen-port')}",
              "CONVOCATE_AGENT_SHELL_PORT": str(check_port(shell_port or STATUS_PORT, "--shell-port"))}
    return hostsetup.render_env_file("", values, DEFAULTS_HEADER)


def _ensure_defaults(paths: Paths, options: InstallOptions, report: InstallReport) -> None:
    asked: dict[str, str] = {}
    if options.listen_port is not None:
        asked["CONVOCATE_AGENT_LISTEN"] = f":{check_port(options.listen_port, '--listen-port')}"
    if options.shell_port is not None:
        asked["CONVOCATE_AGENT_SHELL_PORT"] = str(check_port(options.shell_port, "--shell-port"))
    hostsetup.ensure_service_defaults(
        paths.agent_defaults, relocated=paths.relocated, package="convocate-agent", asked=asked,
        first={"CONVOCATE_AGENT_LISTEN": f":{AGENT_PORT}", "CONVOCATE_AGENT_SHELL_PORT": str(STATUS_PORT)},
        header=DEFAULTS_HEADER, report=report)


def listen_port_of(paths: Paths) -> int:
    """The agent's SSH port as ``/etc/default/convocate-agent`` sets it (``CONVOCATE_AGENT_LISTEN=[HOST]:PORT``)."""
    return hostsetup.env_file_port(paths.agent_defaults, "CONVOCATE_AGENT_LISTEN", AGENT_PORT)


def _check_packaged_files(paths: Paths, report: InstallReport) -> None:
    """The units and the cron job come with the package (conffiles for /etc)."""
    for path in [paths.unit_file(u) for u in UNITS] + [paths.image_prune_cron]:
        if path.exists():
            report.kept(f"packaged {path} present")
        else:
            report.note(f"{path} is missing (removed by the administrator? reinstall convocate-agent to restore it)")
