"""Every RPC op against a real agent, real dockerd and the session test image."""

from __future__ import annotations

import asyncio
import json
import re

import docker
import pytest

from convocate.common.framing import encode_line
from convocate.common.protocol import RPC_SUBSYSTEM
from tests.conftest import openssh_args, rpc, rpc_ok, run_openssh

pytestmark = pytest.mark.docker


async def wait_for_text(conn, sid, text, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        screen = (await rpc_ok(conn, "capture", {"id": sid}))["text"]
        if text in screen:
            return screen
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{text!r} not on screen:\n{screen}")
        await asyncio.sleep(0.05)


async def test_ping_reports_identity_version_and_capabilities(ssh, cluster):
    result = await rpc_ok(ssh, "ping")
    assert result["agent_id"] == cluster.agent_id and result["version"] == "0.1.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", result["server_time"])
    assert {"create", "capture", "capacity"} <= set(result["capabilities"])


def test_openssh_speaks_the_rpc_subsystem(cluster, tmp_path):
    done = run_openssh(openssh_args(cluster, tmp_path) + ["-s", RPC_SUBSYSTEM],
                       input=b'{"op":"ping","params":{}}\n')
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    assert response["ok"] and response["result"]["agent_id"] == cluster.agent_id


async def test_several_requests_on_one_channel_are_answered_in_order_with_ids(ssh):
    process = await ssh.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
    for i, op in enumerate(["ping", "list", "settings-get", "capacity", "nope"]):
        process.stdin.write(encode_line({"op": op, "params": {}, "id": i}))
    process.stdin.write_eof()
    lines = (await asyncio.wait_for(process.stdout.read(), 30)).splitlines()
    responses = [json.loads(line) for line in lines]
    assert [r["id"] for r in responses] == [0, 1, 2, 3, 4]
    assert [r["ok"] for r in responses] == [True, True, True, True, False]
    assert responses[4]["error"] == 'unknown op: "nope"'


async def test_channel_stays_open_for_a_client_that_keeps_it(ssh):
    process = await ssh.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
    for i in range(3):
        process.stdin.write(encode_line({"op": "ping", "id": i}))
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        assert json.loads(line)["id"] == i
    process.stdin.write_eof()
    assert await asyncio.wait_for(process.stdout.read(), 10) == b""
    await asyncio.wait_for(process.wait_closed(), 10)


