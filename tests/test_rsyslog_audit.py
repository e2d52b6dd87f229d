"""Audit records forwarded to the shell host (issue 19 item 5), through the two real rsyslogd of test_rsyslog.

The records are written by the agent's own :class:`~convocate_agent.audit.AuditLog` in a child process
running as the agent's user (UID :data:`~convocate.common.paths.CLAUDE_UID`, which the agent's drop-in
trusts); the shell's copy must be byte-identical to the agent's file, so that its chain verifies too.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convocate.common.auditchain import AUDIT_APP_NAME, verify_file
from convocate.common.paths import CLAUDE_UID
from convocate_agent.audit import AuditLog
from convocate_host import rsyslog
from tests import test_rsyslog
from tests.conftest import wait_for
from tests.test_rsyslog import AGENT, REPO, Cluster, docker_datagram

# The two real rsyslogd of test_rsyslog, as fixtures of this module too.
short_root = test_rsyslog.short_root
cluster = test_rsyslog.cluster

SECRET = "sk-ant-api03-forwarded-" + "q" * 40


def as_agent_user(fn, *args) -> None:
    """Run ``fn(*args)`` in a child process with the agent's UID/GID (the test runs as root)."""
    if os.geteuid() != 0:
        pytest.fail("this test must run as root, to send as the agent's user and as others")
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.setgid(CLAUDE_UID)
            os.setuid(CLAUDE_UID)
            fn(*args)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def write_records(path: Path, socket_path: Path, batches: list[dict]) -> None:
    async def run() -> None:
        audit = AuditLog(path, AGENT, forward_socket=socket_path)
        for fields in batches:
            assert await audit.append(fields) is not None

    asyncio.run(run())


def audit_copy(cluster: Cluster) -> Path:
    return cluster.log_dir / rsyslog.AUDIT_LOG.format(agent_id=AGENT)


def forged(text: str, *, app: str = AUDIT_APP_NAME) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"<85>1 {stamp} {AGENT} {app} 4607 - - {text}".encode()


def send_datagram(socket_path: Path, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, str(socket_path))


def test_audit_records_reach_the_shell_byte_identical_and_forged_ones_do_not(cluster: Cluster, short_root: Path):
    cluster.shell.start()
    cluster.agent.start()
    short_root.chmod(0o755)  # mkdtemp's 0700 would keep the agent's user from its socket
    state = short_root / "agent-state"
    state.mkdir()
    os.chown(state, CLAUDE_UID, CLAUDE_UID)
    agent_file = state / "audit.jsonl"
    long_text = "".join(chr(32 + i % 95) for i in range(64 * 1024))  # a 64 KiB send, every printable ASCII
    odd_text = "tab\there, DEL\x7f, é, 日本, \x1b[31m"
    audit_socket = cluster.forwarder.audit_socket
    wait_for(audit_socket.exists, f"{audit_socket}")
    as_agent_user(write_records, agent_file, audit_socket, [
        {"op": "credential_set", "params": {"name": "default", "kind": "api_key", "secret_fingerprint": "sha256:x"},
         "result": "ok"},
        {"op": "send", "params": {"id": "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91", "text": long_text}, "result": "ok"},
        {"op": "send", "params": {"text": odd_text}, "result": "ok"},
    ])
    # Forged while the agent's records travel: to the session socket as a session's output arrives
    # (from dockerd, root: a line that is a record, a datagram claiming the audit APP-NAME), and to
    # the audit socket as root and as another local user (both sockets are 0666).
    send_datagram(cluster.forwarder.socket, forged('{"seq":99,"forged":"session socket, by root"}'))
    send_datagram(cluster.forwarder.socket, docker_datagram('{"seq":98,"forged":"as a session line"}'))
    send_datagram(audit_socket, forged('{"seq":96,"forged":"audit socket, by root"}'))

    def as_other_user() -> None:
        send_datagram(cluster.forwarder.socket, forged('{"seq":97,"forged":"session socket, by a user"}'))
        send_datagram(audit_socket, forged('{"seq":95,"forged":"audit socket, by a user"}'))

    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(4242)
            os.setuid(4242)
            as_other_user()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    as_agent_user(write_records, agent_file, audit_socket,
                  [{"op": "kill", "params": {"id": "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91"}, "result": "ok"}])

    copy = audit_copy(cluster)
    want = agent_file.read_bytes()
    wait_for(lambda: copy.exists() and copy.stat().st_size >= len(want), f"{copy} to hold the agent's records")
    assert copy.read_bytes() == want, "byte-identical copy"
    assert len(want.splitlines()) == 4 and len(want.splitlines()[1]) > 64 * 1024
    assert verify_file(copy).ok and verify_file(agent_file).ok
    assert b"forged" not in copy.read_bytes()
    # What entered by the session socket went where session lines go, visible; the audit records did not.
    lines = cluster.wait_for_lines('{"seq":98,"forged":"as a session line"}',
                                   '{"seq":99,"forged":"session socket, by root"}',
                                   '{"seq":97,"forged":"session socket, by a user"}')
    assert not any('"op":"send"' in line or "audit socket" in line for line in lines)
    assert SECRET.encode() not in copy.read_bytes()

    # The shell's copy, one character of its second record changed: convocate audit names it.
    lines = copy.read_bytes().splitlines(keepends=True)
    edited = short_root / "edited.audit.jsonl"
    edited.write_bytes(lines[0] + lines[1].replace(b'"op":"send"', b'"op":"sand"') + b"".join(lines[2:]))
    result = subprocess.run([sys.executable, "-m", "convocate", "audit", "--verify", "--file", str(edited)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    assert f"{edited}: record 3 (line 3) is broken: prev does not match the SHA-256 of record 2" in result.stderr
    result = subprocess.run([sys.executable, "-m", "convocate", "audit", "--verify", "--file", str(copy)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "4 record(s), chain intact" in result.stdout, result.stderr


def test_a_missing_socket_is_logged_once_and_the_record_is_kept(tmp_path: Path, caplog):
    caplog.set_level("INFO")

    async def run() -> list:
        audit = AuditLog(tmp_path / "audit.jsonl", AGENT, forward_socket=tmp_path / "no-rsyslog.sock")
        return [await audit.append({"op": "kill", "result": "ok"}) for _ in range(3)]

    written = asyncio.run(run())
    assert [r["seq"] for r in written] == [1, 2, 3]
    down = [r for r in caplog.records if "not reaching rsyslog" in r.getMessage()]
    assert len(down) == 1 and down[0].levelname == "ERROR"
