"""Lightweight stand-in agents for load tests and benchmarks of shell-side code.

Each is a real SSH server on loopback (the same :class:`SubsystemListener`
the agent uses) that answers ``ping`` and ``list`` from canned session
metadata, ``capacity`` from a host size of its own, and
``edit`` of a name. No Docker, no containers: twenty of them
with fifty sessions each fit in one process and start in well under a second,
which is what a TUI benchmark of 20 agents x 1000 sessions needs.
"""

from __future__ import annotations

import asyncio
import random
import string
import time
from pathlib import Path
from typing import Any

import asyncssh

from convocate.common import keys
from convocate.common.framing import encode_line, read_frames
from convocate.common.fsutil import atomic_write
from convocate.common.model import SessionMeta, SessionView, new_uuid
from convocate.common.paths import Paths
from convocate.common.protocol import RPC_SUBSYSTEM, Request, Response
from convocate.common.sshpeers import Caller
from convocate.common.sshserver import SubsystemListener
from convocate.common.timefmt import format_rfc3339
from convocate.registry import register_agent


class FakeAgent:
    """One canned agent.

    Args:
        agent_id: Its 8-character ID.
        sessions: How many sessions ``list`` returns.
        host_key: Its ed25519 host key.
        authorized: Path of its authorized_keys file.
    """

    def __init__(self, agent_id: str, sessions: int, host_key: asyncssh.SSHKey, authorized: Path) -> None:
        self.agent_id = agent_id
        now = time.time_ns()
        rng = random.Random(agent_id)
        self.views: dict[str, SessionView] = {}
        for i in range(sessions):
            stamp = now - rng.randrange(10**9, 10**15)
            meta = SessionMeta(new_uuid(), f"{agent_id[:4]}-session-{i:03d}", stamp, stamp + rng.randrange(10**12),
                               port=1001 + i if i % 3 == 0 else 0, dns_name=f"s{i}-{agent_id}" if i % 4 == 0 else "",
                               cpus=0.5, memory_mb=1024)
            self.views[meta.uuid] = SessionView(meta, running=i % 2 == 0, attached_count=1 if i % 10 == 0 else 0)
        self.cpus = float(rng.choice([2, 4, 8, 16, 32]))  # capacity: a host of its own size, some of it reserved
        self.memory_mb = int(self.cpus * 4096)
        self.reserved = round(rng.uniform(0, 0.8) * self.cpus * 0.9, 2)
        self.listener = SubsystemListener(listen="127.0.0.1:0", default_port=0, host_key=host_key,
                                          authorized_keys=authorized, subsystems=frozenset({RPC_SUBSYSTEM}),
                                          handler=self._handle, server_version="convocate-fake-agent")

    def _handle(self, process: asyncssh.SSHServerProcess, caller: Caller) -> Any:
        return asyncio.ensure_future(self._serve(process))

    async def _serve(self, process: asyncssh.SSHServerProcess) -> None:
        async for frame in read_frames(process.stdin):
            if not isinstance(frame, bytes):
                continue
            request = Request.parse(frame)
            result: Any
            if request.op == "ping":
                result = {"agent_id": self.agent_id, "version": "fake", "server_time": format_rfc3339(time.time_ns()),
                          "protocol": 2, "capabilities": ["capacity", "edit", "list", "ping"]}  # else read as v0.0.5
            elif request.op == "list":
                result = [v.to_wire() for v in self.views.values()]
            elif request.op == "capacity":
                result = {"host": {"cpus": self.cpus, "memory_mb": self.memory_mb},
                          "reserved": {"cpus": self.reserved, "memory_mb": int(self.reserved * 1024)},
                          "usage": {"load1": self.reserved / 2, "memory_available_mb": self.memory_mb // 2,
                                    "outside_memory_mb": 512}, "draining": False,
                          "defaults": {"cpus": 0.5, "memory_mb": 1024}}
            elif request.op == "edit":
                sid = request.params["id"]
                view = self.views[sid]
                meta = view.meta.with_changes(name=request.params.get("name", view.meta.name))
                self.views[sid] = SessionView(meta, view.running, view.attached_count)
                result = self.views[sid].to_wire()
            else:
                result = None
            process.stdout.write(encode_line(Response.success(result, request.id).to_wire()))
        process.exit(0)


async def start_fake_cluster(root: Path, agents: int, sessions: int) -> list[FakeAgent]:
    """Start ``agents`` fake agents and register them in the shell registry under ``root``."""
    paths = Paths(root)
    (root / "operator").mkdir(parents=True, exist_ok=True)
    shell_key, _ = keys.ensure_private_key(root / "operator" / "shell_key")
    authorized = root / "fake_authorized_keys"
    atomic_write(authorized, (keys.public_key_line(shell_key) + "\n").encode())
    started = []
    for _ in range(agents):
        agent_id = "".join(random.choices(string.ascii_lowercase + string.digits, k=8))
        host_key = keys.generate_key()
        fake = FakeAgent(agent_id, sessions, host_key, authorized)
        (_, port), = await fake.listener.start()
        register_agent(paths, agent_id, "127.0.0.1", port, keys.public_key_line(host_key), shell_key)
        started.append(fake)
    return started
