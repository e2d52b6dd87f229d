"""Before authentication: floods of unauthenticated connections against a real agent (issue 14 item 4).

The attacker has no key. It opens TCP connections to the agent's SSH port and
sends nothing, the cheapest way to hold a server's slot and file descriptor.
The agent runs as a real ``convocate-agent serve`` under the open-file limit a
systemd service gets without ``LimitNOFILE=`` (soft 1024), so a flood that the
listener does not cap runs it out of descriptors, as it did on a real host.

Every flood here is bounded in count (at most :data:`FLOOD` connections) and
in time (:data:`CONNECT_WAIT_S` to connect, then closed by the test), runs on
loopback only, and is closed when its test ends whatever happens. Flood
sources are other loopback addresses (``127.0.0.2`` and up); the legitimate
client comes from ``127.0.0.1``.
"""

from __future__ import annotations

import asyncio
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from convocate.common import messages
from convocate.common.preauth import FLOOD_QUIET_S, MAX_STARTUPS, PER_SOURCE_MAX_STARTUPS
from convocate.common.sshserver import LOGIN_GRACE_S, WANTED_NOFILE
from tests.conftest import connect, make_cluster, rpc
from tests.harness import REPO, LocalCluster

#: Connections in the big flood: past the 1024 descriptors of a unit without LimitNOFILE=.
FLOOD = 1100
#: Seconds the flood is given to connect (the kernel's backlog holds what the agent has not accepted).
CONNECT_WAIT_S = 10.0
#: Seconds after the last connect before the flood's sockets are examined.
SETTLE_S = 0.5
#: The soft open-file limit of a systemd service that sets no LimitNOFILE= (systemd's default).
SYSTEMD_DEFAULT_NOFILE = "1024:"

_SUMMARY = re.compile(r"refused (\d+) unauthenticated connection\(s\)")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, session_image: str) -> Iterator[LocalCluster]:
    """An agent under systemd's default open-file limit (``prlimit`` execs it, keeping the PID)."""
    yield from make_cluster(tmp_path_factory.mktemp("preauth"), session_image,
                            command_prefix=["prlimit", f"--nofile={SYSTEMD_DEFAULT_NOFILE}", "--"])


class Flood:
    """Unauthenticated TCP connections to one port, from given loopback sources; closed on exit.

    Args:
        port: The agent's port on 127.0.0.1.
        sources: Source address → connections to open from it.
    """

    def __init__(self, port: int, sources: dict[str, int]) -> None:
        self.port = port
        self.sources = sources
        self.sockets: list[tuple[str, socket.socket]] = []
        self._state: dict[int, str] = {}

    def __enter__(self) -> Flood:
        try:
            for source, count in self.sources.items():
                for _ in range(count):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setblocking(False)
                    s.bind((source, 0))
                    s.connect_ex(("127.0.0.1", self.port))
                    self.sockets.append((source, s))
            self._wait_connected()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait_connected(self) -> None:
        deadline = time.monotonic() + CONNECT_WAIT_S
        pending = {s.fileno(): s for _, s in self.sockets}
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLOUT)
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(100):
                poller.unregister(fd)
                del pending[fd]
        time.sleep(SETTLE_S)

    def census(self, wait: float = 0.0) -> dict[str, dict[str, int]]:
        """Per source: ``held`` (got the SSH banner, still open), ``closed`` (the agent closed it,
        with or without a banner), ``waiting`` (nothing yet: not accepted, or not answered).

        Args:
            wait: Seconds to keep looking while some are waiting (the kernel hands a listener
                whose queue was full the rest of the handshakes as the clients retransmit).
        """
        deadline = time.monotonic() + wait
        while True:
            for i, (_, s) in enumerate(self.sockets):
                if self._state.get(i) == "closed":
                    continue
                try:
                    data = s.recv(4096)
                    if not data:
                        self._state[i] = "closed"
                    else:
                        self._state[i] = "held"
                        if not s.recv(4096):
                            self._state[i] = "closed"
                except BlockingIOError:
                    pass
                except OSError:  # reset, or never connected
                    self._state[i] = "closed"
            waiting = len(self.sockets) - len(self._state)
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        out: dict[str, dict[str, int]] = {}
        for i, (source, _) in enumerate(self.sockets):
            counts = out.setdefault(source, {"held": 0, "closed": 0, "waiting": 0})
            counts[self._state.get(i, "waiting")] += 1
        return out

    def close(self) -> None:
        for _, s in self.sockets:
            s.close()
        self.sockets.clear()
        self._state.clear()


async def _ping_as_operator(cluster: LocalCluster) -> dict:
    async with connect(cluster, connect_timeout=10) as conn:
        return await rpc(conn, "ping")


