"""RPC round trip on an open SSH connection: ping and list of 10/100/500 sessions, against an echo floor.

Both sides are driven the same way convocate's clients work: one connection,
one new channel per request (DESIGN §2). The floor is a bare asyncssh echo
subsystem served by the same listener code, so the difference is what the
agent's request handling costs.
"""

from __future__ import annotations

import asyncio
import time

import asyncssh

from convocate.common import keys
from convocate.common.protocol import RPC_SUBSYSTEM, encode_line
from convocate.common.sshserver import SubsystemListener
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


async def _echo_floor(tmp_key_dir, rounds: int) -> list[float]:
    host_key = keys.generate_key()
    client_key = keys.generate_key()
    auth = tmp_key_dir / "echo_authorized_keys"
    auth.write_text(keys.public_key_line(client_key) + "\n")

    async def echo(process: asyncssh.SSHServerProcess) -> None:
        data = await process.stdin.read()
        process.stdout.write(data)
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
        return await _round_trips(conn, "echo", b'{"op":"ping","params":{}}\n', rounds)
    finally:
        conn.close()
        await listener.stop_accepting()
        await listener.close_connections()


def run(image: str, rounds: int = ROUNDS) -> list[Figure]:
    """Measure; returns the figures."""
    figures: list[Figure] = []
    with scratch_cluster(image) as cluster:
        async def measure() -> None:
            floor = await _echo_floor(cluster.root, rounds)
            async with connect(cluster) as conn:
                ping = encode_line({"op": "ping", "params": {}})
                await _round_trips(conn, RPC_SUBSYSTEM, ping, 20)
                times = await _round_trips(conn, RPC_SUBSYSTEM, ping, rounds)
                for q in (0.5, 0.99):
                    figures.append(Figure(f"rpc ping p{int(q * 100)}", "ms", percentile(times, q),
                                          percentile(floor, q), "asyncssh echo subsystem"))
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

        asyncio.run(measure())
    return figures
