"""The bad-input matrix: every bad request gets a clear error and a stable code; nothing changes."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from convocate.common.framing import MAX_LINE_BYTES, encode_line
from convocate.common.protocol import RPC_SUBSYSTEM
from tests.conftest import rpc_ok

pytestmark = pytest.mark.docker

TRAVERSAL_IDS = ["../../etc/passwd", "..", "/etc/shadow", "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91/../x",
                 "7F9DF71A-DCAF-4E56-BB1D-6E1FE44E9A91", "%2e%2e", ""]


def snapshot(root):
    """(path, size, mtime, mode) of every file under the root, except the agent's log and audit trail."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if path.endswith(("agent.log", "audit.jsonl")):
                continue
            st = os.lstat(path)
            out.add((path, st.st_size if name in filenames else 0, st.st_mtime_ns if name in filenames else 0,
                     st.st_mode))
    return out


def bad_lines(existing_id: str, busy_port: int) -> list[tuple[bytes, str]]:
    """(request line, expected fragment of the error)."""
    cases: list[tuple[bytes, str]] = [
        (b"{", "malformed request: request is not valid JSON"),
        (b"[]", "malformed request: request must be a JSON object, got array"),
        (b'"ping"', "malformed request: request must be a JSON object, got string"),
        (b'{"params":{}}', 'malformed request: missing required field "op"'),
        (b'{"op":null}', 'malformed request: missing required field "op"'),
        (b'{"op":"ping","params":"x"}', 'malformed request: field "params" must be an object, got string'),
        (b'{"op":"ping","junk":1}', 'malformed request: unknown field "junk"'),
        (b"\xc3\x28", "malformed request: request is not valid UTF-8"),
        (b'{"op":"rm -rf /"}', 'unknown op: "rm -rf /"'),
        (b'{"op":"list","params":{"verbose":true}}', 'decode params: unknown field "verbose"'),
        (b'{"op":"get","params":{}}', 'decode params: missing required field "id"'),
        (b'{"op":"get","params":{"id":123}}', 'decode params: field "id" must be a string, got integer'),
        (b'{"op":"create","params":{"name":["x"]}}', 'decode params: field "name" must be a string, got array'),
        (b'{"op":"create","params":{"name":"x","port":"22"}}', 'field "port" must be an integer, got string'),
        (b'{"op":"create","params":{"name":"x","port":1.5}}', 'field "port" must be an integer, got number'),
        (b'{"op":"create","params":{"name":"x","port":-7}}', 'field "port": -7 is out of range'),
        (b'{"op":"create","params":{"name":"x","protocol":"icmp"}}', 'field "protocol": must be "tcp" or "udp"'),
        (b'{"op":"create","params":{"name":""}}', 'field "name": name must be 1-64 characters'),
        (b'{"op":"create","params":{"name":"' + b"n" * 65 + b'"}}', "name must be 1-64 characters"),
        (b'{"op":"create","params":{"name":"a/b"}}', "name must be 1-64 characters"),
        (b'{"op":"create","params":{"name":"x","dns_name":"-bad"}}', "is not a valid DNS name"),
        (b'{"op":"create","params":{"name":"x","dns_name":"a..b"}}', "is not a valid DNS name: empty label"),
        (b'{"op":"create","params":{"name":"x","dns_name":"' + b"a" * 64 + b'"}}', "longer than 63"),
        (b'{"op":"create","params":{"name":"x","cpus":-1}}', 'field "cpus": -1 is out of range'),
        (b'{"op":"create","params":{"name":"x","start":"yes"}}', 'field "start" must be a boolean'),
        (b'{"op":"clone","params":{"source_id":"' + existing_id.encode() + b'","name":"?"}}', "name must be"),
        (b'{"op":"edit","params":{"id":"' + existing_id.encode() + b'","port":' + str(busy_port).encode() + b"}}",
         f"port {busy_port}/tcp is already used by session"),
        (b'{"op":"create","params":{"name":"dup","port":' + str(busy_port).encode() + b"}}",
         f"port {busy_port}/tcp is already used by session"),
        (b'{"op":"send","params":{"id":"' + existing_id.encode() + b'"}}', 'missing required field "text"'),
        (b'{"op":"settings-set","params":{"default_cpus":true}}', 'field "default_cpus" must be a number'),
        (b'{"op":"settings-set","params":{"shell":"/bin/sh"}}', 'decode params: unknown field "shell"'),
        (b'{"op":"get","params":{"id":"0e5a3a59-4a8f-4c1b-9f5e-0d6b1c2a3b4c"}}',
         'session "0e5a3a59-4a8f-4c1b-9f5e-0d6b1c2a3b4c" does not exist'),
        (b'{"op":"send","params":{"id":"' + existing_id.encode() + b'","text":"x"}}',
         f'session "{existing_id}" is not running'),
    ]
    for bad_id in TRAVERSAL_IDS:
        for op in ("get", "delete", "kill", "restart", "edit", "capture"):
            cases.append((json.dumps({"op": op, "params": {"id": bad_id}}).encode(), "is not a UUIDv4"))
        cases.append((json.dumps({"op": "clone", "params": {"source_id": bad_id, "name": "c"}}).encode(),
                      "is not a UUIDv4"))
    return cases


