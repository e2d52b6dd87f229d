"""The audit trail (issue 19 items 3 and 4): records of a real agent, its chain, and ``convocate audit``.

Live tests drive the real agent (the stand-in session image, real dockerd, tmux and SSH) and read the
agent's own file; ``convocate audit`` runs as the operator would run it, against the registered agent.
The forwarding to the shell host is in test_rsyslog_audit.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import uuid
from pathlib import Path

import pytest

from convocate.common import keys
from convocate.common.auditchain import GENESIS, canonical, line_hash, parse_record, verify_file
from convocate.common.ops.params import AuditReadParams
from convocate.common.sshpeers import Caller
from convocate_agent.audit import AuditLog
from convocate_agent.auditread import read_tail
from tests.conftest import connect, rpc, rpc_ok
from tests.test_agent_attach import at_prompt, leave, open_attach

SECRET = "sk-ant-api03-audit-" + "z" * 40


def records(cluster) -> list[dict]:
    return [json.loads(line) for line in cluster.paths.agent_audit_log.read_bytes().splitlines()]


def after(cluster, seq: int) -> list[dict]:
    return [r for r in records(cluster) if r["seq"] > seq]


def last_seq(cluster) -> int:
    path = cluster.paths.agent_audit_log
    return read_tail(path).seq if path.exists() else 0


def audit_cli(cluster, *args: str):
    return cluster.run_role("convocate", "audit", *args, check=False)


# --- live: what is recorded ---------------------------------------------------------------------------

@pytest.mark.docker
async def test_every_kind_of_op_is_recorded_with_its_outcome_and_polling_is_not(ssh, cluster):
    start = last_seq(cluster)
    shell_fp = keys.fingerprint(keys.load_private_key(cluster.shell_key_path))
    made = await rpc_ok(ssh, "create", {"name": "audited", "cpus": 0.1, "memory_mb": 160, "start": True})
    sid = made["uuid"]
    try:
        for op, params in [("ping", {}), ("list", {}), ("get", {"id": sid}), ("capacity", {}),
                           ("settings-get", {}), ("credential_list", {}), ("trash", {})]:
            await rpc_ok(ssh, op, params)
        text = "keep it read-only\nand say why " + "é" * 3
        await rpc_ok(ssh, "send", {"id": sid, "text": text, "enter": True})
        await rpc_ok(ssh, "capture", {"id": sid})
        await rpc_ok(ssh, "logs", {"id": sid, "lines": 5})
        await rpc_ok(ssh, "edit", {"id": sid, "name": "audited-2"})
        await rpc_ok(ssh, "settings-set", {"heartbeat_interval_s": 30})
        await rpc_ok(ssh, "credential_set", {"name": "audit", "kind": "api_key", "secret": SECRET})
        await rpc_ok(ssh, "credential_delete", {"name": "audit"})
        missing = str(uuid.uuid4())
        refused = await rpc(ssh, "kill", {"id": missing})
        assert not refused["ok"] and refused["code"] == "not_found"
        bad = await rpc(ssh, "kill", {"id": "not-a-uuid"})
        assert bad["code"] == "bad_request"
        unknown = await rpc(ssh, "format-disk", {"secret": SECRET})
        assert unknown["code"] == "bad_request"

        process, screen = await at_prompt(ssh, sid)
        process.stdin.write(b"typed in\r")
        await screen.wait_for(b"echo: typed in")
        await leave(process, screen)
        watcher, view = await open_attach(ssh, sid, read_only=True)
        await view.wait_for(b"> ")
        watcher.close()  # the operator goes away without detaching
        await asyncio.wait_for(watcher.wait_closed(), 10)
        for _ in range(100):  # its end is written once the agent has noticed the closed channel
            if any(r["op"] == "observe_end" for r in after(cluster, start)):
                break
            await asyncio.sleep(0.1)
        refused_attach, _ = await open_attach(ssh, missing)
        await asyncio.wait_for(refused_attach.wait_closed(), 10)

        await rpc_ok(ssh, "kill", {"id": sid})
    finally:
        await rpc(ssh, "kill", {"id": sid})
        await rpc(ssh, "delete", {"id": sid})

    got = after(cluster, start)
    ops = [r["op"] for r in got]
    assert ops == ["create", "send", "capture", "logs", "edit", "settings-set", "credential_set",
                   "credential_delete", "kill", "kill", "format-disk", "attach", "attach_end", "observe",
                   "observe_end", "attach", "kill", "kill", "delete"], ops
    by_op = {}
    for r in got:
        by_op.setdefault(r["op"], []).append(r)
    for r in got:
        assert r["agent"] == cluster.agent_id and r["operator"] is None
        assert r["via"]["fingerprint"] == shell_fp and r["via"]["comment"] == "convocate shell (local cluster)"
        assert r["via"]["peer"].startswith("127.0.0.1:")
        assert isinstance(r["duration_ms"], (int, float)) and r["time"].endswith("Z")
    assert by_op["create"][0]["session"] == sid and by_op["create"][0]["result"] == "ok"
    assert by_op["send"][0]["params"]["text"] == text, "send text in full"
    assert by_op["send"][0]["session"] == sid
    cred = by_op["credential_set"][0]["params"]
    assert "secret" not in cred and cred["secret_fingerprint"].startswith("sha256:")
    assert by_op["format-disk"][0]["params"] == {"secret_fingerprint": cred["secret_fingerprint"]}
    assert by_op["kill"][0]["result"].startswith("not_found: ") and by_op["kill"][0]["session"] == missing
    assert by_op["kill"][1]["result"].startswith("bad_request: ") and by_op["kill"][1]["session"] is None
    opened, ended = by_op["attach"][0], by_op["attach_end"][0]
    assert opened["params"] == {"cols": 100, "rows": 30, "term": "xterm-256color"} and opened["result"] == "ok"
    assert ended["input_bytes"] == len(b"typed in\r") + len(b"\x02d")
    assert ended["output_bytes"] == len(screen.data) and ended["ended"] == "detached" and ended["duration_s"] > 0
    assert by_op["observe_end"][0]["ended"] == "channel closed" and by_op["observe_end"][0]["input_bytes"] == 0
    assert by_op["attach"][1]["session"] == missing and by_op["attach"][1]["result"].startswith("not_found: ")
    # The secret is nowhere: not in the file, not in the journal.
    assert SECRET.encode() not in cluster.paths.agent_audit_log.read_bytes()
    assert SECRET not in cluster.log_text()
    journal = [line.split(" audit ", 1)[1] for line in cluster.log_text().splitlines() if " audit {" in line]
    assert canonical(got[1]).decode() in journal, "each record is in the agent's log, as the file has it"
    assert stat.S_IMODE(cluster.paths.agent_audit_log.stat().st_mode) == 0o600


@pytest.mark.docker
async def test_twenty_ops_at_once_get_strictly_increasing_seqs_and_a_valid_chain(ssh, cluster):
    start = last_seq(cluster)
    missing = [str(uuid.uuid4()) for _ in range(20)]
    answers = await asyncio.gather(*(rpc(ssh, "kill", {"id": m}) for m in missing))
    assert all(a["code"] == "not_found" for a in answers)
    got = after(cluster, start)
    assert [r["seq"] for r in got] == list(range(start + 1, start + 21))
    assert sorted(r["session"] for r in got) == sorted(missing)
    assert verify_file(cluster.paths.agent_audit_log).ok


@pytest.mark.docker
async def test_audit_read_pages_and_filters(ssh, cluster):
    missing = str(uuid.uuid4())
    for _ in range(3):
        await rpc(ssh, "kill", {"id": missing})
    total = last_seq(cluster)
    page = await rpc_ok(ssh, "audit_read", {"max": 2})
    assert [r["seq"] for r in page["records"]] == [1, 2] and page["more"] and page["next_seq"] == 2
    seen, cursor = [], 0
    while True:
        page = await rpc_ok(ssh, "audit_read", {"after_seq": cursor, "max": 7})
        seen += [r["seq"] for r in page["records"]]
        if not page["more"]:
            break
        cursor = page["next_seq"]
    assert seen == list(range(1, total + 1))
    mine = await rpc_ok(ssh, "audit_read", {"session": missing})
    assert [r["session"] for r in mine["records"]] == [missing] * 3 and not mine["more"]
    assert (await rpc_ok(ssh, "audit_read", {"operator": "nobody"}))["records"] == []
    late = await rpc_ok(ssh, "audit_read", {"since": "2999-01-01T00:00:00Z"})
    assert late["records"] == []
    raw = await rpc_ok(ssh, "audit_read", {"raw": True, "max": 1})
    assert raw["records"][0]["line"] == 1 and json.loads(raw["records"][0]["text"])["prev"] == GENESIS
    bad = await rpc(ssh, "audit_read", {"max": 0})
    assert bad["code"] == "bad_request" and '"max"' in bad["error"]
    bad = await rpc(ssh, "audit_read", {"since": "yesterday"})
    assert bad["code"] == "bad_request"


@pytest.mark.docker
async def test_convocate_audit_prints_merged_records_and_verify_names_the_edited_and_the_deleted_record(
        ssh, cluster, tmp_path):
    missing = str(uuid.uuid4())
    for i in range(4):
        await rpc(ssh, "send", {"id": missing, "text": f"line {i}"})
    shown = audit_cli(cluster, "--session", missing)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 4 and all(f" {cluster.agent_id}  (unverified) convocate shell" in line for line in lines)
    assert all(" send  " in line and line.endswith("not_found: " + line.split("not_found: ", 1)[1])
               for line in lines)
    as_json = json.loads(audit_cli(cluster, "--session", missing, "--json").stdout)
    assert [r["params"]["text"] for r in as_json] == [f"line {i}" for i in range(4)]

    ok = audit_cli(cluster, "--verify")
    assert ok.returncode == 0 and "chain intact" in ok.stdout, ok.stdout + ok.stderr

    # The agent's own file, edited in the middle: --verify (through audit_read) names the record.
    path = cluster.paths.agent_audit_log
    original = path.read_bytes()
    lines_b = original.splitlines(keepends=True)
    n = len(lines_b) // 2
    edited_record = json.loads(lines_b[n - 1])
    try:
        path.write_bytes(b"".join(lines_b[:n - 1]) + lines_b[n - 1].replace(b'"op":"', b'"op":"X', 1)
                         + b"".join(lines_b[n:]))
        broken = audit_cli(cluster, "--verify")
        assert broken.returncode == 1
        assert (f"agent {cluster.agent_id}: record {edited_record['seq'] + 1} (line {n + 1}) is broken: "
                f"prev does not match the SHA-256 of record {edited_record['seq']}") in broken.stderr, broken.stderr
    finally:
        path.write_bytes(original)
    # A copy (as the shell's forwarded file would be) with one line deleted.
    copy = tmp_path / "copy.audit.jsonl"
    copy.write_bytes(b"".join(lines_b[:n - 1] + lines_b[n:]))
    gone = audit_cli(cluster, "--verify", "--file", str(copy))
    assert gone.returncode == 1
    assert (f"record {edited_record['seq'] + 1} (line {n}) is broken: seq {edited_record['seq'] + 1} follows "
            f"seq {edited_record['seq'] - 1}") in gone.stderr, gone.stderr
    copy.write_bytes(original)
    clean = audit_cli(cluster, "--verify", "--file", str(copy))
    assert clean.returncode == 0 and f"{len(lines_b)} record(s), chain intact" in clean.stdout


@pytest.mark.docker
async def test_verify_compares_the_agents_chain_with_the_shells_copy(ssh, cluster):
    missing = str(uuid.uuid4())
    for i in range(3):
        await rpc(ssh, "send", {"id": missing, "text": f"copy {i}"})
    path, copy = cluster.paths.agent_audit_log, cluster.paths.forwarded_audit_log(cluster.agent_id)
    copy.parent.mkdir(parents=True, exist_ok=True)
    original = path.read_bytes()
    lines = original.splitlines(keepends=True)
    last = json.loads(lines[-1])["seq"]
    try:
        # Behind by two records (in flight), one delivered twice: both only notes.
        copy.write_bytes(b"".join(lines[:-2]) + lines[-3])
        behind = audit_cli(cluster, "--verify")
        assert behind.returncode == 0, behind.stderr
        assert f"ends 2 record(s) before the agent's chain, at seq {last - 2}" in behind.stdout
        assert f"line {len(lines) - 1} repeats record {last - 2}" in behind.stdout
        assert "agrees" in behind.stdout
        # The agent's last record cut from its end: its chain alone still holds, the copy shows the cut.
        copy.write_bytes(original)
        path.write_bytes(b"".join(lines[:-1]))
        cut = audit_cli(cluster, "--verify")
        assert cut.returncode == 1
        assert f"records {last}..{last} are in the shell's copy {copy} but not in the agent's chain" in cut.stderr
        # The last record rewritten (nothing after it to notice): the copy differs.
        path.write_bytes(b"".join(lines[:-1]) + lines[-1].replace(b"copy 2", b"copy X"))
        rewritten = audit_cli(cluster, "--verify")
        assert rewritten.returncode == 1 and f"record {last} differs from the shell's copy" in rewritten.stderr
    finally:
        path.write_bytes(original)
        copy.unlink()


@pytest.mark.docker
async def test_the_chain_continues_across_a_kill_9_and_a_torn_last_line_is_reported(fresh_cluster):
    cluster = fresh_cluster
    missing = str(uuid.uuid4())
    async with connect(cluster) as conn:
        await rpc(conn, "kill", {"id": missing})
        await rpc(conn, "kill", {"id": missing})
    cluster.stop(signal.SIGKILL)
    before = records(cluster)
    path = cluster.paths.agent_audit_log
    with path.open("ab") as f:
        f.write(b'{"agent":"' + cluster.agent_id.encode() + b'","op":"kil')  # a write torn by a power cut
    cluster.start(same_port=True)
    assert "does not end with a whole record" in cluster.log_text()
    async with connect(cluster) as conn:
        await rpc(conn, "kill", {"id": missing})
        await rpc(conn, "kill", {"id": missing})
    raw = path.read_bytes().splitlines()
    assert raw[len(before)].endswith(b'"op":"kil'), "the torn line is left as it is"
    repaired, following = json.loads(raw[len(before) + 1]), json.loads(raw[len(before) + 2])
    assert repaired["seq"] == before[-1]["seq"] + 1 and repaired["repaired"] is True
    assert repaired["prev"] == line_hash(raw[len(before) - 1])
    assert following["seq"] == repaired["seq"] + 1 and "repaired" not in following
    checked = audit_cli(cluster, "--verify")
    assert checked.returncode == 0, checked.stderr
    assert f"line {len(before) + 1} is not a whole record (a torn write); record {repaired['seq']}" in checked.stdout
    # Stopped cleanly this time, under an attached operator: the chain simply continues, and the
    # attach's end says why it ended.
    async with connect(cluster) as conn:
        made = await rpc_ok(conn, "create", {"name": "stopping", "cpus": 0.1, "memory_mb": 160, "start": True})
        process, screen = await at_prompt(conn, made["uuid"])
        cluster.stop()
    cluster.start(same_port=True)
    async with connect(cluster) as conn:
        await rpc(conn, "kill", {"id": made["uuid"]})
    whole = [parse_record(line) for line in path.read_bytes().splitlines()]
    ends = [r for r in whole if r is not None and r["op"] == "attach_end"]
    assert [r["ended"] for r in ends] == ["agent stopping"] and ends[0]["session"] == made["uuid"]
    assert records_after_restart_continue(path)


def records_after_restart_continue(path: Path) -> bool:
    report = verify_file(path)
    assert report.ok and len(report.notes) == 1, report
    return True


@pytest.mark.docker
async def test_two_keys_are_told_apart_by_via_and_one_connections_channels_share_it(cluster):
    other = keys.generate_key("operator bob (laptop)")
    auth = cluster.paths.agent_authorized_keys
    original = auth.read_bytes()
    auth.write_bytes(original + (keys.public_key_line(other, "operator bob (laptop)") + "\n").encode())
    missing = str(uuid.uuid4())
    start = last_seq(cluster)
    try:
        async with connect(cluster) as shell_conn, connect(cluster, key=other) as bob_conn:
            await rpc(shell_conn, "kill", {"id": missing})
            await rpc(bob_conn, "kill", {"id": missing})
            await rpc(bob_conn, "restart", {"id": missing})
    finally:
        auth.write_bytes(original)
    got = after(cluster, start)
    assert [r["op"] for r in got] == ["kill", "kill", "restart"]
    shell_via, bob_via, bob_again = (r["via"] for r in got)
    assert shell_via["fingerprint"] == keys.fingerprint(keys.load_private_key(cluster.shell_key_path))
    assert bob_via["fingerprint"] == keys.fingerprint(other) != shell_via["fingerprint"]
    assert bob_via["comment"] == "operator bob (laptop)"
    assert bob_again["peer"] == bob_via["peer"] != shell_via["peer"], "one connection, one peer address"


# --- pure: the log and the verifier ---------------------------------------------------------------------

def test_operator_identity_is_recorded_and_audit_operator_matches_name_or_fingerprint(tmp_path: Path, monkeypatch,
                                                                                     capsys):
    path = tmp_path / "audit.jsonl"
    alice = Caller("SHA256:shellkey", "convocate shell", "10.0.0.1:4000")
    alice.state["operator"] = {"name": "alice", "fingerprint": "SHA256:alicekey", "key_id": "alice@laptop",
                               "verified": True}
    bob = Caller("SHA256:shellkey", "convocate shell", "10.0.0.1:4001")

    async def run() -> None:
        audit = AuditLog(path, "ab12cd34")
        await audit.record_rpc(alice, "kill", {"id": str(uuid.uuid4())}, None, "ok", 3.0)
        await audit.record_rpc(bob, "restart", {"id": str(uuid.uuid4())}, None, "ok", 4.0)
        await audit.record_rpc("SHA256:bare", "ping", {}, None, "ok", 0.1)  # polling: not recorded

    asyncio.run(run())
    got = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["op"] for r in got] == ["kill", "restart"]
    assert got[0]["operator"]["name"] == "alice" and got[1]["operator"] is None
    assert got[0]["prev"] == GENESIS and got[1]["prev"] == line_hash(path.read_bytes().splitlines()[0])
    monkeypatch.setenv("CONVOCATE_ROOT", str(tmp_path))
    from convocate.cli import main

    capsys.readouterr()
    for who in ("alice", "SHA256:alicekey"):
        assert main(["audit", "--file", str(path), "--operator", who, "--json"]) == 0
        assert [r["op"] for r in json.loads(capsys.readouterr().out)] == ["kill"]
    assert main(["audit", "--file", str(path)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert "  alice  kill  " in shown[0] and "  (unverified) convocate shell  restart  " in shown[1]
    assert main(["audit", "--file", str(path), "--since", "not a time"]) == 2
    assert "--since 'not a time' is not a time" in capsys.readouterr().err


def test_a_failing_write_is_logged_and_never_raises(tmp_path: Path, caplog):
    gone = tmp_path / "missing-dir" / "audit.jsonl"

    async def run():
        return await AuditLog(gone, "ab12cd34").append({"op": "kill"})

    assert asyncio.run(run()) is None
    assert any("AUDIT RECORD LOST" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_the_tail_is_found_without_reading_the_whole_file(tmp_path: Path):
    path = tmp_path / "audit.jsonl"

    async def run() -> None:
        audit = AuditLog(path, "ab12cd34")
        for i in range(5):
            await audit.append({"op": "send", "params": {"text": "x" * (100_000 if i == 3 else 10)}})

    asyncio.run(run())
    tail = read_tail(path)
    last = path.read_bytes().splitlines()[-1]
    assert tail.seq == 5 and tail.prev == line_hash(last) and not tail.torn


def test_params_longer_than_any_valid_request_are_kept_as_their_size_and_hash():
    from convocate_agent.audit import PARAMS_MAX, bounded

    worst_send = {"id": str(uuid.uuid4()), "text": "\x01" * (64 * 1024)}  # the longest valid send, escaped
    assert bounded(worst_send) is worst_send and len(canonical(worst_send)) < PARAMS_MAX
    garbage = bounded({"pad": '"' * PARAMS_MAX})
    assert garbage["truncated"] is True and garbage["bytes"] > PARAMS_MAX and len(garbage["sha256"]) == 64


async def _two_kills_then(path: Path, tail: bytes) -> AuditLog:
    """Two ``kill`` records in a new log at ``path``, then ``tail`` written after them raw; the log opened again."""
    first = AuditLog(path, "ab12cd34")
    await first.append({"op": "kill"})
    await first.append({"op": "kill"})
    with path.open("ab") as f:
        f.write(tail)
    return AuditLog(path, "ab12cd34")


@pytest.mark.parametrize("tail", [b'{"seq":3,"op":"ki', b"not a record\n"], ids=["torn", "whole-but-bad"])
def test_a_bad_last_line_is_left_and_the_next_record_repairs_the_chain(tmp_path: Path, tail: bytes):
    path = tmp_path / "audit.jsonl"

    async def run() -> None:
        again = await _two_kills_then(path, tail)
        assert (await again.append({"op": "restart"}))["repaired"] is True
        assert "repaired" not in await again.append({"op": "restart"})

    asyncio.run(run())
    lines = path.read_bytes().split(b"\n")
    assert lines[2] == tail.rstrip(b"\n") and b"" not in lines[:-1], "the bad line kept, no empty line added"
    report = verify_file(path)
    assert report.ok and report.records == 4
    assert report.notes == [f"{path}: line 3 is not a whole record (a torn write); record 3 after it says repaired"]


@pytest.mark.parametrize("page", [1, 2, 3])
def test_raw_pages_hold_every_line_once_even_a_bad_one_at_a_page_end(tmp_path: Path, page: int):
    from convocate_agent.auditread import read_records

    path = tmp_path / "audit.jsonl"

    async def run() -> None:
        audit = await _two_kills_then(path, b"torn")
        await audit.append({"op": "kill"})
        await audit.append({"op": "kill"})

    asyncio.run(run())
    seen, cursor = [], 0
    while True:
        got = read_records(path, AuditReadParams(raw=True, after_seq=cursor, max=page))
        seen += [entry["line"] for entry in got["records"]]
        if not got["more"]:
            break
        cursor = got["next_seq"]
    assert seen == [1, 2, 3, 4, 5]
