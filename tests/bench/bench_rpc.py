"""RPC round trip on an open SSH connection: ping and list of 10/100/500 sessions, against an echo floor.

Two ways of driving it. Channel per call: one connection, one new channel
per request, the original clients' way (DESIGN §2). Held channel: one channel
kept open, one request line with an ``id`` at a time, the answer line read
before the next is sent (``convocate_agent.rpc``; what ``AgentClient`` does
for its reads), measured both raw and through ``AgentClient.call``; every
channel, the floors' too, with the clients' ``RPC_MAX_PKTSIZE``. The floors
are a bare asyncssh echo subsystem served by the same listener code, driven
the same two ways, so the difference is what the agent's request handling
costs. ``list`` of 500 (some 190 kB) is also set against the same listener
answering those very bytes on a new channel, one of each in turn: the SSH
transport's share of the figure, so the ratio is the agent's own work on a
large answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncssh

from convocate.client import AgentClient
from convocate.common import keys
from convocate.common.framing import encode_line
from convocate.common.protocol import RPC_MAX_PKTSIZE, RPC_SUBSYSTEM
from convocate.common.sshserver import SubsystemListener
from convocate.registry import load_agent
from tests.bench.common import Figure, connect, connect_loopback, held_round_trips, percentile, scratch_cluster
from tests.conftest import rpc_ok

ROUNDS = 300


async def _ask(conn: asyncssh.SSHClientConnection, subsystem: str, line: bytes) -> bytes:
    """One request on a new channel: the line, EOF, everything the channel answers."""
    process = await conn.create_process(subsystem=subsystem, encoding=None, max_pktsize=RPC_MAX_PKTSIZE)
    process.stdin.write(line)
    process.stdin.write_eof()
    out = await process.stdout.read()
    process.close()
    return out


async def _round_trips(conn: asyncssh.SSHClientConnection, subsystem: str, line: bytes, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        out = await _ask(conn, subsystem, line)
        times.append((time.perf_counter() - started) * 1000)
        assert out, "empty answer"
    return times


async def _client_round_trips(client: AgentClient, op: str, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await client.call(op)
        times.append((time.perf_counter() - started) * 1000)
    return times


class _Floor:
    """A bare asyncssh listener served by the same listener code as the agent, and one connection to it.

    Subsystems: ``echo`` writes back each line it reads (a held channel's floor too); ``answer`` reads
    one line and writes :attr:`answer` (the floor of an answer of that size: the SSH transport's cost
    of those bytes, without the agent's work).
    """

    def __init__(self) -> None:
        self.answer = b"{}\n"
        self.conn: asyncssh.SSHClientConnection = None  # type: ignore[assignment]  # set by serve()

    async def _serve(self, process: asyncssh.SSHServerProcess) -> None:
        if process.subsystem == "answer":
            await process.stdin.readline()
            process.stdout.write(self.answer)
        else:
            while line := await process.stdin.readline():
                process.stdout.write(line)
        process.exit(0)

    @contextlib.asynccontextmanager
    async def serve(self, tmp_key_dir) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """Listen on a loopback port, connect; yields the connection (also :attr:`conn`)."""
        host_key = keys.generate_key()
        client_key = keys.generate_key()
        auth = tmp_key_dir / "echo_authorized_keys"
        auth.write_text(keys.public_key_line(client_key) + "\n")
        listener = SubsystemListener(listen="127.0.0.1:0", default_port=0, host_key=host_key, authorized_keys=auth,
                                     subsystems=frozenset({"echo", "answer"}),
                                     handler=lambda p, c: asyncio.ensure_future(self._serve(p)),
                                     server_version="echo-floor")
        (_, port), = await listener.start()
        self.conn = conn = await connect_loopback(port, host_key, client_key)
        try:
            yield conn
        finally:
            conn.close()
            await listener.stop_accepting()
            await listener.close_connections()


async def _echo_floors(conn: asyncssh.SSHClientConnection, rounds: int) -> tuple[list[float], list[float]]:
    """The echo's round trips: a channel per call, and on one held channel."""
    await _round_trips(conn, "echo", b'{"op":"ping","params":{}}\n', 20)  # warm up
    per_call = await _round_trips(conn, "echo", b'{"op":"ping","params":{}}\n', rounds)
    await held_round_trips(conn, [("ping", {})], subsystem="echo", rounds=50)
    held = await held_round_trips(conn, [("ping", {})], subsystem="echo", rounds=rounds * 3)
    return per_call, held


async def _pings(conn: asyncssh.SSHClientConnection, cluster, floor: list[float], held_floor: list[float],
                 rounds: int) -> list[Figure]:
    figures = []
    ping = encode_line({"op": "ping", "params": {}})
    await _round_trips(conn, RPC_SUBSYSTEM, ping, 20)
    times = await _round_trips(conn, RPC_SUBSYSTEM, ping, rounds)
    for q in (0.5, 0.99):
        figures.append(Figure(f"rpc ping p{int(q * 100)}", "ms", percentile(times, q),
                              percentile(floor, q), "asyncssh echo subsystem"))
    await held_round_trips(conn, [("ping", {})], subsystem=RPC_SUBSYSTEM, rounds=50)
    times = await held_round_trips(conn, [("ping", {})], subsystem=RPC_SUBSYSTEM, rounds=rounds * 3)
    for q in (0.5, 0.99):
        figures.append(Figure(f"rpc ping (held channel) p{int(q * 100)}", "ms", percentile(times, q),
                              percentile(held_floor, q), "asyncssh echo subsystem, held channel"))
    client = AgentClient(load_agent(cluster.paths, cluster.agent_id), paths=cluster.paths)
    try:
        await _client_round_trips(client, "ping", 50)
        times = await _client_round_trips(client, "ping", rounds * 3)
    finally:
        await client.close()
    for q in (0.5, 0.99):
        figures.append(Figure(f"AgentClient ping (held channel) p{int(q * 100)}", "ms",
                              percentile(times, q), percentile(held_floor, q),
                              "asyncssh echo subsystem, held channel"))
    return figures


async def _lists(conn: asyncssh.SSHClientConnection, floor_server: _Floor, floor: list[float],
                 held_floor: list[float], rounds: int) -> list[Figure]:
    """``list`` of 10, 100 and 500 sessions; the 500's also against an answer of its size."""
    figures = []
    made = 0
    listing = encode_line({"op": "list", "params": {}})
    for size in (10, 100, 500):
        while made < size:
            await asyncio.gather(*(rpc_ok(conn, "create", {"name": f"bench-{made + i}"})
                                   for i in range(min(25, size - made))))
            made = min(size, made + 25)
        times = await _round_trips(conn, RPC_SUBSYSTEM, listing, max(40, rounds // (size // 10 + 1)))
        for q in (0.5, 0.99):
            figures.append(Figure(f"rpc list of {size} p{int(q * 100)}", "ms", percentile(times, q),
                                  percentile(floor, q), "asyncssh echo subsystem"))
        if size == 10:
            times = await held_round_trips(conn, [("list", {})], subsystem=RPC_SUBSYSTEM, rounds=rounds)
            for q in (0.5, 0.99):
                figures.append(Figure(f"rpc list of 10 (held) p{int(q * 100)}", "ms",
                                      percentile(times, q), percentile(held_floor, q),
                                      "asyncssh echo subsystem, held channel"))
        if size == 500:
            figures.extend(await _against_its_size(conn, floor_server, listing))
    return figures


async def _against_its_size(conn: asyncssh.SSHClientConnection, floor_server: _Floor, listing: bytes,
                            rounds: int = 100) -> list[Figure]:
    """``list`` against the floor listener answering the list's very bytes, one of each in turn.

    Alternated, so that a change of the machine's load between the two series does not make the ratio.
    """
    floor_server.answer = await _ask(conn, RPC_SUBSYSTEM, listing)
    times: list[float] = []
    sized: list[float] = []
    for _ in range(rounds):
        times += await _round_trips(conn, RPC_SUBSYSTEM, listing, 1)
        sized += await _round_trips(floor_server.conn, "answer", listing, 1)
    size_kb = len(floor_server.answer) / 1000
    return [Figure(f"rpc list of 500 p{int(q * 100)}, against its size", "ms", percentile(times, q),
                   percentile(sized, q), f"asyncssh subsystem answering the same {size_kb:.0f} kB, alternated")
            for q in (0.5, 0.99)]


def run(image: str, rounds: int = ROUNDS) -> list[Figure]:
    """Measure; returns the figures."""
    figures: list[Figure] = []
    with scratch_cluster(image) as cluster:
        async def measure() -> None:
            floor_server = _Floor()
            async with floor_server.serve(cluster.root) as floor_conn:
                floor, held_floor = await _echo_floors(floor_conn, rounds)
                async with connect(cluster) as conn:
                    figures.extend(await _pings(conn, cluster, floor, held_floor, rounds))
                    figures.extend(await _lists(conn, floor_server, floor, held_floor, rounds))

        asyncio.run(measure())
    return figures
