"""The session image on its own: entrypoint, supervisor, tmux (packaging/image/),
and the session side of the agent channel: convocate-report, the hooks in
Claude Code's managed settings, the convocate MCP server, as the stand-in
`claude` drives them.

Containers are started here through the docker SDK exactly as the agent starts
them (init process, home bind mount, CLAUDE_UID/GID, the agent's socket
directory mounted read-only at /run/convocate-agent), labelled with this
test's root, and removed at teardown. The agent's side of the socket is a
small server of the test's own (``agent_socket``) that records every line.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest

pytestmark = pytest.mark.docker

UID = "1337:1337"
AGENT_DIR = "/run/convocate-agent"


class AgentSocket:
    """The agent's end of the channel: a Unix socket server recording each message line.

    Attributes:
        dir: Host directory holding ``agent.sock``, to mount at /run/convocate-agent.
        messages: Every message received, decoded, in arrival order.
        reply: The line sent back to each message.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o755)
        self.dir.chmod(0o755)
        self.messages: list[dict] = []
        self.reply = b'{"ok": true}\n'
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(directory / "agent.sock"))
        os.chmod(directory / "agent.sock", 0o666)
        self._sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            with self._lock:
                self.messages.append(json.loads(data.split(b"\n", 1)[0]))
            conn.sendall(self.reply)

    def events(self, source: str | None = None) -> list[tuple[str, str, dict]]:
        with self._lock:
            return [(m["source"], m["event"], m["data"]) for m in self.messages
                    if source is None or m["source"] == source]

    def wait_for(self, source: str, event: str, /, **data) -> dict:
        """The first message SOURCE EVENT whose data has the given items (waits up to 10 s)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for s, e, d in self.events():
                if (s, e) == (source, event) and all(d.get(k) == v for k, v in data.items()):
                    return d
            time.sleep(0.02)
        raise AssertionError(f"no {source} {event} {data} among {self.events()}")

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def agent_socket():
    # A short path of its own: a Unix socket path must stay under 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="convocate-agent-"))
    server = AgentSocket(base / "agent")
    yield server
    server.close()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def run_session(docker_client, session_image, tmp_path):
    started = []

    def run(agent: AgentSocket | None = None, home_files: dict[str, str] | None = None,
            setup: Callable[[Path], None] | None = None, **env):
        home = tmp_path / f"home{len(started)}"
        home.mkdir()
        for name, text in (home_files or {}).items():
            (home / name).write_text(text)
            os.chown(home / name, 1337, 1337)
        if setup is not None:
            setup(home)
        environment = {"CLAUDE_UID": "1337", "CLAUDE_GID": "1337", "CONVOCATE_BACKOFF_BASE": "0.05",
                       "CONVOCATE_AGENT_COMMAND": "claude", **env}
        mounts = [docker.types.Mount("/home/claude", str(home), type="bind")]
        if agent is not None:
            mounts.append(docker.types.Mount(AGENT_DIR, str(agent.dir), type="bind", read_only=True))
        container = docker_client.containers.run(
            session_image, detach=True, init=True, environment=environment,
            labels={"convocate.root": str(tmp_path)}, mounts=mounts,
        )
        started.append(container)
        return container, home

    yield run
    for container in started:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


def tmux(container, *args):
    return container.exec_run(["tmux", *args], user=UID, environment={"HOME": "/home/claude"})


def wait_ready(container, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tmux(container, "has-session", "-t", "main").exit_code == 0:
            return
        time.sleep(0.02)
    raise AssertionError(container.logs().decode())


def wait_screen(container, text, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = tmux(container, "capture-pane", "-p", "-t", "main").output.decode()
        if text in screen:
            return screen
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not on screen:\n{screen}")


def wait_exit(container, timeout=20.0):
    return container.wait(timeout=timeout)["StatusCode"]


def type_line(container, line):
    tmux(container, "send-keys", "-t", "main", "-l", line)
    tmux(container, "send-keys", "-t", "main", "Enter")


def report(container, *args, stdin=None):
    """Run convocate-report in the container as the session user; (exit code, output)."""
    if stdin is not None:
        cmd = ["sh", "-c", 'printf %s "$1" | convocate-report hook', "sh", stdin]
    else:
        cmd = ["convocate-report", *args]
    result = container.exec_run(cmd, user=UID, environment={"HOME": "/home/claude"})
    return result.exit_code, result.output.decode()


def test_session_runs_the_agent_command_as_claude_in_tmux(run_session):
    container, home = run_session()
    wait_ready(container)
    wait_screen(container, "convocate stand-in claude")
    tmux(container, "send-keys", "-t", "main", "hello", "Enter")
    wait_screen(container, "echo: hello")
    assert container.exec_run(["id", "-u", "claude"]).output.strip() == b"1337"
    container.exec_run(["sh", "-c", "echo data > /home/claude/made-by-session"], user=UID)
    assert os.stat(home / "made-by-session").st_uid == 1337
    assert os.stat(home).st_uid == 1337


def test_a_clean_exit_ends_the_session(run_session):
    container, _ = run_session()
    wait_ready(container)
    wait_screen(container, "convocate stand-in claude")
    tmux(container, "send-keys", "-t", "main", "/exit", "Enter")
    assert wait_exit(container) == 0


def test_a_crash_is_resumed_with_dash_c_and_five_crashes_give_up(run_session, agent_socket):
    container, home = run_session(agent=agent_socket)
    wait_ready(container)
    banner = "convocate stand-in claude"
    type_line(container, "hello")  # a conversation to continue: -c only resumes one that exists
    wait_screen(container, "echo: hello")
    for attempt in range(5):
        screen = wait_screen(container, banner)
        deadline = time.monotonic() + 10
        while screen.count(banner) < attempt + 1 and time.monotonic() < deadline:
            screen = tmux(container, "capture-pane", "-p", "-t", "main").output.decode()
        if attempt:
            assert "-c" in screen.split(banner)[-1].splitlines()[0]  # resumed after the crash
        tmux(container, "send-keys", "-t", "main", "/crash", "Enter")
    assert wait_exit(container) == 3
    log = (home / ".convocate" / "logs" / "supervisor.log").read_text()
    assert log.count("agent exited with status 3 after") == 5, log
    assert "giving up: the agent failed 5 times in a row" in log, log
    assert b"convocate" in container.logs()  # supervisor lines reach docker logs
    # ...and every start, exit, backoff and the give-up reach the agent, in order.
    supervisor = [(e, d) for _, e, d in agent_socket.events("supervisor")]
    assert [e for e, _ in supervisor] == ["start", "exit", "backoff"] * 4 + ["start", "exit", "gave_up"]
    starts = [d for e, d in supervisor if e == "start"]
    assert [d["attempt"] for d in starts] == [1, 2, 3, 4, 5]
    assert [d["command"] for d in starts] == ["claude"] + ["claude -c"] * 4
    exits = [d for e, d in supervisor if e == "exit"]
    assert all(d["status"] == 3 and isinstance(d["seconds"], (int, float)) for d in exits), exits
    assert [d["delay"] for e, d in supervisor if e == "backoff"] == [0.05, 0.1, 0.2, 0.4]
    assert supervisor[-1] == ("gave_up", {"status": 3, "failures": 5})
    assert [d["source"] for _, e, d in agent_socket.events("hook") if e == "SessionStart"] == \
        ["startup"] + ["resume"] * 4


def test_docker_stop_is_prompt(run_session):
    container, _ = run_session()
    wait_ready(container)
    started = time.monotonic()
    container.stop(timeout=10)
    assert time.monotonic() - started < 5


# --- the agent channel ----------------------------------------------------------------


def test_the_stand_in_reports_hooks_and_mcp_tool_calls_to_the_agent(run_session, agent_socket):
    container, home = run_session(agent=agent_socket, home_files={
        ".claude.json": json.dumps({"numStartups": 7, "mcpServers": {"mine": {"command": "/bin/true"}}})})
    wait_ready(container)
    sid = agent_socket.wait_for("hook", "SessionStart", source="startup")["session_id"]
    assert agent_socket.events()[0] == ("supervisor", "start", {"attempt": 1, "command": "claude"})
    # The entrypoint added the convocate server to the user scope and kept the rest.
    config = json.loads((home / ".claude.json").read_text())
    assert config["numStartups"] == 7 and set(config["mcpServers"]) == {"mine", "convocate"}

    type_line(container, "hello")
    wait_screen(container, "echo: hello")
    assert agent_socket.wait_for("hook", "UserPromptSubmit") == {"session_id": sid, "prompt": "hello"}
    agent_socket.wait_for("hook", "Stop")

    type_line(container, "/ask May I push to main?")
    wait_screen(container, "[ask_operator] The operator has been alerted")
    assert agent_socket.wait_for("mcp", "ask") == {"question": "May I push to main?"}
    tools = [d["tool_name"] for s, e, d in agent_socket.events("hook") if e in ("PreToolUse", "PostToolUse")]
    assert tools == ["mcp__convocate__ask_operator"] * 2

    type_line(container, "/progress tests pass")
    agent_socket.wait_for("mcp", "progress", message="tests pass")
    type_line(container, "/status waiting for CI")
    agent_socket.wait_for("mcp", "status", status="waiting", message="for CI")
    type_line(container, "/status foo")
    wait_screen(container, "status must be one of working, idle, waiting (got 'foo')")
    assert [d["status"] for _, e, d in agent_socket.events("mcp") if e == "status"] == ["waiting"]

    type_line(container, "/notify Claude needs your permission to use Bash")
    assert agent_socket.wait_for("hook", "Notification") == {
        "session_id": sid, "message": "Claude needs your permission to use Bash",
        "notification_type": "permission_prompt"}
    type_line(container, "/exit")
    assert wait_exit(container) == 0
    agent_socket.wait_for("hook", "SessionEnd", reason="prompt_input_exit")
    agent_socket.wait_for("supervisor", "exit", status=0, attempt=1)


def test_convocate_report_sends_one_line_and_never_fails(run_session, agent_socket):
    container, home = run_session(agent=agent_socket, CONVOCATE_AGENT_COMMAND="sleep 600")
    wait_ready(container)
    agent_socket.wait_for("supervisor", "start", command="sleep 600")

    hook_input = json.dumps({"session_id": "s1", "hook_event_name": "UserPromptSubmit", "cwd": "/home/claude",
                             "transcript_path": "/x", "prompt": "é" * 5000})
    assert report(container, stdin=hook_input) == (0, "")  # nothing on stdout: Claude would read it
    data = agent_socket.wait_for("hook", "UserPromptSubmit")
    assert data == {"session_id": "s1", "prompt": "é" * 2000}  # reduced and cut to 2000 characters

    assert report(container, "supervisor", "backoff", "delay=0.5", "failures=2") == (0, "")
    assert agent_socket.wait_for("supervisor", "backoff") == {"delay": 0.5, "failures": 2}
    code, out = report(container, "mcp", "status", "status=sleeping")
    assert code == 2 and "status must be one of working, idle, waiting" in out
    assert not [e for _, e, _ in agent_socket.events("mcp")]

    # A refusal and an absent agent are logged, and the command still exits 0 at once.
    agent_socket.reply = b'{"ok": false, "error": "no such event"}\n'
    assert report(container, "mcp", "progress", "message=x") == (0, "")
    (agent_socket.dir / "agent.sock").unlink()
    started = time.monotonic()
    assert report(container, stdin='{"hook_event_name": "Stop"}') == (0, "")
    assert time.monotonic() - started < 1.5
    log = (home / ".convocate" / "logs" / "report.log").read_text()
    assert "mcp progress not delivered: the agent refused it: no such event" in log, log
    assert f"hook Stop not delivered: no agent socket at {AGENT_DIR}/agent.sock" in log, log


def test_without_the_agent_the_session_works_and_the_misses_are_logged(run_session):
    container, home = run_session()
    wait_ready(container)
    type_line(container, "hello")
    wait_screen(container, "echo: hello")
    type_line(container, "/ask anyone?")
    wait_screen(container, "[ask_operator] The operator could not be notified")
    log = (home / ".convocate" / "logs" / "report.log").read_text()
    for line in ("supervisor start", "hook SessionStart", "hook UserPromptSubmit", "hook Stop", "mcp ask"):
        assert f"{line} not delivered: no agent socket" in log, log
    deadline = time.monotonic() + 5
    while b"mcp ask not delivered" not in container.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"mcp ask not delivered" in container.logs()  # report.log reaches docker logs


# --- straight to the prompt: work dir, ~/.claude.json, skip_permissions -------------------

API_KEY = "sk-ant-api03-" + "x" * 40 + "the-last-20-chars-00"


def pane_path(container) -> str:
    return tmux(container, "display-message", "-p", "-t", "main", "#{pane_current_path}").output.decode().strip()


def test_the_session_works_in_its_work_dir_with_claude_json_set_at_every_start(run_session):
    operator = {"numStartups": 12, "theme": "light", "editorMode": "vim",
                "projects": {"/home/claude/work": {"allowedTools": ["Bash(make:*)"]}},
                "customApiKeyResponses": {"approved": [], "rejected": [API_KEY[-20:]]}}
    container, home = run_session(home_files={".claude.json": json.dumps(operator)}, ANTHROPIC_API_KEY=API_KEY)
    wait_ready(container)
    wait_screen(container, "convocate stand-in claude")
    assert pane_path(container) == "/home/claude/work"
    work = home / "work"
    assert work.is_dir() and (work.stat().st_uid, work.stat().st_gid) == (1337, 1337)
    config = json.loads((home / ".claude.json").read_text())
    assert config["hasCompletedOnboarding"] is True and config["theme"] == "light"  # a theme is kept
    assert config["projects"]["/home/claude/work"] == {"allowedTools": ["Bash(make:*)"],
                                                       "hasTrustDialogAccepted": True,
                                                       "hasCompletedProjectOnboarding": True}
    assert config["customApiKeyResponses"] == {"approved": [API_KEY[-20:]], "rejected": []}
    assert config["numStartups"] == 12 and config["editorMode"] == "vim" and "convocate" in config["mcpServers"]
    assert "bypassPermissionsModeAccepted" not in config and API_KEY not in (home / ".claude.json").read_text()
    assert (home / ".claude.json").stat().st_uid == 1337
    assert "convocate stand-in claude\n" in wait_screen(container, "convocate stand-in claude")  # no flag

    # The operator (or Claude) changes the file meanwhile; a restart keeps that and restores the keys.
    config["projects"]["/home/claude/work"]["hasTrustDialogAccepted"] = False
    config["hasCompletedOnboarding"] = False
    config["mcpServers"]["theirs"] = {"command": "/bin/true"}
    config["verbose"] = True
    (home / ".claude.json").write_text(json.dumps(config))
    container.restart(timeout=10)
    wait_ready(container)
    wait_screen(container, "convocate stand-in claude")
    assert pane_path(container) == "/home/claude/work"
    again = json.loads((home / ".claude.json").read_text())
    assert again["projects"]["/home/claude/work"]["hasTrustDialogAccepted"] is True
    assert again["hasCompletedOnboarding"] is True and again["verbose"] is True
    assert set(again["mcpServers"]) == {"convocate", "theirs"} and again["editorMode"] == "vim"


def test_skip_permissions_adds_the_flag_at_start_and_resume_and_accepts_the_mode(run_session, agent_socket):
    container, home = run_session(agent=agent_socket, CONVOCATE_SKIP_PERMISSIONS="1",
                                  CONVOCATE_WORK_DIR="/home/claude/projects/site")
    wait_ready(container)
    wait_screen(container, "convocate stand-in claude --dangerously-skip-permissions")
    assert pane_path(container) == "/home/claude/projects/site"
    config = json.loads((home / ".claude.json").read_text())
    assert config["bypassPermissionsModeAccepted"] is True
    assert config["projects"]["/home/claude/projects/site"]["hasTrustDialogAccepted"] is True
    type_line(container, "hello")
    wait_screen(container, "echo: hello")
    type_line(container, "/crash")
    wait_screen(container, "convocate stand-in claude --dangerously-skip-permissions -c")
    assert [d["command"] for _, e, d in agent_socket.events("supervisor") if e == "start"] == [
        "claude --dangerously-skip-permissions", "claude --dangerously-skip-permissions -c"]
    assert b"(permissions skipped), work dir /home/claude/projects/site" in container.logs()


def _conversation(lines: list[dict]) -> Callable[[Path], None]:
    """A ``setup`` that leaves Claude Code's transcript of the default work dir in the home."""
    def plant(home: Path) -> None:
        project = home / ".claude" / "projects" / "-home-claude-work"
        project.mkdir(parents=True)
        (project / "0e5a3a59-4a8f-4c1b-9f5e-0d6b1c2a3b4c.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in lines))
        for path in (home / ".claude", home / ".claude" / "projects", project, *project.iterdir()):
            os.chown(path, 1337, 1337)
    return plant


def test_a_start_continues_the_conversation_the_work_dir_has(run_session, agent_socket):
    """A container restart or a clone: Claude Code's transcript is there, so the first start is ``-c``."""
    container, _ = run_session(agent=agent_socket, setup=_conversation([
        {"type": "summary"}, {"type": "user", "message": {"role": "user", "content": "hi"}}]))
    wait_ready(container)
    wait_screen(container, "convocate stand-in claude -c")
    assert [d["command"] for _, e, d in agent_socket.events("supervisor") if e == "start"] == ["claude -c"]


def test_a_transcript_without_a_user_turn_starts_a_new_conversation(run_session):
    container, _ = run_session(setup=_conversation([{"type": "assistant", "isApiErrorMessage": True}]))
    wait_ready(container)
    screen = wait_screen(container, "convocate stand-in claude")
    assert "claude -c" not in screen, screen


def test_a_crash_before_any_conversation_restarts_without_dash_c(run_session, agent_socket):
    """``claude -c`` with nothing to continue fails at once; five of those would end the session."""
    container, _ = run_session(agent=agent_socket)
    wait_ready(container)
    wait_screen(container, "convocate stand-in claude")
    type_line(container, "/crash")
    wait_screen(container, "restarting with 'claude' in")
    type_line(container, "hello")
    wait_screen(container, "echo: hello")
    type_line(container, "/crash")
    wait_screen(container, "convocate stand-in claude -c")
    assert [d["command"] for _, e, d in agent_socket.events("supervisor") if e == "start"] == [
        "claude", "claude", "claude -c"]


def test_a_command_with_the_flag_already_gets_it_once(run_session):
    container, _ = run_session(CONVOCATE_SKIP_PERMISSIONS="1",
                               CONVOCATE_AGENT_COMMAND="claude --dangerously-skip-permissions --verbose")
    wait_ready(container)
    screen = wait_screen(container, "convocate stand-in claude")
    assert screen.count("--dangerously-skip-permissions") == 1, screen


def test_a_symlinked_or_invalid_work_dir_falls_back_with_a_warning(run_session, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()

    def plant(home: Path) -> None:
        (home / "work").symlink_to(outside)  # e.g. what a clone of a hostile session copies

    container, home = run_session(setup=plant)
    wait_ready(container)
    wait_screen(container, "convocate stand-in claude")
    assert pane_path(container) == "/home/claude"
    logs = container.logs().decode()
    assert "warning: /home/claude/work is a symlink; refusing it" in logs, logs
    assert "the session works in /home/claude, not in /home/claude/work" in logs, logs
    assert (home / "work").is_symlink() and not list(outside.iterdir())
    assert json.loads((home / ".claude.json").read_text())["projects"]["/home/claude"]["hasTrustDialogAccepted"]

    container, home = run_session(CONVOCATE_WORK_DIR="/home/claude/../etc", CONVOCATE_SKIP_PERMISSIONS="yes")
    wait_ready(container)
    screen = wait_screen(container, "convocate stand-in claude")
    assert pane_path(container) == "/home/claude/work" and "--dangerously" not in screen
    logs = container.logs().decode()
    assert "CONVOCATE_WORK_DIR '/home/claude/../etc' is not /home/claude or a normalised path below it" in logs
    assert "CONVOCATE_SKIP_PERMISSIONS must be 1 or 0, got 'yes'" in logs


def test_a_hostile_claude_json_is_left_alone_and_the_session_still_starts(run_session):
    container, home = run_session(home_files={".claude.json": "[1, 2"})
    wait_ready(container)
    wait_screen(container, "convocate stand-in claude")
    assert (home / ".claude.json").read_text() == "[1, 2"
    logs = container.logs().decode()
    assert "warning: ~/.claude.json is not set up, Claude Code may stop at a dialog: claude-config: " \
           "/home/claude/.claude.json left alone, it is not readable JSON" in logs, logs


def test_credential_env_reaches_the_session_user_verbatim_and_only_known_names(run_session, tmp_path):
    """credential.env (issue 15) is data: no expansion, no quoting rules, unknown names skipped, nothing sourced."""
    agent_dir = tmp_path / "agent-dir"
    agent_dir.mkdir()
    tricky = "sk-$(touch /tmp/pwned)'\"`id`;x=y"
    (agent_dir / "credential.env").write_text(
        f"ANTHROPIC_API_KEY={tricky}\nPATH=/evil\nnot a line\n# comment\n"
        "ANTHROPIC_BASE_URL=http://127.0.0.1:9 with spaces\nCLAUDE_CODE_OAUTH_TOKEN=tok")
    os.chown(agent_dir / "credential.env", 1337, 1337)
    os.chmod(agent_dir / "credential.env", 0o600)
    os.chmod(agent_dir, 0o755)
    agent = SimpleNamespace(dir=agent_dir)
    container, _ = run_session(agent=agent)
    wait_ready(container)
    code, out = tmux(container, "show-environment", "-g")
    env = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    assert env["ANTHROPIC_API_KEY"] == tricky
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9 with spaces"
    assert env["CLAUDE_CODE_OAUTH_TOKEN"] == "tok"  # a last line without a newline counts
    assert env["PATH"] != "/evil"
    assert container.exec_run(["test", "-e", "/tmp/pwned"]).exit_code != 0
    logs = container.logs().decode()
    assert "session environment from /run/convocate-agent/credential.env: ANTHROPIC_API_KEY ANTHROPIC_BASE_URL " \
           "CLAUDE_CODE_OAUTH_TOKEN" in logs and "skipped a line" in logs and tricky not in logs
    assert not any(e.startswith("ANTHROPIC_API_KEY=") for e in container.attrs["Config"]["Env"])
