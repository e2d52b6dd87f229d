"""A session cannot rewrite the agent's record of it (issue 14, item 1).

The attacker is whatever runs inside a session container: it owns the session's home and writes
there as uid 1337 (here through ``docker exec``, as a shell in the session would). It forges the
metadata the agent used to keep in that home (``session.json``: another name, twice the CPUs and
memory, another port, a DNS name another session owns) and plants symlinks pointing out of the
home. Then the operator's ops run through the agent's SSH RPC channel, and nothing the agent
reports (``get``, ``list``, the status events), applies (the container's limits, port and host name
as ``docker inspect`` shows them) or writes (files outside the home) may follow the session's
files. Real agent, real status-serve, real dockerd, the stand-in session image.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import docker
import pytest

from tests.conftest import connect, make_cluster, rpc, rpc_ok
from tests.systemd_hosts import DOCKER
from tests.test_status import Subscriber, event

pytestmark = pytest.mark.docker

CPUS, MEMORY_MB = 0.25, 128


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, session_image):
    yield from make_cluster(tmp_path_factory.mktemp("sec-record"), session_image, status=True)


def in_session(sid: str, script: str) -> str:
    """Run ``script`` with sh inside the session's container as the session user (uid 1337)."""
    done = subprocess.run([DOCKER, "exec", "-u", "1337:1337", "-w", "/home/claude", f"convocate-session-{sid}",
                           "sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"in session {sid[:8]}: {script!r} exited {done.returncode}: {done.stderr}"
    return done.stdout


def inspect(sid: str) -> dict:
    client = docker.from_env()
    try:
        return client.api.inspect_container(f"convocate-session-{sid}")
    finally:
        client.close()


def applied(sid: str) -> dict:
    """What dockerd applies to the session's container: limits, published ports, host name."""
    info = inspect(sid)
    host = info["HostConfig"]
    ports = sorted(int(b["HostPort"]) for bindings in (host.get("PortBindings") or {}).values() for b in bindings)
    return {"nano_cpus": host["NanoCpus"], "memory": host["Memory"], "ports": ports,
            "hostname": info["Config"]["Hostname"]}


REPORTED = ("uuid", "name", "port", "protocol", "dns_name", "cpus", "memory_mb")


def reported(meta: dict) -> dict:
    return {k: meta.get(k) for k in REPORTED}


async def test_a_forged_session_json_changes_nothing_the_agent_reports_or_applies(cluster):
    async with connect(cluster) as ssh, Subscriber(cluster.paths.status_socket) as sub:
        victim = await rpc_ok(ssh, "create", {"name": "victim", "dns_name": "victim-rec", "cpus": 0.1,
                                              "memory_mb": 64})
        made = await rpc_ok(ssh, "create", {"name": "honest", "dns_name": "honest-rec", "port": -1,
                                            "cpus": CPUS, "memory_mb": MEMORY_MB, "start": True})
        sid = made["uuid"]
        want = reported(await rpc_ok(ssh, "get", {"id": sid}))
        want_applied = applied(sid)
        assert want_applied == {"nano_cpus": int(CPUS * 1e9), "memory": MEMORY_MB << 20, "ports": [want["port"]],
                                "hostname": "honest-rec"}

        forged = dict(await rpc_ok(ssh, "get", {"id": sid}))
        forged.update(name="forged", cpus=CPUS * 2, memory_mb=MEMORY_MB * 2, port=want["port"] + 7,
                      dns_name=victim["dns_name"])
        forged_text = json.dumps(forged)
        # Every way a shell in the session would try it: mv over the file, edit in place, a new file.
        in_session(sid, f"printf '%s' '{forged_text}' > .forged.json && mv -f .forged.json session.json && "
                        "ls -la /home/claude")
        assert reported(await rpc_ok(ssh, "get", {"id": sid})) == want
        in_session(sid, f"printf '%s' '{forged_text}' > session.json; touch -d '2030-01-01' session.json")
        assert reported(await rpc_ok(ssh, "get", {"id": sid})) == want
        listed = {m["uuid"]: m for m in await rpc_ok(ssh, "list")}
        assert reported(listed[sid]) == want
        assert reported(listed[victim["uuid"]])["dns_name"] == "victim-rec"

        start = len(sub.messages)
        restarted = await rpc_ok(ssh, "restart", {"id": sid})
        assert reported(restarted) == want
        assert applied(sid) == want_applied, "the container got what the session wrote"
        _, started = await sub.wait_for(event("container.started", sid), start)
        assert reported(started["data"]) == want
        for message in sub.since(start):
            if message.get("session_id") == sid and isinstance(message.get("data"), dict):
                assert message["data"].get("dns_name", "honest-rec") == "honest-rec", message
                assert message["data"].get("name", "honest") == "honest", message

        # The session cannot make the agent reuse another session's DNS name or the forged port either:
        # an edit of something else keeps the agent's values.
        edited = await rpc_ok(ssh, "edit", {"id": sid, "name": "honest2"})
        assert reported(edited) == dict(want, name="honest2")
        hosts = cluster.paths.dnsmasq_hosts
        if hosts.exists():  # status-serve's hosts file: the session's own line names its own DNS name only
            own = [line for line in hosts.read_text().splitlines() if line.endswith(sid)]
            assert own and all("victim-rec" not in line and "honest-rec" in line for line in own), own

        await rpc_ok(ssh, "kill", {"id": sid})
        await rpc_ok(ssh, "delete", {"id": sid})
        await rpc_ok(ssh, "delete", {"id": victim["uuid"]})


def snapshot(directory: Path) -> dict[str, bytes | str]:
    """Every entry under ``directory`` (not following symlinks): file contents, link targets, dirs."""
    out: dict[str, bytes | str] = {}
    for here, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(here) / name
            rel = str(path.relative_to(directory))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_bytes()
    return out


async def test_symlinks_planted_in_the_home_do_not_make_the_agent_write_outside_it(cluster):
    outside = cluster.root / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "target.txt").write_text("untouched\n")
    os.chmod(outside, 0o777)  # so that only the agent's own writes could change it, never a lack of rights
    before = snapshot(outside)
    state = cluster.paths.agent_state_dir
    async with connect(cluster) as ssh:
        made = await rpc_ok(ssh, "create", {"name": "linker", "cpus": 0.1, "memory_mb": 64, "start": True})
        sid = made["uuid"]
        # Links to files and directories outside the home (host paths: the agent resolves them on the host),
        # where the agent used to write (session.json and its temporary files), and where a copy descends.
        in_session(sid, f"rm -f session.json; ln -s {outside}/target.txt session.json; "
                        f"ln -s {outside}/target.txt .session.json.x.tmp; ln -s {outside}/dir .staging; "
                        f"mkdir -p proj && ln -s {outside}/dir proj/escape && ln -s {outside}/target.txt proj/file; "
                        f"ln -s {state} state")
        assert (await rpc_ok(ssh, "get", {"id": sid}))["name"] == "linker"
        await rpc_ok(ssh, "kill", {"id": sid})
        assert (await rpc_ok(ssh, "edit", {"id": sid, "name": "linker2"}))["name"] == "linker2"
        clone = await rpc_ok(ssh, "clone", {"source_id": sid, "name": "copy"})
        copy_home = cluster.paths.session_dir(clone["uuid"])
        assert os.readlink(copy_home / "proj" / "escape") == f"{outside}/dir", "a symlink was followed, not copied"
        assert os.readlink(copy_home / "proj" / "file") == f"{outside}/target.txt"
        assert (await rpc_ok(ssh, "get", {"id": clone["uuid"]}))["name"] == "copy"
        deleted = await rpc_ok(ssh, "delete", {"id": sid})
        restored = await rpc_ok(ssh, "restore", {"trash_id": deleted["trash"]})
        assert restored["session"]["name"] == "linker2"
        response = await rpc(ssh, "restart", {"id": sid})
        assert response["ok"], response
        await rpc_ok(ssh, "kill", {"id": sid})
        for gone in (sid, clone["uuid"]):
            await rpc_ok(ssh, "delete", {"id": gone})
    assert snapshot(outside) == before, "the agent wrote outside the session's home"
