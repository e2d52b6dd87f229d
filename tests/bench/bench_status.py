"""Status benchmarks: op → event on the shell's socket, and events/s from 20 agents.

- latency: an ``edit`` on a real agent, from sending its request to the ``container.edited`` event
  arriving on status-serve's local socket; baseline: the RPC round trip itself (what the CLI that
  made the change waits for: below 1x, the TUI hears of it before the CLI has its answer). Counted
  from the request, not the reply, because the event often comes first.
- throughput: 20 SSH clients, connected beforehand, push heartbeats as fast as status-serve takes
  them for 5 s, then close; the figure is the heartbeats a local subscriber received divided by
  the time from the first write to the last arrival (so what status-serve had buffered counts, and
  so does the time it took to work through it). Two baselines: the same 20 clients pushing into a
  bare asyncssh subsystem, in a process of its own like status-serve, that reads and counts
  newlines, timed until it has read everything (the SSH transport's floor: no parsing, no
  fan-out); and StatusHub alone in one process (split, parse, record, queue for one subscriber,
  no SSH), the most one Python process can do per event with this code.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import asyncssh

from convocate.common import keys
from convocate.common.framing import LineDecoder, encode_line
from convocate.common.protocol import STATUS_SUBSYSTEM, Event
from convocate.registry import bind_status_key
from convocate.status_hub import StatusHub, take_all
from tests.bench.common import Figure, connect, connect_loopback, percentile, scratch_cluster
from tests.bench.status_peers import SINK_SUBSYSTEM
from tests.conftest import rpc_ok
from tests.harness import REPO, python

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
            latencies.append((arrivals[name] - sent) * 1000)  # the event may come before the reply
    task.cancel()
    writer.close()
    return latencies, rpcs


BATCH = 50  # events per write
BENCH_AGENT = "bench000"  # the agent ID the bench's status key is bound to


async def _open_pushers(port: int, host_key: asyncssh.SSHKey, client_key: asyncssh.SSHKey,
                        subsystem: str) -> list[tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess]]:
    """One SSH connection and one ``subsystem`` channel per agent, opened before the clock starts."""

    async def one() -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess]:
        conn = await connect_loopback(port, host_key, client_key)
        return conn, await conn.create_process(subsystem=subsystem, encoding=None)

    return list(await asyncio.gather(*(one() for _ in range(AGENTS))))


async def _push(conn: asyncssh.SSHClientConnection, process: asyncssh.SSHClientProcess, agent_id: str,
                seconds: float) -> int:
    """Write heartbeats as fast as the channel takes them for ``seconds``, then EOF.

    Returns once the server has read everything and closed the channel (status-serve and the sink
    both end the channel at EOF), so the caller's clock covers the server's work, not only the writes.

    Returns:
        The number of events written.
    """
    line = encode_line(Event.now("agent.heartbeat", agent_id, data={"interval_s": 30}).to_wire())
    batch = line * BATCH
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        process.stdin.write(batch)
        await process.stdin.drain()
        sent += BATCH
    process.stdin.write_eof()
    await process.wait_closed()
    conn.close()
    return sent


async def _served(cluster, client_key: asyncssh.SSHKey, seconds: float) -> tuple[float, int, int]:
    """status-serve: events/s from the first write to the last heartbeat seen on the local socket.

    The subscriber is a process of its own (``status_peers count``), so that the 20 busy clients in
    this process cannot starve it; it reads large chunks and counts with ``bytes.count``.

    Returns:
        (events/s, events sent, events received by the subscriber).
    """
    host_key = keys.load_private_key(cluster.paths.status_host_key)
    counter = await asyncio.create_subprocess_exec(python(), "-m", "tests.bench.status_peers", "count",
                                                   str(cluster.paths.status_socket), cwd=REPO,
                                                   stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert counter.stdin is not None and counter.stdout is not None
    try:
        if (await asyncio.wait_for(counter.stdout.readline(), 30)).strip() != b"ready":
            raise RuntimeError("the status socket counter did not start")
        pushers = await _open_pushers(cluster.status_port, host_key, client_key, STATUS_SUBSYSTEM)
        started = time.monotonic()
        # One key is one agent (the registry binds it to BENCH_AGENT): every pusher is a link of that agent.
        sent = sum(await asyncio.gather(*(_push(conn, process, BENCH_AGENT, seconds) for conn, process in pushers)))
        counter.stdin.write(f"{sent}\n".encode())
        await counter.stdin.drain()
        received, last = (await asyncio.wait_for(counter.stdout.readline(), 120)).split()
        return int(received) / (float(last) - started), sent, int(received)
    finally:
        if counter.returncode is None:
            counter.kill()  # the counter we started, by its PID
        await counter.wait()


async def _floor(cluster, client_key: asyncssh.SSHKey, seconds: float) -> float:
    """The transport floor: lines/s into a bare sink subsystem served by a process of its own."""
    sink_key_path = cluster.root / "sink_host_ed25519_key"
    sink_key, _ = keys.ensure_private_key(sink_key_path, comment="bench sink")
    sink_auth = cluster.root / "sink_authorized_keys"
    sink_auth.write_text(keys.public_key_line(client_key) + "\n")
    sink = await asyncio.create_subprocess_exec(python(), "-m", "tests.bench.status_peers", "sink", str(sink_key_path),
                                                str(sink_auth), cwd=REPO, stdout=asyncio.subprocess.PIPE)
    try:
        assert sink.stdout is not None
        banner = (await asyncio.wait_for(sink.stdout.readline(), 30)).decode()
        port = int(banner.rsplit(":", 1)[1])
        pushers = await _open_pushers(port, sink_key, client_key, SINK_SUBSYSTEM)
        started = time.monotonic()
        sent = await asyncio.gather(*(_push(conn, process, f"bench{i:03d}", seconds)
                                      for i, (conn, process) in enumerate(pushers)))
        return sum(sent) / (time.monotonic() - started)
    finally:
        if sink.returncode is None:
            sink.terminate()  # the sink we started, by its PID
        await sink.wait()


async def _throughput(cluster, seconds: float) -> tuple[float, float]:
    client_key = keys.generate_key()
    auth = cluster.paths.status_authorized_keys
    auth.write_text(auth.read_text() + keys.public_key_line(client_key, "bench emitters") + "\n")
    bind_status_key(cluster.paths, BENCH_AGENT, keys.public_key_line(client_key))
    served, sent, received = await _served(cluster, client_key, seconds)
    if received < sent:
        print(f"bench status: the subscriber got {received} of {sent} heartbeats (cut off, or still behind "
              "3 s after the last); the figure counts only those delivered", file=sys.stderr)
    floor = await _floor(cluster, client_key, seconds)
    return served, floor


def _in_process(events: int = 100_000, rounds: int = 3) -> float:
    """What one Python process can parse, record and fan out: StatusHub alone, no SSH, no sockets.

    The same heartbeat lines are split by :class:`LineDecoder` from 64 KiB chunks, parsed, recorded
    and queued for one subscriber, whose queue is emptied once per chunk as status-serve's writer
    does. The best of ``rounds`` runs (the least disturbed by the machine's other work).
    """

    async def go() -> float:
        hub = StatusHub()
        queue = hub.subscribe()
        take_all(queue)
        line = encode_line(Event.now("agent.heartbeat", "bench000", data={"interval_s": 30}).to_wire())
        chunk = line * ((64 << 10) // len(line))
        decoder = LineDecoder()
        done = 0
        started = time.perf_counter()
        while done < events:
            for frame in decoder.feed(chunk):
                hub.record(Event.parse(frame))  # type: ignore[arg-type]
                done += 1
            b"".join(take_all(queue))  # type: ignore[arg-type]
        return done / (time.perf_counter() - started)

    return max(asyncio.run(go()) for _ in range(rounds))


def run(image: str, rounds: int = 200, seconds: float = 5.0) -> list[Figure]:
    with scratch_cluster(image, status=True) as cluster:
        latencies, rpcs = asyncio.run(_latency(cluster, rounds))
        served, floor = asyncio.run(_throughput(cluster, seconds))
    figures = [Figure(f"event latency, op sent -> status socket p{int(q * 100)}", "ms", percentile(latencies, q),
                      percentile(rpcs, q), "the op's own RPC round trip") for q in (0.5, 0.99)]
    core = _in_process()
    figures.append(Figure(f"events/s from {AGENTS} agents through status-serve", "events/s", served, floor,
                          f"bare asyncssh sink subsystem (own process), same {AGENTS} clients", lower_is_better=False))
    figures.append(Figure(f"events/s from {AGENTS} agents through status-serve", "events/s", served, core,
                          "StatusHub parse+record+fan-out in one process, no SSH", lower_is_better=False))
    return figures
