"""``convocate-host --dry-run`` and ``--json`` against a real host that must not change.

The host is a Debian container (the base image, nothing of convocate installed) reached the way a
remote host is: the real ``convocate-host`` logs in over SSH to a server on loopback that runs each
command it is sent inside that container (``docker exec``), as sshd would with a shell. ``docker
diff`` before and after is the proof that a dry run changed nothing there; the report must still
list what a real run would change (packages, the ``claude`` account, the time zone, the firewall).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncssh
import pytest

from convocate.common import keys, messages
from tests.harness import REPO, python
from tests.systemd_hosts import BASE_IMAGE, DOCKER

pytestmark = pytest.mark.docker

LABEL = "convocate.test=host-cli"


@pytest.fixture
def host_container() -> Iterator[str]:
    """A vanilla Debian container standing for a host to prepare; removed at teardown."""
    name = f"convocate-test-host-cli-{uuid.uuid4().hex[:8]}"
    subprocess.run([DOCKER, "run", "-d", "--rm", "--name", name, "--label", LABEL, "--network", "none", BASE_IMAGE,
                    "sleep", "infinity"], check=True, capture_output=True)
    yield name
    subprocess.run([DOCKER, "rm", "-f", name], capture_output=True)


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True


@pytest.fixture
async def ssh_host(tmp_path: Path, host_container: str) -> AsyncIterator[tuple[list[str], list[str]]]:
    """An SSH server on loopback whose exec requests run in ``host_container``; yields (CLI options, commands)."""
    commands: list[str] = []

    async def run(process: asyncssh.SSHServerProcess) -> None:
        commands.append(process.command or "")
        proc = await asyncio.create_subprocess_exec(
            DOCKER, "exec", "-i", host_container, "sh", "-c", process.command or "true",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        feed = asyncio.ensure_future(_pump_in(process, proc))
        out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
        status = await proc.wait()
        feed.cancel()
        process.stdout.write(out)
        process.stderr.write(err)
        process.exit(status)

    host_key, client_key = keys.generate_key(), keys.generate_key()
    identity = tmp_path / "id_ed25519"
    keys.write_private_key(identity, client_key)
    server = await asyncssh.create_server(
        _Server, "127.0.0.1", 0, server_host_keys=[host_key], process_factory=run, encoding=None,
        authorized_client_keys=asyncssh.import_authorized_keys(keys.public_key_line(client_key) + "\n"))
    port = server.sockets[0].getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {keys.public_key_line(host_key)}\n")
    try:
        yield (["--host", "127.0.0.1", "--port", str(port), "--user", "root", "--identity", str(identity),
                "--known-hosts", str(known)], commands)
    finally:
        server.close()
        await server.wait_closed()


async def _pump_in(process: asyncssh.SSHServerProcess, proc: asyncio.subprocess.Process) -> None:
    while data := await process.stdin.read(65536):
        proc.stdin.write(data)
        await proc.stdin.drain()
    proc.stdin.close()


async def convocate_host(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    proc = await asyncio.create_subprocess_exec(python(), "-m", "convocate_host", *args, cwd=REPO, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def docker_diff(container: str) -> str:
    return subprocess.run([DOCKER, "diff", container], check=True, capture_output=True, text=True).stdout


async def test_install_dry_run_changes_nothing_and_lists_what_would_change(ssh_host, host_container):
    options, commands = ssh_host
    before = docker_diff(host_container)
    done = await convocate_host("install", "--dry-run", "--no-reboot", "--role", "shell", *options)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert docker_diff(host_container) == before  # not one file added, changed or removed on the host

    lines = done.stdout.splitlines()
    host = "root@127.0.0.1:" + options[3]
    # The steps a real run would take, as "would", and the commands behind them, as "plan".
    assert any(line.startswith(f"{host}: would   installed docker.io, dnsmasq") for line in lines), lines
    assert any(line.startswith(f"{host}: plan    would run: env DEBIAN_FRONTEND=noninteractive") and
               "apt-get install -y" in line for line in lines), lines
    assert f"{host}: would   group claude (GID 1337) created" in lines
    assert f"{host}: would   user claude (UID 1337) created" in lines
    assert any(f"{host}: plan    would run: adduser --system --uid 1337" in line for line in lines)
    for port in ("22/tcp", "223/tcp", "6514:6769/tcp"):
        assert f"{host}: would   firewall allows {port}" in lines
    assert lines[-1].startswith(f"install on {host}: ") and lines[-1].endswith("nothing was changed (dry run)")
    # apt was asked what it would upgrade (--simulate, a read); the package lists were not updated.
    assert any("apt-get --simulate" in c and "dist-upgrade" in c for c in commands)
    assert not any("apt-get update" in c or "apt-get install" in c or "adduser" in c or "addgroup" in c
                   for c in commands), commands


async def test_install_dry_run_as_json(ssh_host, host_container):
    options, _ = ssh_host
    before = docker_diff(host_container)
    done = await convocate_host("install", "--dry-run", "--no-upgrade", "--json", *options)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert docker_diff(host_container) == before
    document = json.loads(done.stdout)
    assert document["ok"] is True and document["command"] == "install" and document["dry_run"] is True
    [report] = document["hosts"]
    assert report["command"] == "install" and report["changes"] == document["changes"] >= 4
    assert report["summary"] == messages.DRY_RUN_SUMMARY.format(count=report["changes"])
    statuses = {step["status"] for step in report["steps"]}
    assert statuses <= {"changed", "ok", "note", "planned"} and {"changed", "planned", "note"} <= statuses
    assert {"status": "note", "line": "dist-upgrade skipped (--no-upgrade)"} in report["steps"]
    assert {"status": "changed", "line": "user claude (UID 1337) created"} in report["steps"]


async def test_an_error_with_json_is_json_on_stdout_with_the_same_status(tmp_path):
    args = ("install", "--dry-run", "--host", "127.0.0.1", "--port", "1", "--user", "root",
            "--known-hosts", str(tmp_path / "none"))
    plain = await convocate_host(*args)
    as_json = await convocate_host(*args, "--json")
    assert plain.returncode == as_json.returncode == 69  # EX_UNAVAILABLE: nothing listens on port 1
    answer = json.loads(as_json.stdout)
    assert answer["ok"] is False and answer["code"] == "unreachable" and answer["error"] in plain.stderr


def _stand_in_deb(directory: Path, package: str) -> Path:
    """A minimal real .deb named ``package`` (dpkg-deb --build): init-shell only reads its control fields."""
    tree = directory / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 0.1.0\nArchitecture: all\n"
                                             "Maintainer: test <test@example.org>\nDescription: stand-in\n")
    debs = directory / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(debs / f"{package}_0.1.0_all.deb")],
                   check=True, capture_output=True)
    return debs


async def test_init_shell_dry_run_on_a_fresh_host_says_it_would_install_and_stops_there(ssh_host, host_container,
                                                                                        tmp_path):
    options, commands = ssh_host
    debs = _stand_in_deb(tmp_path, "convocate")
    before = docker_diff(host_container)
    done = await convocate_host("init-shell", "--dry-run", "--json", "--debs", str(debs), *options)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert docker_diff(host_container) == before
    steps = json.loads(done.stdout)["hosts"][0]["steps"]
    assert {"status": "changed", "line": "convocate 0.1.0 installed"} in steps
    assert any(s["status"] == "planned" and s["line"].startswith("would run: debconf-set-selections") for s in steps)
    assert any(s["status"] == "planned" and s["line"].startswith("would write /") and "convocate_0.1.0_all.deb" in
               s["line"] for s in steps)
    assert steps[-1] == {"status": "note", "line": messages.DRY_RUN_STOPS_AT_PACKAGE.format(package="convocate")}
    assert not any("apt-get install" in c or "debconf-set-selections" in c for c in commands), commands


async def test_drain_needs_all_and_says_so_before_touching_a_host(tmp_path):
    # Port 1 listens nowhere: the refusal must come before any login is tried.
    done = await convocate_host("update", "--host", "127.0.0.1", "--port", "1", "--drain", "--json",
                                "--known-hosts", str(tmp_path / "none"))
    answer = json.loads(done.stdout)
    assert done.returncode != 0 and answer["ok"] is False and answer["code"] == "bad_request"
    assert answer["error"] == "--drain needs --all (it moves an agent's sessions to the other agents)"
