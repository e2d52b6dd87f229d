"""Shared fixtures: a real agent on loopback, clients for it, and Docker clean-up.

The agent runs as a real ``convocate-agent serve`` subprocess under a
relocated root (``CONVOCATE_ROOT``) in pytest's temp dir, with the session
test image (``CONVOCATE_TEST_IMAGE``, built by ``./build.sh image``). Every
container it creates carries the label ``convocate.root=<that root>``; they
are force-removed when the agent fixture ends, and leftovers of crashed runs
(roots under pytest's temp base) are swept when the session starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import docker
import pytest

from convocate.common import keys
from convocate.common.framing import encode_line
from convocate.common.protocol import RPC_SUBSYSTEM
from tests.harness import LocalCluster, remove_containers
from tests.systemd_hosts import (
    HOST_IMAGE_LABEL,
    HOST_PACKAGES,
    UPGRADE_VERSION,
    build_debs,
    build_systemd_image,
)

TEST_IMAGE = os.environ.get("CONVOCATE_TEST_IMAGE", "convocate:0.1.0-standin")


@pytest.fixture(scope="session", autouse=True)
def _scrub_ssh_agent() -> None:
    """Tests never use the developer's ssh-agent."""
    os.environ.pop("SSH_AUTH_SOCK", None)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    try:
        client.ping()
    except docker.errors.DockerException as e:  # pragma: no cover - environment problem
        pytest.fail(f"dockerd is not reachable ({e}); run ./build.sh deps")
    yield client
    client.close()


@pytest.fixture(scope="session")
def session_image(docker_client: docker.DockerClient) -> str:
    try:
        docker_client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:  # pragma: no cover - environment problem
        pytest.fail(f"session image {TEST_IMAGE} is missing; run ./build.sh image")
    return TEST_IMAGE


def _roots_in_use() -> set[str]:
    """``CONVOCATE_ROOT`` of every live process (agents of concurrent test runs, the demo)."""
    roots = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        for entry in environ.split(b"\0"):
            if entry.startswith(b"CONVOCATE_ROOT="):
                roots.add(entry.split(b"=", 1)[1].decode(errors="replace"))
    return roots


#: Age after which a container of another run counts as left behind, in seconds.
STALE_AFTER_S = 2 * 3600


@pytest.fixture(scope="session", autouse=True)
def _sweep_stale_test_containers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Remove containers that crashed runs left under pytest's temp roots.

    At the start: those of earlier runs whose agent is gone and whose root
    pytest already removed or that are older than :data:`STALE_AFTER_S` (a
    concurrent run's containers without an agent, e.g. ``test_image.py``'s,
    are left alone). At the end: whatever this run's roots still have.
    """
    own = str(tmp_path_factory.getbasetemp())
    base = str(Path(own).parent)

    def stale(c: Any, root: str) -> bool:
        if not Path(root).exists():
            return True
        created = c.attrs.get("Created", "")
        try:
            born = datetime.datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00")
        except ValueError:
            return True
        return (datetime.datetime.now(datetime.UTC) - born).total_seconds() > STALE_AFTER_S

    def sweep(prefix: str, spare: set[str], only_stale: bool) -> None:
        try:
            client = docker.from_env()
        except docker.errors.DockerException:
            return
        with contextlib.closing(client):
            for c in client.containers.list(all=True, filters={"label": "convocate.root"}, ignore_removed=True):
                root = c.labels.get("convocate.root", "")
                if root.startswith(prefix) and root not in spare and (not only_stale or stale(c, root)):
                    with contextlib.suppress(docker.errors.APIError):
                        c.remove(force=True)

    sweep(base, _roots_in_use(), only_stale=True)
    yield
    sweep(own, set(), only_stale=False)


def make_cluster(root: Path, image: str, **options: Any) -> Iterator[LocalCluster]:
    """A running agent under ``root`` until the generator is closed (``options`` go to :class:`LocalCluster`).

    With ``status=True`` its ``convocate status-serve`` runs too; both are stopped at the end, and the
    containers of ``root`` removed.
    """
    cluster = LocalCluster(root=root, image=image, **options)
    cluster.install()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop_all()
        remove_containers(root)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, session_image: str) -> Iterator[LocalCluster]:
    """A running agent shared by the tests of one module."""
    yield from make_cluster(tmp_path_factory.mktemp("cluster"), session_image)


@pytest.fixture
def fresh_cluster(tmp_path: Path, session_image: str) -> Iterator[LocalCluster]:
    """A running agent of the test's own (for tests that stop or break it)."""
    yield from make_cluster(tmp_path / "root", session_image)


