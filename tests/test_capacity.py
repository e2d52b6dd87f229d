"""Capacity and isolation: admission control, the cgroup parent's caps, per-session limits, settings, trash."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from tests.conftest import connect, rpc, rpc_ok

pytestmark = pytest.mark.docker

CGROUP = Path("/sys/fs/cgroup")


async def test_fifty_concurrent_creates_never_overcommit(fresh_cluster, docker_client):
    cluster = fresh_cluster
    async with connect(cluster) as ssh:
        cap = await rpc_ok(ssh, "capacity")
        assert cap["reserved"]["sessions"] == 0
        request = 0.25
        expected = math.floor((cap["limits"]["cpus"] + 1e-9) / request)

        async def one(i: int) -> dict:
            return await rpc(ssh, "create", {"name": f"burst-{i}", "cpus": request, "memory_mb": 64, "start": True})

        results = await asyncio.gather(*(one(i) for i in range(50)))
        admitted = [r["result"] for r in results if r["ok"]]
        refused = [r for r in results if not r["ok"]]
        assert len(admitted) == expected, [r.get("error") for r in refused][:3]
        assert all(r["code"] == "admission_denied" for r in refused)
        assert all(r["error"].startswith(f"admission denied: cpus asked {request:g} cores, reserved ")
                   and f"allowed {cap['limits']['cpus']:g} cores" in r["error"] for r in refused)
        after = await rpc_ok(ssh, "capacity")
        assert after["reserved"]["cpus"] <= after["limits"]["cpus"] + 1e-9
        running = docker_client.containers.list(filters={"label": f"convocate.agent={cluster.agent_id}"})
        assert len(running) == expected
        assert sum(float(c.labels["convocate.cpus"]) for c in running) <= cap["limits"]["cpus"] + 1e-9
        listed = await rpc_ok(ssh, "list")
        assert len(listed) == expected  # refused creates left nothing behind


def cpu_seconds(container) -> float:
    """CPU time the container has used (cgroup v1 cpuacct.usage), in seconds."""
    parent = container.attrs["HostConfig"]["CgroupParent"].strip("/")
    return int((CGROUP / "cpuacct" / parent / container.id / "cpuacct.usage").read_text()) / 1e9


def cpu_rate(containers, seconds: float = 3.0) -> float:
    before = sum(cpu_seconds(c) for c in containers)
    time.sleep(seconds)
    return (sum(cpu_seconds(c) for c in containers) - before) / seconds


def burn(container, processes: int = 2) -> None:
    for _ in range(processes):
        container.exec_run(["sh", "-c", "while :; do :; done"], detach=True)


@pytest.mark.skipif(not (CGROUP / "cpuacct").is_dir(), reason="needs cgroup v1 with cpuacct (this machine's layout)")
async def test_cgroup_limits_are_real(fresh_cluster, docker_client):
    cluster = fresh_cluster
    async with connect(cluster) as ssh:
        made = {}
        for name, cpus, memory in (("burner", 0.5, 128), ("neighbour", 0.8, 128), ("hog", 0.3, 64)):
            made[name] = await rpc_ok(ssh, "create", {"name": name, "cpus": cpus, "memory_mb": memory, "start": True})
    containers = {n: docker_client.containers.get(f"convocate-session-{m['uuid']}") for n, m in made.items()}
    parent = containers["burner"].attrs["HostConfig"]["CgroupParent"].strip("/")
    assert parent == f"convocate-sessions-{cluster.agent_id}"
    assert (CGROUP / "cpu" / parent / "cpu.cfs_quota_us").read_text().strip() == str(int(cluster_cpus() * 0.9 * 100_000))

    # A session burning CPU is held to its own share.
    burn(containers["burner"])
    rate = cpu_rate([containers["burner"]])
    assert 0.3 < rate < 0.65, f"burner used {rate:.2f} CPUs with a 0.5 limit"

    # One that allocates past its memory limit is OOM-killed; its neighbours keep running.
    code, _ = containers["hog"].exec_run(["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"])
    assert code == 137
    assert "oom_kill 1" in (CGROUP / "memory" / parent / containers["hog"].id / "memory.oom_control").read_text() \
        or int((CGROUP / "memory" / parent / containers["hog"].id / "memory.failcnt").read_text()) > 0
    for name in ("burner", "neighbour"):
        containers[name].reload()
        assert containers[name].status == "running"

    # The parent caps them together: lower its quota under the sum of theirs (0.5 + 0.8) and the
    # total follows. (cgroup v1 refuses a parent quota below any child's, so 0.85, not less.)
    burn(containers["neighbour"])
    together = cpu_rate([containers["burner"], containers["neighbour"]])
    assert together > 1.1, f"two burners (0.5 + 0.8 CPUs) used only {together:.2f} CPUs"
    (CGROUP / "cpu" / parent / "cpu.cfs_quota_us").write_text("85000")
    capped = cpu_rate([containers["burner"], containers["neighbour"]])
    assert capped < 0.97, f"the parent's 0.85 CPU cap let {capped:.2f} through"


def cluster_cpus() -> float:
    import os

    return float(len(os.sched_getaffinity(0)))


async def test_good_settings_survive_an_agent_restart(fresh_cluster):
    cluster = fresh_cluster
    async with connect(cluster) as ssh:
        bad = await rpc(ssh, "settings-set", {"default_memory_mb": 5})
        assert bad["code"] == "bad_request" and 'field "default_memory_mb": 5 is out of range' in bad["error"]
        wanted = {"default_cpus": 0.75, "default_memory_mb": 777, "agent_command": "claude --model x",
                  "restart_backoff_s": 0.5, "pids_limit": 2048,
                  "heartbeat_interval_s": 12, "trash_retention_days": 3, "image_prune": "never",
                  "work_dir": "/home/claude/src", "skip_permissions": True,
                  "limit_retry_s": 60, "resume_after_limit": True, "resume_message": "go on",
                  "recording": False, "recording_max_mb": 7, "recording_retention_days": 2, "record_input": True,
                  "draining": True}
        await rpc_ok(ssh, "settings-set", wanted)
    cluster.stop()
    cluster.start(same_port=True)
    async with connect(cluster) as ssh:
        assert await rpc_ok(ssh, "settings-get") == wanted


async def test_a_deleted_session_comes_back_from_the_trash_until_its_retention_ends(fresh_cluster):
    cluster = fresh_cluster
    async with connect(cluster) as ssh:
        made = await rpc_ok(ssh, "create", {"name": "precious", "port": -1, "dns_name": "precious"})
        home = cluster.paths.session_dir(made["uuid"])
        (home / "work.txt").write_text("hours of work\n")
        deleted = await rpc_ok(ssh, "delete", {"id": made["uuid"]})
        [entry] = await rpc_ok(ssh, "trash")
        assert entry["trash_id"] == deleted["trash"] and entry["name"] == "precious"
        # Someone takes its DNS name meanwhile: it comes back without it.
        taker = await rpc_ok(ssh, "create", {"name": "taker", "dns_name": "precious"})
        restored = await rpc_ok(ssh, "restore", {"trash_id": entry["trash_id"]})
        assert restored["session"]["uuid"] == made["uuid"] and restored["cleared"] == ["dns_name"]
        assert restored["session"]["port"] == made["port"]
        assert (home / "work.txt").read_text() == "hours of work\n"
        again = await rpc(ssh, "restore", {"trash_id": entry["trash_id"]})
        assert again["code"] == "not_found"

        # With a retention of 0 days, the trash is emptied at the next look.
        await rpc_ok(ssh, "delete", {"id": taker["uuid"]})
        assert len(await rpc_ok(ssh, "trash")) == 1
        await rpc_ok(ssh, "settings-set", {"trash_retention_days": 0})
        assert await rpc_ok(ssh, "trash") == []
        assert list(cluster.paths.trash_dir.iterdir()) == []
        bad = await rpc(ssh, "restore", {"trash_id": "../../etc"})
        assert bad["code"] == "bad_request" and "is not a trash entry ID" in bad["error"]


def test_cli_lists_and_restores_the_trash_and_shows_capacity(fresh_cluster):
    cluster = fresh_cluster
    import json

    made = json.loads(cluster.run_role("convocate", "new", "cli-trash", "--no-start", "--json").stdout)
    cluster.run_role("convocate", "delete", made["uuid"])
    listing = cluster.run_role("convocate", "trash").stdout
    assert "cli-trash" in listing and cluster.agent_id in listing
    trash_id = listing.splitlines()[1].split()[0]
    assert "restored cli-trash" in cluster.run_role("convocate", "restore", trash_id).stdout
    agents = cluster.run_role("convocate", "agents").stdout
    assert agents.splitlines()[0].split() == ["AGENT", "ADDRESS", "STATUS", "VERSION", "SESSIONS", "CPUS", "MEMORY",
                                              "LOAD"]
    assert f"0/{cluster_cpus() * 0.9:g}" in agents

