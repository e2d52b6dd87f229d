"""The cluster as one pool, end to end (issue 18): three real agents of different sizes behind one shell.

``roomy`` has both of this machine's cores, ``narrow`` is pinned to one with ``taskset`` (its admission
limit is 0.9 cores), ``busy`` has both but runs a session reserving 1 core. They share the shell
registry of ``roomy``'s root, so the ``convocate`` CLI run with its environment sees all three.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator

import pytest

from convocate.tui.actions import AUTO_AGENT
from tests.conftest import connect, rpc_ok
from tests.harness import LocalCluster, remove_containers

pytestmark = [pytest.mark.docker,
              pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to make agents of two sizes")]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, session_image: str) -> Iterator[dict[str, LocalCluster]]:
    base = tmp_path_factory.mktemp("fleet")
    cpus = sorted(os.sched_getaffinity(0))
    agents = {"roomy": LocalCluster(root=base / "roomy", image=session_image),
              "narrow": LocalCluster(root=base / "narrow", image=session_image,
                                     command_prefix=["taskset", "-c", str(cpus[0])]),
              "busy": LocalCluster(root=base / "busy", image=session_image)}
    try:
        for agent in agents.values():
            agent.install()
            agent.start()
        for name in ("narrow", "busy"):
            agents[name].register_with(agents["roomy"])
        yield agents
    finally:
        for agent in agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
            remove_containers(agent.root)


def cli(pool: dict[str, LocalCluster], *args: str, check: bool = True):
    return pool["roomy"].run_role("convocate", *args, check=check)


@pytest.fixture(scope="module")
def ids(pool: dict[str, LocalCluster]) -> dict[str, str]:
    return {name: agent.agent_id for name, agent in pool.items()}


async def test_placement_ranks_by_headroom_and_the_session_lands_on_the_winner(pool, ids):
    async with connect(pool["busy"]) as ssh:
        await rpc_ok(ssh, "create", {"name": "ballast", "cpus": 1.0, "memory_mb": 64, "start": True})
    done = cli(pool, "place", "--dry-run", "--cpus", "0.5", "--memory", "64", "--json")
    ranking = json.loads(done.stdout)
    assert [c["agent_id"] for c in ranking][0] == ids["roomy"], ranking
    assert {c["agent_id"] for c in ranking} == set(ids.values()) and all(c["admits"] for c in ranking)
    busy = next(c for c in ranking if c["agent_id"] == ids["busy"])
    narrow = next(c for c in ranking if c["agent_id"] == ids["narrow"])
    assert busy["sessions"] == 1 and narrow["sessions"] == 0

    text = cli(pool, "place", "--dry-run", "--cpus", "0.5", "--memory", "64").stdout.splitlines()
    assert text[0].startswith("1.") and ids["roomy"] in text[0]

    made = json.loads(cli(pool, "new", "placed", "--cpus", "0.5", "--memory", "64", "--no-start", "--json").stdout)
    assert made["agent_id"] == ids["roomy"]

    # 1.3 cores fit only where nothing is reserved yet and the limit is 1.8: roomy
    big = json.loads(cli(pool, "new", "big", "--cpus", "1.3", "--memory", "64", "--json").stdout)
    assert big["agent_id"] == ids["roomy"] and big["running"]


async def test_an_agent_pinned_with_agent_and_a_session_no_agent_admits(pool, ids):
    pinned = json.loads(cli(pool, "new", "pinned", "--agent", ids["narrow"], "--cpus", "0.1", "--memory", "64",
                            "--no-start", "--json").stdout)
    assert pinned["agent_id"] == ids["narrow"]
    refused = cli(pool, "new", "huge", "--cpus", "1.9", "--memory", "64", check=False)
    assert refused.returncode == 6, refused.stderr
    assert "admission denied: no agent takes the session (" in refused.stderr
    for agent_id in ids.values():
        assert f"{agent_id}: admission denied: cpus asked 1.9 cores" in refused.stderr
    assert "allowed 0.9 cores (90% of 1 cores on this host)" in refused.stderr  # narrow, pinned to one CPU


async def test_a_draining_agent_is_passed_over_and_shown(pool, ids):
    assert cli(pool, "drain", ids["roomy"], "--no-move").returncode == 0
    try:
        ranking = json.loads(cli(pool, "place", "--dry-run", "--cpus", "0.1", "--memory", "64", "--json").stdout)
        roomy = next(c for c in ranking if c["agent_id"] == ids["roomy"])
        assert not roomy["admits"] and roomy["reason"] == "draining" and ranking[-1] == roomy
        made = json.loads(cli(pool, "new", "elsewhere", "--cpus", "0.1", "--memory", "64", "--no-start",
                              "--json").stdout)
        assert made["agent_id"] != ids["roomy"]
        agents = cli(pool, "agents").stdout
        assert "draining" in next(line for line in agents.splitlines() if ids["roomy"] in line)
    finally:
        cli(pool, "undrain", ids["roomy"])
    again = json.loads(cli(pool, "place", "--dry-run", "--cpus", "0.1", "--memory", "64", "--json").stdout)
    assert next(c for c in again if c["agent_id"] == ids["roomy"])["admits"]



def test_the_tui_new_form_places_the_session_by_default(pool, ids):
    from tests.test_tui import TUI

    tui = TUI(pool["roomy"].env)
    try:
        tui.open()
        tui.keys("n")
        screen = tui.wait_for("On which agent?")
        assert AUTO_AGENT in screen and all(agent_id in screen for agent_id in ids.values())
        tui.keys("Tab", "Enter")  # the preselected first choice: auto
        tui.wait_for("New session (placed by capacity)")
        # name, then CPUs and memory; Start now unchecked; OK
        tui.keys("tui-placed", *["Tab"] * 4, "0.1", "Tab", "64", "Tab", "Space", "Tab", "Tab", "Tab", "Enter")
        chosen = re.search(r"create tui-placed on (\w+) \(placement: ", tui.wait_for("create tui-placed on")).group(1)
        assert chosen in ids.values()
        for _ in range(100):
            placed = {s["name"]: s for s in json.loads(cli(pool, "ls", "--json").stdout)}.get("tui-placed")
            if placed:
                break
            time.sleep(0.1)
        assert placed and placed["agent_id"] == chosen and not placed["running"]
    finally:
        tui.close()
