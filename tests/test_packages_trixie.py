"""The three .debs on Debian 13 (trixie) with systemd as PID 1: installed, started, serving a session (issue 13, 5).

One trixie host for the module, made by tests/systemd_hosts.py (``build_systemd_image(...,
suite="trixie")``: a base debootstrapped from this machine's Debian mirror and cached under
``.cache/images``; how its systemd 257 boots on this machine's cgroup v1 dockerd is written there).
In it:

- ``apt-get install`` of the three packages (the session fixture ``debs``) through debconf's readline
  frontend at its default priority, nothing preseeded; at the end, purged and installed again
  non-interactively. The shell package's image build, started in the background by its postinst,
  is pointed at a Docker that is not there: this machine's session images must not be rebuilt.
- The services active, as user ``claude``, under Python 3.13 (trixie's).
- The agent answering ``ping`` over OpenSSH (``ssh -s convocate-agent-rpc``) from inside the host.
- A session served: with the stand-in session image made current for that agent, created and
  started through the agent, its tmux pane read through the agent's ``capture`` op, and keys sent
  with ``send`` coming back in the pane.

The agent drives this machine's dockerd through the mounted socket, so its session homes and runtime
directory are bind mounts from this machine at the same place, declared to the agent with
``CONVOCATE_AGENT_DOCKER_PATH_PREFIX`` (what ``convocate-host init-agent --docker-path-prefix`` writes;
tests/test_host_e2e.py's recipe). Everything made here carries the label ``convocate.test=packages-trixie``
and is removed at teardown, the session containers (by the agent's label) included; the cached base
image ``convocate-base:trixie`` and its tarball stay, as bookworm's do.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from convocate.common.version import __version__
from tests.conftest import TEST_IMAGE
from tests.systemd_hosts import DOCKER, PACKAGES, build_systemd_image, start_host
from tests.test_packages import PackageHost

pytestmark = [pytest.mark.slow, pytest.mark.docker]

LABEL = "convocate.test=packages-trixie"
SUITE = "trixie"
#: Every agent ID the host has had, whose session containers teardown removes.
AGENT_IDS: set[str] = set()
#: The services the three packages start, and whose main process runs as claude.
SERVICES = ("convocate-agent.service", "convocate-status.service")


@pytest.fixture(scope="module")
def trixie_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield build_systemd_image(tmp_path_factory.mktemp("trixie-image"), LABEL, suite=SUITE)  # kept: a cache


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the host's session homes and runtime directory live on this machine (dockerd's view)."""
    root = tmp_path_factory.mktemp("trixie-host")
    for sub in ("home/claude", "run/convocate-agent"):
        (root / sub).mkdir(parents=True)
    yield root
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], capture_output=True)


