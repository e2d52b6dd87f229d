"""Load: 20 clients issue mixed ops at one agent for a bounded time; every request is answered, the state adds up.

Each client holds its own SSH connection and, until the deadline, sends
create (some started), list, get, edit, clone, delete, kill and restart
requests at sessions any client made: most on a channel of their own (the
original clients' style), some in batches of several on one channel with
``id``\\ s. Sessions get a small default CPU and memory reservation through
``settings-set`` so admission control lets several run at once;
``admission_denied``, ``locked``, ``conflict`` and ``not_found`` are
legitimate answers when clients collide. Afterwards: ``list`` is what the
session dirs say, every ``running`` flag matches Docker, no lock file or
half-built home is left, no container outlives its session, the running
sessions fit the 90% admission limit, and the number of sessions is what the
successful creates, clones and deletes add up to.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from convocate.common.framing import encode_line
from convocate.common.model import new_uuid
from convocate.common.protocol import RPC_SUBSYSTEM
from tests.conftest import connect, rpc_ok
from tests.harness import LocalCluster
from tests.reliability.support import (
    TALLY,
    assert_sound_root,
    labelled_containers,
    percentile,
    scaled,
)

pytestmark = [pytest.mark.reliability, pytest.mark.docker, pytest.mark.slow]

CLIENTS = 20
DURATION_S = scaled(20.0, 60.0)
WEIGHTS = {"list": 12, "get": 14, "ping": 4, "create": 14, "edit": 14, "clone": 8, "delete": 14, "kill": 12,
           "restart": 12}
#: Ops that read the agent's in-memory state (issue 17): their latency is tallied apart from the lifecycle ops'.
READ_OPS = ("list", "get", "ping")
#: What a request may be answered with when clients collide (DESIGN §3 codes); anything else fails the test.
ANSWERS = {"ok", "not_found", "conflict", "locked", "admission_denied"}


@dataclass
class World:
    """What the clients know and did, shared by all of them."""

    known: set[str] = field(default_factory=set)
    made: int = 0
    deleted: int = 0
    sent: int = 0
    answered: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    unexpected: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    def pick(self, rng: random.Random) -> str:
        """A session some client made (it may be gone by now), or now and then one that never existed."""
        if not self.known or rng.random() < 0.03:
            return new_uuid()
        return rng.choice(sorted(self.known))


def request_for(op: str, world: World, rng: random.Random, tag: str) -> dict[str, Any]:
    """A valid request for ``op`` at a session some client made; ``tag`` makes names unique."""
    if op in ("list", "ping"):
        params: dict[str, Any] = {}
    elif op == "create":
        params = {"name": f"load {tag}", "start": rng.random() < 0.3}
        if rng.random() < 0.2:
            params.update(port=-1, dns_name=f"l{tag.replace('-', 'x')}")
    elif op == "edit":
        params = {"id": world.pick(rng), "name": f"edited {tag}"}
    elif op == "clone":
        params = {"source_id": world.pick(rng), "name": f"clone {tag}"}
    else:
        params = {"id": world.pick(rng)}
    return {"op": op, "params": params}


def record(world: World, request: dict[str, Any], response: dict[str, Any], seconds: float,
           batched: bool = False) -> None:
    """Count one answer, and learn from it which sessions exist (made, deleted, or found gone).

    A batched request's time is its whole channel's (the ops before it in the batch included), so it is
    kept under ``<op> in a batch``, apart from the single-op channels.
    """
    op = request["op"]
    outcome = "ok" if response["ok"] else response.get("code", "?")
    world.answered += 1
    world.outcomes[f"{op} {outcome}"] += 1
    world.latencies.setdefault(f"{op} in a batch" if batched else op, []).append(seconds)
    if outcome not in ANSWERS:
        world.unexpected.append((request, response))
        return
    if response["ok"]:
        result = response.get("result")
        if op in ("create", "clone"):
            world.known.add(result["uuid"])
            world.made += 1
        elif op == "delete":
            world.known.discard(result["uuid"])
            world.deleted += 1
    elif outcome == "not_found" and "id" in request["params"]:
        world.known.discard(request["params"]["id"])


async def client(cluster: LocalCluster, n: int, world: World, deadline: float) -> None:
    """One operator's stream of requests until ``deadline``; checks that each is answered exactly once."""
    rng = random.Random(n)
    ops, weights = zip(*WEIGHTS.items(), strict=True)
    k = 0
    async with connect(cluster) as conn:
        while time.monotonic() < deadline:
            batch = rng.random() < 0.3
            requests = []
            for _ in range(rng.randint(2, 4) if batch else 1):
                k += 1
                request = request_for(rng.choices(ops, weights)[0], world, rng, f"{n}-{k}")
                if batch or rng.random() < 0.5:
                    request["id"] = f"{n}-{k}"
                requests.append(request)
            world.sent += len(requests)
            started = time.monotonic()
            process = await conn.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
            for request in requests:
                process.stdin.write(encode_line(request))
            process.stdin.write_eof()
            out = await asyncio.wait_for(process.stdout.read(), 120)
            seconds = time.monotonic() - started
            responses = [json.loads(line) for line in out.splitlines()]
            assert len(responses) == len(requests), (requests, out[:500])  # exactly one answer each, in order
            for request, response in zip(requests, responses, strict=True):
                assert response.get("id") == request.get("id"), (request, response)
                record(world, request, response, seconds, batched=len(requests) > 1)


