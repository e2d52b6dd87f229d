"""The agent's status emitter: events pushed to the shell host over ``convocate-status``.

One persistent SSH connection to the shell's status listener (tcp/223),
authenticated with ``agent_to_shell_ed25519_key`` and trusting only the pinned
``shell_known_host`` key. Events are queued in publish order and written one
JSON line each. While the shell is unreachable they wait in a bounded queue;
when it overflows the oldest are dropped and counted, and the count travels in
the next ``agent.started`` so the shell knows to resync with ``list``.

On every (re)connect the emitter first sends the queued backlog, then
``agent.started`` (version, image, capacity, heartbeat interval, dropped
count): a shell that resyncs on ``agent.started`` therefore ends up with the
truth, whatever the backlog said. ``agent.heartbeat`` follows every
``heartbeat_interval_s`` while connected; ``agent.shutdown`` is the last event
of a clean stop. Reconnects back off exponentially from 1 s to 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from convocate.common.errors import ConvocateError
from convocate.common.framing import encode_line
from convocate.common.protocol import AGENT_HEARTBEAT, AGENT_SHUTDOWN, AGENT_STARTED, STATUS_SUBSYSTEM, Event
from convocate.common.sshclient import connect_pinned

log = logging.getLogger(__name__)

QUEUE_MAX = 10_000
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0


def backoff_delays(initial: float = BACKOFF_INITIAL_S, maximum: float = BACKOFF_MAX_S):
    """1, 2, 4, ... seconds, capped at ``maximum`` (an infinite generator)."""
    delay = initial
    while True:
        yield delay
        delay = min(delay * 2, maximum)


class EventQueue:
    """A bounded FIFO of events that drops (and counts) the oldest on overflow.

    Args:
        limit: Most events kept.
    """

    def __init__(self, limit: int = QUEUE_MAX) -> None:
        self._items: deque[Event] = deque()
        self.limit = limit
        self.dropped = 0
        self.wake = asyncio.Event()

    def push(self, event: Event) -> None:
        if len(self._items) >= self.limit:
            self._items.popleft()
            self.dropped += 1
        self._items.append(event)
        self.wake.set()

    def peek(self) -> Event | None:
        return self._items[0] if self._items else None

    def pop(self) -> None:
        self._items.popleft()

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class EmitterConfig:
    """Where and how the emitter connects.

    Attributes:
        agent_id: This agent's ID (put in every event).
        shell_host: The shell host's name or address.
        shell_port: Its status listener port.
        key_path: ``agent_to_shell_ed25519_key``.
        known_host_path: ``shell_known_host`` (the shell's pinned status host key).
    """

    agent_id: str
    shell_host: str
    shell_port: int
    key_path: Path
    known_host_path: Path


class StatusEmitter:
    """Pushes the agent's events to the shell; an :class:`~convocate_agent.service.EventSink`.

    Args:
        config: Where to connect.
        heartbeat_interval: Returns the current heartbeat interval in seconds (a setting).
        started_data: Coroutine returning ``agent.started``'s data (version, image, capacity).
        queue_limit: Events kept while disconnected.
    """

    def __init__(self, config: EmitterConfig, heartbeat_interval: Callable[[], float],
                 started_data: Callable[[], Awaitable[dict[str, Any]]], queue_limit: int = QUEUE_MAX,
                 backoff: tuple[float, float] = (BACKOFF_INITIAL_S, BACKOFF_MAX_S)) -> None:
        self.config = config
        self.heartbeat_interval = heartbeat_interval
        self.started_data = started_data
        self.queue = EventQueue(queue_limit)
        self.backoff = backoff
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._stopping = False
        self.connects = 0

    @property
    def peer(self) -> str:
        host = self.config.shell_host
        return f"shell host {f'[{host}]' if ':' in host else host}:{self.config.shell_port}"

    def publish(self, event: Event) -> None:
        """Queue ``event`` for the shell (never blocks)."""
        if not self._stopping:
            self.queue.push(event)

    def start(self) -> None:
        """Start connecting in the background."""
        self._task = asyncio.create_task(self._run(), name="status-emitter")

    async def stop(self, flush_timeout: float = 3.0) -> None:
        """Send ``agent.shutdown`` (and what is queued) if connected within ``flush_timeout``, then close."""
        self.queue.push(Event.now(AGENT_SHUTDOWN, self.config.agent_id))
        self._stopping = True
        if self.connected.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained(), flush_timeout)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            self._conn.close()

    async def _drained(self) -> None:
        while len(self.queue) and self.connected.is_set():
            await asyncio.sleep(0.01)

    async def _run(self) -> None:
        delays = backoff_delays(*self.backoff)
        while True:
            try:
                await self._session()
                delays = backoff_delays(*self.backoff)  # the next failure starts again at 1 s
            except asyncio.CancelledError:
                raise
            except ConvocateError as e:
                log.warning("status: %s", e)
            except (OSError, asyncssh.Error) as e:
                log.warning("status: connection to %s lost: %s", self.peer, e)
            except Exception:  # a bug must not end the emitter
                log.exception("status: emitter failed")
            finally:
                self.connected.clear()
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
            delay = next(delays)
            log.info("status: reconnecting to %s in %g s (%d event(s) queued)", self.peer, delay, len(self.queue))
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        cfg = self.config
        self._conn = await connect_pinned(host=cfg.shell_host, port=cfg.shell_port, key_path=cfg.key_path,
                                          known_host_path=cfg.known_host_path, peer=self.peer,
                                          keepalive_interval=15, keepalive_count_max=3)
        process = await self._conn.create_process(subsystem=STATUS_SUBSYSTEM, encoding=None)
        self.connects += 1
        closed = asyncio.create_task(process.stdout.read())  # the shell writes nothing; EOF means it went away
        try:
            await self._flush(process)
            dropped = self.queue.take_dropped()
            if dropped:
                log.warning("status: %d event(s) were dropped while %s was unreachable", dropped, self.peer)
            data = await self.started_data()
            data.update(dropped_events=dropped, heartbeat_interval_s=self.heartbeat_interval())
            await self._send(process, Event.now(AGENT_STARTED, cfg.agent_id, data=data))
            self.connected.set()
            log.info("status: connected to %s", self.peer)
            loop = asyncio.get_running_loop()
            last_beat = loop.time()
            while not closed.done():
                await self._flush(process)
                self.queue.wake.clear()
                if len(self.queue):
                    continue
                # Wake at least every second, so a changed heartbeat interval applies at once.
                until_beat = last_beat + self.heartbeat_interval() - loop.time()
                if until_beat > 0:
                    wake = asyncio.create_task(self.queue.wake.wait())
                    await asyncio.wait({wake, closed}, timeout=min(until_beat, 1.0),
                                       return_when=asyncio.FIRST_COMPLETED)
                    wake.cancel()
                    continue
                last_beat = loop.time()
                self.queue.push(Event.now(AGENT_HEARTBEAT, cfg.agent_id, data={"interval_s": self.heartbeat_interval()}))
            raise ConnectionError(f"{self.peer} closed the status channel")
        finally:
            closed.cancel()
            process.close()

    async def _flush(self, process: asyncssh.SSHClientProcess) -> None:
        while (event := self.queue.peek()) is not None:
            await self._send(process, event)
            self.queue.pop()  # only once written: a broken connection keeps it for the next one

    async def _send(self, process: asyncssh.SSHClientProcess, event: Event) -> None:
        process.stdin.write(encode_line(event.to_wire()))
        await process.stdin.drain()
