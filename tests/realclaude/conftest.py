"""Fixtures of the real-Claude tests: the real image, one cluster for all of them, sessions wired to a fake API.

The image is ``CONVOCATE_REAL_IMAGE`` (``./build.sh test`` builds ``convocate:<version>`` and passes it),
by default ``convocate:<version>``; ``CONVOCATE_REAL_IMAGE=none`` says it is not wanted and skips these
tests (the only reason they skip; a wanted image that is missing is a failure). Select them with
``-m realclaude``.

How a session reaches the fake API: the agent's root-only session env file (``session.env``, read at
every container start) carries ``ANTHROPIC_BASE_URL=http://127.0.0.1:8765`` and
``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``; a fake API key is stored once for the cluster with
``convocate auth set --api-key`` (the agent hands it to each session at start); after each start the
fixture takes the container off Docker's bridge (``docker network disconnect``: only its loopback
is left, so nothing can leave it) and attaches a :class:`~tests.realclaude.fakeapi.FakeAPI` helper to
its namespace. ``HTTPS_PROXY`` points at a closed loopback port as a second fence for anything that
would not be the fake API.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import docker
import pytest

from convocate.common.fsutil import atomic_write
from convocate.common.version import __version__
from convocate_host import claude_pin
from tests.conftest import connect, rpc_ok
from tests.harness import LocalCluster, remove_containers
from tests.realclaude.fakeapi import BASE_URL, FakeAPI
from tests.test_status import Subscriber

REAL_IMAGE = os.environ.get("CONVOCATE_REAL_IMAGE", f"convocate:{__version__}")
#: A fake key; its last 20 characters are what Claude Code asks to approve.
API_KEY = "sk-ant-api03-convocate-fake-key-for-tests-0123456789"
SESSION_ENV = {
    "ANTHROPIC_BASE_URL": BASE_URL,
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "HTTPS_PROXY": "http://127.0.0.1:9",  # discard port, nothing listens: a closed door for any other host
    "NO_PROXY": "127.0.0.1,localhost",
}
#: Claude Code needs more than the stand-in: ~1 s of CPU to start; two sessions fit the 90% of 2 cores.
SESSION_CPUS = 0.8
SESSION_MEMORY_MB = 1536
HOME = "/home/claude"
PROMPT_MARK = "❯"


@pytest.fixture(scope="session")
def real_image(docker_client: docker.DockerClient) -> str:
    if REAL_IMAGE == "none":
        pytest.skip("CONVOCATE_REAL_IMAGE=none: the real Claude Code image is not wanted in this run")
    try:
        image = docker_client.images.get(REAL_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"the real Claude Code image {REAL_IMAGE} is missing; run ./build.sh image --real "
                    "(or set CONVOCATE_REAL_IMAGE=none to skip these tests)")
    built, pinned = image.labels.get("convocate.claude-code"), claude_pin.read_pin()
    if built != pinned:  # these tests are about the pinned Claude Code (issue 15, item 6)
        pytest.fail(f"{REAL_IMAGE} has Claude Code {built}, the pin (packaging/image/claude-code.version) says "
                    f"{pinned}; rebuild it with ./build.sh image --real")
    return REAL_IMAGE


def _sweep_stale_helpers(client: docker.DockerClient) -> None:
    """Remove fake API helpers (label ``convocate.test=realcc``) whose session container no longer runs.

    A crashed run leaves them behind; a live run's helpers share a running container's namespace and stay.
    """
    for helper in client.containers.list(all=True, filters={"label": "convocate.test=realcc"}, ignore_removed=True):
        mode = helper.attrs.get("HostConfig", {}).get("NetworkMode", "")
        try:
            alive = mode.startswith("container:") and client.containers.get(mode.split(":", 1)[1]).status == "running"
        except docker.errors.NotFound:
            alive = False
        if not alive:
            with contextlib.suppress(docker.errors.APIError):
                helper.remove(force=True)


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory, real_image: str,
                 docker_client: docker.DockerClient) -> Iterator[LocalCluster]:
    """One agent and status-serve, the real image current, for every real-Claude test of the run."""
    _sweep_stale_helpers(docker_client)
    cluster = LocalCluster(root=tmp_path_factory.mktemp("realclaude"), image=real_image, status=True)
    cluster.install()
    lines = "".join(f"{k}={v}\n" for k, v in SESSION_ENV.items())
    atomic_write(cluster.paths.session_env_file, lines.encode(), mode=0o600)
    cluster.start()
    try:
        # The key goes the way an operator's does: `convocate auth set` on the shell host, sent to the
        # agent with credential_set, into each session through its credential.env at start.
        cluster.register()
        stored = cluster.run_role("convocate", "auth", "set", "--api-key", "--from-file", "-", input=API_KEY)
        assert API_KEY not in stored.stdout + stored.stderr, "auth set echoed the secret"
        yield cluster
    finally:
        cluster.stop_all()
        remove_containers(cluster.root)


def activity(kind: str, sid: str, detail: str | None = None):
    """A matcher for ``session.activity`` events of ``sid`` (tests.test_status.Subscriber)."""
    return lambda m: (m["type"] == "session.activity" and m.get("session_id") == sid
                      and m["data"]["activity"] == kind and (detail is None or m["data"]["detail"] == detail))


@dataclass
class RealSession:
    """A session of the real cluster with its fake API.

    Attributes:
        sid: The session UUID.
        api: Its fake Messages API (attached to the running container's namespace).
        home: The session's home directory on the host.
    """

    sid: str
    api: FakeAPI
    home: Path


class Driver:
    """Drives sessions of the real cluster: start, restart, clone, type, read screen and events.

    Args:
        cluster: The running cluster.
        ssh: An open connection to its agent.
        events: A subscriber to status-serve's socket.
        docker_client: For the containers and the fake APIs' helpers.
        tmp: Where the fake APIs keep their files.
        image: The image the helpers run.
    """

    def __init__(self, cluster: LocalCluster, ssh: asyncssh.SSHClientConnection, events: Subscriber,
                 docker_client: docker.DockerClient, tmp: Path, image: str) -> None:
        self.cluster = cluster
        self.ssh = ssh
        self.events = events
        self.docker = docker_client
        self.tmp = tmp
        self.image = image
        self.apis: list[FakeAPI] = []
        self.sessions: list[str] = []

    async def call(self, op: str, params: dict[str, Any] | None = None) -> Any:
        return await rpc_ok(self.ssh, op, params)

    async def work_dir(self) -> str:
        """The sessions' working directory inside the container (the agent setting ``work_dir``)."""
        return (await self.call("settings-get"))["work_dir"]

    def host_path(self, session: RealSession, path: str) -> Path:
        """Where a path inside the session's container (under /home/claude) is on the host."""
        return session.home / os.path.relpath(path, HOME)

    def container(self, sid: str):
        return self.docker.containers.get(f"convocate-session-{sid}")

    def _isolate(self, sid: str) -> str:
        """Take the session's container off every Docker network: only its loopback is left. Returns its ID."""
        container = self.container(sid)
        for name in list(container.attrs["NetworkSettings"]["Networks"]):
            self.docker.networks.get(name).disconnect(container, force=True)
        container.reload()
        assert not container.attrs["NetworkSettings"]["Networks"], container.attrs["NetworkSettings"]
        return container.id

    async def _wire(self, session: RealSession, since: int) -> None:
        """After a (re)start: isolate the container, attach the fake API, wait for Claude Code's prompt."""
        container_id = await asyncio.to_thread(self._isolate, session.sid)
        await asyncio.to_thread(session.api.attach, container_id)
        await self.events.wait_for(activity("idle", session.sid, ""), since, timeout=60)  # SessionStart
        await self.wait_screen(session, PROMPT_MARK)

    def new_api(self) -> FakeAPI:
        name = f"convocate-realcc-api-{uuid.uuid4().hex[:12]}"
        api = FakeAPI(self.docker, self.tmp / name, self.image, name)
        self.apis.append(api)
        return api

    async def start(self, name: str) -> RealSession:
        """Create a session, start it and wire it to a fresh fake API.

        Nothing is seeded in its home: the entrypoint's claude-config writes the ``~/.claude.json`` keys
        (onboarding, the work dir trusted, the key approved) and ``skip_permissions`` is on (below).
        """
        made = await self.call("create", {"name": name, "cpus": SESSION_CPUS, "memory_mb": SESSION_MEMORY_MB})
        sid = made["uuid"]
        self.sessions.append(sid)
        session = RealSession(sid, self.new_api(), self.cluster.paths.session_dir(sid))
        await self.restart(session)
        return session

    async def restart(self, session: RealSession) -> None:
        """The ``restart`` op (a new container, so a new namespace), then re-wire the fake API."""
        session.api.detach()
        since = len(self.events.messages)
        await self.call("restart", {"id": session.sid})
        await self._wire(session, since)

    async def clone(self, source: RealSession, name: str) -> RealSession:
        """The ``clone`` op, then start the copy with a fake API of its own."""
        made = await self.call("clone", {"source_id": source.sid, "name": name})
        self.sessions.append(made["uuid"])
        copy = RealSession(made["uuid"], self.new_api(), self.cluster.paths.session_dir(made["uuid"]))
        await self.restart(copy)
        return copy

    async def prompt(self, session: RealSession, text: str) -> int:
        """Wait for the prompt, type ``text`` and Enter with the ``send`` op; returns the event index before it."""
        await self.wait_screen(session, PROMPT_MARK)
        since = len(self.events.messages)
        await self.call("send", {"id": session.sid, "text": text, "enter": True})
        return since

    async def wait_activity(self, session: RealSession, kind: str, since: int, detail: str | None = None,
                            timeout: float = 60) -> dict:
        """The first ``session.activity`` event of ``kind`` after index ``since``.

        Raises:
            AssertionError: none within ``timeout`` seconds (with the activities seen and the screen).
        """
        try:
            _, message = await self.events.wait_for(activity(kind, session.sid, detail), since, timeout=timeout)
        except AssertionError:
            seen = [(m["data"]["activity"], m["data"]["detail"]) for m in self.events.since(since)
                    if m["type"] == "session.activity" and m.get("session_id") == session.sid]
            raise AssertionError(f"no activity {kind!r} (detail {detail!r}) within {timeout} s; saw {seen}; "
                                 f"screen:\n{await self.screen(session)}") from None
        return message

    async def screen(self, session: RealSession) -> str:
        return (await self.call("capture", {"id": session.sid}))["text"]

    async def wait_screen(self, session: RealSession, text: str, timeout: float = 60) -> str:
        """The pane's text once it shows ``text``.

        Raises:
            AssertionError: not within ``timeout`` seconds (with the last screen).
        """
        deadline = time.monotonic() + timeout
        while True:
            screen = await self.screen(session)
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on screen within {timeout} s:\n{screen}")
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        for api in self.apis:
            await asyncio.to_thread(api.detach)
        for sid in self.sessions:
            with contextlib.suppress(AssertionError):
                await self.call("kill", {"id": sid})


@pytest.fixture
async def driver(real_cluster: LocalCluster, docker_client: docker.DockerClient, real_image: str,
                 tmp_path: Path) -> AsyncIterator[Driver]:
    """A :class:`Driver` on the shared real cluster; the test's sessions are stopped and its helpers removed."""
    async with connect(real_cluster) as ssh, Subscriber(real_cluster.paths.status_socket) as events:
        d = Driver(real_cluster, ssh, events, docker_client, tmp_path, real_image)
        if not (await d.call("settings-get"))["skip_permissions"]:  # the Bash tool runs without asking
            await d.call("settings-set", {"skip_permissions": True})
        try:
            yield d
        finally:
            await d.close()
