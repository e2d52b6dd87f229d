"""Draining an agent (issue 18): it takes no new session, its own sessions still live."""

from __future__ import annotations

import pytest

from tests.conftest import connect, rpc, rpc_ok

pytestmark = pytest.mark.docker


async def test_a_draining_agent_refuses_new_sessions_and_keeps_its_own(fresh_cluster):
    cluster = fresh_cluster
    async with connect(cluster) as ssh:
        kept = await rpc_ok(ssh, "create", {"name": "kept", "cpus": 0.1, "memory_mb": 64, "start": True})
        gone = await rpc_ok(ssh, "create", {"name": "gone", "cpus": 0.1, "memory_mb": 64})
        await rpc_ok(ssh, "delete", {"id": gone["uuid"]})
        trash_id = (await rpc_ok(ssh, "trash"))[0]["trash_id"]
        assert (await rpc_ok(ssh, "capacity"))["draining"] is False
        await rpc_ok(ssh, "settings-set", {"draining": True})
        assert (await rpc_ok(ssh, "capacity"))["draining"] is True  # what the TUI and placement read

        refusals = [await rpc(ssh, "create", {"name": "new"}),
                    await rpc(ssh, "clone", {"source_id": kept["uuid"], "name": "copy"}),
                    await rpc(ssh, "restore", {"trash_id": trash_id})]
        for answer in refusals:
            assert not answer["ok"] and answer["code"] == "admission_denied", answer
            assert answer["error"] == (f"agent {cluster.agent_id} is draining: it takes no new session "
                                       f"(`convocate undrain {cluster.agent_id}` ends it)")
        assert [s["name"] for s in await rpc_ok(ssh, "list")] == ["kept"]

        restarted = await rpc_ok(ssh, "restart", {"id": kept["uuid"]})  # its own sessions still start
        assert restarted["running"]

        await rpc_ok(ssh, "settings-set", {"draining": False})
        assert (await rpc_ok(ssh, "create", {"name": "new"}))["name"] == "new"
