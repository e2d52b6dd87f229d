"""The status throughput benchmark's two peers, each run as a process of its own.

- ``python -m tests.bench.status_peers sink HOST_KEY AUTHORIZED_KEYS`` is the transport floor: it
  serves one subsystem, ``sink``, with the same listener and SSH policy as status-serve
  (:class:`convocate.common.sshserver.SubsystemListener`), and does nothing with what it reads but
  count newlines. It prints ``listening on HOST:PORT`` and runs until SIGTERM. Being a process of its
  own, like status-serve, it has the same share of the machine as status-serve does.
- ``python -m tests.bench.status_peers count SOCKET`` is the local subscriber: it connects to
  status-serve's socket, prints ``ready`` once the replay has arrived, and counts heartbeats with
  ``bytes.count`` on large reads. When the number expected arrives on its stdin it waits for that
  many (or until 3 s pass without one), then prints ``RECEIVED LAST`` (``LAST``: ``time.monotonic()``
  of the last arrival, a clock every process on the machine shares) and exits. Out of the process
  that drives the 20 SSH clients, it gets CPU of its own and cannot be what limits the figure.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import asyncssh

from convocate.common import keys
from convocate.common.framing import READ_CHUNK
from convocate.common.protocol import REPLAY_DONE
from convocate.common.sshpeers import format_address
from convocate.common.sshserver import SubsystemListener

SINK_SUBSYSTEM = "sink"
HEARTBEAT = b'"type":"agent.heartbeat"'
#: Seconds without a heartbeat, once the total is known, after which the counter gives up.
QUIET_S = 3.0


async def _sink(process: asyncssh.SSHServerProcess) -> None:
    lines = 0
    try:
        while data := await process.stdin.read(READ_CHUNK):
            lines += data.count(b"\n")
    except (OSError, asyncssh.Error):
        pass
    process.exit(0)


async def sink(host_key: Path, authorized_keys: Path) -> None:
    """Serve the sink subsystem on a free loopback port until SIGTERM."""
    listener = SubsystemListener(listen="127.0.0.1:0", default_port=0, host_key=keys.load_private_key(host_key),
                                 authorized_keys=authorized_keys, subsystems=frozenset({SINK_SUBSYSTEM}),
                                 handler=lambda process, caller: _sink(process), server_version="bench-sink")
    addresses = await listener.start()
    print(f"listening on {format_address(addresses[0])}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await listener.stop_accepting()
    await listener.close_connections()


async def count(socket_path: Path) -> None:
    """Count the heartbeats on status-serve's socket until the expected number arrives (see module doc)."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=1 << 22)
    replay = b""
    while REPLAY_DONE.encode() not in replay:
        data = await reader.read(1 << 16)
        if not data:
            raise SystemExit("status-serve closed the socket during the replay")
        replay += data
    tail = replay[replay.rfind(b"\n") + 1:]
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    expected = asyncio.ensure_future(stdin.readline())
    received, last = 0, time.monotonic()

    async def read() -> None:
        nonlocal received, last, tail
        while data := await reader.read(1 << 20):
            data = tail + data
            cut = data.rfind(b"\n") + 1
            seen = data.count(HEARTBEAT, 0, cut)
            tail = data[cut:]
            if seen:
                received += seen
                last = time.monotonic()
            if expected.done() and received >= int(expected.result()):
                return

    reading = asyncio.ensure_future(read())
    await asyncio.wait({reading, expected}, return_when=asyncio.FIRST_COMPLETED)
    total = int(await expected)
    while not reading.done() and received < total and time.monotonic() - last < QUIET_S:
        await asyncio.sleep(0.05)
    reading.cancel()
    writer.close()
    print(f"{received} {last:.6f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "sink":
        asyncio.run(sink(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        asyncio.run(count(Path(sys.argv[2])))
