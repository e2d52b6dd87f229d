"""Reading recordings through the real agent: the recording ops, ``convocate replay`` and ``grep``,
the replay through a real pty (tmux), and the TUI's P key (issue 19 item 2).

The attacks on ``recording_read``'s file names (``../``, absolute paths, NUL, planted symlinks and
FIFOs) are in ``tests/security/test_recordings.py``. The recordings here are planted in ``Paths.session_recordings_dir(uuid)`` with the recorder's
layout (asciicast v2, one file per start, named by its UTC start). Only :func:`pty_recording`
says where the pty test's recording and its expected screen come from: once the recorder
records a real session, it can return that session's recording and its ``tmux capture-pane``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from convocate.common import asciicast, keys, messages
from convocate.common.framing import MAX_LINE_BYTES
from convocate.player import END_TITLE
from convocate.registry import register_agent
from tests.conftest import connect, make_cluster, rpc, rpc_ok
from tests.harness import REPO, LocalCluster, python
from tests.test_cli import Terminal
from tests.test_tui import TUI

pytestmark = pytest.mark.docker

T0 = 1_795_000_000.0  # 2026-11-18T...Z


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, session_image: str) -> Iterator[LocalCluster]:
    yield from make_cluster(tmp_path_factory.mktemp("replay"), session_image, status=True)


def cli(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = cluster.run_role("convocate", *args, check=False, timeout=120)
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def new_session(cluster: LocalCluster, name: str) -> str:
    return json.loads(cli(cluster, "new", name, "--no-start", "--json").stdout)["uuid"]


def cast_text(events: list[list], width: int = 80, height: int = 24, timestamp: float = T0) -> str:
    header = {"version": 2, "width": width, "height": height, "timestamp": timestamp, "env": {"TERM": "xterm-256color"},
              "title": "test"}
    return "".join(json.dumps(x) + "\n" for x in [header, *events])


def utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def plant(cluster: LocalCluster, session_id: str, text: str | bytes, start: float = T0) -> Path:
    """Write a recording file as the recorder lays them out; returns its path."""
    directory = cluster.paths.session_recordings_dir(session_id)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / asciicast.file_name(start)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


async def read_all(conn, session_id: str, file: str, max_bytes: int) -> tuple[str, int]:
    """Every chunk of a file through ``recording_read``; returns the text and the number of calls."""
    offset, parts, calls = 0, [], 0
    while True:
        chunk = await rpc_ok(conn, "recording_read", {"id": session_id, "file": file, "offset": offset,
                                                      "max_bytes": max_bytes})
        calls += 1
        parts.append(chunk["data"])
        assert chunk["next_offset"] >= offset
        if chunk["eof"]:
            return "".join(parts), calls
        offset = chunk["next_offset"]


async def test_planted_files_are_listed_oldest_first_and_read_back_in_whole_lines(cluster):
    sid = new_session(cluster, "rec-list")
    first = cast_text([[0.1, "o", f"line {i}\r\n"] for i in range(50)])
    second_complete = cast_text([[0.5, "o", "after restart\r\n"]], timestamp=T0 + 100)
    plant(cluster, sid, first, T0)
    plant(cluster, sid, second_complete + '[0.9, "o", "torn by kill -', T0 + 100)
    async with connect(cluster) as conn:
        files = await rpc_ok(conn, "recording_list", {"id": sid})
        assert [f["file"] for f in files] == [asciicast.file_name(T0), asciicast.file_name(T0 + 100)]
        assert files[0]["started"].startswith("2026-11-18T") and files[0]["bytes"] == len(first.encode())
        assert [f["current"] for f in files] == [False, False]  # the session is not running
        text, calls = await read_all(conn, sid, files[0]["file"], max_bytes=100)
        assert text == first and calls > 10
        text, _ = await read_all(conn, sid, files[1]["file"], max_bytes=262144)
        assert text == second_complete  # the torn last line never comes
        inside = await rpc(conn, "recording_read", {"id": sid, "file": files[0]["file"], "offset": 3})
        assert inside["code"] == "bad_request" and "is not the start of a line" in inside["error"]
        unknown = await rpc(conn, "recording_list", {"id": str(uuid.uuid4())})
        assert unknown["code"] == "not_found"


async def test_a_read_fits_the_line_limit_even_when_every_byte_needs_escaping(cluster):
    sid = new_session(cluster, "rec-escape")
    # Raw control bytes (a hostile or broken file): each becomes \u00XX in the response, 6 bytes.
    line = b"\x01" * 40_000 + b"\n"
    plant(cluster, sid, b'{"version": 2, "width": 80, "height": 24}\n' + line * 6)
    async with connect(cluster) as conn:
        (f,) = await rpc_ok(conn, "recording_list", {"id": sid})
        process = await conn.create_process(subsystem="convocate-agent-rpc", encoding=None)
        offset, total = 0, ""
        while True:
            request = {"op": "recording_read", "params": {"id": sid, "file": f["file"], "offset": offset}}
            process.stdin.write((json.dumps(request) + "\n").encode())
            raw = await process.stdout.readline()
            assert len(raw) <= MAX_LINE_BYTES + 1
            response = json.loads(raw)
            assert response["ok"], response
            total += response["result"]["data"]
            offset = response["result"]["next_offset"]
            if response["result"]["eof"]:
                break
        process.close()
        assert total.encode() == b'{"version": 2, "width": 80, "height": 24}\n' + line * 6


async def test_grep_and_read_are_bounded_and_say_so(cluster):
    sid = new_session(cluster, "rec-bounds")
    plant(cluster, sid, cast_text([[i / 10, "o", f"match {i}\r\n"] for i in range(20)]))
    async with connect(cluster) as conn:
        some = await rpc_ok(conn, "recording_grep", {"pattern": r"match \d+", "id": sid, "max_matches": 3})
        assert [m["line"] for m in some["matches"]] == ["match 0", "match 1", "match 2"]
        assert some["truncated"] and some["reason"] == "3 matches"
        every = await rpc_ok(conn, "recording_grep", {"pattern": "match", "id": sid})
        assert len(every["matches"]) == 20 and not every["truncated"]
        bad = await rpc(conn, "recording_grep", {"pattern": "a{2,1}"})
        assert bad["code"] == "bad_request" and "'a{2,1}' is not a Python regular expression" in bad["error"]
        window = await rpc(conn, "recording_grep", {"pattern": "x", "since": "2026-11-18T12:00:00Z",
                                                    "until": "2026-11-18T11:00:00Z"})
        assert window["code"] == "bad_request" and "before" in window["error"]
        (f,) = await rpc_ok(conn, "recording_list", {"id": sid})
        too_much = await rpc(conn, "recording_read", {"id": sid, "file": f["file"], "max_bytes": 10**9})
        assert too_much["code"] == "bad_request" and 'field "max_bytes"' in too_much["error"]


def test_grep_across_two_sessions_one_deleted_and_bad_patterns_named(cluster):
    alpha, beta = new_session(cluster, "grep-alpha"), new_session(cluster, "grep-beta")
    plant(cluster, alpha, cast_text([[1, "o", "\x1b[32mbuild OK\x1b[0m\r\n"], [2, "o", "deploying to prod\r\n"]]))
    plant(cluster, beta, cast_text([[5, "o", "tests: 3 failed\r\n"], [6, "o", "progress 1%\rdeploying 100%\r\n"]],
                                   timestamp=T0 + 60))
    out = cli(cluster, "grep", "deploy").stdout.splitlines()
    assert out == [f"grep-alpha  {utc(T0 + 2)}  deploying to prod",
                   f"grep-beta  {utc(T0 + 66)}  deploying 100%"]  # the bare \r overwrote "progress 1%"
    only = cli(cluster, "grep", "deploy", "--session", "grep-beta", "--json").stdout.splitlines()
    assert [json.loads(x)["line"] for x in only] == ["deploying 100%"]
    assert json.loads(only[0])["id"] == beta
    window = cli(cluster, "grep", "deploy|build", "--since", "2026-11-18T00:00:00Z",
                 "--until", asciicast.format_rfc3339(round((T0 + 10) * 1e9))).stdout
    assert "build OK" in window and "prod" in window and "100%" not in window
    assert cli(cluster, "grep", "no such text anywhere", check=False).returncode == 1
    bad = cli(cluster, "grep", "(unclosed", check=False)
    assert bad.returncode == 2 and "'(unclosed' is not a Python regular expression" in bad.stderr
    cli(cluster, "delete", "grep-alpha")
    after = cli(cluster, "grep", "prod").stdout
    assert after.startswith("grep-alpha  ")  # still found, by its name from the trash
    assert "deploying to prod" in cli(cluster, "replay", "grep-alpha", "--cat").stdout


def test_grep_names_an_agent_that_fails_and_prints_the_rest(cluster):
    sid = new_session(cluster, "grep-dead-agent")
    plant(cluster, sid, cast_text([[1, "o", "needle in the haystack\r\n"]]))
    host_key_line = keys.public_key_line(keys.load_private_key(cluster.paths.agent_host_key))
    register_agent(cluster.paths, "deadbeef", "127.0.0.1", 9, host_key_line,
                   keys.load_private_key(cluster.shell_key_path))
    try:
        done = cli(cluster, "grep", "needle")
    finally:
        shutil.rmtree(cluster.paths.agent_dir("deadbeef"))
    assert done.stdout.startswith("grep-dead-agent  ") and "needle in the haystack" in done.stdout
    assert "agent deadbeef:" in done.stderr


def test_replay_cat_json_and_export(cluster, tmp_path):
    sid = new_session(cluster, "replay-print")
    plant(cluster, sid, cast_text([[0.5, "o", "\x1b[1mfirst\x1b[0m\r\n"], [1, "m", "marker"], [2, "i", "ls\r"],
                                   [3, "o", "second\r\n"]], width=100, height=30))
    plant(cluster, sid, cast_text([[0.5, "o", "third\r\n"]], width=90, height=20, timestamp=T0 + 50), T0 + 50)
    assert cli(cluster, "replay", "replay-print", "--cat").stdout == "first\nsecond\nthird\n"
    until = asciicast.format_rfc3339(round((T0 + 2.5) * 1e9))
    assert cli(cluster, "replay", sid[:8], "--cat", "--until", until).stdout == "first\n"
    events = [json.loads(x) for x in cli(cluster, "replay", "replay-print", "--json").stdout.splitlines()]
    assert [(e["code"], e["data"]) for e in events] == [("o", "\x1b[1mfirst\x1b[0m\r\n"), ("m", "marker"),
                                                        ("i", "ls\r"), ("o", "second\r\n"), ("o", "third\r\n")]
    assert events[0]["t"] == T0 + 0.5 and events[0]["time"].endswith("Z") and events[4]["t"] == T0 + 50.5
    out = tmp_path / "session.cast"
    cli(cluster, "replay", "replay-print", "--export", str(out))
    back = asciicast.parse_cast(out.read_text(), "export")
    assert (back.header.width, back.header.height, back.header.timestamp) == (100, 30, T0)
    assert [(round(e.time - T0, 6), e.code, e.data) for e in back.events] == [
        (0.5, "o", "\x1b[1mfirst\x1b[0m\r\n"), (1.0, "m", "marker"), (2.0, "i", "ls\r"), (3.0, "o", "second\r\n"),
        (50.0, "r", "90x20"), (50.5, "o", "third\r\n")]
    assert out.stat().st_mode & 0o777 == 0o600
    assert cli(cluster, "replay", "replay-print", "--since", "-10m", "--cat", check=False).returncode == 3
    missing = cli(cluster, "replay", "no-such-session", "--cat", check=False)
    assert missing.returncode == 3 and messages.NO_SUCH_SESSION.format(ref="no-such-session") in missing.stderr
    bad = cli(cluster, "replay", "replay-print", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "neither an RFC 3339 time" in bad.stderr
    assert messages.REPLAY_NEEDS_TERMINAL in cli(cluster, "replay", "replay-print", check=False).stderr


# --- the replay through a real pty -------------------------------------------------------------
@dataclass
class PtyRecording:
    """A session's recording and the screen it should leave (what ``tmux capture-pane`` shows)."""

    name: str
    width: int
    height: int
    expected_screen: str


