"""Attacks on the cluster's Claude credentials (issue 15 item 2, docs/security.md "Credentials").

Two sessions run on one agent with different credentials, set the operator's way (``convocate auth
set``). Session A, untrusted, looks for B's secret everywhere it can reach: its own report directory,
B's report directory and the agent's store by path, every process environment it can read. A local
user of the agent host (uid 65534) tries the agent's store through a descriptor of its directory. And
nothing a less trusted reader sees (``docker inspect``, ``docker logs``, the agent's log, the session
records) holds either secret.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest

from convocate.common.credentials import fingerprint
from tests.conftest import connect, rpc_ok
from tests.security.conftest import running_session

pytestmark = pytest.mark.docker

SECRET_A = "sk-ant-api03-session-a-" + "f6" * 20
SECRET_B = "sk-ant-api03-session-b-" + "a7" * 20

#: Run inside session A as its user: tries each path in argv[1:], then scans every readable environment.
HUNT = r"""
import json, os, sys
out = {"paths": {}, "environ_hits": [], "own_dir": sorted(os.listdir("/run/convocate-agent"))}
for path in sys.argv[2:]:
    try:
        with open(path, "rb") as f:
            out["paths"][path] = "read:" + str(len(f.read()))
    except OSError as e:
        out["paths"][path] = type(e).__name__
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            if sys.argv[1].encode() in open(f"/proc/{pid}/environ", "rb").read():
                out["environ_hits"].append(pid)
        except OSError:
            pass
print(json.dumps(out))
"""


def set_credential(cluster, name: str, secret: str) -> None:
    done = cluster.run_role("convocate", "auth", "set", "--name", name, "--api-key", check=False, input=secret,
                            timeout=120)
    assert done.returncode == 0, done.stderr


def create_with(cluster, name: str, credential: str) -> str:
    async def make() -> str:
        async with connect(cluster) as ssh:
            return (await rpc_ok(ssh, "create", {"name": name, "credential": credential, "cpus": 0.1,
                                                 "memory_mb": 160, "start": True}))["uuid"]

    return asyncio.run(make())


def end(cluster, sid: str) -> None:
    async def stop() -> None:
        async with connect(cluster) as ssh:
            await rpc_ok(ssh, "kill", {"id": sid})
            await rpc_ok(ssh, "delete", {"id": sid})

    asyncio.run(stop())


@pytest.fixture(scope="module")
def sessions(cluster):
    set_credential(cluster, "team-a", SECRET_A)
    set_credential(cluster, "team-b", SECRET_B)
    with running_session(cluster, "plain", cpus=0.1, memory_mb=160) as plain:  # no credential of its own
        a, b = create_with(cluster, "cred-a", "team-a"), create_with(cluster, "cred-b", "team-b")
        try:
            yield {"a": a, "b": b, "plain": plain}
        finally:
            for sid in (a, b):
                end(cluster, sid)


def test_a_session_cannot_read_another_sessions_credential_or_the_store(cluster, sessions, docker_client):
    a, b = sessions["a"], sessions["b"]
    targets = ["/run/convocate-agent/credential.env", f"/run/convocate-agent/sessions/{b}/credential.env",
               f"/run/convocate-agent/../convocate-agent/sessions/{b}/credential.env",
               str(cluster.paths.session_credential_env(b)), str(cluster.paths.agent_credentials_dir / "team-b.json"),
               "/var/lib/convocate-agent/credentials/team-b.json"]
    container = docker_client.containers.get(f"convocate-session-{a}")
    code, out = container.exec_run(["python3", "-I", "-c", HUNT, SECRET_B, *targets], user="1337:1337")
    assert code == 0, out
    found = json.loads(out)
    assert all(result == "FileNotFoundError" for result in found["paths"].values()), found["paths"]
    assert found["own_dir"] == ["agent.sock"]  # credential.env is gone once the session is ready
    assert found["environ_hits"] == []
    code, out = container.exec_run(["python3", "-I", "-c", HUNT, SECRET_A], user="1337:1337")
    assert json.loads(out)["environ_hits"], "session A's claude should hold its own key"


def test_no_secret_in_docker_the_agent_log_or_the_records(cluster, sessions, docker_client):
    for sid in sessions.values():
        container = docker_client.containers.get(f"convocate-session-{sid}")
        shown = json.dumps(container.attrs) + container.logs().decode("utf-8", "replace")
        image = docker_client.images.get(container.attrs["Config"]["Image"])
        shown += json.dumps(image.attrs)
        record = cluster.paths.session_record(sid).read_text()
        for secret in (SECRET_A, SECRET_B):
            assert secret not in shown and secret not in record
    assert json.loads(cluster.paths.session_record(sessions["b"]).read_text())["credential_fingerprint"] == \
        fingerprint(SECRET_B)
    log = cluster.log_text()
    assert SECRET_A not in log and SECRET_B not in log and fingerprint(SECRET_B) in log


def test_a_local_user_cannot_read_the_agents_store(cluster, sessions):
    store = cluster.paths.agent_credentials_dir
    assert (os.stat(store).st_mode & 0o777) == 0o700
    fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    try:
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "/usr/bin/python3",
                               "-I", "-c", "import sys; open(f'/proc/self/fd/{sys.argv[1]}/team-b.json').read()",
                               str(fd)], capture_output=True, text=True, timeout=30, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert done.returncode != 0 and "PermissionError" in done.stderr
