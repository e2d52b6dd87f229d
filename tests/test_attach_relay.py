"""The attach relay's byte pump (convocate_agent.attach_relay) between a real SSH channel and a real socket.

A real asyncssh server and client on loopback; the Docker exec socket is one end of a real Unix
socket pair (the other end plays Docker and tmux), so EOF, a vanished exec and backpressure are
seen exactly as the relay sees them in the agent. The same relay against real Docker and tmux:
tests/test_agent_attach.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import asyncssh
import pytest

from convocate.common import keys
from convocate.common.sshserver import SubsystemListener
from convocate_agent.attach_relay import TerminalRelay
from convocate_agent.execpipe import ExecPipe

SUBSYSTEM = "relay-test"


class Rig:
    """One SSH listener whose channels each get a TerminalRelay to a fresh socket pair."""

    def __init__(self, tmp_path) -> None:
        self.host_key, self.client_key = keys.generate_key(), keys.generate_key()
        self.auth = tmp_path / "authorized_keys"
        self.auth.write_text(keys.public_key_line(self.client_key) + "\n")
        self.relays: asyncio.Queue[tuple[TerminalRelay, socket.socket]] = asyncio.Queue()
        self.resizes: list[tuple[int, int]] = []
        self.recorded: list[bytes] = []
        self.outcomes: asyncio.Queue[bool] = asyncio.Queue()  # per channel: did Docker end it
        self.listener: SubsystemListener | None = None
        self.port = 0

    async def serve(self, process: asyncssh.SSHServerProcess) -> None:
        ours, docker_end = socket.socketpair()
        _, pipe = await asyncio.get_running_loop().create_connection(ExecPipe, sock=ours)

        async def resize(cols: int, rows: int) -> None:
            self.resizes.append((cols, rows))

        relay = TerminalRelay(process, pipe, resize, record_input=self.recorded.append)
        relay.start(b"")
        await self.relays.put((relay, docker_end))
        closed = asyncio.ensure_future(process.channel.wait_closed())
        try:
            await asyncio.wait({relay.ended, closed}, return_when=asyncio.FIRST_COMPLETED)
            detached = relay.ended.done() and not relay.ended.cancelled() and relay.ended.result()
        finally:
            closed.cancel()
            await relay.stop()
            pipe.transport.close()
        await self.outcomes.put(detached)
        with contextlib.suppress(Exception):
            process.exit(0 if detached else 75)

    async def __aenter__(self) -> Rig:
        self.listener = SubsystemListener(listen="127.0.0.1:0", default_port=0, host_key=self.host_key,
                                          authorized_keys=self.auth, subsystems=frozenset({SUBSYSTEM}),
                                          handler=lambda p, c: self.serve(p), server_version="relay-test")
        (_, self.port), = await self.listener.start()
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.listener is not None
        await self.listener.stop_accepting()
        await self.listener.close_connections()

    def connect(self):
        return asyncssh.connect("127.0.0.1", self.port, username="u", client_keys=[self.client_key],
                                known_hosts=([self.host_key.convert_to_public()], [], []), agent_path=None,
                                config=None)


async def recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = b""
    while len(got) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, n - len(got)), 10)
        assert chunk, f"EOF after {got!r}"
        got += chunk
    return got


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@contextlib.asynccontextmanager
async def relayed(tmp_path, *, nonblocking: bool = True):
    """A :class:`Rig`, a client connection to it and one channel on it.

    Yields:
        ``(rig, process, relay, docker_end)``: the rig, the client's process on the channel, the
        channel's relay and Docker's end of its socket pair (made non-blocking unless told not to).
    """
    async with Rig(tmp_path) as rig, rig.connect() as conn:
        process = await conn.create_process(subsystem=SUBSYSTEM, encoding=None)
        relay, docker_end = await rig.relays.get()
        if nonblocking:
            docker_end.setblocking(False)
        yield rig, process, relay, docker_end


def test_bytes_go_both_ways_and_the_input_is_recorded(tmp_path):
    async def scenario():
        async with relayed(tmp_path) as (rig, process, relay, docker_end):
            process.stdin.write(b"typed")
            assert await recv_exactly(docker_end, 5) == b"typed"
            await asyncio.get_running_loop().sock_sendall(docker_end, b"screen")
            assert await asyncio.wait_for(process.stdout.readexactly(6), 10) == b"screen"
            assert (relay.input_bytes, relay.output_bytes) == (5, 6)
            assert rig.recorded == [b"typed"]
            docker_end.close()
    run(scenario())


def test_the_clients_eof_is_not_a_half_close_towards_docker(tmp_path):
    async def scenario():
        async with relayed(tmp_path) as (_, process, _, docker_end):
            process.stdin.write(b"last words")
            process.stdin.write_eof()
            assert await recv_exactly(docker_end, 10) == b"last words"
            # Output still flows after the client's EOF, and Docker's end saw no EOF.
            await asyncio.get_running_loop().sock_sendall(docker_end, b"still here")
            assert await asyncio.wait_for(process.stdout.readexactly(10), 10) == b"still here"
            with pytest.raises(BlockingIOError):
                docker_end.recv(1)
            docker_end.close()
    run(scenario())


def test_docker_ending_the_stream_ends_the_channel_with_status_0(tmp_path):
    async def scenario():
        async with relayed(tmp_path, nonblocking=False) as (_, process, _, docker_end):
            docker_end.sendall(b"[detached (from session main)]\r\n")
            docker_end.close()  # tmux's client exited: the exec's stream ends
            out = await asyncio.wait_for(process.stdout.read(), 10)
            await asyncio.wait_for(process.wait_closed(), 10)
            assert out == b"[detached (from session main)]\r\n"
            assert process.exit_status == 0
    run(scenario())


def test_a_vanished_client_ends_the_relay_as_not_detached(tmp_path):
    async def scenario():
        async with Rig(tmp_path) as rig:
            async with rig.connect() as conn:
                await conn.create_process(subsystem=SUBSYSTEM, encoding=None)
                relay, docker_end = await rig.relays.get()
            assert await asyncio.wait_for(rig.outcomes.get(), 10) is False
            assert relay.ended.cancelled() or relay.ended.result() is False
            docker_end.close()
    run(scenario())


def test_window_changes_resize_in_order_and_never_reach_docker_as_bytes(tmp_path):
    async def scenario():
        async with relayed(tmp_path) as (rig, process, _, docker_end):
            for size in ((100, 30), (120, 40), (90, 20)):
                process.change_terminal_size(*size)
            process.stdin.write(b"k")
            assert await recv_exactly(docker_end, 1) == b"k"
            for _ in range(100):
                if len(rig.resizes) == 3:
                    break
                await asyncio.sleep(0.05)
            assert rig.resizes == [(100, 30), (120, 40), (90, 20)]
            docker_end.close()
    run(scenario())


def test_a_client_that_stops_reading_pauses_reading_from_docker(tmp_path):
    """Docker floods, the operator reads nothing: the relay stops reading the exec socket.

    What the relay took from the socket stays within the SSH window plus the channel's buffer
    (a few MiB), however much Docker offers; without the pause it would take it all.
    """
    async def scenario():
        async with relayed(tmp_path) as (_, _, relay, docker_end):
            loop = asyncio.get_running_loop()
            block, offered = b"y" * 65536, 0
            while offered < 64 << 20:
                try:
                    await asyncio.wait_for(loop.sock_sendall(docker_end, block), 2)
                except TimeoutError:
                    break  # the socket is full: the relay stopped reading it
                offered += len(block)
            assert not relay.pipe.transport.is_reading()
            assert relay.output_bytes < 16 << 20, relay.output_bytes
            docker_end.close()
    run(scenario())


def test_a_pane_that_does_not_read_holds_the_client_back(tmp_path):
    """The operator pastes, Docker takes nothing: the client is held to about a window or two.

    asyncssh 2.24 would grant a new window each time it delivered a little after a pause
    (attach_relay's module doc); the relay takes all it holds on a resume instead.
    """
    async def scenario():
        async with relayed(tmp_path) as (_, process, relay, docker_end):
            loop = asyncio.get_running_loop()
            block, sent = b"p" * 65536, 0
            for _ in range(40):  # Docker takes a little now and then (each take resumes the relay)
                while sent < 64 << 20:
                    process.stdin.write(block)
                    sent += len(block)
                    try:
                        await asyncio.wait_for(process.stdin.drain(), 0.3)
                    except TimeoutError:
                        break  # the channel window is closed
                with contextlib.suppress(BlockingIOError):
                    while docker_end.recv(1 << 20):
                        pass
                await asyncio.sleep(0)
            held = relay.pipe.transport.get_write_buffer_size()
            assert sent < 24 << 20, sent  # a window a take otherwise: 40 takes, ~80 MiB
            assert held < 8 << 20, held
            docker_end.close()
            await asyncio.sleep(0)
            del loop
    run(scenario())
