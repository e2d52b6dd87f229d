"""The convocate .debs: finding them, preseeding debconf, installing or upgrading them on a target.

A package is installed with ``apt-get install ./file.deb`` (apt pulls its dependencies from the
host's mirror) only when the host has no such package or another version; its debconf answers
are preseeded with debconf-set-selections(1) first. When only an answer differs, the package is
reconfigured (``dpkg-reconfigure -fnoninteractive``), which makes its postinst rewrite the
configuration and restart the service (DESIGN §7). When nothing differs, nothing is done.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from convocate.common import messages
from convocate.common.errors import BadRequest, ConfigError
from convocate.common.paths import Paths
from convocate_host.report import LiveReport
from convocate_host.target import Target

#: Where .debs are copied on a target before apt installs them.
REMOTE_DEB_DIR = str(Paths().host_deb_cache)
APT_ENV = ["env", "DEBIAN_FRONTEND=noninteractive", "NEEDRESTART_MODE=a"]


@dataclass(frozen=True)
class Deb:
    """One binary package file.

    Attributes:
        path: The .deb on this machine.
        package: Its package name (control field ``Package``).
        version: Its version (control field ``Version``).
    """

    path: Path
    package: str
    version: str


def _control(path: Path, *fields: str) -> list[str]:
    try:
        out = subprocess.run(["dpkg-deb", "--show", "--showformat", "\t".join(f"${{{f}}}" for f in fields) + "\n",
                              str(path)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ConfigError(f"{path}: not a readable .deb ({getattr(e, 'stderr', '') or e})") from e
    return out.rstrip("\n").split("\t")


def newer(a: str, b: str) -> bool:
    """Whether Debian version ``a`` is greater than ``b`` (dpkg --compare-versions, Debian Policy §5.6.12)."""
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b], check=False).returncode == 0


def find_deb(directory: Path, package: str) -> Deb:
    """The newest ``<package>_*.deb`` in ``directory``.

    Raises:
        BadRequest: there is none (the message says how to build them).
    """
    best: Deb | None = None
    for path in sorted(directory.glob(f"{package}_*.deb")):
        name, version = _control(path, "Package", "Version")
        if name != package:
            continue
        if best is None or newer(version, best.version):
            best = Deb(path, name, version)
    if best is None:
        raise BadRequest(messages.HOST_NO_DEB.format(package=package, directory=directory))
    return best


async def installed_version(target: Target, package: str) -> str | None:
    """The version of ``package`` installed on ``target``, or None."""
    result = await target.run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", package], check=False,
                              reads=True)
    words = result.text.split()
    if result.ok and len(words) == 2 and words[0] == "installed":
        return words[1]
    return None


async def debconf_answers(target: Target, package: str) -> dict[str, str]:
    """The current debconf answers of ``package`` (debconf-show(1)): question → value."""
    result = await target.run(["debconf-show", package], check=False, reads=True)
    answers: dict[str, str] = {}
    for line in result.text.splitlines():
        question, sep, value = line.lstrip("* ").partition(":")
        if sep:
            answers[question.strip()] = value.strip()
    return answers


async def ensure_package(target: Target, deb: Deb, report: LiveReport,
                         answers: dict[str, tuple[str, str]] | None = None) -> bool:
    """Make ``target`` run ``deb``'s version with ``answers``; returns True when anything changed.

    Args:
        target: The host.
        deb: The package file.
        report: Where steps go.
        answers: debconf question → ``(type, value)``, e.g.
            ``{"convocate-agent/shell-host": ("string", "shell.example.org")}``.

    Raises:
        HostError: apt, dpkg or debconf failed on the host; the message has their output.
    """
    answers = answers or {}
    current = await debconf_answers(target, deb.package)
    wanted = {q: v for q, (_, v) in answers.items() if current.get(q) != v}
    if wanted:
        selections = "".join(f"{deb.package} {q} {answers[q][0]} {v}\n" for q, v in wanted.items())
        await target.run(["debconf-set-selections"], input=selections.encode(), what="preseeding debconf")
        report.changed(f"debconf: {', '.join(f'{q}={v}' for q, v in wanted.items())}")
    version = await installed_version(target, deb.package)
    if version != deb.version:
        await target.ensure_dir(REMOTE_DEB_DIR, mode=0o755)
        remote = f"{REMOTE_DEB_DIR}/{deb.path.name}"
        await target.write_file(remote, deb.path.read_bytes(), mode=0o644)
        await target.run([*APT_ENV, "apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold",
                          remote], what=f"installing {deb.package} {deb.version}")
        report.changed(f"{deb.package} {deb.version} " + (f"installed (was {version})" if version else "installed"))
        return True
    if wanted:
        await target.run([*APT_ENV, "dpkg-reconfigure", "-fnoninteractive", deb.package],
                         what=f"reconfiguring {deb.package}")
        report.changed(f"{deb.package} reconfigured with the new answers")
        return True
    report.kept(f"{deb.package} {deb.version} installed, answers as wanted")
    return False