def _screen_of(output: bytes, width: int, height: int, env: dict[str, str], tmp_path: Path) -> str:
    """What a terminal of ``width`` x ``height`` shows after ``output``: a tmux pane of the test's own cats it."""
    raw = tmp_path / "output.raw"
    raw.write_bytes(output)
    term = Terminal(env)
    try:
        term.start(f"cat {raw}; touch {raw}.done; sleep 600", width, height)
        deadline = time.monotonic() + 15
        while not Path(f"{raw}.done").exists():
            assert time.monotonic() < deadline, "cat did not finish"
            time.sleep(0.05)
        return term.screen()
    finally:
        term.close()


def pty_recording(cluster: LocalCluster, tmp_path: Path) -> PtyRecording:
    """The recording the pty test replays: planted here (the recorder's real sessions can replace it)."""
    width, height = 80, 24
    sid = new_session(cluster, "replay-pty")
    events = [[0.0, "o", "\x1b[H\x1b[2J\x1b[1;34mconvocate\x1b[0m replay test\r\n"]]
    t = 0.2
    for i in range(40):  # more lines than the screen: it scrolls
        events.append([t, "o", f"line {i:02d} \x1b[3{i % 8}mcolour\x1b[0m\r\n"])
        t += 0.01
    events += [[t + 5, "o", "progress 10%"], [t + 5.1, "o", "\rprogress 100%\x1b[K\r\n"], [t + 5.2, "i", "typed"],
               [t + 5.3, "m", "a marker"], [t + 20, "o", "\x1b[10;20H\x1b[7mboxed\x1b[0m\x1b[24;1Hbottom line"]]
    text = cast_text(events, width, height, T0 + 3600)
    plant(cluster, sid, text, T0 + 3600)
    output = "".join(e.data for e in asciicast.parse_cast(text).events if e.code == "o").encode()
    return PtyRecording("replay-pty", width, height, _screen_of(output, width, height, cluster.env, tmp_path))