@pytest.fixture(scope="module")
def host(trixie_image: str, prefix: Path) -> Iterator[PackageHost]:
    started = start_host(trixie_image, LABEL, hostname="trixie", volumes=(
        f"{prefix}/home/claude:/home/claude", f"{prefix}/run/convocate-agent:/run/convocate-agent"))
    made = PackageHost(started.id)
    try:
        yield made
    finally:
        # The session containers of every agent ID the host had (a purge makes a new one), which belong
        # to this machine's dockerd.
        AGENT_IDS.add(made.sh("cat /etc/convocate-agent/agent-id", check=False).stdout.strip())
        for agent_id in AGENT_IDS - {""}:
            ids = subprocess.run([DOCKER, "ps", "-aq", f"--filter=label=convocate.agent={agent_id}"],
                                 capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run([DOCKER, "rm", "--force", *ids], capture_output=True)
        started.remove()
        # The cgroup parent this machine's dockerd made for the sessions (empty now), as test_host_e2e does.
        for parent in Path("/sys/fs/cgroup").glob("*/convocate-sessions"):
            with contextlib.suppress(OSError):
                parent.rmdir()


@pytest.fixture(scope="module")
def installed(host: PackageHost, debs: dict[str, Path]) -> str:
    """The three packages installed through debconf's readline frontend at its default priority; apt's output.

    Nothing is preseeded. The shell package's image build, which its postinst starts in the background,
    is pointed at a Docker that is not there (``PackageHost.fail_image_builds``): this machine's session
    images must not be rebuilt.
    """
    host.fail_image_builds()
    return host.install_through_readline(debs)


@pytest.fixture(scope="module")
def agent(host: PackageHost, installed: str, prefix: Path) -> str:
    """The agent with a client key of the test's, the stand-in image current, the path prefix set; its ID."""
    host.sh("ssh-keygen -q -t ed25519 -N '' -C test -f /root/client_key"
            " && cat /root/client_key.pub >> /etc/convocate-agent/authorized_keys"
            " && printf '[127.0.0.1]:222 %s\\n' \"$(cat /etc/convocate-agent/ssh_host_ed25519_key.pub)\""
            " > /root/known_hosts")
    # As convocate-host init-agent does: the current image, and the path prefix in the unit's drop-in.
    host.sh(f"printf '%s\\n' {TEST_IMAGE} > /var/lib/convocate-agent/current-image"
            " && chown claude:claude /var/lib/convocate-agent/current-image"
            " && mkdir -p /etc/systemd/system/convocate-agent.service.d"
            f" && printf '[Service]\\nEnvironment=CONVOCATE_AGENT_DOCKER_PATH_PREFIX=%s\\n' {prefix}"
            " > /etc/systemd/system/convocate-agent.service.d/50-convocate-host.conf"
            " && systemctl daemon-reload && systemctl restart convocate-agent.service")
    host.wait_for_ping(222)
    agent_id = host.read("/etc/convocate-agent/agent-id").strip()
    AGENT_IDS.add(agent_id)
    return agent_id


def test_the_host_is_debian_13_with_systemd_running(host: PackageHost):
    assert "VERSION_CODENAME=trixie" in host.read("/etc/os-release").splitlines()
    assert host.sh("systemctl is-system-running", check=False).stdout.strip() in ("running", "degraded")
    assert host.sh("python3 -c 'import sys; print(sys.version_info[:2])'").stdout.strip() == "(3, 13)"
    assert int(host.sh("systemctl --version").stdout.split()[1]) >= 257


def test_the_three_packages_install_through_a_real_frontend(host: PackageHost, installed: str):
    assert "convocate install:" in installed and "convocate-agent install:" in installed, installed
    for package in PACKAGES:
        status = host.sh(f"dpkg-query -W -f='${{Status}} ${{Version}}' {package}").stdout
        assert status == f"install ok installed {__version__}", status
    image = host.sh("runuser -u claude -- convocate image-status", check=False)
    assert image.returncode == 78 and image.stdout.startswith("no session image yet:"), image.stdout


def test_the_services_are_active_as_claude(host: PackageHost, installed: str):
    for unit in (*SERVICES, "convocate-dnsmasq-reload.path", "convocate-image-prune.timer"):
        assert host.sh(f"systemctl is-active {unit}", check=False).stdout.strip() == "active", \
            host.sh(f"systemctl status --no-pager {unit}; journalctl --no-pager -u {unit}", check=False).stdout
    for unit in SERVICES:
        pid = host.main_pid(unit)
        assert host.sh(f"ps -o user= -p {pid}").stdout.strip() == "claude", unit
        interpreter = host.sh(f"readlink -f /proc/{pid}/exe").stdout.strip()
        assert interpreter.endswith("python3.13"), f"{unit} runs {interpreter}"


def test_the_agent_answers_ping_over_openssh(host: PackageHost, agent: str):
    ping = host.rpc(222, "ping")
    assert ping["agent_id"] == agent and ping["version"] == __version__, ping


def test_a_session_is_served_through_the_agent(host: PackageHost, agent: str, prefix: Path):
    made = host.rpc(222, "create", {"name": "trixie", "cpus": 0.2, "memory_mb": 200, "start": True})
    session = made["uuid"]
    # Its home is where dockerd mounts it from: this machine's side of the host's /home/claude; the agent's
    # record of it is in the host's own state directory, out of the session's reach.
    assert (prefix / "home" / "claude" / session).is_dir()
    assert not (prefix / "home" / "claude" / session / "session.json").exists()
    assert host.exists(f"/var/lib/convocate-agent/sessions/{session}.json")
    listed = {s["uuid"]: s for s in host.rpc(222, "list")}
    assert listed[session]["running"] and listed[session]["image"] == TEST_IMAGE, listed[session]
    container = f"convocate-session-{session}"
    labels = json.loads(subprocess.run([DOCKER, "inspect", "--format", "{{json .Config.Labels}}", container],
                                       capture_output=True, text=True, check=True).stdout)
    assert labels.get("convocate.agent") == agent, labels

    pane = _wait_for_pane(host, session, "convocate stand-in claude")
    host.rpc(222, "send", {"id": session, "text": "typed on trixie", "enter": True})
    pane = _wait_for_pane(host, session, "echo: typed on trixie")
    assert "typed on trixie" in pane

    host.rpc(222, "kill", {"id": session})
    assert not host.rpc(222, "get", {"id": session})["running"]


def _wait_for_pane(host: PackageHost, session: str, text: str, timeout: float = 30) -> str:
    """The session's pane through the agent's ``capture`` op, once it shows ``text``."""
    deadline = time.monotonic() + timeout
    while True:
        pane = host.rpc(222, "capture", {"id": session, "lines": 50})["text"]
        if text in pane:
            return pane
        assert time.monotonic() < deadline, f"the pane never showed {text!r}:\n{pane}"
        time.sleep(0.5)


def test_purged_and_installed_again_noninteractively(host: PackageHost, agent: str, debs: dict[str, Path]):
    """Last in the module: the same packages again, non-interactively, after a purge that keeps the sessions."""
    purge = host.sh("apt-get purge -y -q " + " ".join(PACKAGES) + " 2>&1").stdout
    assert "the session homes under /home/claude are kept" in purge, purge
    output = host.install(debs)
    assert "convocate install:" in output and "convocate-agent install:" in output, output
    for package in PACKAGES:
        assert host.sh(f"dpkg-query -W -f='${{Status}}' {package}").stdout == "install ok installed"
    # Purge took the agent's ID, host key and authorized keys with the configuration: pin and authorize again.
    host.sh("cat /root/client_key.pub >> /etc/convocate-agent/authorized_keys"
            " && printf '[127.0.0.1]:222 %s\\n' \"$(cat /etc/convocate-agent/ssh_host_ed25519_key.pub)\""
            " > /root/known_hosts")
    assert host.wait_for_ping(222)["agent_id"] != agent
