"""The session image's claude-config (packaging/image/session/claude-config) on its own.

It runs here as it runs in the container: ``/usr/bin/python3 -IS`` on a file in a
temporary home, with only the environment it is given. What it must do comes from
Claude Code 2.1.330's checks before its prompt (MACHINE-NOTES): onboarding and a
theme, the trust of the working directory, the API key's last 20 characters
approved, and the bypass-permissions mode accepted.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "packaging" / "image" / "session" / "claude-config"
MCP = Path(__file__).resolve().parent.parent / "packaging" / "image" / "session" / "mcp.json"
WORK = "/home/claude/work"
KEY = "sk-ant-api03-" + "A" * 60 + "tail-of-the-key-1234"  # last 20: "tail-of-the-key-1234"
SUFFIX = KEY[-20:]
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def run(home: Path, *args: str, api_key: str | None = None, timeout: float = 10,
        **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"HOME": str(home), "PATH": "/usr/bin:/bin", **env}
    if api_key is not None:
        environment["ANTHROPIC_API_KEY"] = api_key
    return subprocess.run([PYTHON, "-IS", str(SCRIPT), "--mcp", str(MCP), *args], env=environment,
                          capture_output=True, text=True, timeout=timeout, check=False)


def config(home: Path) -> dict:
    return json.loads((home / ".claude.json").read_text())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_a_fresh_home_gets_every_key_and_a_private_file(home):
    done = run(home)
    assert done.returncode == 0, done.stderr
    got = config(home)
    assert got["hasCompletedOnboarding"] is True and got["theme"] == "dark"
    assert got["projects"] == {WORK: {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}}
    assert got["mcpServers"] == json.loads(MCP.read_text())["mcpServers"]
    assert "customApiKeyResponses" not in got and "bypassPermissionsModeAccepted" not in got
    assert stat.S_IMODE((home / ".claude.json").stat().st_mode) == 0o600
    assert done.stdout == f"{home}/.claude.json: MCP server convocate; onboarding done; {WORK} trusted; theme dark\n"
    assert [p.name for p in home.iterdir()] == [".claude.json"]  # no temporary file left


def test_the_merge_keeps_the_operators_settings(home):
    mine = {
        "numStartups": 41, "theme": "light-daltonized", "userID": "abc", "autoUpdates": False,
        "mcpServers": {"mine": {"command": "/bin/true"}, "convocate": {"command": "/old/path"}},
        "projects": {"/home/claude/other": {"hasTrustDialogAccepted": False, "allowedTools": ["Bash"]},
                     WORK: {"allowedTools": ["Edit"], "history": [{"display": "hi"}]}},
        "customApiKeyResponses": {"approved": ["older-key-suffix-000"], "rejected": [SUFFIX, "another-rejected-k"],
                                  "note": 1},
    }
    (home / ".claude.json").write_text(json.dumps(mine))
    (home / ".claude.json").chmod(0o640)
    done = run(home, "--skip-permissions", api_key=KEY)
    assert done.returncode == 0, done.stderr
    got = config(home)
    for key in ("numStartups", "theme", "userID", "autoUpdates"):
        assert got[key] == mine[key]
    assert got["mcpServers"]["mine"] == {"command": "/bin/true"}
    assert got["mcpServers"]["convocate"]["command"] == "/usr/local/bin/convocate-mcp"  # the image's wins
    assert got["projects"]["/home/claude/other"] == mine["projects"]["/home/claude/other"]
    assert got["projects"][WORK] == {"allowedTools": ["Edit"], "history": [{"display": "hi"}],
                                     "hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}
    assert got["customApiKeyResponses"] == {"approved": ["older-key-suffix-000", SUFFIX],
                                            "rejected": ["another-rejected-k"], "note": 1}
    assert got["bypassPermissionsModeAccepted"] is True
    assert stat.S_IMODE((home / ".claude.json").stat().st_mode) == 0o640  # its mode is kept
    assert KEY not in (home / ".claude.json").read_text()  # only the suffix, as Claude Code keeps it


def test_a_second_run_changes_nothing(home):
    assert run(home, "--skip-permissions", api_key=KEY).returncode == 0
    before = (home / ".claude.json").stat()
    text = (home / ".claude.json").read_text()
    again = run(home, "--skip-permissions", api_key=KEY)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    after = (home / ".claude.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not even rewritten
    assert (home / ".claude.json").read_text() == text
    assert config(home)["customApiKeyResponses"]["approved"] == [SUFFIX]


def test_what_claude_code_itself_drops_is_no_reason_to_rewrite(home):
    assert run(home).returncode == 0
    # As Claude Code 2.1.330 rewrites the file: no theme at its default, a project without onboarding.
    data = config(home)
    del data["theme"]
    data["projects"][WORK] = {"hasTrustDialogAccepted": True, "lastGracefulShutdown": False}
    (home / ".claude.json").write_text(json.dumps(data))
    before = (home / ".claude.json").stat()
    again = run(home)
    assert (again.returncode, again.stdout) == (0, "")
    assert (home / ".claude.json").stat().st_mtime_ns == before.st_mtime_ns and "theme" not in config(home)
    # Along with a real change they are filled in again.
    assert run(home, api_key=KEY).stdout.endswith("API key approved; theme dark\n")
    assert config(home)["theme"] == "dark" and config(home)["projects"][WORK]["hasCompletedProjectOnboarding"]


def test_a_bypass_acceptance_claude_code_moved_to_the_user_settings_counts(home):
    assert run(home, "--skip-permissions").returncode == 0
    # Claude Code 2.1.330 moves it at its first start with the flag:
    data = config(home)
    del data["bypassPermissionsModeAccepted"]
    (home / ".claude.json").write_text(json.dumps(data))
    (home / ".claude").mkdir()
    (home / ".claude" / "settings.json").write_text('{"skipDangerousModePermissionPrompt": true}')
    again = run(home, "--skip-permissions")
    assert (again.returncode, again.stdout) == (0, "") and "bypassPermissionsModeAccepted" not in config(home)
    (home / ".claude" / "settings.json").write_text("[not an object]")  # hostile: as if not there
    assert run(home, "--skip-permissions").stdout.startswith(f"{home}/.claude.json: bypass permissions mode accepted")


def test_the_api_key_and_the_bypass_acceptance_follow_the_environment(home):
    run(home)
    assert "customApiKeyResponses" not in config(home)
    assert run(home, api_key="short-key").returncode == 0  # shorter than 20 characters: all of it
    assert config(home)["customApiKeyResponses"] == {"approved": ["short-key"], "rejected": []}
    assert run(home, api_key="").returncode == 0  # empty means none
    assert config(home)["customApiKeyResponses"] == {"approved": ["short-key"], "rejected": []}
    # Without --skip-permissions an acceptance already there is left alone, not withdrawn.
    data = config(home) | {"bypassPermissionsModeAccepted": True}
    (home / ".claude.json").write_text(json.dumps(data))
    assert run(home).returncode == 0 and config(home)["bypassPermissionsModeAccepted"] is True


def test_work_dir_and_claude_config_dir(home, tmp_path):
    assert run(home, "--work-dir", "/home/claude/projects/x y").returncode == 0
    assert config(home)["projects"]["/home/claude/projects/x y"]["hasTrustDialogAccepted"] is True
    elsewhere = tmp_path / "cfg"
    elsewhere.mkdir()
    assert run(home, CLAUDE_CONFIG_DIR=str(elsewhere)).returncode == 0  # as Claude Code reads it
    assert json.loads((elsewhere / ".claude.json").read_text())["hasCompletedOnboarding"] is True


def test_a_symlinked_file_is_updated_at_its_target(home, tmp_path):
    target = tmp_path / "real.json"
    target.write_text(json.dumps({"numStartups": 3}))
    (home / ".claude.json").symlink_to(target)
    assert run(home).returncode == 0
    assert (home / ".claude.json").is_symlink()
    got = json.loads(target.read_text())
    assert got["numStartups"] == 3 and got["hasCompletedOnboarding"] is True


@pytest.mark.parametrize("content, reason", [
    (b"{not json", "not readable JSON"),
    (b"\xff\xfe\x00garbage", "not readable JSON"),
    (b"[1, 2, 3]", "not a JSON object"),
    (b'"a string"', "not a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "not readable JSON"),  # nesting past the parser's recursion limit
])
def test_a_file_that_is_not_a_json_object_is_left_alone(home, content, reason):
    (home / ".claude.json").write_bytes(content)
    done = run(home, api_key=KEY)
    assert done.returncode == 1 and f"{home}/.claude.json left alone, it is {reason}" in done.stderr
    assert (home / ".claude.json").read_bytes() == content
    assert sorted(p.name for p in home.iterdir()) == [".claude.json"]


def test_a_fifo_or_a_directory_is_left_alone_without_hanging(home):
    os.mkfifo(home / ".claude.json")
    done = run(home, timeout=5)  # opened non-blocking: a FIFO nobody writes must not stall the start
    assert done.returncode == 1 and "left alone, it is not a regular file" in done.stderr
    (home / ".claude.json").unlink()
    (home / ".claude.json").mkdir()
    done = run(home)
    assert done.returncode == 1 and "left alone" in done.stderr and (home / ".claude.json").is_dir()


def test_an_empty_file_is_filled_in_and_odd_values_are_replaced(home):
    (home / ".claude.json").write_text("")
    assert run(home).returncode == 0 and config(home)["hasCompletedOnboarding"] is True
    odd = {"projects": [1], "mcpServers": "x", "customApiKeyResponses": {"approved": "no", "rejected": [1, SUFFIX]},
           "hasCompletedOnboarding": "yes"}
    (home / ".claude.json").write_text(json.dumps(odd))
    assert run(home, api_key=KEY).returncode == 0
    got = config(home)
    assert got["projects"] == {WORK: {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}}
    assert set(got["mcpServers"]) == {"convocate"} and got["hasCompletedOnboarding"] is True
    assert got["customApiKeyResponses"] == {"approved": [SUFFIX], "rejected": []}


def test_a_file_it_cannot_write_is_an_error(home, tmp_path):
    # A link into a directory that does not exist (as root, a read-only directory would not stop it).
    (home / ".claude.json").symlink_to(tmp_path / "gone" / "claude.json")
    done = run(home)
    assert done.returncode == 1 and f"claude-config: cannot write {home}/.claude.json" in done.stderr
    assert not (tmp_path / "gone").exists() and (home / ".claude.json").is_symlink()
