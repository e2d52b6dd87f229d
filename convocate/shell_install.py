"""``convocate install``: idempotent setup of a shell host (DESIGN §5, §7).

The convocate package's postinst runs it on every configure (first install, upgrade,
``dpkg-reconfigure``), passing the debconf answers as options; an operator may run it by hand,
e.g. to build the session image later. It creates what the shell host needs, keeps what exists
(the status host key is never replaced), rewrites only what differs, and reports each step as
changed or kept, so a second run changes nothing.

System mode (``/``), as root:

- group and user ``claude``, GID/UID 1337, home ``/home/claude``, with the TUI
  (``/usr/bin/convocate``) as login shell, also for an existing user; the TUI is listed in
  ``/etc/shells`` (add-shell(8)), or sshd and su refuse it.
- ``/etc/convocate/`` and ``agents/`` owned by ``claude``: the TUI and the status listener both
  run as ``claude`` and read the agents' keys there. The status host key (0600) is generated
  once; an empty ``status_authorized_keys`` is created for ``convocate-host init-agent`` to fill.
- the cluster's DNS domain (``/etc/convocate/domain``) and ``/etc/default/convocate`` (status
  listen address), when given as options.
- ``/var/lib/convocate/dnsmasq-hosts``, the hosts file status-serve keeps, owned by ``claude``;
  dnsmasq reads it through the packaged drop-in ``/etc/dnsmasq.d/convocate`` and is restarted
  when it runs since before that drop-in changed (a reload does not re-read configuration).
- checks that the packaged units are in place.
- the session image ``convocate:<version>`` from the build context the package ships
  (``/usr/share/convocate/image``), unless told not to. A host without Docker is told how to
  build it later; that is not an error, since a shell host may get Docker afterwards.

Relocated (``CONVOCATE_ROOT``, tests and the demo): the same files under the root with the
invoking user's ownership; no account, no ``/etc/shells``, no systemctl, no dnsmasq.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from convocate import image_build, image_status
from convocate.common import account, hostsetup, keys, messages
from convocate.common.constants import STATUS_PORT
from convocate.common.errors import BadRequest, ConfigError
from convocate.common.hostsetup import StepReport
from convocate.common.model import PORT_MAX, normalize_dns_name
from convocate.common.paths import CLAUDE_GID, CLAUDE_UID, Paths
from convocate.common.version import __version__

#: The packaged units ``install`` expects in system mode (DESIGN §7).
STATUS_UNIT = "convocate-status.service"
UNITS = (STATUS_UNIT, "convocate-dnsmasq-reload.path", "convocate-dnsmasq-reload.service",
         "convocate-image-build.service")
DNSMASQ_UNIT = "dnsmasq.service"
DEFAULTS_HEADER = """\
# Settings of convocate-status.service (systemd.exec(5) EnvironmentFile=).
#
# `convocate install` writes the CONVOCATE_STATUS_* lines from the debconf answers: change them
# with `dpkg-reconfigure convocate`, which rewrites them and restarts the service. Other lines
# you add here are kept, e.g. CONVOCATE_LOG_LEVEL=debug.
# The cluster's DNS domain is in /etc/convocate/domain.
"""


def default_image_tag() -> str:
    """The session image this version builds: ``convocate:<version>`` (DESIGN §4)."""
    return f"convocate:{__version__}"


@dataclass(frozen=True)
class ShellInstallOptions:
    """What ``install`` is told; None leaves the current setting as it is.

    Attributes:
        build_image: Build the session image. The package's postinst never does (it starts
            ``convocate-image-build.service`` without waiting instead, which runs this with
            ``--image``).
        require_image: A missing or unreachable Docker is an error, not a note (``--image`` given
            explicitly, as the build unit does).
        background_image: Start ``convocate-image-build.service`` without waiting instead of
            building here (what the postinst asks for when debconf ``convocate/build-image`` is true).
        base_image: Local image to build it FROM (offline clusters); None or ``""``: build
            ``convocate-base:bookworm`` with debootstrap (debconf ``convocate/base-image``).
        claude_code: Claude Code version from npm, or ``none`` for the tests' stand-in; None:
            the one pin, ``claude-code.version`` in the build context, which build-image.sh reads.
        image_tag: Tag to build; None: ``convocate:<version>``.
        image_context: Build context; None: the one the package ships.
        domain: The cluster's DNS domain (debconf ``convocate/domain``).
        status_port: Port of the status listener (debconf ``convocate/status-port``).
    """

    build_image: bool = True
    require_image: bool = False
    background_image: bool = False
    base_image: str | None = None
    claude_code: str | None = None
    image_tag: str | None = None
    image_context: Path | None = None
    domain: str | None = None
    status_port: int | None = None


def check_status_port(value: int | str) -> int:
    """A TCP port 1-65535 for ``--status-port``.

    Raises:
        BadRequest: anything else.
    """
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= PORT_MAX:
        raise BadRequest(messages.BAD_INSTALL_PORT.format(option="--status-port", value=value))
    return int(text)


def install(paths: Paths, options: ShellInstallOptions | None = None) -> StepReport:
    """Set up the shell host described by ``paths``.

    Args:
        paths: Installation layout (``CONVOCATE_ROOT`` relocates it).
        options: Settings and the image build; None: defaults (build the image).

    Returns:
        The report of what was done.

    Raises:
        ConfigError: the account ``claude`` clashes with an existing one, a system command
            failed, an existing status host key is invalid, the image context is missing, or
            the image build failed.
        BadRequest: an option is invalid.
    """
    options = options or ShellInstallOptions()
    domain = normalize_dns_name(options.domain) if options.domain is not None else None
    status_port = check_status_port(options.status_port) if options.status_port is not None else None
    system = not paths.relocated
    owner = (CLAUDE_UID, CLAUDE_GID) if system else (None, None)
    report = StepReport()

    if system:
        account.ensure_account(paths.session_base, str(paths.shell_program), set_shell=True, report=report)
        hostsetup.check_port_free(_status_port_of(paths), STATUS_UNIT, report)
        hostsetup.ensure_dir(paths.session_base, mode=0o755, uid=owner[0], gid=owner[1], report=report, what="home")
        _ensure_login_shell(paths, report)
    _ensure_config(paths, owner, domain, status_port, report)
    _ensure_state(paths, owner, report)
    if system:
        _ensure_dnsmasq(paths, report)
        for unit in UNITS:
            path = paths.unit_file(unit)
            if path.exists():
                report.kept(f"packaged {path} present")
            else:
                report.note(f"{path} is missing: reinstall the convocate package to restore it")
    else:
        report.kept(f"relocated root {paths.root}: system users, /etc/shells, units and dnsmasq left untouched")

    if system:
        hostsetup.restart_if_inputs_changed(paths, STATUS_UNIT, paths.run_dir, paths.shell_start_inputs(), report)
    if options.background_image:
        start_image_build(paths, report)
    elif options.build_image:
        build_session_image(paths, options, report)
    else:
        report.kept("session image: not built (as asked); `convocate install --image` builds it later")
    return report


def _ensure_config(paths: Paths, owner: tuple[int | None, int | None], domain: str | None,
                   status_port: int | None, report: StepReport) -> None:
    """``/etc/convocate``: its directory, the agent registry, the status host key, the agents' status keys,
    the DNS domain (when given) and ``/etc/default/convocate``; ``owner`` is (UID, GID), or Nones when relocated.
    """
    uid, gid = owner
    system = not paths.relocated
    hostsetup.ensure_dir(paths.shell_etc, mode=0o750 if system else 0o755, uid=uid, gid=gid, report=report,
                         what="config directory")
    hostsetup.ensure_dir(paths.agents_dir, mode=0o750 if system else 0o755, uid=uid, gid=gid, report=report,
                         what="agent registry")
    key, created = keys.ensure_private_key(paths.status_host_key, comment="convocate status", uid=uid, gid=gid)
    line = f"status host key {keys.fingerprint(key)} {'generated' if created else 'kept'} ({paths.status_host_key})"
    if created:
        report.changed(line)
    elif hostsetup.fix_owner_mode(paths.status_host_key, mode=0o600, uid=uid, gid=gid):
        report.changed(line + "; owner/mode fixed")
    else:
        report.kept(line)
    if not paths.status_authorized_keys.exists():
        hostsetup.write_if_changed(paths.status_authorized_keys, b"", mode=0o644, uid=uid, gid=gid, report=report,
                                   what="agents' status keys (empty until convocate-host init-agent)")
    if domain is not None:
        hostsetup.write_if_changed(paths.shell_domain_file, f"{domain}\n".encode() if domain else b"", mode=0o644,
                                   uid=uid, gid=gid, report=report, what=f"DNS domain ({domain or 'default'})")
    _ensure_defaults(paths, status_port, report)


def _ensure_state(paths: Paths, owner: tuple[int | None, int | None], report: StepReport) -> None:
    """``/var/lib/convocate`` and the DNS hosts file status-serve keeps there, owned by ``owner`` (UID, GID)."""
    uid, gid = owner
    hostsetup.ensure_dir(paths.shell_state_dir, mode=0o755, uid=uid, gid=gid, report=report, what="state directory")
    if not paths.dnsmasq_hosts.exists():
        hostsetup.write_if_changed(paths.dnsmasq_hosts, b"", mode=0o644, uid=uid, gid=gid, report=report,
                                   what="DNS hosts file")
    elif hostsetup.fix_owner_mode(paths.dnsmasq_hosts, mode=None, uid=uid, gid=gid):
        report.changed(f"DNS hosts file {paths.dnsmasq_hosts}: owner fixed for status-serve")
    else:
        report.kept(f"DNS hosts file {paths.dnsmasq_hosts} kept")


def _ensure_login_shell(paths: Paths, report: StepReport) -> None:
    """The TUI in ``/etc/shells`` (shells(5)); add-shell(8) only when missing, so a rerun changes nothing."""
    shell = str(paths.shell_program)
    try:
        listed = shell in (line.strip() for line in paths.login_shells.read_text(encoding="utf-8").splitlines())
    except FileNotFoundError:
        listed = False
    if listed:
        report.kept(f"login shell {shell} listed in {paths.login_shells}")
        return
    hostsetup.run_command(["add-shell", shell], f"adding {shell} to {paths.login_shells}")
    report.changed(f"login shell {shell} added to {paths.login_shells}")


def render_defaults(status_port: int | str | None = None, base_image: str | None = None) -> str:
    """``/etc/default/convocate`` as the debconf answers make it (the postinst merges it with ucf).

    Args:
        status_port: Port of the status listener (debconf ``convocate/status-port``); None: 223.
        base_image: Local base image of the session image (debconf ``convocate/base-image``); None or
            ``""``: debootstrap (the line is left out, as older versions wrote the file).

    Raises:
        BadRequest: the port is not 1-65535.
    """
    values = {"CONVOCATE_STATUS_LISTEN": f":{check_status_port(status_port or STATUS_PORT)}"}
    if base_image:
        values["CONVOCATE_BASE_IMAGE"] = base_image
    return hostsetup.render_env_file("", values, DEFAULTS_HEADER)


def _ensure_defaults(paths: Paths, status_port: int | None, report: StepReport) -> None:
    hostsetup.ensure_service_defaults(
        paths.shell_defaults, relocated=paths.relocated, package="convocate",
        asked={} if status_port is None else {"CONVOCATE_STATUS_LISTEN": f":{status_port}"},
        first={"CONVOCATE_STATUS_LISTEN": f":{STATUS_PORT}"}, header=DEFAULTS_HEADER, report=report)


def _status_port_of(paths: Paths) -> int:
    """The listener's port as ``/etc/default/convocate`` sets it (``CONVOCATE_STATUS_LISTEN=[HOST]:PORT``)."""
    return hostsetup.env_file_port(paths.shell_defaults, "CONVOCATE_STATUS_LISTEN", STATUS_PORT)