async def test_session_lifecycle_through_every_op(ssh, cluster, docker_client):
    created = await rpc_ok(ssh, "create", {"name": "life", "port": -1, "dns_name": "Life", "cpus": 0.25,
                                           "memory_mb": 256, "start": True})
    sid = created["uuid"]
    assert created["running"] and created["state"] == "R" and created["dns_name"] == "life"
    assert created["port"] >= 1001 and created["protocol"] == "tcp"
    assert created["image"] == cluster.image

    container = docker_client.containers.get(f"convocate-session-{sid}")
    labels = container.labels
    assert labels["convocate.session"] == sid and labels["convocate.agent"] == cluster.agent_id
    host = container.attrs["HostConfig"]
    assert host["NanoCpus"] == 250_000_000 and host["Memory"] == 256 * 1024 * 1024 and host["Init"] is True
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/home/claude"]["Source"] == str(cluster.paths.session_dir(sid))
    assert not any(str(cluster.paths.agent_etc) in m["Source"] for m in container.attrs["Mounts"])  # no agent keys
    report = mounts["/run/convocate-agent"]
    assert report["Source"] == str(cluster.paths.session_run_dir(sid)) and report["RW"] is False

    assert (await rpc_ok(ssh, "get", {"id": sid}))["uuid"] == sid
    listed = await rpc_ok(ssh, "list")
    assert listed[0]["uuid"] == sid  # newest access first

    await wait_for_text(ssh, sid, "convocate stand-in claude")
    assert await rpc_ok(ssh, "send", {"id": sid, "text": "hello agent", "enter": True})
    await wait_for_text(ssh, sid, "echo: hello agent")
    history = await rpc_ok(ssh, "capture", {"id": sid, "lines": 100})
    assert "echo: hello agent" in history["text"]

    edited = await rpc_ok(ssh, "edit", {"id": sid, "name": "renamed", "dns_name": "", "memory_mb": 300})
    assert edited["name"] == "renamed" and "dns_name" not in edited and edited["memory_mb"] == 300

    background = await rpc_ok(ssh, "background", {"id": sid})
    assert background["state"] == "R"
    override = await rpc_ok(ssh, "override", {"id": sid})
    assert override["detached"] == 0 and override["cleared_lock"] == ""

    restarted = await rpc_ok(ssh, "restart", {"id": sid})
    assert restarted["running"] and restarted["memory_mb"] == 300
    assert docker_client.containers.get(f"convocate-session-{sid}").attrs["HostConfig"]["Memory"] == 300 * 1024 * 1024

    refused = await rpc(ssh, "delete", {"id": sid})
    assert refused == {"ok": False, "error": f'session "{sid}" is running; kill it first', "code": "conflict"}

    killed = await rpc_ok(ssh, "kill", {"id": sid})
    assert not killed["running"] and killed["state"] == "-"
    assert (await rpc_ok(ssh, "kill", {"id": sid}))["state"] == "-"  # idempotent

    cloned = await rpc_ok(ssh, "clone", {"source_id": sid, "name": "copy"})
    assert cloned["uuid"] != sid and "port" not in cloned and not cloned["running"]
    assert (cluster.paths.session_dir(cloned["uuid"]) / "CLAUDE.md").exists()

    deleted = await rpc_ok(ssh, "delete", {"id": sid})
    assert deleted["uuid"] == sid
    assert (cluster.paths.trash_dir / deleted["trash"]).is_dir()
    assert (cluster.paths.trash_records_dir / f"{deleted['trash']}.json").exists()
    assert not cluster.paths.session_dir(sid).exists()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(f"convocate-session-{sid}")
    gone = await rpc(ssh, "get", {"id": sid})
    assert gone == {"ok": False, "error": f'session "{sid}" does not exist', "code": "not_found"}
    await rpc_ok(ssh, "delete", {"id": cloned["uuid"]})


async def test_list_shows_each_sessions_state(ssh):
    stopped = await rpc_ok(ssh, "create", {"name": "stopped", "memory_mb": 128, "cpus": 0.1})
    running = await rpc_ok(ssh, "create", {"name": "running", "memory_mb": 128, "cpus": 0.1, "start": True})
    states = {s["uuid"]: s["state"] for s in await rpc_ok(ssh, "list")}
    assert states[stopped["uuid"]] == "-" and states[running["uuid"]] == "R"
    await rpc_ok(ssh, "kill", {"id": running["uuid"]})
    for s in (stopped, running):
        await rpc_ok(ssh, "delete", {"id": s["uuid"]})


async def test_explicit_port_conflicts_are_refused(ssh):
    first = await rpc_ok(ssh, "create", {"name": "p1", "port": 40111})
    dup = await rpc(ssh, "create", {"name": "p2", "port": 40111})
    assert dup["code"] == "conflict" and "40111/tcp is already used by session" in dup["error"]
    udp = await rpc_ok(ssh, "create", {"name": "p3", "port": 40111, "protocol": "udp"})
    dns = await rpc_ok(ssh, "create", {"name": "d1", "dns_name": "taken"})
    clash = await rpc(ssh, "edit", {"id": udp["uuid"], "dns_name": "TAKEN"})
    assert clash["code"] == "conflict" and 'dns name "taken" is already used' in clash["error"]
    for s in (first, udp, dns):
        await rpc_ok(ssh, "delete", {"id": s["uuid"]})


async def test_a_port_busy_on_the_host_is_refused(ssh):
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        busy = await rpc(ssh, "create", {"name": "busy", "port": port})
    assert busy == {"ok": False, "error": f"port {port}/tcp is in use on the agent host", "code": "conflict"}


