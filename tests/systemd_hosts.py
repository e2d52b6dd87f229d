"""Debian 12 hosts for system tests: containers running systemd as PID 1, and the .debs to put on them.

Made as MACHINE-NOTES says (no ``--privileged``: ``--cap-add ALL --cap-drop SYS_RESOURCE``,
seccomp and AppArmor unconfined, a private cgroup namespace, tmpfs on /run). Docker itself is a
stand-in package (``docker-ce``) in the image: the tests mount the host's Docker socket, and the
group ``docker`` gets that socket's GID; with ``docker_cli`` the stand-in also carries this
machine's ``docker`` client, for hosts that run docker commands (the shell host saves images).

Every image, container and network made here carries the label given by the test and is removed
at teardown by the fixture that made it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from convocate.common.version import __version__

REPO = Path(__file__).resolve().parent.parent
DOCKER = "/usr/bin/docker"
BASE_IMAGE = "convocate-base:bookworm"
PACKAGES = ("convocate", "convocate-agent", "convocate-host")
#: What the system tests' hosts have besides systemd and the packages' dependencies: an SSH server and sudo
#: for convocate-host, and most of what `convocate-host install` wants (it still installs jq itself).
HOST_PACKAGES = ("openssh-server", "sudo", "ufw", "iptables", "iproute2", "curl", "git", "ca-certificates", "tzdata")
#: The label of the shared host image.
HOST_IMAGE_LABEL = "convocate.test=systemd-hosts"
#: The version the upgrade tests build the same tree as.
UPGRADE_VERSION = f"{__version__}+1"

SYSTEMD_DOCKERFILE = """\
# Debian 12 with systemd as PID 1 (MACHINE-NOTES), with what the convocate packages depend on,
# so that installing them needs no download. docker-ce is a stand-in: the test mounts the host's
# Docker socket, and the group docker gets that socket's GID.
FROM {base}
ARG DOCKER_GID
ENV container=docker
COPY stand-in/ /tmp/docker-ce/
RUN set -eu; export DEBIAN_FRONTEND=noninteractive; \\
    groupadd --system --gid "$DOCKER_GID" docker; \\
    apt-get update -q; \\
    apt-get install -y -q --no-install-recommends systemd systemd-sysv dbus python3 rsyslog-gnutls \\
        openssh-client dnsmasq cron logrotate procps adduser ucf {packages} >/dev/null; \\
    mkdir -p /tmp/docker-ce/DEBIAN; \\
    printf '%s\\n' 'Package: docker-ce' 'Version: 5:0.0-convocate-test' 'Architecture: all' \\
        'Maintainer: convocate tests <tests@localhost>' \\
        'Description: stand-in for Docker: the test mounts the host dockerd socket' \\
        > /tmp/docker-ce/DEBIAN/control; \\
    dpkg-deb -b /tmp/docker-ce /tmp/docker-ce.deb >/dev/null; \\
    dpkg -i /tmp/docker-ce.deb >/dev/null; \\
    rm -rf /tmp/docker-ce /tmp/docker-ce.deb /usr/sbin/policy-rc.d; \\
    systemctl mask systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket \\
        systemd-firstboot.service systemd-modules-load.service getty@tty1.service console-getty.service \\
        >/dev/null 2>&1
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
"""


def run(args: list[str], *, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run a command here; it must succeed."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, **kwargs)
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def docker_socket() -> Path:
    """The host dockerd's socket (``DOCKER_HOST`` or the default)."""
    host = os.environ.get("DOCKER_HOST", "")
    return Path(host.removeprefix("unix://")) if host.startswith("unix://") else Path("/var/run/docker.sock")


def build_debs(out: Path, *extra: str) -> dict[str, Path]:
    """``./build.sh debs`` into ``out``; returns package name -> .deb (plus ``changes``)."""
    run(["./build.sh", "debs", "--out", str(out), *extra])
    debs = {p.name.split("_")[0]: p for p in out.glob("*.deb")}
    assert sorted(debs) == sorted(PACKAGES), list(out.iterdir())
    debs["changes"] = next(out.glob("*.changes"))
    return debs