EXPECTED_CODE = {
    "malformed request": "bad_request", "unknown op": "bad_request", "decode params": "bad_request",
    "already used": "conflict", "does not exist": "not_found", "is not running": "conflict",
}


def code_for(fragment: str, error: str) -> str:
    for key, code in EXPECTED_CODE.items():
        if key in error:
            return code
    return "bad_request"


async def test_bad_input_matrix_gets_clear_errors_and_changes_nothing(ssh, cluster):
    existing = await rpc_ok(ssh, "create", {"name": "victim", "port": -1})
    holder = await rpc_ok(ssh, "create", {"name": "holder", "port": -1})
    cases = bad_lines(existing["uuid"], holder["port"])
    before = snapshot(cluster.root)
    trail = cluster.paths.agent_audit_log.read_bytes()
    process = await ssh.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
    for line, _ in cases:
        process.stdin.write(line + b"\n")
    process.stdin.write_eof()
    out = await asyncio.wait_for(process.stdout.read(), 60)
    responses = [json.loads(r) for r in out.splitlines()]
    assert len(responses) == len(cases)
    for (line, fragment), response in zip(cases, responses, strict=False):
        assert response["ok"] is False, (line, response)
        assert fragment in response["error"], (line, response)
        assert response["code"] == code_for(fragment, response["error"]), (line, response)
    assert snapshot(cluster.root) == before
    # Only the audit trail grew, by one refusal per recorded op (issue 19), appended.
    grown = cluster.paths.agent_audit_log.read_bytes()
    assert grown.startswith(trail)
    added = [json.loads(line) for line in grown[len(trail):].splitlines()]
    assert added and all(r["result"] != "ok" for r in added)
    assert (await rpc_ok(ssh, "ping"))["agent_id"] == cluster.agent_id
    for made in (existing, holder):
        await rpc_ok(ssh, "delete", {"id": made["uuid"]})


async def test_an_oversized_line_is_refused_and_the_channel_goes_on(ssh):
    process = await ssh.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
    process.stdin.write(b'{"op":"ping","params":{"pad":"' + b"x" * (MAX_LINE_BYTES + 10) + b'"}}\n')
    process.stdin.write(encode_line({"op": "ping", "id": "after"}))
    process.stdin.write_eof()
    lines = (await asyncio.wait_for(process.stdout.read(), 30)).splitlines()
    first, second = (json.loads(x) for x in lines)
    assert first == {"ok": False, "error": f"malformed request: line exceeds {MAX_LINE_BYTES} bytes",
                     "code": "bad_request"}
    assert second["ok"] and second["id"] == "after"


async def test_a_channel_closed_without_a_newline_still_gets_its_answer(ssh):
    process = await ssh.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
    process.stdin.write(b'{"op":"ping"}')
    process.stdin.write_eof()
    assert json.loads(await asyncio.wait_for(process.stdout.read(), 10))["ok"] is True


async def test_many_garbage_channels_at_once_leave_the_agent_serving(ssh, cluster):
    async def garbage(i: int) -> bytes:
        process = await ssh.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
        process.stdin.write(os.urandom(2048) + b"\n" + b"\x00" * i + b"\n")
        process.stdin.write_eof()
        return await asyncio.wait_for(process.stdout.read(), 30)

    outputs = await asyncio.gather(*(garbage(i) for i in range(30)))
    for out in outputs:
        for line in out.splitlines():
            assert json.loads(line)["code"] == "bad_request"
    assert (await rpc_ok(ssh, "ping"))["agent_id"] == cluster.agent_id
