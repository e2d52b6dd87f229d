"""RPC round trip on an open SSH connection: ping and list of 10/100/500 sessions, against an echo floor.

Two ways of driving it. Channel per call: one connection, one new channel
per request, the original clients' way (DESIGN §2). Held channel: one channel
kept open, one request line with an ``id`` at a time, the answer line read
before the next is sent (``convocate_agent.rpc``; what ``AgentClient`` does
for its reads), measured both raw and through ``AgentClient.call``. The floors
are a bare asyncssh echo subsystem served by the same listener code, driven
the same two ways, so the difference is what the agent's request handling
costs.
"""

from __future__ import annotations

import asyncio
import time

import asyncssh

from convocate.client import AgentClient
from convocate.common import keys
from convocate.common.framing import encode_line
from convocate.common.protocol import RPC_SUBSYSTEM
from convocate.common.sshserver import SubsystemListener
from convocate.registry import load_agent
from tests.bench.common import Figure, percentile, scratch_cluster
from tests.conftest import connect, rpc_ok

ROUNDS = 300


async def _round_trips(conn: asyncssh.SSHClientConnection, subsystem: str, line: bytes, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        process = await conn.create_process(subsystem=subsystem, encoding=None)
        process.stdin.write(line)
        process.stdin.write_eof()
        out = await process.stdout.read()
        process.close()
        times.append((time.perf_counter() - started) * 1000)
        assert out, "empty answer"
    return times


async def _held_round_trips(conn: asyncssh.SSHClientConnection, subsystem: str, op: str, rounds: int) -> list[float]:
    """``rounds`` requests on one channel, each answered before the next is written."""
    process = await conn.create_process(subsystem=subsystem, encoding=None)
    times = []
    try:
        for i in range(rounds):
            line = encode_line({"op": op, "params": {}, "id": i})
            started = time.perf_counter()
            process.stdin.write(line)
            out = await process.stdout.readline()
            times.append((time.perf_counter() - started) * 1000)
            assert out.startswith(b"{") and out.endswith(b"\n"), out
    finally:
        process.close()
    return times


async def _client_round_trips(client: AgentClient, op: str, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await client.call(op)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def _echo_floor(tmp_key_dir, rounds: int) -> tuple[list[float], list[float]]:
    host_key = keys.generate_key()
    client_key = keys.generate_key()
    auth = tmp_key_dir / "echo_authorized_keys"
    auth.write_text(keys.public_key_line(client_key) + "\n")

    async def echo(process: asyncssh.SSHServerProcess) -> None:  # line by line: a held channel's floor too
        while line := await process.stdin.readline():
            process.stdout.write(line)
        process.exit(0)

    listener = SubsystemListener(listen="127.0.0.1:0", default_port=0, host_key=host_key, authorized_keys=auth,
                                 subsystems=frozenset({"echo"}), handler=lambda p, c: asyncio.ensure_future(echo(p)),
                                 server_version="echo-floor")
    (_, port), = await listener.start()
    conn = await asyncssh.connect("127.0.0.1", port, username="claude", client_keys=[client_key],
                                  known_hosts=([host_key.convert_to_public()], [], []), agent_path=None, config=None,
                                  encoding=None)
    try:
        await _round_trips(conn, "echo", b'{"op":"ping","params":{}}\n', 20)  # warm up
        per_call = await _round_trips(conn, "echo", b'{"op":"ping","params":{}}\n', rounds)
        await _held_round_trips(conn, "echo", "ping", 50)
        held = await _held_round_trips(conn, "echo", "ping", rounds * 3)
        return per_call, held
    finally:
        conn.close()
        await listener.stop_accepting()
        await listener.close_connections()


def run(image: str, rounds: int = ROUNDS) -> list[Figure]:
    """Measure; returns the figures."""
    figures: list[Figure] = []
    with scratch_cluster(image) as cluster:
        async def measure() -> None:
            floor, held_floor = await _echo_floor(cluster.root, rounds)
            async with connect(cluster) as conn:
                ping = encode_line({"op": "ping", "params": {}})
                await _round_trips(conn, RPC_SUBSYSTEM, ping, 20)
                times = await _round_trips(conn, RPC_SUBSYSTEM, ping, rounds)
                for q in (0.5, 0.99):
                    figures.append(Figure(f"rpc ping p{int(q * 100)}", "ms", percentile(times, q),
                                          percentile(floor, q), "asyncssh echo subsystem"))
                await _held_round_trips(conn, RPC_SUBSYSTEM, "ping", 50)
                times = await _held_round_trips(conn, RPC_SUBSYSTEM, "ping", rounds * 3)
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
                made = 0
                for size in (10, 100, 500):
                    while made < size:
                        await asyncio.gather(*(rpc_ok(conn, "create", {"name": f"bench-{made + i}"})
                                               for i in range(min(25, size - made))))
                        made = min(size, made + 25)
                    listing = encode_line({"op": "list", "params": {}})
                    times = await _round_trips(conn, RPC_SUBSYSTEM, listing, max(40, rounds // (size // 10 + 1)))
                    for q in (0.5, 0.99):
                        figures.append(Figure(f"rpc list of {size} p{int(q * 100)}", "ms", percentile(times, q),
                                              percentile(floor, q), "asyncssh echo subsystem"))
                    if size == 10:
                        times = await _held_round_trips(conn, RPC_SUBSYSTEM, "list", rounds)
                        for q in (0.5, 0.99):
                            figures.append(Figure(f"rpc list of 10 (held) p{int(q * 100)}", "ms",
                                                  percentile(times, q), percentile(held_floor, q),
                                                  "asyncssh echo subsystem, held channel"))

        asyncio.run(measure())
    return figures