def build_systemd_image(context: Path, label: str, *, packages: tuple[str, ...] = (),
                        docker_cli: bool = False) -> str:
    """Build a systemd host image from :data:`BASE_IMAGE`; returns its tag (remove it with ``docker image rm``).

    Args:
        context: An empty directory for the build context.
        label: ``key=value`` put on the image.
        packages: More Debian packages to preinstall.
        docker_cli: Put this machine's ``docker`` client into the stand-in docker-ce package.
    """
    if subprocess.run([DOCKER, "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
        raise AssertionError(f"{BASE_IMAGE} is missing: run ./build.sh image (it builds the base image)")
    stand_in = context / "stand-in"
    (stand_in / "usr" / "bin").mkdir(parents=True)
    if docker_cli:
        shutil.copy2(DOCKER, stand_in / "usr" / "bin" / "docker")
    (context / "Dockerfile").write_text(SYSTEMD_DOCKERFILE.format(base=BASE_IMAGE, packages=" ".join(packages)))
    tag = f"convocate-test-systemd:{uuid.uuid4().hex[:12]}"
    run([DOCKER, "build", "--quiet", "--force-rm", "--label", label, "--build-arg",
         f"DOCKER_GID={docker_socket().stat().st_gid}", "--tag", tag, str(context)],
        env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return tag


@dataclass
class Host:
    """A running Debian 12 container with systemd as PID 1."""

    id: str

    def sh(self, script: str, *, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run([DOCKER, "exec", "-e", "DEBIAN_FRONTEND=noninteractive", self.id, "sh", "-c", script],
                                capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"`{script}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        return result

    def read(self, path: str) -> str:
        return self.sh(f"cat {shlex.quote(path)}").stdout

    def exists(self, path: str) -> bool:
        return self.sh(f"test -e {shlex.quote(path)}", check=False).returncode == 0

    def copy_in(self, path: Path) -> str:
        run([DOCKER, "cp", str(path), f"{self.id}:/tmp/{path.name}"])
        return f"/tmp/{path.name}"

    def main_pid(self, unit: str) -> int:
        return int(self.sh(f"systemctl show --property=MainPID --value {unit}").stdout)

    def ip(self, network: str) -> str:
        """The container's address on ``network``."""
        out = run([DOCKER, "inspect", "--format", "{{json .NetworkSettings.Networks}}", self.id]).stdout
        return json.loads(out)[network]["IPAddress"]

    def wait_running(self, timeout: float = 60) -> None:
        """Wait until systemd says the system is up (running or degraded)."""
        deadline = time.monotonic() + timeout
        while self.sh("systemctl is-system-running", check=False).stdout.strip() not in ("running", "degraded"):
            assert time.monotonic() < deadline, self.sh("systemctl --failed; journalctl -b --no-pager | tail -50",
                                                        check=False).stdout
            time.sleep(0.3)

    def remove(self) -> None:
        subprocess.run([DOCKER, "rm", "--force", "--volumes", self.id], capture_output=True)


def start_host(image: str, label: str, *, network: str | None = None, hostname: str | None = None,
               volumes: tuple[str, ...] = ()) -> Host:
    """Start a systemd host container with the host's Docker socket and wait until systemd runs.

    Args:
        image: A tag from :func:`build_systemd_image`.
        label: ``key=value`` put on the container.
        network: A Docker network to attach it to (with ``hostname`` as its alias).
        hostname: Its host name.
        volumes: More ``--volume`` specifications.
    """
    args = [DOCKER, "run", "--detach", "--label", label, "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--cgroupns=private", "--tmpfs", "/run", "--tmpfs", "/run/lock",
            "--volume", f"{docker_socket()}:/run/docker.sock"]
    if network:
        args += ["--network", network]
        if hostname:
            args += ["--network-alias", hostname]
    if hostname:
        args += ["--hostname", hostname]
    for volume in volumes:
        args += ["--volume", volume]
    host = Host(run([*args, image]).stdout.strip())
    try:
        host.wait_running()
    except BaseException:
        host.remove()
        raise
    return host