def _agent_fds(cluster: LocalCluster) -> int:
    assert cluster.process is not None
    return len(list(Path(f"/proc/{cluster.process.pid}/fd").iterdir()))


async def test_a_flood_from_one_source_leaves_the_operator_able_to_log_in(agent: LocalCluster) -> None:
    with Flood(agent.port, {"127.0.0.2": FLOOD}) as flood:
        census = flood.census(wait=3)["127.0.0.2"]
        fds = _agent_fds(agent)
        response = await asyncio.wait_for(_ping_as_operator(agent), 30)
    assert response["ok"], response
    assert 0 < census["held"] <= PER_SOURCE_MAX_STARTUPS, census
    # The rest were closed as soon as accepted, or still wait in the kernel's queue (a listener
    # whose backlog was full gets them as the clients retransmit): none holds a descriptor.
    assert census["closed"] >= FLOOD - PER_SOURCE_MAX_STARTUPS - census["waiting"], census
    assert fds < 400, f"the agent held {fds} descriptors during the flood"


async def test_a_flood_from_many_sources_is_capped_in_total(agent: LocalCluster) -> None:
    per_source = PER_SOURCE_MAX_STARTUPS + 8
    sources = {f"127.0.0.{i}": per_source for i in range(10, 10 + MAX_STARTUPS // PER_SOURCE_MAX_STARTUPS + 3)}
    with Flood(agent.port, sources) as flood:
        census = flood.census(wait=3)
    held = sum(c["held"] for c in census.values())
    assert held <= MAX_STARTUPS, census
    assert all(c["held"] <= PER_SOURCE_MAX_STARTUPS for c in census.values()), census


async def test_a_flood_is_logged_in_one_line_without_tracebacks(agent: LocalCluster) -> None:
    await asyncio.sleep(FLOOD_QUIET_S + 1)  # the previous tests' floods are summed up and logged
    offset = len(agent.log_text())
    with Flood(agent.port, {"127.0.0.3": FLOOD}) as flood:
        census = flood.census(wait=3)["127.0.0.3"]
    await asyncio.sleep(FLOOD_QUIET_S + 1.5)
    log = agent.log_text()[offset:]
    assert "Traceback" not in log, log[:3000]
    summaries = _SUMMARY.findall(log)
    assert len(summaries) == 1, log[:3000]
    # Every refusal is counted: those the flood saw closed, and those still queued when it gave up.
    assert census["closed"] <= int(summaries[0]) <= FLOOD - census["held"], (summaries, census)
    assert "127.0.0.3" in log
    assert len(log.splitlines()) < 20, log[:3000]


async def test_an_unauthenticated_connection_is_closed_after_the_login_grace(agent: LocalCluster) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    try:
        banner = await asyncio.wait_for(reader.readline(), 5)
        assert banner.startswith(b"SSH-2.0-convocate-agent_")
        rest = await asyncio.wait_for(reader.read(), LOGIN_GRACE_S + 3)  # sends nothing: a stalled login
    finally:
        writer.close()
    elapsed = loop.time() - started
    assert rest == b"" and LOGIN_GRACE_S - 1 <= elapsed <= LOGIN_GRACE_S + 3, elapsed


@pytest.mark.parametrize("unit", ["convocate-agent.service", "convocate-status.service"])
def test_the_units_raise_the_open_file_limit(unit: str) -> None:
    text = (REPO / "packaging" / "systemd" / unit).read_text()
    limits = re.findall(r"^LimitNOFILE=(\d+)$", text, re.M)
    assert len(limits) == 1 and int(limits[0]) >= 2 * WANTED_NOFILE, limits


def test_the_flood_summary_names_the_caps() -> None:
    """The pure part: what the one line says (sources, caps), and that it resets for the next flood."""
    from convocate.common.preauth import FloodReport, StartupGate

    gate, report = StartupGate(4, 2), FloodReport()
    admitted = [gate.admit("192.0.2.1") for _ in range(3)] + [gate.admit(f"192.0.2.{i}") for i in (2, 3, 4)]
    assert admitted == [None, None, "per-source", None, None, "total"]
    for cap in ("per-source", "total", "total"):
        report.note("192.0.2.1", cap, 100.0)
    assert not report.due(101.0) and report.due(100.0 + FLOOD_QUIET_S)
    line = report.summary(103.0, gate)
    assert line == messages.PREAUTH_FLOOD.format(count=3, seconds=3.0, sources=1, top="192.0.2.1 3",
                                                 caps="per-source 1, total 2", max_startups=4, per_source=2)
    assert report.started is None and not report.refused