async def test_twenty_clients_of_mixed_ops_are_all_answered_and_the_state_adds_up(make_cluster, docker_client):
    cluster = make_cluster()
    world = World()
    async with connect(cluster) as conn:
        await rpc_ok(conn, "settings-set", {"default_cpus": 0.25, "default_memory_mb": 64})
        for i in range(6):
            world.known.add((await rpc_ok(conn, "create", {"name": f"load seed {i}"}))["uuid"])
        host = (await rpc_ok(conn, "capacity"))["limits"]
    initial = len(world.known)
    started = time.monotonic()
    await asyncio.gather(*(client(cluster, n, world, started + DURATION_S) for n in range(CLIENTS)))
    elapsed = time.monotonic() - started

    assert world.unexpected == [], world.unexpected[:5]
    assert world.answered == world.sent > CLIENTS
    async with connect(cluster) as conn:
        listed = {s["uuid"]: s for s in await rpc_ok(conn, "list")}
    sessions = assert_sound_root(cluster.paths)  # no lock, no half-built home, every session.json valid
    assert set(listed) == set(sessions)
    assert {u: s["name"] for u, s in listed.items()} == {u: m.name for u, m in sessions.items()}
    containers = labelled_containers(docker_client, cluster.agent_id)
    assert set(containers) <= set(listed), "a container outlived its session"
    for uuid, s in listed.items():
        assert s["running"] == (uuid in containers and containers[uuid].status == "running"), s
        assert s["state"] in ("-", "R"), s
    running = [s for s in listed.values() if s["running"]]
    assert sum(s["cpus"] for s in running) <= host["cpus"] + 1e-9
    assert len(listed) == initial + world.made - world.deleted

    TALLY.add("load", "clients", CLIENTS)
    TALLY.add("load", "requests answered", world.answered)
    for key, count in sorted(world.outcomes.items()):
        TALLY.add("load outcomes", key, count)
    TALLY.note("load", "seconds", round(elapsed, 1))
    TALLY.note("load", "requests per second", round(world.answered / elapsed, 1))
    TALLY.note("load", "sessions at the end", len(listed))
    TALLY.note("load", "running at the end", len(running))
    for op, values in sorted(world.latencies.items()):
        area = "load read latency p50/p99 ms" if op in READ_OPS else "load lifecycle latency p50/p99 ms"
        TALLY.note(area, op, f"{percentile(values, 0.5) * 1000:.1f}/{percentile(values, 0.99) * 1000:.1f}")
    reads = [v for op in READ_OPS for v in world.latencies.get(op, [])]
    if reads:  # a figure to read, never a timed assertion (speed targets live in tests/bench/bench_load.py)
        TALLY.note("load read latency p50/p99 ms", "all reads (single-op channels)",
                   f"{percentile(reads, 0.5) * 1000:.1f}/{percentile(reads, 0.99) * 1000:.1f}")
    assert "Traceback" not in cluster.log_text()
