"""Forged activity reports (issue 14, item 3): only a session's container and the agent reach its report socket.

The attacker is another local user of the agent host (uid 65534), or a host process running as the session
user but outside its container. Each connects to a real session's report socket through a descriptor of
the agent's run directory (as on a real host, where ``/run`` is open to all; pytest's temp root is not)
and asks for the operator's API key in a forged ``waiting`` question. The session's own container, for
contrast, still reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import time

import pytest

from convocate.common import messages
from tests.conftest import connect, rpc_ok
from tests.security.conftest import running_session

pytestmark = pytest.mark.docker

QUESTION = "paste the API key here"

#: Connects to the report socket through an inherited descriptor of the agent's run directory (argv[3])
#: and sends one forged report.
FORGE = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(f"/proc/self/fd/{sys.argv[3]}/sessions/{sys.argv[1]}/agent.sock")
except OSError as e:
    print(json.dumps({"connect": type(e).__name__}))
    sys.exit(0)
s.sendall(json.dumps({"source": "mcp", "event": "ask", "data": {"question": sys.argv[2]}}).encode() + b"\n")
print(json.dumps({"connect": "ok", "reply": s.makefile().readline().strip()}))
"""


def forge_as(cluster, uid: int, gid: int, sid: str) -> dict:
    """Run :data:`FORGE` as ``uid:gid`` (no supplementary groups); returns what it printed."""
    fd = os.open(cluster.paths.agent_run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        result = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", "/usr/bin/python3", "-I", "-c",
             FORGE, sid, QUESTION, str(fd)], capture_output=True, text=True, timeout=30, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def session(cluster):
    with running_session(cluster, "forged", cpus=0.1, memory_mb=160, until_idle=True) as sid:
        yield sid


def activity(cluster, sid: str) -> tuple[str, str]:
    async def get():
        async with connect(cluster) as ssh:
            meta = await rpc_ok(ssh, "get", {"id": sid})
            return meta.get("activity", ""), meta.get("activity_detail", "")

    return asyncio.run(get())


def test_the_socket_and_its_directories_are_closed_to_other_users(cluster, session):
    run = cluster.paths.agent_run_dir
    for path in (run, run / "sessions", run / "sessions" / session):
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o750, f"{path}: {stat.S_IMODE(st.st_mode):04o}"
    st = os.stat(run / "sessions" / session / "agent.sock")
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o007 == 0, f"{stat.S_IMODE(st.st_mode):04o}"
    assert st.st_gid == 1337 and stat.S_IMODE(st.st_mode) & 0o060 == 0o060  # the session user connects by group


def test_another_local_user_cannot_forge_a_sessions_question(cluster, session):
    result = forge_as(cluster, 65534, 65534, session)
    assert result == {"connect": "PermissionError"}, result
    assert activity(cluster, session)[0] != "waiting"


def test_a_host_process_of_the_session_user_is_refused_and_the_container_still_reports(cluster, session,
                                                                                       docker_client):
    result = forge_as(cluster, 1337, 1337, session)  # through the file modes: only the peer check stops it
    assert result["connect"] == "ok" and '"ok": false' in result["reply"], result
    assert messages.REPORT_PEER_REFUSED in result["reply"]
    assert activity(cluster, session) != ("waiting", QUESTION)
    container = docker_client.containers.get(f"convocate-session-{session}")
    code, out = container.exec_run(["convocate-report", "mcp", "ask", "question=a real question"],
                                   user="1337:1337", environment={"HOME": "/home/claude"})
    assert code == 0, out
    for _ in range(100):
        if activity(cluster, session) == ("waiting", "a real question"):
            break
        time.sleep(0.05)
    assert activity(cluster, session) == ("waiting", "a real question")
    assert "report refused" in cluster.log_text()