def start_image_build(paths: Paths, report: StepReport) -> None:
    """Start ``convocate-image-build.service`` without waiting for it (``systemctl --no-block``).

    The postinst asks for this instead of building the image itself: the build takes minutes and the
    network. deb-systemd-invoke cannot start a static unit without waiting, so systemctl is called
    here, after asking policy-rc.d(8) as invoke-rc.d would (101: the administrator forbids starts).

    Raises:
        ConfigError: systemctl failed.
    """
    unit = image_status.BUILD_UNIT
    tag = default_image_tag()
    build = image_status.load(paths.image_build_status)
    if build is not None and build.tag == tag and (build.state != image_status.BUILDING or image_status.alive(build)):
        # Built, or being built: nothing to do. Failed: not again at every configure (that would fetch
        # from the network each time); the operator is told how to retry.
        problem = image_status.problem(paths, tag)
        if problem is None:
            report.kept(f"session image {tag} built")
        else:
            report.note(problem)
        return
    if not hostsetup.systemd_running(paths):
        report.note(messages.IMAGE_NOT_YET.format(tag=default_image_tag(), reason="systemd is not running here",
                                                  retry="build it with `sudo convocate install --image`"))
        return
    policy = paths.root / "usr" / "sbin" / "policy-rc.d"
    if os.access(policy, os.X_OK):
        verdict = subprocess.run([str(policy), unit, "start"], check=False, env=hostsetup.child_env(),
                                 stdin=subprocess.DEVNULL, capture_output=True).returncode
        if verdict == 101:
            report.note(messages.IMAGE_NOT_YET.format(tag=default_image_tag(), reason=f"{policy} forbids starting "
                                                      f"{unit}", retry="build it with `sudo convocate install --image`"))
            return
    hostsetup.run_command(["systemctl", "daemon-reload"], "reloading systemd's units")
    hostsetup.run_command(["systemctl", "--no-block", "start", unit], f"starting {unit}")
    report.note(messages.IMAGE_BUILD_STARTED.format(unit=unit))


