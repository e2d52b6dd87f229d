"""Status benchmarks: op reply → event on the shell's socket, and events/s from 20 agents.

- latency: an ``edit`` on a real agent, from its RPC reply to the ``container.edited`` event
  arriving on status-serve's local socket; baseline: the RPC round trip itself (what the operator
  already waits for).
- throughput: 20 SSH clients push events as fast as they can to one status-serve while a local
  subscriber counts what arrives; baseline: the same 20 clients pushing to a bare asyncssh
  subsystem that reads and discards (the transport's floor, no parsing and no fan-out).
"""

from __future__ import annotations

import asyncio
import json
import time

import asyncssh

from convocate.common import keys
from convocate.common.protocol import STATUS_SUBSYSTEM, Event, encode_line
from convocate.common.sshserver import SubsystemListener
from tests.bench.common import Figure, percentile, scratch_cluster
from tests.conftest import connect, rpc_ok

AGENTS = 20


async def _latency(cluster, rounds: int) -> tuple[list[float], list[float]]:
    reader, writer = await asyncio.open_unix_connection(str(cluster.paths.status_socket))
    arrivals: dict[str, float] = {}

    async def read() -> None:
        while line := await reader.readline():
            message = json.loads(line)
            if message["type"] == "container.edited":
                arrivals[message["data"]["name"]] = time.perf_counter()

    task = asyncio.create_task(read())
    latencies, rpcs = [], []
    async with connect(cluster) as ssh:
        made = await rpc_ok(ssh, "create", {"name": "lat"})
        for i in range(rounds):
            name = f"lat-{i}"
            sent = time.perf_counter()
            await rpc_ok(ssh, "edit", {"id": made["uuid"], "name": name})
            replied = time.perf_counter()
            rpcs.append((replied - sent) * 1000)
            while name not in arrivals:
                await asyncio.sleep(0.0005)
            latencies.append((arrivals[name] - replied) * 1000)
    task.cancel()
    writer.close()
    return latencies, rpcs


async def _push(port: int, host_key: asyncssh.SSHKey, client_key: asyncssh.SSHKey, agent_id: str,
                seconds: float, subsystem: str) -> int:
    conn = await asyncssh.connect("127.0.0.1", port, username="claude", client_keys=[client_key],
                                  known_hosts=([host_key.convert_to_public()], [], []), agent_path=None,
                                  config=None, encoding=None)
    process = await conn.create_process(subsystem=subsystem, encoding=None)
    line = encode_line(Event.now("agent.heartbeat", agent_id, data={"interval_s": 30}).to_wire())
    batch = line * 50
    sent = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        process.stdin.write(batch)
        await process.stdin.drain()
        sent += 50
    process.close()
    conn.close()
    return sent


async def _throughput(cluster, seconds: float) -> tuple[float, float]:
    host_key = keys.load_private_key(cluster.paths.status_host_key)
    client_key = keys.generate_key()
    auth = cluster.paths.status_authorized_keys
    auth.write_text(auth.read_text() + keys.public_key_line(client_key, "bench emitters") + "\n")
    reader, writer = await asyncio.open_unix_connection(str(cluster.paths.status_socket), limit=1 << 22)
    received = 0
    counting = False

    async def count() -> None:
        nonlocal received
        while line := await reader.readline():
            if counting and b'"agent.heartbeat"' in line:
                received += 1

    task = asyncio.create_task(count())
    await asyncio.sleep(0.2)
    counting = True
    started = time.perf_counter()
    await asyncio.gather(*(_push(cluster.status_port, host_key, client_key, f"bench{i:03d}", seconds, STATUS_SUBSYSTEM)
                           for i in range(AGENTS)))
    await asyncio.sleep(1.0)  # let status-serve drain what it has read
    served = received / (time.perf_counter() - started - 1.0)
    task.cancel()
    writer.close()

    # Baseline: the same pushers against a subsystem that only reads.
    sink_key = keys.generate_key()
    sink_auth = cluster.root / "sink_authorized_keys"
    sink_auth.write_text(keys.public_key_line(client_key) + "\n")
    consumed = 0

    async def sink(process: asyncssh.SSHServerProcess) -> None:
        nonlocal consumed
        while data := await process.stdin.read(1 << 16):
            consumed += data.count(b"\n")
        process.exit(0)

    listener = SubsystemListener(listen="127.0.0.1:0", default_port=0, host_key=sink_key, authorized_keys=sink_auth,
                                 subsystems=frozenset({"sink"}), handler=lambda p, c: asyncio.ensure_future(sink(p)),
                                 server_version="sink")
    (_, port), = await listener.start()
    started = time.perf_counter()
    await asyncio.gather(*(_push(port, sink_key, client_key, f"bench{i:03d}", seconds, "sink") for i in range(AGENTS)))
    await asyncio.sleep(0.5)
    floor = consumed / (time.perf_counter() - started - 0.5)
    await listener.stop_accepting()
    await listener.close_connections()
    return served, floor


def run(image: str, rounds: int = 200, seconds: float = 5.0) -> list[Figure]:
    with scratch_cluster(image, status=True) as cluster:
        latencies, rpcs = asyncio.run(_latency(cluster, rounds))
        served, floor = asyncio.run(_throughput(cluster, seconds))
    figures = [Figure(f"event latency, op reply -> status socket p{int(q * 100)}", "ms", percentile(latencies, q),
                      percentile(rpcs, q), "the op's own RPC round trip") for q in (0.5, 0.99)]
    figures.append(Figure(f"events/s from {AGENTS} agents through status-serve", "events/s", served, floor,
                          "bare asyncssh sink subsystem, same 20 clients", lower_is_better=False))
    return figures
