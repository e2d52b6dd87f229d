"""What the attack tests share: a running session of their own on the module's agent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from tests.conftest import connect, rpc_ok
from tests.harness import LocalCluster


@contextlib.contextmanager
def running_session(cluster: LocalCluster, name: str, *, cpus: float, memory_mb: int,
                    until_idle: bool = False) -> Iterator[str]:
    """A session created and started on ``cluster``'s agent for the block; killed and deleted after it.

    Args:
        cluster: The agent.
        name: The session's name.
        cpus: Its CPU reservation (cores).
        memory_mb: Its memory limit (MiB).
        until_idle: Wait until the stand-in has reported its start (activity ``idle``, no detail).

    Yields:
        The session's UUID.
    """
    async def make() -> str:
        async with connect(cluster) as ssh:
            sid = (await rpc_ok(ssh, "create", {"name": name, "cpus": cpus, "memory_mb": memory_mb,
                                                "start": True}))["uuid"]
            for _ in range(200 if until_idle else 0):  # the supervisor's start says "starting": then quiet
                meta = await rpc_ok(ssh, "get", {"id": sid})
                if meta.get("activity") == "idle" and not meta.get("activity_detail"):
                    break
                await asyncio.sleep(0.05)
            else:
                if until_idle:
                    raise AssertionError(f"session {name} never went idle")
            return sid

    async def end(sid: str) -> None:
        async with connect(cluster) as ssh:
            await rpc_ok(ssh, "kill", {"id": sid})
            await rpc_ok(ssh, "delete", {"id": sid})

    sid = asyncio.run(make())
    try:
        yield sid
    finally:
        asyncio.run(end(sid))
