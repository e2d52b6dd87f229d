"""Debian hosts for system tests: containers running systemd as PID 1, and the .debs to put on them.

Debian 12 (bookworm) hosts are made from ``convocate-base:bookworm`` (``./build.sh image`` builds it);
Debian 13 (trixie) hosts from ``convocate-base:trixie``, which :func:`ensure_base_image` debootstraps
here from this machine's Debian mirror and caches under ``.cache/images`` (see there).

Made as MACHINE-NOTES says (no ``--privileged``: ``--cap-add ALL --cap-drop SYS_RESOURCE``,
seccomp and AppArmor unconfined, a private cgroup namespace, tmpfs on /run). Docker itself is a
stand-in package (``docker-ce``) in the image: the tests mount the host's Docker socket, and the
group ``docker`` gets that socket's GID; with ``docker_cli`` the stand-in also carries this
machine's ``docker`` client, for hosts that run docker commands (the shell host saves images).

Every image, container and network made here carries the label given by the test and is removed
at teardown by the fixture that made it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from convocate.common.version import __version__

REPO = Path(__file__).resolve().parent.parent
DOCKER = "/usr/bin/docker"
BASE_IMAGE = "convocate-base:bookworm"
#: The suite of :data:`BASE_IMAGE`, made by packaging/image/build-image.sh; other suites are made here.
DEFAULT_SUITE = "bookworm"
#: Where the debootstrapped root file systems are cached, keyed by :func:`base_key`.
CACHE = REPO / ".cache" / "images"
#: The label on the base images made here (build-image.sh's ``convocate.base=1`` is left to bookworm's,
#: whose build cache it prunes).
BASE_LABEL = "convocate.test=systemd-hosts-base"
#: The packages debootstrap adds to minbase (none: the host image's Dockerfile installs the rest).
BASE_INCLUDE: tuple[str, ...] = ()
PACKAGES = ("convocate", "convocate-agent", "convocate-host")
#: What the system tests' hosts have besides systemd and the packages' dependencies: an SSH server and sudo
#: for convocate-host, and most of what `convocate-host install` wants (it still installs jq itself).
HOST_PACKAGES = ("openssh-server", "sudo", "ufw", "iptables", "iproute2", "curl", "git", "ca-certificates", "tzdata")
#: The label of the shared host image.
HOST_IMAGE_LABEL = "convocate.test=systemd-hosts"
#: The version the upgrade tests build the same tree as.
UPGRADE_VERSION = f"{__version__}+1"

# Debian 13's systemd (257) on this machine's cgroup v1 dockerd: what was tried and what works.
# systemd 256+ calls cgroup v1 obsolete and, on a pure v1 ("legacy") hierarchy, wants
# ``SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1`` on the kernel command line (in a container: PID 1's argv).
# Here dockerd (20.10, cgroupfs driver) runs the host's *hybrid* layout: v1 controllers plus the
# cgroup2 ``unified`` hierarchy, and with ``--cgroupns=private`` it mounts that cgroup2 read-write at
# /sys/fs/cgroup/unified in the container (the v1 ones read-only). systemd 257 then boots in hybrid
# mode with no extra argument: ``is-system-running`` says running in ~4 s, services start, it taints
# itself ``cgroupsv1`` and logs "Failed to create compat systemd cgroup ... Read-only file system,
# ignoring" for each unit (harmless: it tracks processes in the unified hierarchy). Tried and
# rejected: hiding the unified hierarchy (``--tmpfs /sys/fs/cgroup/unified``, a pure v1 boot) fails
# at once, "Failed to create /init.scope control group: Read-only file system", with or without
# ``SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1 systemd.unified_cgroup_hierarchy=0`` as init arguments, since
# Docker mounts the v1 ``name=systemd`` hierarchy read-only; so those arguments buy nothing here and
# are not passed. Resource limits inside do not apply (v1 controllers read-only), as on bookworm.

#: What the systemd host image is, per suite (the comment heading its Dockerfile).
SUITE_NAMES = {"bookworm": "Debian 12 (bookworm)", "trixie": "Debian 13 (trixie)"}

SYSTEMD_DOCKERFILE = """\
# {name} with systemd as PID 1 (MACHINE-NOTES), with what the convocate packages depend on,
# so that installing them needs no download, and perl, whose Term::ReadLine debconf's readline
# frontend needs (minbase has only perl-base). docker-ce is a stand-in: the test mounts the host's
# Docker socket, and the group docker gets that socket's GID.
FROM {base}
ARG DOCKER_GID
ENV container=docker
COPY stand-in/ /tmp/docker-ce/
RUN set -eu; export DEBIAN_FRONTEND=noninteractive; \\
    groupadd --system --gid "$DOCKER_GID" docker; \\
    apt-get update -q; \\
    apt-get install -y -q --no-install-recommends systemd systemd-sysv dbus python3 rsyslog-gnutls \\
        openssh-client dnsmasq cron logrotate procps adduser ucf perl {packages} >/dev/null; \\
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


