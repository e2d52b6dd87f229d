"""The Debian packages: built, linted, and run in Debian 12 with systemd as PID 1 (DESIGN §7).

- The package version (debian/changelog) is the code's; every unit passes systemd-analyze verify.
- Zipapps: two builds of the same tree are byte-identical and equal the ones in the .debs; each
  carries convocate.common, its role's code and dependencies, and no other role's.
- lintian: no error and no warning on the source package and the three .debs.
- The system test: a Debian 12 container running systemd as PID 1, made as MACHINE-NOTES says,
  installs the .debs and shows the services active and the agent answering ``ping`` on :222,
  ``dpkg-reconfigure`` with a new preseeded answer changing the config and restarting the
  service, an upgrade keeping the agent ID, keys and sessions, a second install of the same
  version changing nothing, remove stopping the services, and purge removing config, keys and
  debconf answers but leaving ``/home/claude/<uuid>/``.

The container gets the host's Docker socket (its group ``docker`` has the socket's GID): the
agent sees the host's containers but only ever acts on those labelled with its agent ID, and no
current image is ever set there, so the image prune never removes anything. Docker itself is a
stand-in package (``docker-ce``) in the container. The .debs are built by ``./build.sh debs``
into the test's temp dir; the image and the container carry the label
``convocate.test=packages`` and are removed at teardown.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from convocate.common import messages
from convocate.common.version import __version__
from tests.systemd_hosts import (
    DOCKER,
    PACKAGES,
    REPO,
    UPGRADE_VERSION,
    Host,
    run,
    start_host,
)

pytestmark = pytest.mark.slow

LABEL = "convocate.test=packages"
UNITS = sorted((REPO / "packaging" / "systemd").iterdir())


# --- without a container ----------------------------------------------------------------------------
def test_changelog_version_is_the_code_version():
    version = run(["dpkg-parsechangelog", "-SVersion"]).stdout.strip()
    assert version == __version__


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_passes_systemd_analyze_verify(unit):
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_lintian_reports_no_error_no_warning_and_only_the_tags_the_readme_explains(debs):
    result = subprocess.run(["lintian", "--pedantic", "--display-info", "--fail-on", "error,warning",
                             str(debs["changes"])], capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line[1:3] == ": "]
    assert result.returncode == 0 and not [line for line in lines if line[:2] in ("E:", "W:")], result.stdout
    # Every tag left (the rest are overridden in debian/*.lintian-overrides, each with its reason) is one
    # the README's Packages section lists with the reason.
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("lintian (`lintian --pedantic --display-info`) reports these tags"):]
    explained = set(re.findall(r"^\| `([a-z0-9.-]+)` \(", table, flags=re.M))
    reported = {line.split(": ", 2)[2].split()[0] for line in lines}
    assert reported <= explained, f"tags the README does not explain: {sorted(reported - explained)}\n{result.stdout}"


def test_zipapps_are_reproducible(tmp_path, debs):
    # Two builds: the .debs' (dpkg-buildpackage from a copy of the tree) and this one.
    run(["./build.sh", "zipapps", "--out", str(tmp_path / "here")])
    for package in PACKAGES:
        unpacked = tmp_path / f"deb-{package}"
        run(["dpkg-deb", "-x", str(debs[package]), str(unpacked)])
        inside = unpacked / "usr" / "lib" / package
        built = (tmp_path / "here" / f"{package}.pyz").read_bytes()
        assert hashlib.sha256(built).hexdigest() == hashlib.sha256((inside / f"{package}.pyz").read_bytes()) \
            .hexdigest(), f"{package}: the .deb's zipapp differs from this build's"
        # And the site-packages unpacked beside it (shiv/<pkg>.pyz_<build id>/), which the .deb ships too.
        trees = [sorted((str(f.relative_to(root)), f.read_bytes())
                        for d in (root / "shiv").glob(f"{package}.pyz_*") for f in d.rglob("*") if f.is_file())
                 for root in (tmp_path / "here", inside)]
        assert trees[0] == trees[1] and trees[0], f"{package}: the two builds' unpacked trees differ"


def test_each_zipapp_carries_only_its_role(tmp_path, debs):
    for package, role_module, absent in (
        ("convocate-agent", "convocate_agent.server", ("npyscreen", "convocate/cli.py", "convocate_host")),
        ("convocate-host", "convocate_host.cli", ("npyscreen", "docker", "convocate/cli.py", "convocate_agent")),
        ("convocate", "convocate.status_server", ("docker", "convocate_agent", "convocate_host")),
    ):
        run(["dpkg-deb", "-x", str(debs[package]), str(tmp_path / package)])
        pyz = tmp_path / package / "usr" / "lib" / package / f"{package}.pyz"
        assert pyz.stat().st_mode & 0o777 == 0o644
        with zipfile.ZipFile(pyz) as z:
            names = z.namelist()
            environment = json.loads(z.read("environment.json"))
        assert "site-packages/convocate/common/paths.py" in names
        for thing in absent:
            assert not any(n.startswith(f"site-packages/{thing}") for n in names), f"{package} carries {thing}"
        assert environment["compile_pyc"] and environment["reproducible"]
        assert pyz.read_bytes().startswith(b"#!/usr/bin/python3 -sE\n")
        # The role's modules import from the zipapp alone (its dependencies are all there).
        env = {"PATH": "/usr/bin:/bin", "SHIV_ROOT": str(tmp_path / "shiv"), "SHIV_INTERPRETER": "1"}
        run(["/usr/bin/python3", "-sE", str(pyz), "-c", f"import {role_module}"], env=env)
        version = run(["/usr/bin/python3", "-sE", str(pyz), "version"], env={**env, "SHIV_INTERPRETER": ""})
        assert version.stdout.strip() == f"{package} version v{__version__}"


# --- Debian 12 with systemd as PID 1 ----------------------------------------------------------------
class PackageHost(Host):
    """A systemd host with the helpers of this test: RPC over OpenSSH from inside, apt, debconf, snapshots."""

    def rpc(self, port: int, op: str, params: dict | None = None) -> dict:
        """One request to the agent over OpenSSH, from inside the container (loopback)."""
        line = json.dumps({"op": op, "params": params or {}})
        result = self.sh(f"printf '%s\\n' {shlex.quote(line)} | ssh -p {port} -i /root/client_key "
                         "-o UserKnownHostsFile=/root/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes "
                         "-o ConnectTimeout=5 claude@127.0.0.1 -s convocate-agent-rpc", check=False)
        assert result.returncode == 0, f"ssh to :{port} failed ({result.returncode}): {result.stderr}"
        response = json.loads(result.stdout.splitlines()[0])
        assert response["ok"], response
        return response["result"]

    def wait_for_ping(self, port: int, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.rpc(port, "ping")
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def fail_image_builds(self) -> None:
        """Point convocate-image-build.service at a Docker that is not there (a drop-in), so it fails at once.

        The postinst starts the session image build in the background; on these hosts it would rebuild
        images on this machine's dockerd and fetch Claude Code from npm. Failing, it shows what an operator
        sees when the build fails, and leaves the package configured.
        """
        self.sh("mkdir -p /etc/systemd/system/convocate-image-build.service.d && printf '%s\\n' '[Service]'"
                " 'Environment=DOCKER_HOST=unix:///run/convocate-test-no-docker.sock'"
                " > /etc/systemd/system/convocate-image-build.service.d/test.conf")

    def install_through_readline(self, debs: dict[str, Path], timeout: float = 300) -> str:
        """``apt-get install`` of the three .debs through debconf's readline frontend under a pty, like a person.

        Nothing is preseeded and debconf keeps its default priority (high): a question asked here would
        wait for an answer and end the test at ``timeout`` with the question on screen.

        Returns:
            What the terminal showed.
        """
        import pexpect

        files = " ".join(self.copy_in(debs[p]) for p in PACKAGES)
        child = pexpect.spawn(DOCKER, ["exec", "-it", "-e", "DEBIAN_FRONTEND=readline", "-e", "TERM=xterm", self.id,
                                       "sh", "-c", f"apt-get install -y -q {files}; echo APT-EXIT=$?"],
                              encoding="utf-8", timeout=timeout, dimensions=(50, 200))
        try:
            child.expect(r"APT-EXIT=(\d+)")
        except pexpect.TIMEOUT:
            raise AssertionError(f"apt-get waited for input at debconf's default priority:\n{child.before}") from None
        screen, status = child.before, int(child.match.group(1))
        child.expect(pexpect.EOF)
        assert status == 0, screen
        return screen

    def install(self, debs: dict[str, Path], *, reinstall: bool = False) -> str:
        files = " ".join(self.copy_in(debs[p]) for p in PACKAGES)
        return self.sh(f"apt-get install -y -q {'--reinstall ' if reinstall else ''}{files} 2>&1").stdout

    def preseed(self, *lines: str) -> None:
        self.sh(f"printf '%s\\n' {' '.join(shlex.quote(line) for line in lines)} | debconf-set-selections")

    def snapshot(self, *paths: str) -> dict[str, str]:
        """Path -> type, mode, owner, size, mtime and SHA-256 of every file and directory under ``paths``."""
        script = ("find " + " ".join(shlex.quote(p) for p in paths) + " \\( -type f -printf '%p f %m %u:%g %s %T@ ' "
                  "-exec sh -c 'sha256sum < \"$1\"' sh {} \\; \\) -o \\( -type d -printf '%p d %m %u:%g %T@\\n' \\)")
        lines = self.sh(script).stdout.splitlines()
        return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines}


@pytest.fixture
def host(systemd_host_image: str) -> Iterator[PackageHost]:
    started = start_host(systemd_host_image, LABEL)
    try:
        yield PackageHost(started.id)
    finally:
        started.remove()


#: What the install steps and the postinsts manage (not dpkg's own unpacking, which touches the
#: package's directories on every install).
MANAGED = ("/etc/convocate-agent", "/etc/convocate", "/etc/default/convocate-agent", "/etc/default/convocate",
           "/etc/systemd/system/convocate-sessions.slice.d", "/home/claude", "/var/lib/convocate",
           "/var/lib/convocate-agent",
           "/etc/passwd",
           "/etc/group", "/etc/shells", "/etc/dnsmasq.d/convocate")


@pytest.mark.docker
def test_install_reconfigure_upgrade_reinstall_remove_purge(host: PackageHost, debs, upgrade_debs, tmp_path):
    upgrade = upgrade_debs

    # --- install at debconf's default priority, nothing preseeded -----------------------------------
    # The session image is built by convocate-image-build.service, which the postinst starts without
    # waiting. Here a drop-in points it at a Docker that is not there, so it fails at once: apt must
    # have returned all the same, the package stays configured, and `convocate` says what to do.
    host.fail_image_builds()
    started = time.monotonic()
    output = host.install(debs)
    print(f"apt-get install of the three packages took {time.monotonic() - started:.1f} s")
    assert "convocate install:" in output and "convocate-agent install:" in output, output
    assert messages.IMAGE_BUILD_STARTED.format(unit="convocate-image-build.service") in output, output
    for package in PACKAGES:
        assert host.sh(f"dpkg-query -W -f='${{Status}}' {package}").stdout == "install ok installed"
    deadline = time.monotonic() + 60
    while host.sh("systemctl is-active convocate-image-build.service", check=False).stdout.strip() in (
            "activating", "active"):
        assert time.monotonic() < deadline, host.sh("journalctl --no-pager -u convocate-image-build").stdout
        time.sleep(0.5)
    image = host.sh("runuser -u claude -- convocate image-status", check=False)
    assert image.returncode == 78, image.stdout + image.stderr
    assert image.stdout.startswith(f"no session image yet: convocate:{__version__} is not there because its "
                                   "build failed (Docker is not reachable"), image.stdout
    assert "sudo systemctl start convocate-image-build.service" in image.stdout
    assert "Docker is not reachable" in host.sh("journalctl --no-pager -u convocate-image-build").stdout
    for unit in ("convocate-agent.service", "convocate-status.service", "convocate-dnsmasq-reload.path",
                 "convocate-image-prune.timer"):
        assert host.sh(f"systemctl is-active {unit}", check=False).stdout.strip() == "active", \
            host.sh(f"systemctl status --no-pager {unit}; journalctl --no-pager -u {unit}", check=False).stdout
    for unit in ("convocate-agent.service", "convocate-status.service"):
        assert host.sh(f"ps -o user= -p {host.main_pid(unit)}").stdout.strip() == "claude"
    # The agent's event loop gets a CPU before dockerd and the sessions when they are busy (docs/benchmarks.md).
    assert host.sh("systemctl show -p CPUWeight convocate-agent.service").stdout.strip() == "CPUWeight=1000"
    assert not host.exists("/var/lib/convocate-agent/current-image")  # so the image prune never prunes here

    host.sh("ssh-keygen -q -t ed25519 -N '' -C test -f /root/client_key"
            " && cat /root/client_key.pub >> /etc/convocate-agent/authorized_keys"
            " && key=$(cat /etc/convocate-agent/ssh_host_ed25519_key.pub)"
            " && printf '[127.0.0.1]:222 %s\\n[127.0.0.1]:2222 %s\\n' \"$key\" \"$key\" > /root/known_hosts")
    agent_id = host.read("/etc/convocate-agent/agent-id").strip()
    ping = host.wait_for_ping(222)
    assert ping["agent_id"] == agent_id and ping["version"] == __version__

    # The shell's CLI, as claude, through the registry, reaches the same agent.
    registry = f"/etc/convocate/agents/{agent_id}"
    host.sh(f"mkdir -p {registry} && echo 127.0.0.1 > {registry}/address && echo 222 > {registry}/port"
            f" && cp /root/client_key {registry}/shell_to_agent_ed25519_key"
            f" && cp /etc/convocate-agent/ssh_host_ed25519_key.pub {registry}/known_host"
            f" && chown -R claude:claude {registry}")
    agents = json.loads(host.sh("runuser -u claude -- convocate agents --json").stdout)
    assert [(a["agent_id"], a["status"]) for a in agents] == [(agent_id, "ok")]
    assert "convocate: no session image yet:" in host.sh("runuser -u claude -- convocate ls 2>&1").stdout

    assert host.sh("stat -c '%U:%G %a' /etc/convocate-agent /etc/convocate-agent/ssh_host_ed25519_key "
                   "/etc/convocate-agent/session.env /run/convocate/status.sock").stdout.split() == [
        "claude:claude", "750", "claude:claude", "600", "root:root", "600", "claude:claude", "660"]
    name, _, uid, gid, gecos, home, shell = host.sh("getent passwd claude").stdout.strip().split(":")
    assert (name, uid, gid, home, shell) == ("claude", "1337", "1337", "/home/claude", "/usr/bin/convocate")
    assert gecos.startswith("convocate sessions")
    # adduser --system: no subordinate ID range (subuid(5)) as useradd would give a plain user.
    assert host.sh("grep -s '^claude:' /etc/subuid /etc/subgid", check=False).stdout == ""
    for package, path in (("convocate", "/etc/default/convocate"), ("convocate-agent", "/etc/default/convocate-agent")):
        # merged with ucf and registered to the package (ucfq: path:package:exists:changed)
        assert host.sh(f"ucfq --with-colons {path}").stdout.split(":")[1] == package
    assert "/usr/bin/convocate" in host.read("/etc/shells").splitlines()
    # The slice: MemoryMax=90% of physical memory (static in the unit), CPUQuota from the install step's drop-in.
    limits = host.read("/etc/systemd/system/convocate-sessions.slice.d/50-limits.conf")
    quota = next(line.split("=")[1] for line in limits.splitlines() if line.startswith("CPUQuota="))
    shown = dict(line.split("=", 1) for line in host.sh(
        "systemctl show --property=MemoryMax,CPUQuotaPerSecUSec convocate-sessions.slice").stdout.splitlines())
    mem_total = int(next(line.split()[1] for line in host.read("/proc/meminfo").splitlines()
                         if line.startswith("MemTotal:"))) * 1024
    assert abs(int(shown["MemoryMax"]) - mem_total * 0.9) < mem_total * 0.01, shown
    assert float(shown["CPUQuotaPerSecUSec"].rstrip("s")) == int(quota.rstrip("%")) / 100, (shown, quota)

    # dnsmasq re-reads the hosts file status-serve (user claude) writes, through the path unit.
    host.sh("runuser -u claude -- sh -c 'echo \"127.0.0.2 pkgtest.convocate.internal\" "
            "> /var/lib/convocate/dnsmasq-hosts'")
    deadline = time.monotonic() + 20
    while "read /var/lib/convocate/dnsmasq-hosts - 1 names" not in host.sh("journalctl --no-pager -u dnsmasq").stdout:
        assert time.monotonic() < deadline, host.sh("journalctl --no-pager -u dnsmasq -u 'convocate-dnsmasq*'",
                                                    check=False).stdout
        time.sleep(0.3)

    host.sh("logrotate --debug /etc/logrotate.d/convocate-agent-logs")
    assert "/etc/cron.daily/convocate-image-prune" in host.sh("run-parts --test /etc/cron.daily").stdout
    host.sh("systemctl start convocate-image-prune.service")
    assert "no current image is set" in host.sh("journalctl --no-pager -u convocate-image-prune.service").stdout

    session = host.rpc(222, "create", {"name": "pkgtest", "start": False})["uuid"]
    session_json = f"/var/lib/convocate-agent/sessions/{session}.json"  # the agent's record (issue 14)
    session_before = host.read(session_json)
    # State that is not configuration lives in /var/lib/convocate-agent; /etc/convocate-agent is read-only to it.
    host.rpc(222, "settings-set", {"default_memory_mb": 300})
    assert json.loads(host.read("/var/lib/convocate-agent/settings.json"))["default_memory_mb"] == 300
    assert not host.exists("/etc/convocate-agent/settings.json")

    # --- dpkg-reconfigure with the same answers: nothing the agent reads changed, so no restart -------
    for package, unit in (("convocate-agent", "convocate-agent.service"), ("convocate", "convocate-status.service")):
        pid = host.main_pid(unit)
        out = host.sh(f"dpkg-reconfigure -fnoninteractive {package} 2>&1").stdout
        assert f"{unit} kept running: nothing it reads at start changed" in out, out
        assert host.main_pid(unit) == pid

    # --- dpkg-reconfigure with new preseeded answers -------------------------------------------------
    pid = host.main_pid("convocate-agent.service")
    host.preseed("convocate-agent convocate-agent/listen-port string 2222",
                 "convocate-agent convocate-agent/shell-host string shell.example.org")
    host.sh("dpkg-reconfigure -fnoninteractive convocate-agent")
    assert "CONVOCATE_AGENT_LISTEN=:2222" in host.read("/etc/default/convocate-agent").splitlines()
    assert host.read("/etc/convocate-agent/shell-host") == "shell.example.org\n"
    assert host.main_pid("convocate-agent.service") != pid
    assert host.wait_for_ping(2222)["agent_id"] == agent_id

    status_pid = host.main_pid("convocate-status.service")
    host.preseed("convocate convocate/domain string lab.example.org")
    host.sh("dpkg-reconfigure -fnoninteractive convocate")
    assert host.read("/etc/convocate/domain") == "lab.example.org\n"
    assert host.main_pid("convocate-status.service") != status_pid

    # --- upgrade to a newer build ---------------------------------------------------------------------
    keys = ("/etc/convocate-agent/agent-id", "/etc/convocate-agent/ssh_host_ed25519_key",
            "/etc/convocate/status_host_ed25519_key", session_json)
    before = {k: host.read(k) for k in keys}
    host.install(upgrade)
    assert {k: host.read(k) for k in keys} == before
    assert host.wait_for_ping(2222)["version"] == UPGRADE_VERSION
    for package in PACKAGES:
        build_id = host.sh(f"python3 -c 'import json, zipfile; print(json.loads(zipfile.ZipFile("
                           f"\"/usr/lib/{package}/{package}.pyz\").read(\"environment.json\"))[\"build_id\"])'"
                           ).stdout.strip()
        # Only this build's unpacked tree, compiled for this python3; nothing extracted at run time.
        assert host.sh(f"ls -A /usr/lib/{package}/shiv").stdout.split() == [f"{package}.pyz_{build_id}"], \
            f"{package}: an older build's tree is left"
        assert host.sh(f"find /usr/lib/{package}/shiv -name '*.cpython-3*.pyc' | head -1").stdout.strip()
        assert not host.exists(f"/var/cache/{package}/shiv")

    # --- /var/cache may be deleted (FHS §5.5): the agent starts without it -------------------------------
    host.sh("rm -rf /var/cache/convocate-agent /var/cache/convocate /var/cache/convocate-host"
            " && systemctl restart convocate-agent.service")
    assert host.wait_for_ping(2222)["version"] == UPGRADE_VERSION
    assert host.sh("runuser -u claude -- convocate version").stdout.strip() == f"convocate version v{UPGRADE_VERSION}"

    # --- a second install of the same version changes nothing --------------------------------------------
    state = host.snapshot(*MANAGED)
    output = host.install(upgrade, reinstall=True)
    assert "convocate install: nothing changed" in output and "convocate-agent install: nothing changed" in output, \
        output
    host.wait_for_ping(2222)
    after = host.snapshot(*MANAGED)
    for package in PACKAGES:  # deleted above; nothing extracts or caches there any more
        assert not host.exists(f"/var/cache/{package}"), package
    assert after == state, {k: (state.get(k), after.get(k)) for k in state.keys() | after.keys()
                            if state.get(k) != after.get(k)}

    # --- remove stops the services; purge removes config, keys and answers, never the sessions -----------
    host.sh("apt-get remove -y -q " + " ".join(PACKAGES))
    for unit in ("convocate-agent.service", "convocate-status.service", "convocate-image-prune.timer"):
        assert host.sh(f"systemctl is-active {unit}", check=False).stdout.strip() == "inactive"
    assert host.exists("/etc/convocate-agent/agent-id")  # remove keeps the configuration
    assert "/usr/bin/convocate" not in host.read("/etc/shells").splitlines()
    # The login shell of claude is not left pointing at a program that is gone.
    assert host.sh("getent passwd claude").stdout.strip().endswith(":/usr/sbin/nologin")
    host.sh("mkdir -p /var/lib/convocate-agent/incoming && touch /var/lib/convocate-agent/incoming/image-x.tar")
    purge = host.sh("apt-get purge -y -q " + " ".join(PACKAGES) + " 2>&1").stdout
    assert "the session homes under /home/claude and their records in" in purge, purge
    for gone in ("/etc/convocate-agent", "/etc/convocate", "/etc/default/convocate-agent", "/etc/default/convocate",
                 "/etc/systemd/system/convocate-sessions.slice.d", "/var/lib/convocate",
                 "/var/lib/convocate-agent/settings.json", "/var/lib/convocate-agent/locks",
                 "/var/lib/convocate-agent/incoming",
                 "/var/cache/convocate-agent", "/var/cache/convocate", "/var/cache/convocate-host",
                 "/etc/dnsmasq.d/convocate"):
        assert not host.exists(gone), f"{gone} survived the purge"
    # ucf forgot them: no package owns either path any more (ucfq: path:package:exists:changed).
    assert [line.split(":")[1] for line in host.sh(
        "ucfq --with-colons /etc/default/convocate /etc/default/convocate-agent").stdout.splitlines()] == ["", ""]
    assert host.sh("debconf-show convocate-agent; debconf-show convocate").stdout.strip() == ""
    assert host.read(session_json) == session_before
    assert host.sh(f"stat -c %U /home/claude/{session}").stdout.strip() == "claude"


@pytest.mark.docker
def test_a_postinst_that_cannot_finish_names_the_cause_and_dpkg_configure_a_finishes_it(host: PackageHost, debs):
    """dockerd down, UID 1337 taken, the port in use: each fails the configure with its reason and the way on."""
    deb = host.copy_in(debs["convocate-agent"])
    way_on = "convocate-agent: fix it, then run: dpkg --configure -a"

    def status() -> str:
        return host.sh("dpkg-query -W -f='${Status}' convocate-agent").stdout

    def fails(command: str, *reason: str) -> None:
        result = host.sh(f"{command} 2>&1", check=False)
        assert result.returncode != 0, result.stdout
        for text in (*reason, way_on):
            assert text in result.stdout, result.stdout
        assert status() == "install ok half-configured"

    def finishes() -> None:
        host.sh("dpkg --configure -a")
        assert status() == "install ok installed"
        assert host.sh("systemctl is-active convocate-agent.service", check=False).stdout.strip() == "active"

    # dockerd down: its socket is a plain file now.
    host.sh("touch /tmp/not-a-socket && mount --bind /tmp/not-a-socket /run/docker.sock")
    fails(f"apt-get install -y -q {deb}", "Docker is not reachable (", "start it (systemctl start docker)")
    host.sh("umount /run/docker.sock")
    finishes()

    # UID 1337 belongs to someone else.
    host.sh("apt-get purge -y -q convocate-agent && userdel claude && useradd --uid 1337 --gid users --no-create-home squatter")
    fails(f"apt-get install -y -q {deb}", "UID 1337 belongs to user squatter")
    host.sh("userdel squatter")
    finishes()

    # Another program listens on the agent's port 222.
    host.sh("systemctl stop convocate-agent.service && systemd-run --unit=convocate-test-squatter python3 -c "
            "'import socket, time; s = socket.socket(); s.bind((\"0.0.0.0\", 222)); s.listen(); time.sleep(600)'")
    deadline = time.monotonic() + 20
    while ":222 " not in host.sh("ss -Htln", check=False).stdout:
        assert time.monotonic() < deadline, "the squatter did not listen on 222"
        time.sleep(0.2)
    fails(f"apt-get install -y -q --reinstall {deb}", "TCP port 222 is in use by python3 (PID ")
    host.sh("systemctl stop convocate-test-squatter.service")
    finishes()


@pytest.mark.docker
def test_apt_install_through_the_readline_frontend_asks_nothing_at_the_default_priority(host: PackageHost, debs):
    host.fail_image_builds()
    screen = host.install_through_readline(debs)
    assert "convocate install:" in screen and "convocate-agent install:" in screen, screen
    for package in PACKAGES:
        assert host.sh(f"dpkg-query -W -f='${{Status}}' {package}").stdout == "install ok installed"
    assert host.sh("systemctl is-active convocate-agent.service convocate-status.service").stdout.split() == [
        "active", "active"]