@pytest.fixture
async def ssh(cluster: LocalCluster) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """An asyncssh connection to the module's agent, as the registered shell."""
    async with connect(cluster) as conn:
        yield conn


@contextlib.asynccontextmanager
async def connect(cluster: LocalCluster, key: asyncssh.SSHKey | None = None,
                  **options: Any) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """Connect to ``cluster``'s agent, pinning its host key."""
    host_key = keys.load_private_key(cluster.paths.agent_host_key).convert_to_public()
    client_key = key or keys.load_private_key(cluster.shell_key_path)
    conn = await asyncssh.connect("127.0.0.1", cluster.port, username="claude", client_keys=[client_key],
                                  known_hosts=([host_key], [], []), agent_path=None, config=None, **options)
    try:
        yield conn
    finally:
        conn.close()
        await conn.wait_closed()


async def rpc(conn: asyncssh.SSHClientConnection, op: str, params: dict[str, Any] | None = None,
              **envelope: Any) -> dict[str, Any]:
    """Send one request on its own channel (the original clients' style) and return the response object."""
    process = await conn.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
    request: dict[str, Any] = {"op": op, "params": params if params is not None else {}}
    request.update(envelope)
    process.stdin.write(encode_line(request))
    process.stdin.write_eof()
    out = await asyncio.wait_for(process.stdout.read(), 60)
    process.close()
    lines = out.splitlines()
    assert len(lines) == 1, f"expected one response line, got {out!r}"
    return json.loads(lines[0])


async def rpc_ok(conn: asyncssh.SSHClientConnection, op: str, params: dict[str, Any] | None = None) -> Any:
    """Like :func:`rpc` but asserts success and returns ``result``."""
    response = await rpc(conn, op, params)
    assert response["ok"], response
    return response.get("result")


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 20.0, interval: float = 0.1) -> object:
    """Call ``predicate`` every ``interval`` seconds until it returns something true, and return that.

    Raises:
        AssertionError: ``timeout`` seconds passed first (the message names ``what``).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def openssh_args(cluster: LocalCluster, tmp_path: Path, key_path: Path | None = None) -> list[str]:
    """``ssh`` options that reach the agent with the shell's key and its pinned host key."""
    known = tmp_path / "known_hosts"
    host_key = keys.load_private_key(cluster.paths.agent_host_key)
    known.write_text(f"[127.0.0.1]:{cluster.port} {keys.public_key_line(host_key)}\n")
    return ["ssh", "-F", "none", "-p", str(cluster.port), "-i", str(key_path or cluster.shell_key_path),
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "claude@127.0.0.1"]


def run_openssh(args: list[str], input: bytes = b"", timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    return subprocess.run(args, input=input, capture_output=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three .debs of this tree (``./build.sh debs``), built once per run: package -> path, plus ``changes``."""
    return build_debs(tmp_path_factory.mktemp("debs"))


@pytest.fixture(scope="session")
def upgrade_debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tree built as the next version (:data:`UPGRADE_VERSION`), for upgrade tests."""
    return build_debs(tmp_path_factory.mktemp("upgrade-debs"), "--version", UPGRADE_VERSION)


@pytest.fixture(scope="session")
def systemd_host_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Debian 12 image with systemd as PID 1 for every system test (see tests/systemd_hosts.py)."""
    yield build_systemd_image(tmp_path_factory.mktemp("systemd-image"), HOST_IMAGE_LABEL, packages=HOST_PACKAGES,
                              docker_cli=True)  # kept: a cache keyed by what it is made of


# --- where the suite's time goes, per test file (CI's budget is 40 minutes) --------------------------
_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add each phase's duration (setup, call, teardown) to its test file's total."""
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the 25 test files that took longest, with module fixtures' setup and teardown counted."""
    if not _FILE_SECONDS:
        return
    total = sum(_FILE_SECONDS.values())
    terminalreporter.section("seconds per test file (setup + call + teardown)")
    for path, seconds in sorted(_FILE_SECONDS.items(), key=lambda item: -item[1])[:25]:
        terminalreporter.write_line(f"{seconds:8.1f} s  {100 * seconds / total:4.1f}%  {path}")
    terminalreporter.write_line(f"{total:8.1f} s  in {len(_FILE_SECONDS)} files")