async def test_settings_get_and_set_persist(ssh, cluster):
    before = await rpc_ok(ssh, "settings-get")
    assert before["agent_command"] == "claude"
    after = await rpc_ok(ssh, "settings-set", {"default_cpus": 0.2, "default_memory_mb": 200})
    assert after["default_cpus"] == 0.2 and after["default_memory_mb"] == 200
    assert json.loads(cluster.paths.agent_settings.read_text())["default_memory_mb"] == 200
    bad = await rpc(ssh, "settings-set", {"default_cpus": "lots"})
    assert bad["code"] == "bad_request" and 'field "default_cpus" must be a number' in bad["error"]
    made = await rpc_ok(ssh, "create", {"name": "defaults"})
    assert made["cpus"] == 0.2 and made["memory_mb"] == 200
    await rpc_ok(ssh, "delete", {"id": made["uuid"]})
    await rpc_ok(ssh, "settings-set", {"default_cpus": before["default_cpus"],
                                       "default_memory_mb": before["default_memory_mb"]})


async def test_capacity_reports_totals_reservations_and_limits(ssh):
    s = await rpc_ok(ssh, "create", {"name": "cap", "cpus": 0.3, "memory_mb": 300, "start": True})
    cap = await rpc_ok(ssh, "capacity")
    assert cap["limits"]["cpus"] == pytest.approx(cap["host"]["cpus"] * 0.9)
    assert cap["reserved"]["cpus"] >= 0.3 and cap["reserved"]["memory_mb"] >= 300
    assert cap["usage"]["memory_available_mb"] > 0
    await rpc_ok(ssh, "kill", {"id": s["uuid"]})
    await rpc_ok(ssh, "delete", {"id": s["uuid"]})


async def test_admission_refuses_what_does_not_fit(ssh):
    cap = await rpc_ok(ssh, "capacity")
    too_much = cap["limits"]["cpus"] - cap["reserved"]["cpus"] + 0.5
    refused = await rpc(ssh, "create", {"name": "huge", "cpus": round(too_much, 2), "memory_mb": 64, "start": True})
    assert refused["code"] == "admission_denied" and refused["error"].startswith("admission denied: cpus asked")
    assert not any(s["name"] == "huge" for s in await rpc_ok(ssh, "list"))  # nothing half-made


async def test_a_failed_start_leaves_nothing_behind(ssh, cluster):
    image_file = cluster.paths.current_image_file
    image_file.write_text("convocate:no-such-tag\n")
    try:
        refused = await rpc(ssh, "create", {"name": "noimage", "memory_mb": 64, "cpus": 0.1, "start": True})
    finally:
        image_file.write_text(f"{cluster.image}\n")
    assert refused["code"] == "docker_error" and "convocate:no-such-tag" in refused["error"]
    assert not any(s["name"] == "noimage" for s in await rpc_ok(ssh, "list"))
    assert list(cluster.paths.staging_dir.iterdir()) == []


async def test_a_missing_current_image_is_a_clear_error(ssh, cluster):
    image_file = cluster.paths.current_image_file
    image_file.unlink()
    try:
        refused = await rpc(ssh, "create", {"name": "x", "start": True})
    finally:
        image_file.write_text(f"{cluster.image}\n")
    assert refused["code"] == "config" and "no session image configured" in refused["error"]


async def test_credentials_reach_sessions_read_only_and_agent_keys_never(ssh, cluster, docker_client):
    shared = cluster.paths.claude_shared_dir
    shared.mkdir(exist_ok=True)
    (shared / ".credentials.json").write_text('{"token": "t"}')
    env_file = cluster.paths.session_env_file
    env_file.write_text("# secrets\nANTHROPIC_API_KEY=sk-test-123\nexport OTHER='x y'\n")
    env_file.chmod(0o600)
    try:
        made = await rpc_ok(ssh, "create", {"name": "creds", "cpus": 0.1, "memory_mb": 128, "start": True})
        container = docker_client.containers.get(f"convocate-session-{made['uuid']}")
        mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        assert mounts["/opt/convocate/claude-shared"]["RW"] is False
        assert mounts["/home/claude"]["RW"] is True
        assert not any(str(cluster.paths.agent_etc) in m["Source"] for m in mounts.values())
        env = container.attrs["Config"]["Env"]  # the session env file reaches the session, not Docker (issue 15)
        assert not any("sk-test-123" in e or e.startswith("OTHER=") for e in env)
        code, out = container.exec_run(["tmux", "show-environment", "-g", "ANTHROPIC_API_KEY"], user="1337:1337",
                                       environment={"HOME": "/home/claude"})
        assert code == 0 and out.decode().strip() == "ANTHROPIC_API_KEY=sk-test-123"
        link = ["readlink", "/home/claude/.claude/.credentials.json"]
        code, out = container.exec_run(link, user="1337:1337")
        assert out.decode().strip() == ""  # a key is given: the shared credentials file is not linked
        code, out = container.exec_run(["sh", "-c", "echo x > /opt/convocate/claude-shared/new"], user="1337:1337")
        assert code != 0 and b"Read-only file system" in out
        env_file.write_text("# no key now\n")  # no credential at all: the shared file is the fallback
        await rpc_ok(ssh, "restart", {"id": made["uuid"]})
        container = docker_client.containers.get(f"convocate-session-{made['uuid']}")
        code, out = container.exec_run(link, user="1337:1337")
        assert out.decode().strip() == "/opt/convocate/claude-shared/.credentials.json"
        await rpc_ok(ssh, "kill", {"id": made["uuid"]})
        await rpc_ok(ssh, "delete", {"id": made["uuid"]})
    finally:
        env_file.unlink()
        (shared / ".credentials.json").unlink()
        shared.rmdir()