def _pane_title(term: Terminal) -> str:
    return term.tmux("display-message", "-p", "-t", "t", "#{pane_title}").strip()


def test_replay_in_a_real_pty_leaves_the_screen_the_recording_gives(cluster, tmp_path):
    rec = pty_recording(cluster, tmp_path)
    term = Terminal(cluster.env)
    try:
        term.start(f"cd {REPO} && {python()} -m convocate replay {rec.name} --speed 100 --idle-limit 0.1;"
                   f" echo EXIT=$?; sleep 600", rec.width, rec.height)
        deadline = time.monotonic() + 30
        while _pane_title(term) != END_TITLE.format(name=rec.name):
            assert time.monotonic() < deadline, f"the replay did not end:\n{term.screen()}"
            time.sleep(0.05)
        assert term.screen() == rec.expected_screen
        assert "boxed" in rec.expected_screen and "progress 100%" in rec.expected_screen  # a real comparison
        # Paused, back 10 s: the file redrawn at once up to the progress line, without the last event;
        # then "." steps to that event, and the screen is the end's again.
        term.tmux("send-keys", "-t", "t", " ", "[")
        deadline = time.monotonic() + 15
        while "boxed" in (screen := term.screen()):
            assert time.monotonic() < deadline, f"the seek did not redraw:\n{screen}"
            time.sleep(0.05)
        assert "progress 100%" in screen and "line 39" in screen
        term.tmux("send-keys", "-t", "t", ".")
        deadline = time.monotonic() + 15
        while term.screen() != rec.expected_screen:
            assert time.monotonic() < deadline, f"the step did not play the last event:\n{term.screen()}"
            time.sleep(0.05)
        term.tmux("send-keys", "-t", "t", "q")
        screen = term.wait_for("EXIT=0")
        assert "boxed" not in screen  # the alternate screen is gone: the terminal is as it was
        assert term.tmux("display-message", "-p", "-t", "t", "#{alternate_on}").strip() == "0"
    finally:
        term.close()