def _ensure_dnsmasq(paths: Paths, report: StepReport) -> None:
    """dnsmasq reads the hosts file through the packaged drop-in; restart it once if it predates the drop-in."""
    dropin = paths.dnsmasq_dropin
    if not dropin.exists():
        report.note(f"{dropin} is missing: dnsmasq will not serve session names (reinstall convocate to restore it)")
        return
    since = hostsetup.unit_active_since(DNSMASQ_UNIT)
    if since is None:
        report.kept(f"dnsmasq is not running; it reads {paths.dnsmasq_hosts} through {dropin} when it starts")
        return
    # ctime, not mtime: dpkg gives a file the mtime it had at build time, but the ctime of its
    # installation. ActiveEnterTimestamp has whole seconds.
    if since >= int(dropin.stat().st_ctime):
        report.kept(f"dnsmasq reads {paths.dnsmasq_hosts} through {dropin}")
        return
    hostsetup.run_command(["systemctl", "try-restart", DNSMASQ_UNIT], "restarting dnsmasq")
    report.changed(f"dnsmasq restarted to read {dropin}")


def build_session_image(paths: Paths, options: ShellInstallOptions, report: StepReport) -> None:
    """Build the session image with the shipped ``build-image.sh`` (it skips an up-to-date tag).

    Args:
        paths: Installation layout (image context, base image cache).
        options: Tag, base image, Claude Code version, context.
        report: Where the step is recorded.

    Raises:
        ConfigError: the build context is missing, or the build failed.
    """
    context = options.image_context or paths.image_context
    script = context / "build-image.sh"
    tag = options.image_tag or default_image_tag()
    command = [str(script), "--tag", tag, "--convocate-version", __version__, "--cache-dir", str(paths.image_cache_dir)]
    if options.base_image:
        command += ["--base-image", options.base_image]
    if options.claude_code:
        command += ["--claude-code", options.claude_code]
    if not script.is_file():
        raise ConfigError(messages.IMAGE_CONTEXT_MISSING.format(path=context))
    docker = image_build.docker_command()
    reason = "Docker is not installed" if docker is None else image_build.docker_unreachable(docker)
    if reason:
        text = messages.IMAGE_NOT_BUILT.format(tag=tag, reason=reason, command=" ".join(command))
        if paths.shell_state_dir.is_dir():
            image_status.finish(paths, image_status.ImageBuild(image_status.BUILDING, tag), error=reason)
        if options.require_image:
            raise ConfigError(text)
        report.note(text)
        return
    before = image_build.image_id(docker, tag)
    paths.image_cache_dir.mkdir(parents=True, exist_ok=True)
    build = image_status.start(paths, tag) if paths.shell_state_dir.is_dir() else None
    # Not debconf's environment, not its file descriptors, no standard input: nothing the build starts
    # (debootstrap's chroot, apt in docker build) can wait on a frontend it cannot reach.
    try:
        status = image_build.run_build(command)
    except BaseException as e:  # Ctrl-C, SIGTERM from systemctl stop: the record says it was cut short
        if build is not None:
            image_status.finish(paths, build, error=f"interrupted ({type(e).__name__})")
        raise
    if status != 0:
        if build is not None:
            image_status.finish(paths, build, error=f"build-image.sh exited with status {status}")
        raise ConfigError(messages.IMAGE_BUILD_FAILED.format(tag=tag, status=status))
    if build is not None:
        image_status.finish(paths, build)
    after = image_build.image_id(docker, tag)
    if after is not None and after == before:
        report.kept(f"session image {tag} up to date")
    else:
        report.changed(f"session image {tag} built ({(after or '?').removeprefix('sha256:')[:12]})")