def debian_mirrors() -> dict[str, str]:
    """This machine's Debian mirrors, as apt knows them: ``{"main": URI, "security": URI}``.

    Read with ``apt-get indextargets`` (so deb822 ``.sources`` files and one-line lists alike, as apt
    itself reads /etc/apt/sources.list.d): the archive that serves this machine's own release (from
    /etc/os-release) and the one that serves ``<release>-security``. Debian serves every suite from the
    same two archives.

    Returns:
        ``main`` always (an AssertionError when apt has no source for this release), ``security`` when
        apt has one.
    """
    release = next(line.split("=", 1)[1].strip().strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                   if line.startswith("VERSION_CODENAME="))
    lines = run(["apt-get", "indextargets", "--format", "$(RELEASE) $(REPO_URI)", "Created-By: Packages"]).stdout
    uris = {}
    for line in lines.splitlines():
        suite, _, uri = line.partition(" ")
        uris.setdefault(suite, uri.rstrip("/"))
    assert release in uris, f"apt has no source for {release} ({sorted(uris)}): no mirror to debootstrap from"
    mirrors = {"main": uris[release]}
    if f"{release}-security" in uris:
        mirrors["security"] = uris[f"{release}-security"]
    return mirrors


def base_key(suite: str, mirrors: dict[str, str], include: tuple[str, ...] = BASE_INCLUDE) -> str:
    """The content hash that names a cached base: what decides the root file system.

    Args:
        suite: The Debian suite (``trixie``).
        mirrors: From :func:`debian_mirrors`.
        include: Packages debootstrap adds to minbase.

    Returns:
        16 hex digits of the SHA-256 of suite, architecture, mirrors, package list and the recipe of
        :func:`_debootstrap` (its source), so a change to any of them makes a new tarball.
    """
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    recipe = inspect.getsource(_debootstrap)
    text = json.dumps({"suite": suite, "arch": arch, "mirrors": mirrors, "include": sorted(include),
                       "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _debootstrap(suite: str, rootfs: Path, mirrors: dict[str, str], include: tuple[str, ...]) -> None:
    """A minbase ``suite`` in ``rootfs``, cleaned as MACHINE-NOTES says, apt pointed at ``mirrors``."""
    args = ["debootstrap", "--variant=minbase"]
    if include:
        args.append("--include=" + ",".join(include))
    # debootstrap must not inherit a debconf environment (MACHINE-NOTES: it loops in pam-auth-update).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEBIAN_", "DEBCONF_"))}
    run([*args, suite, str(rootfs), mirrors["main"]], timeout=900, env=env)
    sources = [f"deb {mirrors['main']} {suite} main", f"deb {mirrors['main']} {suite}-updates main"]
    if "security" in mirrors:
        sources.append(f"deb {mirrors['security']} {suite}-security main")
    (rootfs / "etc" / "apt" / "sources.list").write_text("\n".join(sources) + "\n")
    (rootfs / "etc" / "apt" / "apt.conf.d" / "90convocate").write_text(
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\nAcquire::Languages "none";\n')
    policy = rootfs / "usr" / "sbin" / "policy-rc.d"  # images never start services from maintainer scripts
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    (rootfs / "etc" / "resolv.conf").write_text("")  # Docker provides its own
    (rootfs / "etc" / "hostname").write_text("localhost\n")
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*", "var/log/*.log"):
        for path in rootfs.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    (rootfs / "var" / "lib" / "apt" / "lists" / "partial").mkdir(parents=True, exist_ok=True)


def ensure_base_image(suite: str, *, include: tuple[str, ...] = BASE_INCLUDE) -> str:
    """``convocate-base:<suite>``, debootstrapped from this machine's Debian mirror; returns its tag.

    For :data:`DEFAULT_SUITE` that is build-image.sh's :data:`BASE_IMAGE`, which must exist. Another
    suite is made here, as MACHINE-NOTES says for bookworm: ``debootstrap --variant=minbase`` from the
    mirror apt uses (:func:`debian_mirrors`), apt caches and lists removed, the tree packed with
    ``tar --numeric-owner`` into ``.cache/images/convocate-base-<suite>-<key>.tar`` (the key is
    :func:`base_key`), and ``docker import``-ed with the labels :data:`BASE_LABEL` and
    ``convocate.base-key=<key>``. An image with the same key is reused; without one the cached tarball
    is imported (about 2 s) instead of debootstrapping again (about 30 to 60 s). The image stays, like
    bookworm's, as a cache (``docker image rm convocate-base:<suite>`` drops it).

    Args:
        suite: A Debian suite debootstrap knows (``trixie``).
        include: Packages debootstrap adds to minbase.

    Returns:
        The image tag.
    """
    if suite == DEFAULT_SUITE:
        if subprocess.run([DOCKER, "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
            raise AssertionError(f"{BASE_IMAGE} is missing: run ./build.sh image (it builds the base image)")
        return BASE_IMAGE
    tag = f"convocate-base:{suite}"
    mirrors = debian_mirrors()
    key = base_key(suite, mirrors, include)
    have = subprocess.run([DOCKER, "image", "inspect", "--format", '{{index .Config.Labels "convocate.base-key"}}',
                           tag], capture_output=True, text=True)
    if have.returncode == 0 and have.stdout.strip() == key:
        return tag
    tarball = CACHE / f"convocate-base-{suite}-{key}.tar"
    if not tarball.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        rootfs = Path(tempfile.mkdtemp(prefix=f"rootfs-{suite}.", dir=CACHE))
        part = tarball.with_name(tarball.name + f".{os.getpid()}.part")
        try:
            _debootstrap(suite, rootfs, mirrors, include)
            run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(part), "."])
            part.rename(tarball)
        finally:
            subprocess.run(["rm", "-rf", "--one-file-system", str(rootfs), str(part)], capture_output=True)
        for stale in CACHE.glob(f"convocate-base-{suite}-*.tar"):  # made from another mirror or recipe
            if stale != tarball:
                stale.unlink(missing_ok=True)
    run([DOCKER, "import", "--change", 'CMD ["/bin/bash"]', "--change", f"LABEL {BASE_LABEL}",
         "--change", f"LABEL convocate.base-key={key}", "--change", f"LABEL convocate.base-suite={suite}",
         str(tarball), tag])
    return tag


#: Where built .debs are kept between runs, one directory per :func:`tree_key` (outside the tree:
#: CI builds from a fresh clone); ``$CONVOCATE_TEST_CACHE`` moves it.
DEBS_CACHE = Path(os.environ.get("CONVOCATE_TEST_CACHE") or Path.home() / ".cache" / "convocate-tests") / "debs"
#: Cached builds kept (this tree and its upgrade build, and the last few trees before).
DEBS_KEPT = 6
#: The build tools whose versions are part of the key, beside the tree (pip's pins are in it).
BUILD_TOOLS = ("dpkg-dev", "debhelper", "python3", "lintian")


def tree_key(*args: str) -> str:
    """A hash of what ``./build.sh debs ARGS`` builds from: the tree as its ``stage_tree`` copies it
    (``git ls-files --cached --others --exclude-standard``), each file's mode and bytes, the arguments,
    and the versions of :data:`BUILD_TOOLS`."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).stdout.split("\0")
    made_of = hashlib.sha256(json.dumps(args).encode())
    for name in sorted(n for n in listed if n):
        path = REPO / name
        if path.is_symlink():
            content = os.readlink(path).encode()
        elif path.is_file():
            content = path.read_bytes()
        else:
            continue  # deleted, not yet staged: stage_tree leaves it out too
        made_of.update(name.encode() + b"\0" + oct(path.lstat().st_mode).encode() + hashlib.sha256(content).digest())
    tools = subprocess.run(["dpkg-query", "-W", "-f", "${Package}=${Version}\n", *BUILD_TOOLS],
                           capture_output=True, text=True).stdout
    made_of.update(tools.encode())
    return made_of.hexdigest()[:16]


def build_debs(out: Path, *extra: str) -> dict[str, Path]:
    """``./build.sh debs`` into ``out``; returns package name -> .deb (plus ``changes``).

    A build of the same :func:`tree_key` is copied from :data:`DEBS_CACHE` instead (a build takes
    about 80 s; the same bytes come out: ``test_zipapps_are_reproducible``).
    """
    cached = DEBS_CACHE / tree_key(*extra)
    if not (cached / "complete").is_file():
        run(["./build.sh", "debs", "--out", str(out), *extra], timeout=1200)
        part = cached.with_name(f"{cached.name}.{os.getpid()}.part")
        try:  # a cache only: a run that cannot keep it (disk full, another run was first) goes on
            shutil.copytree(out, part, ignore=shutil.ignore_patterns(".stage"))
            (part / "complete").write_text("")
            part.rename(cached)
        except OSError:
            shutil.rmtree(part, ignore_errors=True)
        builds = sorted((d for d in DEBS_CACHE.iterdir() if (d / "complete").is_file()),
                        key=lambda d: d.stat().st_mtime, reverse=True) if DEBS_CACHE.is_dir() else []
        for old in builds[DEBS_KEPT:]:
            shutil.rmtree(old, ignore_errors=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for item in cached.iterdir():
            if item.name != "complete":
                shutil.copy2(item, out / item.name)
        os.utime(cached)  # most recently used: kept longest
    debs = {p.name.split("_")[0]: p for p in out.glob("*.deb")}
    assert sorted(debs) == sorted(PACKAGES), list(out.iterdir())
    debs["changes"] = next(out.glob("*.changes"))
    return debs


def build_systemd_image(context: Path, label: str, *, packages: tuple[str, ...] = (),
                        docker_cli: bool = False, suite: str = DEFAULT_SUITE) -> str:
    """A systemd host image of ``suite``, built once per recipe and kept; returns its tag.

    The same recipe for every suite, from :func:`ensure_base_image` (bookworm: :data:`BASE_IMAGE`;
    trixie: debootstrapped and cached here). For trixie's systemd on cgroup v1 see the
    comment above :data:`SUITE_NAMES`: it boots with the same ``docker run`` flags as bookworm.
    The tag is ``convocate-test-systemd:<suite>-<key>``, the key a hash of everything the image is
    made from (Dockerfile, base image ID, stand-in files, the docker group's GID): an image of the
    same key is reused (the apt installs took 30 to 80 s a run), and the other keys of the suite
    are removed when a new one is built. The image stays, like the base images, as a cache.

    Args:
        context: An empty directory for the build context.
        label: ``key=value`` put on the image.
        packages: More Debian packages to preinstall.
        docker_cli: Put this machine's ``docker`` client into the stand-in docker-ce package.
        suite: The Debian suite (``bookworm`` or ``trixie``).
    """
    base = ensure_base_image(suite)
    stand_in = context / "stand-in"
    (stand_in / "usr" / "bin").mkdir(parents=True)
    # A file of its own: dpkg drops a package all of whose files other packages own ("Noting
    # disappearance of docker-ce"), as trixie's dpkg did to a stand-in of bare directories.
    doc = stand_in / "usr" / "share" / "doc" / "docker-ce"
    doc.mkdir(parents=True)
    (doc / "README.convocate-test").write_text("Stand-in for Docker: the test mounts this machine's dockerd socket.\n")
    if docker_cli:
        shutil.copy2(DOCKER, stand_in / "usr" / "bin" / "docker")
    dockerfile = SYSTEMD_DOCKERFILE.format(base=base, name=SUITE_NAMES.get(suite, f"Debian {suite}"),
                                           packages=" ".join(packages))
    (context / "Dockerfile").write_text(dockerfile)
    gid = docker_socket().stat().st_gid
    made_of = hashlib.sha256()
    for part in (dockerfile, label, str(gid), run([DOCKER, "image", "inspect", "--format", "{{.Id}}", base]).stdout):
        made_of.update(part.encode() + b"\0")
    for path in sorted(p for p in stand_in.rglob("*") if p.is_file()):
        made_of.update(str(path.relative_to(stand_in)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    repository = "convocate-test-systemd"
    tag = f"{repository}:{suite}-{made_of.hexdigest()[:16]}"
    if subprocess.run([DOCKER, "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    run([DOCKER, "build", "--quiet", "--force-rm", "--label", label, "--build-arg", f"DOCKER_GID={gid}",
         "--tag", tag, str(context)], env={**os.environ, "DOCKER_BUILDKIT": "0"})
    listed = run([DOCKER, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository]).stdout.split()
    for stale in listed:  # another recipe of this suite (an image a container still uses stays)
        if stale.startswith(f"{repository}:{suite}-") and stale != tag:
            subprocess.run([DOCKER, "image", "rm", stale], capture_output=True)
    return tag


@dataclass
class Host:
    """A running Debian container with systemd as PID 1."""

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

    def copy_in(self, path: Path, directory: str = "/var/tmp") -> str:
        """Copy ``path`` into ``directory`` of the container; returns the path there.

        Not /tmp: trixie's systemd mounts a tmpfs there (tmp.mount), which ``docker cp`` does not see
        (it writes to the container's root file system underneath).
        """
        run([DOCKER, "cp", str(path), f"{self.id}:{directory}/{path.name}"])
        return f"{directory}/{path.name}"

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