def test_tui_p_plays_the_selected_session_and_q_comes_back(cluster):
    sid = new_session(cluster, "tui-replay")
    plant(cluster, sid, cast_text([[0.1, "o", "\x1b[H\x1b[2Jreplayed in the TUI\r\n"]], 140, 32))
    tui = TUI(cluster.env)
    try:
        tui.open()
        tui.wait_for("P replay")
        tui.wait_for("tui-replay")
        tui.select("tui-replay")
        tui.keys("p")
        tui.wait_for("replayed in the TUI")
        assert "ACCESSED" not in tui.screen()
        tui.keys("q")
        screen = tui.wait_for("replayed tui-replay")  # the status line, back in the table
        assert "ACCESSED" in screen
    finally:
        tui.close()


# --- end to end: the recorder's file of a real session, replayed, is the session's screen --------------
def _session_screen(cluster: LocalCluster, sid: str) -> str:
    """``tmux capture-pane -p`` of the session's pane, run in its container (what an attach would show)."""
    done = subprocess.run(["docker", "exec", "-u", "1337:1337", "-e", "HOME=/home/claude", f"convocate-session-{sid}",
                           "tmux", "capture-pane", "-p", "-t", "main"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _recorded_size(cluster: LocalCluster, sid: str) -> tuple[int, int]:
    deadline = time.monotonic() + 30
    folder = cluster.paths.session_recordings_dir(sid)
    while not (files := sorted(folder.glob("*.cast")) if folder.is_dir() else []):
        assert time.monotonic() < deadline, f"no recording of {sid} in {folder}"
        time.sleep(0.1)
    header = asciicast.parse_header(files[0].read_text().splitlines()[0])
    return header.width, header.height


@pytest.mark.docker
def test_a_real_sessions_recording_replays_to_the_screen_the_session_shows(cluster, tmp_path):
    """Output made while nobody is attached, recorded by the agent, replayed in a real pty: the same screen."""
    sid = json.loads(cli(cluster, "new", "replay-live", "--cpus", "0.2", "--memory", "256", "--json").stdout)["uuid"]
    try:
        width, height = _recorded_size(cluster, sid)
        deadline = time.monotonic() + 30
        while not (live := _session_screen(cluster, sid)).rstrip().endswith(">"):  # the stand-in's prompt
            assert time.monotonic() < deadline, f"no prompt:\n{live}"
            time.sleep(0.1)

        async def type_lines() -> None:
            async with connect(cluster) as conn:
                for i in range(30):  # more than a screen: the stand-in's echoes scroll it
                    await rpc_ok(conn, "send", {"id": sid, "text": f"line {i:02d} of the detached run", "enter": True})

        asyncio.run(type_lines())
        deadline = time.monotonic() + 30
        while "echo: line 29 of the detached run" not in (live := _session_screen(cluster, sid)):
            assert time.monotonic() < deadline, f"the session did not answer:\n{live}"
            time.sleep(0.1)
        time.sleep(2.5)  # the recorder flushes at least every second
        live = _session_screen(cluster, sid)
        term = Terminal(cluster.env)
        try:
            term.start(f"cd {REPO} && {python()} -m convocate replay {sid} --speed 100 --idle-limit 0.1;"
                       f" echo EXIT=$?; sleep 600", width, height)
            deadline = time.monotonic() + 60
            while _pane_title(term) != END_TITLE.format(name="replay-live"):
                assert time.monotonic() < deadline, f"the replay did not end:\n{term.screen()}"
                time.sleep(0.05)
            replayed = term.screen()
        finally:
            term.close()
        assert "echo: line 00 of the detached run" not in live  # scrolled: the replay must scroll the same way
        assert [x.rstrip() for x in replayed.splitlines()] == [x.rstrip() for x in live.splitlines()], \
            f"replayed:\n{replayed}\nlive:\n{live}"
    finally:
        cli(cluster, "kill", sid, check=False)