async def test_work_dir_and_skip_permissions_apply_from_a_sessions_next_start_and_to_clones(ssh, cluster,
                                                                                            docker_client):
    bad = await rpc(ssh, "settings-set", {"work_dir": "/home/claude/../../etc"})
    assert bad["code"] == "bad_request" and 'field "work_dir": must be an absolute, normalised path' in bad["error"]
    made = await rpc_ok(ssh, "create", {"name": "prompt", "cpus": 0.1, "memory_mb": 128, "start": True})
    sid, home = made["uuid"], cluster.paths.session_dir(made["uuid"])

    def pane_path(session_id):
        container = docker_client.containers.get(f"convocate-session-{session_id}")
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        out = container.exec_run(["tmux", "display-message", "-p", "-t", "main", "#{pane_current_path}"],
                                 user="1337:1337", environment={"HOME": "/home/claude"}).output
        return out.decode().strip(), env["CONVOCATE_WORK_DIR"], env["CONVOCATE_SKIP_PERMISSIONS"]

    try:
        screen = await wait_for_text(ssh, sid, "convocate stand-in claude")
        assert "convocate stand-in claude\n" in screen  # the agent command as it is
        assert pane_path(sid) == ("/home/claude/work", "/home/claude/work", "0")
        config = json.loads((home / ".claude.json").read_text())
        assert config["projects"]["/home/claude/work"]["hasTrustDialogAccepted"] is True
        assert "bypassPermissionsModeAccepted" not in config

        await rpc_ok(ssh, "settings-set", {"work_dir": "/home/claude/proj/a", "skip_permissions": True})
        assert pane_path(sid)[1:] == ("/home/claude/work", "0")  # a running session keeps what it started with
        await rpc_ok(ssh, "restart", {"id": sid})
        await wait_for_text(ssh, sid, "convocate stand-in claude --dangerously-skip-permissions")
        assert pane_path(sid) == ("/home/claude/proj/a", "/home/claude/proj/a", "1")
        config = json.loads((home / ".claude.json").read_text())
        assert config["bypassPermissionsModeAccepted"] is True
        assert config["projects"]["/home/claude/proj/a"]["hasTrustDialogAccepted"] is True
        assert (home / "proj" / "a").is_dir() and (home / "proj" / "a").stat().st_uid == 1337

        await rpc_ok(ssh, "kill", {"id": sid})
        clone = (await rpc_ok(ssh, "clone", {"source_id": sid, "name": "prompt copy"}))["uuid"]
        try:
            await rpc_ok(ssh, "restart", {"id": clone})
            await wait_for_text(ssh, clone, "convocate stand-in claude --dangerously-skip-permissions")
            assert pane_path(clone)[0] == "/home/claude/proj/a"
        finally:
            await rpc_ok(ssh, "kill", {"id": clone})
            await rpc_ok(ssh, "delete", {"id": clone})
    finally:
        await rpc_ok(ssh, "settings-set", {"work_dir": "/home/claude/work", "skip_permissions": False})
        await rpc_ok(ssh, "kill", {"id": sid})
        await rpc_ok(ssh, "delete", {"id": sid})
