"""A hostile session against its own container (issue 14, item 6).

Each test starts a real session through a real agent (the ``cluster`` fixture) and tries from inside its
container what code running there would: read and use capabilities, run a setuid binary, write to the
image, fork without end. The agent's own ``docker exec`` (the attach channel) is checked from the host.
Every container is the agent's (labelled with the cluster's root) and is killed and deleted at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from convocate_agent import cgroups
from tests.conftest import connect, rpc_ok
from tests.security.conftest import running_session
from tests.test_agent_attach import open_attach

pytestmark = pytest.mark.docker

USER = "1337:1337"
ENV = {"HOME": "/home/claude"}

#: Prints, for every process the container can see, its UIDs, capability sets and no_new_privs, as JSON.
PROCESSES = r"""
import json, os
out = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        fields = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
    except OSError:
        continue
    out[pid] = {k: fields[k].split() for k in ("Name", "Uid", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")}
print(json.dumps(out))
"""

#: Runs the setuid-root ``su`` on a pty and reports the UIDs it runs with (from /proc, zombie or not).
SETUID = r"""
import os, pty, select, stat, time
assert os.stat("/bin/su").st_mode & stat.S_ISUID and os.stat("/bin/su").st_uid == 0, "su is not setuid root"
pid, fd = pty.fork()
if pid == 0:
    os.execv("/bin/su", ["su", "root", "-c", "id"])
seen, deadline = b"", time.time() + 10
while b"assword" not in seen and time.time() < deadline:
    if select.select([fd], [], [], 0.1)[0]:
        try:
            seen += os.read(fd, 1024)
        except OSError:
            break
status = open(f"/proc/{pid}/status").read()
print(status.split("Uid:")[1].split("\n")[0].strip(), "|", seen.decode(errors="replace").strip()[-60:])
os.kill(pid, 9)
os.waitpid(pid, 0)
"""

#: Forks until the kernel says no (at most 150 children), then kills and reaps every child.
FORK_BOMB = r"""
import errno, os, signal
children, error = [], None
try:
    while len(children) < 150:
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        children.append(pid)
except OSError as e:
    error = errno.errorcode.get(e.errno, str(e.errno))
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
print(len(children), error)
"""


def run_in(docker_client, sid: str, script: str, user: str = USER) -> tuple[int, str]:
    container = docker_client.containers.get(f"convocate-session-{sid}")
    code, out = container.exec_run(["python3", "-c", script], user=user, environment=ENV)
    return code, out.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def session(cluster):
    with running_session(cluster, "hostile", cpus=0.2, memory_mb=256) as sid:
        yield sid


def process_snapshot(docker_client, sid: str, tries: int = 20) -> dict[str, dict[str, list[str]]]:
    """Every process the session's container sees, taken when no ``docker exec`` is being set up.

    While runc sets up an exec (the agent's own probes of the session run several a minute), its init
    process (``runc:[2:INIT]``) sits in the container's PID namespace as root with the runtime's
    capabilities for a moment, then drops them and execs the command. That process is the container
    runtime, not the session's, and the session cannot reach it (another UID, not dumpable). A snapshot
    that shows one is taken again; one that never clears fails the test.
    """
    for _ in range(tries):
        code, out = run_in(docker_client, sid, PROCESSES)
        assert code == 0, out
        processes = json.loads(out)
        if not any(" ".join(p["Name"]).startswith("runc:[") for p in processes.values()):
            return processes
        time.sleep(0.25)
    raise AssertionError(f"a runc init stayed in the container through {tries} snapshots: {processes}")


def test_no_process_in_a_session_has_or_can_regain_a_capability(session, docker_client):
    processes = process_snapshot(docker_client, session)
    assert {" ".join(p["Name"]) for p in processes.values()} >= {"docker-init", "tmux: server", "python3"}, processes
    privileged = {pid: p for pid, p in processes.items()
                  if "0" in p["Uid"] or any(int(p[k][0], 16) for k in ("CapPrm", "CapEff", "CapBnd", "CapAmb"))
                  or p["NoNewPrivs"] != ["1"]}
    # tini (PID 1) and the entrypoint included: nothing runs as root, nothing holds or may regain a capability.
    assert not privileged, privileged


def test_a_setuid_binary_gives_the_session_no_root(session, docker_client):
    code, out = run_in(docker_client, session, SETUID)
    assert code == 0, out
    uids = out.split("|")[0].split()
    assert uids == ["1337"] * 4, f"su ran with UIDs {uids} (real, effective, saved, fs): {out!r}"


def test_the_image_is_read_only_even_to_root_in_the_container(session, docker_client):
    container = docker_client.containers.get(f"convocate-session-{session}")
    code, out = container.exec_run(["sh", "-c", "awk '$2 == \"/\" {print $4}' /proc/self/mounts"], user=USER)
    assert code == 0 and out.decode().split(",")[0] == "ro", out
    for target in ("/usr/local/bin/claude", "/etc/claude-code/managed-settings.json", "/usr/bin/planted"):
        code, out = container.exec_run(["sh", "-c", f"echo planted >> {target}"], user="0:0")
        assert code != 0 and b"Read-only file system" in out, (target, out)
    # What a session needs to write still takes writes: its home, /tmp, /var/tmp, /run/convocate.
    code, out = container.exec_run(
        ["sh", "-c", "for d in /home/claude /tmp /var/tmp /run/convocate; do echo x > $d/probe && rm $d/probe || exit 1; done"],
        user=USER, environment=ENV)
    assert code == 0, out


def test_the_agents_attach_runs_without_privileges(cluster, session, docker_client):
    async def scenario():
        async with connect(cluster) as ssh:
            process, screen = await open_attach(ssh, session)
            try:
                container = docker_client.containers.get(f"convocate-session-{session}")
                for _ in range(100):
                    container.reload()
                    running = [docker_client.api.exec_inspect(e) for e in container.attrs.get("ExecIDs") or []]
                    running = [e for e in running if e["Running"] and e.get("Pid")
                               and "convocate-attach" in e["ProcessConfig"]["arguments"]]
                    if running:
                        break
                    await asyncio.sleep(0.05)
                assert running, "no attach exec found"
                status = Path(f"/proc/{running[0]['Pid']}/status").read_text()
                return dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            finally:
                process.close()

    fields = asyncio.run(scenario())
    assert fields["Uid"].split() == ["1337"] * 4
    assert int(fields["CapBnd"], 16) == 0 and int(fields["CapEff"], 16) == 0, fields["CapBnd"]
    assert fields["NoNewPrivs"].strip() == "1"


def _parent_pids_max(docker_client, agent_id: str) -> str:
    parent = cgroups.detect(docker_client.info(), f"convocate-sessions-{agent_id}")
    path = (parent.root / parent.name if parent.version == 2 else parent.root / "pids" / parent.name) / "pids.max"
    return path.read_text().strip()


def test_a_fork_bomb_stops_at_the_sessions_pids_limit(cluster, session, docker_client):
    container = docker_client.containers.get(f"convocate-session-{session}")
    assert container.attrs["HostConfig"]["PidsLimit"] == 4096  # the default of the agent setting pids_limit
    assert _parent_pids_max(docker_client, cluster.agent_id) not in ("max", "")  # and all sessions together

    async def agent(op: str, params: dict) -> dict:
        async with connect(cluster) as ssh:
            return await rpc_ok(ssh, op, params)

    asyncio.run(agent("settings-set", {"pids_limit": 64}))
    try:
        with running_session(cluster, "fork-bomb", cpus=0.2, memory_mb=256) as sid:
            asyncio.run(agent("settings-set", {"pids_limit": 4096}))  # only this session's container has 64
            code, out = run_in(docker_client, sid, FORK_BOMB)
            alive = asyncio.run(agent("get", {"id": sid}))["running"]
    finally:
        asyncio.run(agent("settings-set", {"pids_limit": 4096}))
    assert code == 0, out
    made, error = out.split()
    assert int(made) < 64 and error == "EAGAIN", out
    assert alive  # the session survived its own fork bomb
