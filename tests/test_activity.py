"""Activity derivation, report parsing and session log files (convocate_agent.activity), without Docker."""

import asyncio
import json
import os
import socket

import pytest

from convocate.common.paths import Paths
from convocate.common.timefmt import format_rfc3339
from convocate_agent.activity import (
    PeerCredentials,
    ReportError,
    ReportSockets,
    cgroup_container_ids,
    parse_report,
    peer_refusal,
)
from convocate_agent.activityrules import Activity, next_activity
from convocate_agent.sessionlogs import append_log, merge_logs, read_log_tail

SID = "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91"


def step(current, source, event, **data):
    return next_activity(current, source, event, data, 42)


def test_a_turn_goes_idle_working_waiting_idle():
    a = step(Activity(), "supervisor", "start", attempt=1)
    assert (a.state, a.detail) == ("idle", "starting")
    a = step(a, "hook", "UserPromptSubmit", prompt="fix the tests")
    assert (a.state, a.detail) == ("working", "fix the tests")
    a = step(a, "hook", "Notification", message="Claude needs your permission to use Bash")
    assert (a.state, a.detail) == ("waiting", "Claude needs your permission to use Bash")
    assert step(a, "hook", "Stop") is None  # the turn that asked ends; the question stands
    a = step(a, "hook", "UserPromptSubmit", prompt="yes, go ahead")
    assert (a.state, a.detail) == ("working", "yes, go ahead")
    a = step(a, "hook", "Stop")
    assert (a.state, a.detail, a.at) == ("idle", "", 42)


def test_calls_of_convocates_own_tools_do_not_undo_what_they_report():
    waiting = step(Activity("idle"), "mcp", "ask", question="Which database?")
    assert step(waiting, "hook", "PostToolUse", tool_name="mcp__convocate__ask_operator") is None
    assert step(waiting, "hook", "PostToolUse", tool_name="Bash").state == "working"  # permission granted


def test_mcp_tools_set_what_they_say():
    a = step(Activity("idle"), "mcp", "ask", question="Which database?")
    assert (a.state, a.detail) == ("waiting", "Which database?")
    assert step(a, "mcp", "progress", message="migrating").state == "working"
    assert step(a, "mcp", "status", status="idle").state == "idle"
    assert step(a, "mcp", "status", status="sleeping") is None  # not a state: ignored


def test_the_supervisor_giving_up_is_a_crash_and_a_clean_exit_an_exit():
    crashed = step(Activity("working"), "supervisor", "gave_up", status=3, failures=5)
    assert crashed.state == "crashed" and "5 times" in crashed.detail and "status 3" in crashed.detail
    assert step(Activity("idle"), "supervisor", "exit", status=0).state == "exited"
    restarting = step(Activity("working"), "supervisor", "exit", status=1)
    assert restarting.state == "working" and "restarts it" in restarting.detail


def test_a_report_that_changes_nothing_is_not_news():
    assert step(Activity("idle", ""), "hook", "Stop") is None
    assert step(Activity("idle"), "hook", "SubagentStop") is None


@pytest.mark.parametrize("line", [b"nope", b"[]", b'{"source":"root","event":"x","data":{}}',
                                  b'{"source":"hook","event":5,"data":{}}', b'{"source":"mcp","event":"ask","data":1}'])
def test_bad_reports_are_refused(line):
    with pytest.raises(ReportError):
        parse_report(line)


def test_logs_refuse_symlinks_planted_in_the_home(tmp_path):
    home = tmp_path / "home"
    (home / ".convocate" / "logs").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("root's secret\n")
    os.symlink(secret, home / ".convocate" / "logs" / "supervisor.log")
    assert read_log_tail(home, "supervisor.log") == ""
    with pytest.raises(OSError):
        append_log(home, "supervisor.log", "x")
    assert secret.read_text() == "root's secret\n"
    other = tmp_path / "other"
    other.mkdir()
    os.rename(home / ".convocate", tmp_path / "moved")
    os.symlink(other, home / ".convocate")
    assert read_log_tail(home, "activity.log") == ""
    with pytest.raises(OSError):
        append_log(home, "activity.log", "x")
    assert list(other.iterdir()) == []


