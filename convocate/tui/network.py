"""The TUI's network side: an asyncio loop on its own thread that never blocks the screen.

It keeps one SSH connection per registered agent (opened in parallel, probed
with ``ping``, reopened with a backoff of 1 s to 30 s when it fails), lists
each agent's sessions periodically and whenever status-serve says an agent
(re)started, follows status-serve's local socket, and runs the operator's
ops. Everything it learns goes to the UI thread through :meth:`Network.post`
as a :class:`Notice`; the UI thread applies notices to its model between key
presses. Nothing here touches curses.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from convocate.client import AgentClient
from convocate.cluster import Cluster
from convocate.common.errors import ConvocateError
from convocate.common.ops.base import OpParams
from convocate.common.ops.params import ListParams, PingParams
from convocate.common.paths import Paths
from convocate.events import subscribe
from convocate.orphans import scan_orphans
from convocate.tui.model import REACHABLE, UNREACHABLE

log = logging.getLogger(__name__)

#: Seconds between two lists of a reachable agent (events keep the table live in between).
LIST_EVERY_S = 15.0
#: Seconds between two pings of a reachable agent.
PING_EVERY_S = 10.0
BACKOFF = (1.0, 30.0)


@dataclass(frozen=True)
class Notice:
    """Something the UI thread should apply to its model.

    Attributes:
        kind: ``reach`` (agent reachability), ``sessions`` (a list result),
            ``capacity`` (a capacity result), ``status`` (a status-socket message),
            ``orphans`` (this host's session directories, as orphan views),
            ``done`` / ``failed`` (an op).
        agent_id: The agent concerned, if any.
        payload: Kind-specific: ``(reach, reason)``, a list of SessionView, a
            message dict, ``(description, result)`` or ``(description, error)``.
    """

    kind: str
    agent_id: str = ""
    payload: Any = None


class Network:
    """The background loop and its tasks.

    Args:
        cluster: The registered agents.
        post: Called (from the network thread) with each :class:`Notice`.
    """

    def __init__(self, cluster: Cluster, post: Callable[[Notice], None]) -> None:
        self.cluster = cluster
        self.post = post
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="convocate-network", daemon=True)
        self._wakeups: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def paths(self) -> Paths:
        return self.cluster.paths

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        for client in self.cluster.clients.values():
            self._wakeups[client.agent_id] = asyncio.Event()
            self._tasks.append(self.loop.create_task(self._watch_agent(client)))
        self._tasks.append(self.loop.create_task(self._follow_status()))
        self._tasks.append(self.loop.create_task(self._scan_orphans()))
        self.loop.run_forever()

    def stop(self) -> None:
        """Cancel everything, close the connections and end the thread (bounded: 5 s)."""
        async def shutdown() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.cluster.close()

        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
            try:
                future.result(5)
            except Exception:  # best effort on the way out
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    # --- agents ------------------------------------------------------------------------
    async def _watch_agent(self, client: AgentClient) -> None:
        delay = BACKOFF[0]
        wake = self._wakeups[client.agent_id]
        while True:
            try:
                await self._list(client)
                delay = BACKOFF[0]
                elapsed = 0.0
                while elapsed < LIST_EVERY_S:
                    wait = min(PING_EVERY_S, LIST_EVERY_S - elapsed)
                    try:
                        await asyncio.wait_for(wake.wait(), wait)
                        break  # someone asked for a fresh list
                    except TimeoutError:
                        elapsed += wait
                        await client.request(PingParams())
                wake.clear()
            except ConvocateError as e:
                self.post(Notice("reach", client.agent_id, (UNREACHABLE, str(e))))
                try:
                    await asyncio.wait_for(wake.wait(), delay)
                except TimeoutError:
                    pass
                wake.clear()
                delay = min(delay * 2, BACKOFF[1])

    async def _list(self, client: AgentClient) -> None:
        views = await client.request(ListParams())
        self.post(Notice("reach", client.agent_id, (REACHABLE, "")))
        self.post(Notice("sessions", client.agent_id, views))
        from convocate import compat  # a protocol-1 (Go v0.0.5) agent has no capacity: shown as unknown

        self.post(Notice("capacity", client.agent_id, (await compat.capacity(client, {})) or {}))

    def refresh(self, agent_id: str) -> None:
        """Ask for a fresh list of ``agent_id`` now (safe from any thread)."""
        wake = self._wakeups.get(agent_id)
        if wake is not None:
            self.loop.call_soon_threadsafe(wake.set)

    async def _scan_orphans(self) -> None:
        """This shell host's own session directories, every :data:`LIST_EVERY_S` (the model decides which no agent claims)."""
        while True:
            self.post(Notice("orphans", "", await asyncio.to_thread(scan_orphans, self.paths)))
            await asyncio.sleep(LIST_EVERY_S)

    async def _follow_status(self) -> None:
        delay = BACKOFF[0]
        while True:
            try:
                async for message in subscribe(self.paths):
                    delay = BACKOFF[0]
                    self.post(Notice("status", str(message.get("agent_id", "")), message))
            except ConvocateError as e:
                log.debug("status socket: %s", e)
            except OSError as e:
                log.debug("status socket: %s", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])

    # --- ops ----------------------------------------------------------------------------
    def submit(self, description: str, agent_id: str, work: Callable[[], Awaitable[Any]]) -> Future[Any]:
        """Run ``work`` on the network loop; its outcome arrives as a ``done`` or ``failed`` notice.

        Returns:
            The future, for callers that must wait (attach).
        """
        async def run() -> Any:
            try:
                result = await work()
            except ConvocateError as e:
                self.post(Notice("failed", agent_id, (description, e)))
                raise
            self.post(Notice("done", agent_id, (description, result)))
            self.refresh(agent_id)
            return result

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    def call(self, agent_id: str, params: OpParams[Any], description: str) -> Future[Any]:
        """Submit one RPC op to an agent; its result arrives as the op's result type."""
        client = self.cluster.client(agent_id)
        return self.submit(description, agent_id, lambda: client.request(params))

    def run_blocking(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine on the network loop and wait for it (for attach, while the screen is suspended)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]
