"""``convocate-host install``: prepare a vanilla Debian 12 or Ubuntu host for a convocate role (DESIGN §6).

In order, each step idempotent:

1. ``apt-get update`` and ``apt-get dist-upgrade`` (noninteractive, existing configuration
   files kept); the upgrade is reported as a change only when it upgraded something.
2. the base packages that are missing: Docker (``docker.io``, unless ``docker-ce`` is there),
   dnsmasq, jq, curl, git, ufw, ca-certificates, openssh-server, tzdata, sudo.
3. group and user ``claude`` with GID/UID 1337, home ``/home/claude`` (session containers run as
   1337 on every host, DESIGN §4); an account with other IDs is an error, never "fixed".
4. the time zone UTC (timedatectl(1) when systemd runs, else ``/etc/localtime``).
5. ufw: allow 22/tcp first, then the role's ports (agent 222/tcp; shell 223/tcp and the agents' TLS
   log ports 6514:6769/tcp),
   then enable it, so the operator's SSH session is never cut off.
6. a reboot when the upgrade installed a kernel newer than the running one (or the host says
   ``/run/reboot-required``): remote hosts are rebooted and waited for (polled every 30 s, up to
   10 minutes); the local host is never rebooted, the operator is told to do it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from convocate.common import messages
from convocate.common.account import GETENT_QUERIES, AccountEntry, AccountLookups, account_steps
from convocate.common.constants import AGENT_PORT, NOLOGIN, STATUS_PORT
from convocate.common.errors import Unreachable
from convocate.common.paths import CLAUDE_USER
from convocate_host.debs import APT_ENV
from convocate_host.report import LiveReport
from convocate_host.rsyslog import firewall_rule
from convocate_host.target import Target

ROLE_PORTS = {"agent": (f"{AGENT_PORT}/tcp",), "shell": (f"{STATUS_PORT}/tcp", firewall_rule())}
#: Packages every convocate host gets; alternatives are ``a|b`` (the first is installed).
BASE_PACKAGES = ("docker.io|docker-ce", "dnsmasq", "jq", "curl", "git", "ufw", "ca-certificates", "openssh-server",
                 "tzdata", "sudo")
REBOOT_POLL_S = 30.0
REBOOT_TIMEOUT_S = 600.0
_UPGRADED = re.compile(r"^(\d+) upgraded, (\d+) newly installed", re.M)


@dataclass(frozen=True)
class PrepareOptions:
    """What ``install`` does.

    Attributes:
        roles: ``agent``, ``shell`` or both: which ports the firewall opens.
        upgrade: Run the dist-upgrade.
        firewall: Configure and enable ufw.
        reboot: Reboot a remote host when a new kernel needs it.
    """

    roles: tuple[str, ...] = ("agent",)
    upgrade: bool = True
    firewall: bool = True
    reboot: bool = True


def kernel_needs_reboot(running: str, installed: list[str], reboot_required_flag: bool) -> bool:
    """Whether the host runs an older kernel than the newest installed one.

    Args:
        running: ``uname -r`` (``6.1.0-18-amd64``).
        installed: Release names of the kernels in ``/boot`` (``vmlinuz-<release>``).
        reboot_required_flag: ``/run/reboot-required`` exists (Ubuntu's update-notifier sets it).

    Returns:
        True when a reboot is due; a host without kernels in /boot (a container) never needs one.
    """
    if reboot_required_flag:
        return True
    if not installed:
        return False
    return running not in installed or max(installed, key=_kernel_key) != running


def _kernel_key(release: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-+~]", release))


async def prepare(target: Target, options: PrepareOptions, report: LiveReport, *,
                  reconnect: Callable[[], Awaitable[Target]] | None = None) -> Target:
    """Prepare ``target``; returns the target to go on with (a new connection after a reboot).

    Raises:
        HostError: a command failed.
        Unreachable: a rebooted host did not come back in time.
        ConfigError: the ``claude`` account clashes with an existing one.
    """
    if options.upgrade:
        await target.run([*APT_ENV, "apt-get", "update", "-q"], what="apt-get update")
        # A dry run asks apt what it would do (apt-get(8) --simulate), without even its binary caches
        # (apt.conf(5): an empty Dir::Cache::pkgcache / srcpkgcache is not written).
        simulate = (["--simulate", "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache="]
                    if target.dry_run else [])
        result = await target.run([*APT_ENV, "apt-get", *simulate, "dist-upgrade", "-y", "-q",
                                   "-o", "Dpkg::Options::=--force-confold"], what="apt-get dist-upgrade",
                                  reads=bool(simulate))
        counts = _UPGRADED.search(result.text)
        touched = counts is not None and (int(counts.group(1)) or int(counts.group(2)))
        report.step(bool(touched), "packages upgraded (" + (counts.group(0) if counts else "apt said nothing") + ")")
    else:
        report.note("dist-upgrade skipped (--no-upgrade)")
    await ensure_packages(target, BASE_PACKAGES, report)
    await ensure_claude(target, report)
    await ensure_utc(target, report)
    if options.firewall:
        await ensure_firewall(target, [p for role in options.roles for p in ROLE_PORTS[role]], report)
    else:
        report.note("firewall left alone (--no-firewall)")
    if await needs_reboot(target):
        if target.local:
            report.note(messages.HOST_LOCAL_REBOOT)
        elif not options.reboot or reconnect is None:
            report.note("a newer kernel is installed: reboot the host to run it (--no-reboot was given)")
        else:
            target = await reboot_and_wait(target, reconnect, report)
    return target


async def ensure_packages(target: Target, packages: tuple[str, ...], report: LiveReport) -> None:
    """Install what is missing of ``packages`` (``a|b`` is satisfied by either, installs ``a``)."""
    names = sorted({name for spec in packages for name in spec.split("|")})
    result = await target.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *names], check=False,
                              reads=True)
    present = {line.split()[0] for line in result.text.splitlines() if line.endswith(" installed")}
    missing = [spec.split("|")[0] for spec in packages if not present & set(spec.split("|"))]
    if not missing:
        report.kept(f"base packages present ({', '.join(p.split('|')[0] for p in packages)})")
        return
    await target.run([*APT_ENV, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                      "-o", "Dpkg::Options::=--force-confold", *missing], what="installing the base packages")
    report.changed(f"installed {', '.join(missing)}")


async def ensure_claude(target: Target, report: LiveReport) -> None:
    """Group and user ``claude`` with GID/UID 1337 (:func:`convocate.common.account.account_steps`).

    The target's databases are read with getent(1), the same decision as a package's postinst.

    Raises:
        ConfigError: an account clash (``claude`` with other IDs, or another account with 1337).
        HostError: getent or a command failed on the target.
    """
    found = [AccountEntry.from_getent((await target.run(["getent", *query], check=False, reads=True)).text)
             for query in GETENT_QUERIES]
    for step in account_steps(AccountLookups(*found), f"/home/{CLAUDE_USER}", NOLOGIN, set_shell=False,
                              create_home=True):
        if step.command is None:
            report.kept(step.line)
        else:
            await target.run(step.command, what=step.what)
            report.changed(step.line)


async def ensure_utc(target: Target, report: LiveReport) -> None:
    """The host's time zone is UTC (session timestamps are UTC everywhere)."""
    link = (await target.run(["readlink", "-f", "/etc/localtime"], check=False, reads=True)).text.strip()
    if link.endswith(("/UTC", "/Etc/UTC", "/Universal", "/Zulu")):
        report.kept("time zone UTC")
        return
    if await target.exists("/run/systemd/system"):
        await target.run(["timedatectl", "set-timezone", "UTC"], what="setting the time zone")
    else:
        await target.sh("ln -sfn /usr/share/zoneinfo/Etc/UTC /etc/localtime && echo Etc/UTC > /etc/timezone",
                        what="setting the time zone")
    report.changed(f"time zone set to UTC (was {link or 'unset'})")


async def ensure_firewall(target: Target, ports: list[str], report: LiveReport) -> None:
    """ufw allows SSH first, then ``ports``, and is enabled."""
    # In a dry run ufw may be one of the packages not installed yet: then every rule would be new.
    status = (await target.run(["ufw", "status"], what="reading the firewall", reads=True,
                               check=not target.dry_run)).text
    rules = {line.split()[0] for line in status.splitlines()[1:] if "ALLOW" in line}
    for port in ["22/tcp", *ports]:
        if port in rules:
            report.kept(f"firewall allows {port}")
        else:
            await target.run(["ufw", "allow", port], what=f"allowing {port}")
            report.changed(f"firewall allows {port}")
    if status.startswith("Status: active"):
        report.kept("firewall active")
    else:
        await target.run(["ufw", "--force", "enable"], what="enabling the firewall")
        report.changed("firewall enabled (22/tcp allowed first)")


async def needs_reboot(target: Target) -> bool:
    """Whether ``target`` should reboot into a newer kernel (see :func:`kernel_needs_reboot`)."""
    running = (await target.run(["uname", "-r"], reads=True)).text.strip()
    listing = (await target.sh("ls /boot 2>/dev/null || true", reads=True)).text.split()
    installed = [name.removeprefix("vmlinuz-") for name in listing if name.startswith("vmlinuz-")]
    return kernel_needs_reboot(running, installed, await target.exists("/run/reboot-required"))


async def reboot_and_wait(target: Target, reconnect: Callable[[], Awaitable[Target]], report: LiveReport, *,
                          poll_s: float = REBOOT_POLL_S, timeout_s: float = REBOOT_TIMEOUT_S) -> Target:
    """Reboot a remote host and wait until it answers again (every ``poll_s`` s, up to ``timeout_s`` s).

    Raises:
        Unreachable: it did not come back in time.
    """
    boot_id = (await target.run(["cat", "/proc/sys/kernel/random/boot_id"], reads=True)).text.strip()
    report.changed("rebooting into the new kernel")
    await target.run(["systemd-run", "--on-active=2", "systemctl", "reboot"], what="scheduling the reboot")
    if target.dry_run:  # nothing was scheduled: there is no reboot to wait for
        return target
    await target.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(poll_s)
        try:
            fresh = await reconnect()
        except Unreachable:
            continue
        if (await fresh.run(["cat", "/proc/sys/kernel/random/boot_id"], reads=True)).text.strip() != boot_id:
            report.kept("the host is back after the reboot")
            return fresh
        await fresh.close()
    raise Unreachable(messages.HOST_REBOOT_TIMEOUT.format(host=target.description, seconds=timeout_s))
