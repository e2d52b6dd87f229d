"""The ``convocate`` CLI against a real agent; ``attach`` through a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Self

import pytest

from convocate.common import messages
from convocate.common.paths import Paths
from tests.harness import REPO, LocalCluster, python

pytestmark = pytest.mark.docker


def cli(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = cluster.run_role("convocate", *args, check=False, timeout=120)
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def test_ls_new_and_lifecycle_verbs(cluster):
    made = json.loads(cli(cluster, "new", "cli-one", "--port", "-1", "--dns", "cli-one", "--cpus", "0.2",
                          "--memory", "200", "--json").stdout)
    sid = made["uuid"]
    assert made["agent_id"] == cluster.agent_id and made["state"] == "R"

    table = cli(cluster, "ls").stdout.splitlines()
    assert table[0].split()[:5] == ["#", "ST", "NAME", "AGENT", "SESSION"]
    row = next(line for line in table if "cli-one" in line)
    assert row.split()[1] == "R" and sid[:8] in row and f"{made['port']}/tcp" in row
    assert any(s["uuid"] == sid for s in json.loads(cli(cluster, "ls", "--json").stdout))

    cli(cluster, "send", "cli-one", "hello", "from", "cli")
    for _ in range(100):
        screen = cli(cluster, "capture", sid[:8]).stdout
        if "echo: hello from cli" in screen:
            break
        time.sleep(0.05)
    assert "echo: hello from cli" in screen

    assert "edited cli-two" in cli(cluster, "edit", "cli-one", "--name", "cli-two").stdout
    assert "killed cli-two" in cli(cluster, "kill", "cli-two").stdout
    assert "restarted cli-two" in cli(cluster, "restart", sid).stdout
    assert "backgrounded" in cli(cluster, "background", "cli-two").stdout
    assert "detached 0 client(s)" in cli(cluster, "override", "cli-two").stdout
    clone = json.loads(cli(cluster, "clone", "cli-two", "cli-copy", "--json").stdout)
    refused = cli(cluster, "delete", "cli-two", check=False)
    assert refused.returncode == 4 and "is running; kill it first" in refused.stderr
    cli(cluster, "kill", "cli-two")
    assert "in the agent's trash" in cli(cluster, "delete", "cli-two").stdout
    cli(cluster, "delete", clone["uuid"])
    assert "cli-two" not in cli(cluster, "ls").stdout


def test_ls_wide_shows_the_claude_code_each_container_runs_and_a_restart_takes_the_new_one(cluster):
    """The roll ``convocate-host update --claude-code`` makes, seen from ``ls``: a new current image."""
    label = subprocess.run(["docker", "image", "inspect", "--format",
                            '{{index .Config.Labels "convocate.claude-code"}}', cluster.image],
                           capture_output=True, text=True, check=True).stdout.strip()
    newer = f"convocate-test-pin:cc-{uuid.uuid4().hex[:8]}"  # the same image with another version label
    subprocess.run(["docker", "build", "-q", "--label", "convocate.test=pin", "--label",
                    "convocate.claude-code=9.9.9", "-t", newer, "-"], input=f"FROM {cluster.image}\n",
                   capture_output=True, text=True, check=True)
    current = cluster.paths.current_image_file
    try:
        kept = json.loads(cli(cluster, "new", "cc-kept", "--cpus", "0.1", "--memory", "128", "--json").stdout)
        moved = json.loads(cli(cluster, "new", "cc-moved", "--cpus", "0.1", "--memory", "128", "--json").stdout)
        idle = json.loads(cli(cluster, "new", "cc-idle", "--no-start", "--json").stdout)
        assert kept["claude_code"] == label and moved["claude_code"] == label and "claude_code" not in idle
        current.write_text(f"{newer}\n")
        restarted = json.loads(cli(cluster, "restart", moved["uuid"], "--json").stdout)
        assert restarted["claude_code"] == "9.9.9" and restarted["image"] == newer
        listing = {s["uuid"]: s for s in json.loads(cli(cluster, "ls", "--json").stdout)}
        assert listing[kept["uuid"]]["claude_code"] == label  # running sessions keep theirs
        assert listing[moved["uuid"]]["claude_code"] == "9.9.9"
        table = cli(cluster, "ls", "--wide").stdout.splitlines()
        assert table[0].split()[-3:] == ["IMAGE", "CLAUDE", "CODE"]
        rows = {name: next(line for line in table if f"  {name}  " in line) for name in ("cc-kept", "cc-moved", "cc-idle")}
        assert rows["cc-kept"].split()[-2:] == [cluster.image, label]
        assert rows["cc-moved"].split()[-2:] == [newer, "9.9.9"]
        assert rows["cc-idle"].split()[-2:] == ["-", "-"]
        assert "IMAGE" not in cli(cluster, "ls").stdout.splitlines()[0]
    finally:
        current.write_text(f"{cluster.image}\n")
        for name in ("cc-kept", "cc-moved", "cc-idle"):
            cli(cluster, "kill", name, check=False)
            cli(cluster, "delete", name, check=False)
        subprocess.run(["docker", "image", "rm", "-f", newer], capture_output=True)


def test_unknown_and_ambiguous_references_are_clear_errors(cluster):
    missing = cli(cluster, "kill", "no-such-session", check=False)
    assert missing.returncode == 3 and 'no session matches "no-such-session"' in missing.stderr
    a = json.loads(cli(cluster, "new", "twin", "--no-start", "--json").stdout)
    b = json.loads(cli(cluster, "new", "twin", "--no-start", "--json").stdout)
    ambiguous = cli(cluster, "kill", "twin", check=False)
    assert ambiguous.returncode == 2 and 'matches 2 sessions' in ambiguous.stderr
    for s in (a, b):
        cli(cluster, "delete", s["uuid"])


def test_agent_errors_reach_the_operator_with_their_message(cluster):
    bad = cli(cluster, "new", "bad/name", check=False)
    assert bad.returncode == 2 and "name must be 1-64 characters" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_no_session_image_configured_exits_78_with_its_message_through_a_real_agent(cluster):
    image_file = cluster.paths.current_image_file
    image_file.unlink()
    try:
        done = cli(cluster, "new", "imageless", check=False)
        as_json = cli(cluster, "new", "imageless", "--json", check=False)
    finally:
        image_file.write_text(f"{cluster.image}\n")
    expected = messages.NO_IMAGE.format(path=image_file)
    assert done.returncode == 78, (done.stdout, done.stderr)
    assert done.stderr.strip() == f"convocate: {expected}"
    assert as_json.returncode == 78 and as_json.stderr == ""
    assert json.loads(as_json.stdout) == {"ok": False, "code": "config", "error": expected}
    assert "imageless" not in cli(cluster, "ls").stdout


def test_json_errors_go_to_stdout_with_the_same_exit_status(cluster):
    for args in (("kill", "no-such-session"), ("new", "bad/name"), ("frobnicate",), ("ls", "--frob")):
        plain = cli(cluster, *args, check=False)
        as_json = cli(cluster, *args, "--json", check=False)
        assert plain.returncode == as_json.returncode != 0, args
        answer = json.loads(as_json.stdout)
        assert answer["ok"] is False and answer["code"] and answer["error"], answer
        assert answer["error"] in plain.stderr, (args, plain.stderr)


@pytest.mark.parametrize("module,prog", [("convocate", "convocate"), ("convocate_agent", "convocate-agent"),
                                         ("convocate_host", "convocate-host")])
@pytest.mark.parametrize("args", [("frobnicate",), ("frobnicate", "--json"), ("install", "--frob")])
def test_a_bad_command_line_prints_one_usage_line(tmp_path, module, prog, args):
    done = LocalCluster(root=tmp_path, image="x").run_role(module, *args, check=False)
    assert done.returncode == 2
    if "--json" in args:
        answer = json.loads(done.stdout)
        assert answer["code"] == "usage" and "frobnicate" in answer["error"] and done.stderr == ""
        return
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.count("usage:") == 1, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"usage: {prog} ") and lines[-1].startswith(f"{prog}: error: ")
    assert ("invalid choice: 'frobnicate'" if args[0] == "frobnicate" else "unrecognized arguments: --frob") \
        in lines[-1]


def test_agent_errors_with_json_are_json_on_stdout_with_the_same_status(tmp_path):
    role = LocalCluster(root=tmp_path, image="x")
    args = ("load-image", "--sha256", "abc", "--tag", "convocate:x")
    plain = role.run_role("convocate_agent", *args, check=False, input="")
    as_json = role.run_role("convocate_agent", *args, "--json", check=False, input="")
    assert plain.returncode == as_json.returncode == 2
    answer = json.loads(as_json.stdout)
    assert answer == {"ok": False, "code": "bad_request", "error": "--sha256: 'abc' is not a SHA-256 digest (64 hex digits)"}
    assert plain.stderr == f"convocate-agent: {answer['error']}\n" and as_json.stderr == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the CLI as another uid")
def test_a_user_without_the_claude_group_is_told_which_account_it_needs():
    root = Path(tempfile.mkdtemp(prefix="convocate-noperm-"))  # pytest's tmp dirs are 0700, closed to nobody
    try:
        root.chmod(0o755)
        paths = Paths(root)
        paths.agents_dir.mkdir(parents=True)
        (paths.agents_dir / "abcd1234").mkdir()
        for d in (paths.shell_etc, paths.agents_dir):
            os.chown(d, 1, 1)  # daemon:daemon stands in for claude:claude, which this machine lacks
        paths.shell_etc.chmod(0o755)
        paths.agents_dir.chmod(0o750)
        env = {**os.environ, "CONVOCATE_ROOT": str(root), "HOME": "/nonexistent"}
        env.pop("SSH_AUTH_SOCK", None)
        as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", python(), "-m", "convocate"]
        done = subprocess.run([*as_nobody, "ls"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        expected = messages.NO_PERMISSION.format(action="reading", path=paths.agents_dir, user="daemon",
                                                 group="daemon", me="nobody")
        assert done.returncode == 77, (done.stdout, done.stderr)
        assert done.stderr == f"convocate: {expected}\n" and done.stdout == ""
        as_json = subprocess.run([*as_nobody, "ls", "--json"], env=env, cwd=REPO, capture_output=True, text=True,
                                 timeout=60)
        assert as_json.returncode == 77
        assert json.loads(as_json.stdout) == {"ok": False, "code": "no_permission", "error": expected}

        paths.shell_etc.chmod(0o750)  # now the directory above hides the registry: still one sentence
        done = subprocess.run([*as_nobody, "ls"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 77
        assert done.stderr == "convocate: " + messages.NO_PERMISSION.format(
            action="reading", path=paths.agents_dir, user="daemon", group="daemon", me="nobody") + "\n"
    finally:
        shutil.rmtree(root)


def test_no_registered_agent_says_what_to_run(tmp_path):
    done = LocalCluster(root=tmp_path, image="x").run_role("convocate", "ls", check=False)
    assert done.returncode == 78 and "no agent is registered" in done.stderr and "init-agent" in done.stderr


def test_a_pinned_host_key_mismatch_is_refused(cluster, tmp_path):
    other = LocalCluster(root=tmp_path, image="x")
    other.install()
    from convocate.common import keys

    known = cluster.paths.agent_known_host(cluster.agent_id)
    original = known.read_text()
    known.write_text(keys.public_key_line(keys.load_private_key(other.paths.agent_host_key)) + "\n")
    try:
        done = cli(cluster, "ls", check=False)
    finally:
        known.write_text(original)
    assert "presented a host key that does not match the pinned key" in done.stderr


class Terminal:
    """A real terminal: a private tmux server running one command."""

    def __init__(self, env: dict[str, str]):
        self.socket = f"convocate-test-{uuid.uuid4().hex[:8]}"
        self.env = env

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], env=self.env, check=True, capture_output=True,
                              text=True).stdout

    def start(self, command: str, cols: int = 100, rows: int = 30) -> None:
        self.tmux("new-session", "-d", "-s", "t", "-x", str(cols), "-y", str(rows), command)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not on the terminal:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def terminal(cluster):
    with Terminal(cluster.env) as term:
        yield term


def test_attach_types_into_the_session_and_detach_returns_to_the_shell(cluster, terminal):
    sid = json.loads(cli(cluster, "new", "tty", "--json", "--cpus", "0.2", "--memory", "200").stdout)["uuid"]
    terminal.start(f"cd {REPO} && {python()} -m convocate attach tty; echo EXIT=$?; sleep 60")
    terminal.wait_for("convocate stand-in claude")
    terminal.tmux("send-keys", "-t", "t", "typed in a terminal", "Enter")
    terminal.wait_for("echo: typed in a terminal")
    terminal.tmux("send-keys", "-t", "t", "C-b", "d")
    screen = terminal.wait_for("EXIT=0")
    assert "detached from tty; it keeps running" in screen
    listed = {s["uuid"]: s for s in json.loads(cli(cluster, "ls", "--json").stdout)}
    assert listed[sid]["state"] == "R"
    cli(cluster, "kill", sid)
    cli(cluster, "delete", sid)


def test_attach_starts_a_stopped_session(cluster, terminal):
    sid = json.loads(cli(cluster, "new", "cold", "--no-start", "--json").stdout)["uuid"]
    terminal.start(f"cd {REPO} && {python()} -m convocate attach cold; echo EXIT=$?; sleep 60")
    terminal.wait_for("convocate stand-in claude")
    terminal.tmux("send-keys", "-t", "t", "C-b", "d")
    terminal.wait_for("EXIT=0")
    cli(cluster, "kill", sid)
    cli(cluster, "delete", sid)


def test_attach_without_a_terminal_is_a_clear_error(cluster):
    sid = json.loads(cli(cluster, "new", "notty", "--json", "--cpus", "0.1", "--memory", "100").stdout)["uuid"]
    done = subprocess.run([python(), "-m", "convocate", "attach", sid], env=cluster.env, cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 78 and "attach needs a terminal" in done.stderr
    cli(cluster, "kill", sid)
    cli(cluster, "delete", sid)