def test_logs_rotate_and_merge_by_time(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    big = "x" * 1000
    for _ in range(1100):
        append_log(home, "activity.log", f"{format_rfc3339(10**18)} {big}")
    assert (home / ".convocate/logs/activity.log.1").exists()
    merged = merge_logs({"supervisor": f"{format_rfc3339(2 * 10**18)} b\n{format_rfc3339(3 * 10**18)} d\n",
                         "activity": f"{format_rfc3339(2 * 10**18 + 1)} c\ncontinued\n"}, since_ns=10**18)
    assert [m.split(" ")[0] for m in merged] == ["supervisor:", "activity:", "activity:", "supervisor:"]
    assert merged[2] == "activity: continued"


def test_each_session_has_its_own_socket(tmp_path):
    async def scenario():
        got = []
        paths = Paths(tmp_path / "a-rather-long-relocated-root" / ("x" * 60))
        sockets = ReportSockets(paths, lambda sid, src, ev, data: got.append((sid, src, ev, data)))
        other = "0e5a3a59-4a8f-4c1b-9f5e-0d6b1c2a3b4c"
        for sid in (SID, other):
            await sockets.ensure(sid)
        reader, writer = await asyncio.open_unix_connection(
            sock=_connect(paths.session_run_dir(other) / "agent.sock"))
        writer.write(json.dumps({"source": "mcp", "event": "ask", "data": {"question": "q", "session": SID}})
                     .encode() + b"\n")
        reply = json.loads(await reader.readline())
        writer.close()
        sockets.close_all()
        return got, reply

    got, reply = asyncio.run(scenario())
    assert reply == {"ok": True}
    assert got == [("0e5a3a59-4a8f-4c1b-9f5e-0d6b1c2a3b4c", "mcp", "ask", {"question": "q", "session": SID})]


def _connect(path):
    s = socket.socket(socket.AF_UNIX)
    fd = os.open(path.parent, os.O_RDONLY)
    s.connect(f"/proc/self/fd/{fd}/{path.name}")
    os.close(fd)
    return s


CID = "ab" * 32
V1_CGROUP = f"12:pids:/convocate-sessions-1234abcd/{CID}\n11:memory:/convocate-sessions-1234abcd/{CID}\n"
V2_SYSTEMD = f"0::/convocate-sessions.slice/docker-{CID}.scope\n"


def test_container_ids_are_read_from_both_drivers_cgroup_paths():
    assert cgroup_container_ids(V1_CGROUP) == {CID}
    assert cgroup_container_ids(V2_SYSTEMD) == {CID}
    assert cgroup_container_ids("0::/user.slice/user-0.slice/session-1.scope\n") == set()


@pytest.mark.parametrize(("peer", "cgroup", "why"), [
    (PeerCredentials(50, 1337, 1337), V1_CGROUP, None),
    (PeerCredentials(50, 1337, 1337), V2_SYSTEMD, None),
    (PeerCredentials(7, 0, 0), None, None),  # the agent itself
    (PeerCredentials(50, 65534, 65534), V1_CGROUP, "uid 65534"),
    (PeerCredentials(50, 1337, 1337), "0::/user.slice\n", "in no container"),
    (PeerCredentials(50, 1337, 1337), V1_CGROUP.replace("ab", "cd"), "not in the session's container"),
    (PeerCredentials(50, 1337, 1337), None, "cannot be read"),
    (PeerCredentials(0, 1337, 1337), V1_CGROUP, "outside the agent's PID namespace"),
])
def test_only_the_sessions_container_and_the_agent_may_report(peer, cgroup, why):
    refusal = peer_refusal(peer, cgroup, CID, session_uid=1337, agent_uid=0, agent_pid=7)
    assert refusal is None if why is None else why in refusal
