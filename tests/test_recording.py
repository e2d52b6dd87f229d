"""Session recordings (issue 19): the agent's recorder, live through the real agent and the stand-in claude,
and unit tests of the control-mode decoder."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from convocate.common.paths import Paths
from convocate_agent.controlmode import ControlParser, layout_size, screen_event, unescape
from convocate_agent.recorderset import RecorderSet
from tests.conftest import connect, rpc_ok, wait_for
from tests.test_agent_attach import detach, open_attach

HOME_ENV = {"HOME": "/home/claude"}


# --- the decoder ---------------------------------------------------------------------------------
def test_unescape_octal_and_backslash():
    assert unescape(rb"a\015\012b\134c") == b"a\r\nb\\c"
    assert unescape("é".encode()) == "é".encode()


def test_output_lines_become_one_event_and_keep_cr_lf():
    p = ControlParser((80, 24))
    assert p.feed(b"%output %0 echo: hi\\015\\012\n%output %0 > \n") == [("o", "echo: hi\r\n> ")]


def test_utf8_split_across_output_lines_and_chunks():
    snow = "☃".encode()  # 3 bytes
    p = ControlParser()
    first = p.feed(b"%output %0 x" + snow[:1] + b"\n%outp")
    second = p.feed(b"ut %0 " + snow[1:] + b"y\n")
    assert first == [("o", "x")] and second == [("o", "☃y")]


def test_layout_change_gives_a_resize_once_and_blocks_are_skipped():
    p = ControlParser((80, 24))
    events = p.feed(b"%begin 1 2 0\n%output %0 not output\n%end 1 2 0\n"
                    b"%layout-change @0 b25f,100x30,0,0,0 b25f,100x30,0,0,0 *\n"
                    b"%layout-change @0 b25f,100x30,0,0,0 b25f,100x30,0,0,0 *\n%exit\n")
    assert events == [("r", "100x30"), ("exit", "")]
    assert layout_size("c3a1,120x40,0,0{60x40,0,0,1,59x40,61,0,2}") == (120, 40)
    assert layout_size("nonsense") is None


def test_retention_drops_old_finished_files_and_recordings_of_purged_sessions(tmp_path):
    paths = Paths(tmp_path)
    kept, gone = str(uuid.uuid4()), str(uuid.uuid4())
    for sid in (kept, gone):
        paths.session_recordings_dir(sid).mkdir(parents=True)
    old = paths.session_recordings_dir(kept) / "20260101T000000.000000Z.cast"
    new = paths.session_recordings_dir(kept) / "20261201T000000.000000Z.cast"
    for path in (old, new, paths.session_recordings_dir(gone) / "20261201T000000.000000Z.cast"):
        path.write_text("{}\n")
    os.utime(old, (time.time() - 31 * 86400,) * 2)
    settings = SimpleNamespace(recording_retention_days=30)
    recorders = RecorderSet(paths, None, lambda: settings, lambda sid: "", lambda: {kept})
    recorders.purge()
    assert not old.exists() and new.exists() and not paths.session_recordings_dir(gone).exists()


def test_screen_event_draws_the_capture_and_places_the_cursor():
    assert screen_event(b"line one\nline two\n", (3, 1)) == "\x1b[H\x1b[2Jline one\r\nline two\x1b[2;4H"


# --- live ------------------------------------------------------------------------------------------
def casts(cluster, sid: str) -> list[tuple[Path, dict, list]]:
    """Every recording file of a session, oldest first: (path, header, events); a torn last line is skipped."""
    out = []
    d = cluster.paths.session_recordings_dir(sid)
    for path in sorted(d.glob("*.cast")) if d.is_dir() else []:
        lines = path.read_text().split("\n")
        header = json.loads(lines[0])
        events = []
        for line in lines[1:]:
            if line:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    assert line is lines[-1], f"bad line in the middle of {path}"
        out.append((path, header, events))
    return out


def texts(cluster, sid: str, code: str = "o") -> str:
    return "".join(e[2] for _, _, events in casts(cluster, sid) for e in events if e[1] == code)


async def until(predicate, what: str, timeout: float = 30.0):
    """:func:`tests.conftest.wait_for` polling every 0.2 s, off the event loop."""
    return await asyncio.to_thread(wait_for, predicate, what, timeout, 0.2)


async def call(cluster, op, params):
    async with connect(cluster) as conn:
        return await rpc_ok(conn, op, params)


async def new_session(cluster, name: str) -> str:
    made = await call(cluster, "create", {"name": name, "cpus": 0.2, "memory_mb": 256, "start": True})
    return made["uuid"]


def session_exec(docker_client, sid: str, cmd: list[str]) -> tuple[int, bytes]:
    container = docker_client.containers.get(f"convocate-session-{sid}")
    return container.exec_run(cmd, user="1337:1337", environment=HOME_ENV)


def clients(docker_client, sid: str) -> list[str]:
    code, out = session_exec(docker_client, sid, ["tmux", "list-clients", "-F",
                                                  "#{client_control_mode} #{client_width}x#{client_height}"])
    assert code == 0, out
    return out.decode().split("\n")[:-1]


@pytest.mark.docker
async def test_output_while_nobody_is_attached_is_recorded(cluster):
    sid = await new_session(cluster, "rec-detached")
    await call(cluster, "send", {"id": sid, "text": "nobody watches this", "enter": True})
    await until(lambda: "echo: nobody watches this" in texts(cluster, sid), "echo in the recording")
    [(path, header, events)] = casts(cluster, sid)
    assert header["version"] == 2 and header["title"] == "rec-detached" and header["env"]["TERM"]
    assert header["width"] > 0 and header["height"] > 0
    assert events[0][1] == "o" and events[0][2].startswith("\x1b[H\x1b[2J")  # the screen at start
    assert all(b[0] <= a[0] for a, b in zip(events[1:], events, strict=False))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    await call(cluster, "kill", {"id": sid})


@pytest.mark.docker
async def test_control_client_is_no_operator_and_a_resize_is_recorded(cluster, docker_client):
    sid = await new_session(cluster, "rec-attach")
    await until(lambda: casts(cluster, sid), "a recording")
    assert [c.split()[0] for c in clients(docker_client, sid)] == ["1"]  # the recorder, no operator
    got = await call(cluster, "get", {"id": sid})
    assert got["state"] == "R" and got["attached_count"] == 0
    async with connect(cluster) as conn:
        process, screen = await open_attach(conn, sid, cols=111, rows=33)
        await screen.wait_for(b"> ")
        got = await rpc_ok(conn, "get", {"id": sid})
        assert got["state"] == "C" and got["attached_count"] == 1
        code, size = session_exec(docker_client, sid, ["tmux", "display-message", "-p",
                                                       "#{window_width}x#{window_height}"])
        assert size.decode().strip() == "111x33"  # the operator's size: the control client sets none
        await until(lambda: any(e[1] == "r" and e[2] == "111x33" for _, _, ev in casts(cluster, sid) for e in ev),
                    "resize event")
        process.stdin.write(b"typed while attached\r")
        await screen.wait_for(b"echo: typed while attached")
        assert texts(cluster, sid, "i") == ""  # record_input is off by default
        override = await rpc_ok(conn, "override", {"id": sid})
        assert override["detached"] == 1
        await screen.drain_to_eof()
    assert [c.split()[0] for c in clients(docker_client, sid)] == ["1"]  # the recorder survives an override
    await call(cluster, "send", {"id": sid, "text": "after the override", "enter": True})
    await until(lambda: "echo: after the override" in texts(cluster, sid), "output after the override")
    assert len(casts(cluster, sid)) == 1
    assert "not recorded" not in texts(cluster, sid, "m")
    await call(cluster, "kill", {"id": sid})


@pytest.mark.docker
async def test_killed_control_client_leaves_a_marked_gap_and_recording_goes_on(cluster, docker_client):
    sid = await new_session(cluster, "rec-gap")
    await until(lambda: casts(cluster, sid), "a recording")
    code, out = session_exec(docker_client, sid, ["pkill", "-f", "tmux -C"])
    assert code == 0, out
    await until(lambda: "output not recorded from" in texts(cluster, sid, "m"), "gap marker")
    await call(cluster, "send", {"id": sid, "text": "after the gap", "enter": True})
    await until(lambda: "echo: after the gap" in texts(cluster, sid), "output after the gap")
    assert len(casts(cluster, sid)) == 1  # the same file goes on
    await call(cluster, "kill", {"id": sid})


@pytest.mark.docker
async def test_agent_restart_starts_a_new_marked_file(fresh_cluster, docker_client):
    cluster = fresh_cluster
    sid = await new_session(cluster, "rec-restart")
    await call(cluster, "send", {"id": sid, "text": "before the restart", "enter": True})
    await until(lambda: "echo: before the restart" in texts(cluster, sid), "output before the restart")
    cluster.stop()
    [(first, _, before)] = casts(cluster, sid)
    assert first.read_text().endswith("\n")  # a clean stop leaves whole lines
    cluster.start(same_port=True)
    await until(lambda: len(casts(cluster, sid)) == 2 and len(casts(cluster, sid)[1][2]) >= 2, "a second file")
    (_, _, old), (_, header, new) = casts(cluster, sid)
    assert old == before
    assert [c.split()[0] for c in clients(docker_client, sid)] == ["1"]  # the old agent's client is gone
    assert new[0][1] == "m" and "recording resumed after agent restart" in new[0][2]
    assert "before the restart" in "".join(e[2] for e in new if e[1] == "o")  # the screen at the new start
    await call(cluster, "send", {"id": sid, "text": "after the restart", "enter": True})
    await until(lambda: "echo: after the restart" in "".join(e[2] for e in casts(cluster, sid)[1][2] if e[1] == "o"),
                "output after the restart")


@pytest.mark.docker
async def test_size_bound_drops_the_oldest_file_and_cuts_off_the_current(fresh_cluster, docker_client):
    cluster = fresh_cluster
    await call(cluster, "settings-set", {"recording_max_mb": 1})
    sid = await new_session(cluster, "rec-bound")
    await until(lambda: casts(cluster, sid), "a recording")
    await call(cluster, "restart", {"id": sid})
    await until(lambda: len(casts(cluster, sid)) == 2, "a second file")
    oldest = casts(cluster, sid)[0][0]
    code, tty = session_exec(docker_client, sid, ["tmux", "display-message", "-p", "#{pane_tty}"])
    assert code == 0, tty
    # 2 MiB of output printed in the pane (written to its terminal, as a program would)
    code, out = session_exec(docker_client, sid, ["sh", "-c", f"head -c 1572864 /dev/zero | tr '\\0' x | "
                                                  f"fold -w 100 > {tty.decode().strip()}; "
                                                  f"head -c 1572864 /dev/zero | tr '\\0' y | "
                                                  f"fold -w 100 > {tty.decode().strip()}"])
    assert code == 0, out
    await until(lambda: "recording cut off at 1 MiB" in texts(cluster, sid, "m"), "cut-off marker", timeout=60)
    assert not oldest.exists()
    files = casts(cluster, sid)
    assert len(files) == 1
    size = files[0][0].stat().st_size
    await asyncio.sleep(1.5)  # the recorder keeps reading but writes nothing more
    assert files[0][0].stat().st_size == size


@pytest.mark.docker
async def test_recording_off_gives_no_file_and_record_input_records_typing(fresh_cluster):
    cluster = fresh_cluster
    await call(cluster, "settings-set", {"recording": False})
    off = await new_session(cluster, "rec-off")
    await call(cluster, "send", {"id": off, "text": "unrecorded", "enter": True})
    for _ in range(150):
        if "echo: unrecorded" in (await call(cluster, "capture", {"id": off}))["text"]:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("no echo on the screen")
    assert casts(cluster, off) == []
    await call(cluster, "settings-set", {"recording": True, "record_input": True})
    sid = await new_session(cluster, "rec-input")
    await until(lambda: casts(cluster, sid), "a recording")
    async with connect(cluster) as conn:
        process, screen = await open_attach(conn, sid)
        await screen.wait_for(b"> ")
        process.stdin.write(b"typed and kept\r")
        await screen.wait_for(b"echo: typed and kept")
        await until(lambda: "typed and kept\r" in texts(cluster, sid, "i"), "input events")
        observer, oscreen = await open_attach(conn, sid, read_only=True)
        await oscreen.wait_for(b"> ")
        observer.stdin.write(b"observer keys")  # a read-only attach sends nothing on
        process.stdin.write(b"last line\r")
        await screen.wait_for(b"echo: last line")
        await until(lambda: "last line\r" in texts(cluster, sid, "i"), "the operator's later input")
        await detach(process)
        await screen.drain_to_eof()
    assert "observer keys" not in texts(cluster, sid, "i")


@pytest.mark.docker
async def test_a_session_cannot_forge_control_lines_or_reach_the_recordings(cluster, docker_client):
    """The attack on the recording boundary (docs/security.md, "Recordings"): from inside the session."""
    sid = await new_session(cluster, "rec-attack")
    await until(lambda: casts(cluster, sid), "a recording")
    code, tty = session_exec(docker_client, sid, ["tmux", "display-message", "-p", "#{pane_tty}"])
    forged = "\\n%exit\\n%layout-change @0 abcd,7x3,0,0,0 abcd,7x3,0,0,0 *\\n%output %0 forged\\n"
    code, out = session_exec(docker_client, sid, ["sh", "-c", f"printf '%b' '{forged}' > {tty.decode().strip()}"])
    assert code == 0, out
    await until(lambda: "%layout-change @0 abcd,7x3" in texts(cluster, sid), "the forged lines as output")
    events = [e for _, _, ev in casts(cluster, sid) for e in ev]
    assert not [e for e in events if e[1] == "r" and e[2] == "7x3"] and not [e for e in events if e[1] == "m"]
    assert len(casts(cluster, sid)) == 1
    # no mount of the session reaches the agent's state (recordings, audit log); uid 1337 cannot list it
    container = docker_client.containers.get(f"convocate-session-{sid}")
    state = str(cluster.paths.agent_state_dir)
    assert not [m for m in container.attrs["Mounts"] if m["Source"].startswith(state) or state.startswith(m["Source"])]
    code, out = session_exec(docker_client, sid, ["sh", "-c", f"ls {cluster.paths.recordings_dir} "
                                                  f"/var/lib/convocate-agent/recordings"])
    assert code != 0
    await call(cluster, "kill", {"id": sid})
