"""``convocate-host init-shell``: make a prepared host the cluster's shell host (DESIGN §5, §6).

1. the ``convocate`` package at the version given (debconf: build the image or not, base image,
   DNS domain, status port), installed or reconfigured only when something differs; its postinst
   runs ``convocate install`` (account, ``/etc/convocate``, status host key, dnsmasq drop-in,
   session image).
2. the status host key is there (``convocate install`` made it).
3. log collection: the cluster's rsyslog CA, the shell's TLS server certificate, the drop-in the
   agents' TLS listeners share (each agent's own listener, on a port of tcp/6514-6769 writing
   ``/var/log/convocate-agent/<agent-id>.log``, comes with its init-agent), their rotation
   (:mod:`convocate_host.logforward`).
4. ufw allows 223/tcp and the log port range 6514:6769/tcp when ufw is on the host.
5. ``convocate-status.service`` enabled and running.
6. the operator CA (``/etc/convocate/operator-ca``, root 0600, and ``.pub``), minted once
   (:mod:`convocate_host.operator_ca`, issue 19).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from convocate.common import messages
from convocate.common.constants import STATUS_PORT
from convocate.common.paths import Paths
from convocate_host import logforward, operator_ca, rsyslog
from convocate_host.debs import ensure_package, find_deb
from convocate_host.peering import read_status_host_key
from convocate_host.prepare import ensure_firewall
from convocate_host.report import LiveReport
from convocate_host.target import Target

PATHS = Paths()
STATUS_UNIT = "convocate-status.service"


@dataclass(frozen=True)
class ShellOptions:
    """What ``init-shell`` sets.

    Attributes:
        debs: Directory with the .debs.
        build_image: debconf ``convocate/build-image``.
        base_image: debconf ``convocate/base-image`` (``""``: debootstrap).
        domain: debconf ``convocate/domain``.
        status_port: debconf ``convocate/status-port``.
        names: Extra DNS names or addresses agents may reach the shell host by (its TLS certificate names
            them all, besides its address and host name).
        log_port: The first of the agents' TLS log ports (:func:`convocate_host.rsyslog.port_range`).
    """

    debs: Path
    build_image: bool = True
    base_image: str = ""
    domain: str = "convocate.internal"
    status_port: int = STATUS_PORT
    names: tuple[str, ...] = field(default_factory=tuple)
    log_port: int = logforward.LOG_PORT


async def init_shell(shell: Target, options: ShellOptions, report: LiveReport) -> None:
    """Set up ``shell`` as the shell host.

    Raises:
        BadRequest: no convocate .deb in ``options.debs``.
        HostError: a command on the host failed.
    """
    deb = find_deb(options.debs, "convocate")
    installed = await ensure_package(shell, deb, report, {
        "convocate/build-image": ("boolean", "true" if options.build_image else "false"),
        "convocate/base-image": ("string", options.base_image),
        "convocate/domain": ("string", options.domain),
        "convocate/status-port": ("string", str(options.status_port)),
    })
    if installed and shell.dry_run:  # the status host key and the rest are made by that install
        report.note(messages.DRY_RUN_STOPS_AT_PACKAGE.format(package=deb.package))
        return
    await read_status_host_key(shell)
    report.kept(f"status host key {PATHS.status_host_key} present")
    names = await shell_names(shell, options.names)
    await logforward.ensure_shell(shell, names, options.log_port, report)
    if await shell.exists("/usr/sbin/ufw"):
        await ensure_firewall(shell, [f"{options.status_port}/tcp",
                                      rsyslog.firewall_rule(options.log_port)], report)
    else:
        report.note("ufw is not installed: open the status and log ports yourself")
    await ensure_service(shell, STATUS_UNIT, report)
    await operator_ca.ensure_shell_ca(shell, report)


async def shell_names(shell: Target, extra: tuple[str, ...]) -> list[str]:
    """Every name agents may reach the shell host by: its address, host name, FQDN and ``extra``."""
    names = [shell.address, *extra]
    for command in (["hostname"], ["hostname", "--fqdn"]):
        result = await shell.run(command, check=False, reads=True)
        if result.ok and result.text.strip():
            names.append(result.text.strip())
    return list(dict.fromkeys(n for n in names if n and n != "localhost"))


async def ensure_service(target: Target, unit: str, report: LiveReport) -> None:
    """``unit`` enabled and active (debhelper does it on install; this finds or fixes it)."""
    enabled = (await target.run(["systemctl", "is-enabled", unit], check=False, reads=True)).text.strip()
    active = (await target.run(["systemctl", "is-active", unit], check=False, reads=True)).text.strip()
    if enabled == "enabled" and active == "active":
        report.kept(f"{unit} enabled and active")
        return
    await target.run(["systemctl", "enable", "--now", unit], what=f"starting {unit}")
    report.changed(f"{unit} enabled and started (was {enabled or '?'}/{active or '?'})")
