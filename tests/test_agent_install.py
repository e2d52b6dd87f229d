"""``convocate-agent install`` under a relocated root, as a real subprocess."""

import json
import re
import stat
from pathlib import Path

from convocate.common.model import SessionMeta, new_uuid
from tests.harness import LocalCluster


def run_install(root):
    return LocalCluster(root=root, image="unused").run_role("convocate_agent", "install")


def test_install_creates_identity_and_is_idempotent(tmp_path):
    first = run_install(tmp_path)
    etc = tmp_path / "etc" / "convocate-agent"
    agent_id = (etc / "agent-id").read_text().strip()
    key = (etc / "ssh_host_ed25519_key").read_bytes()
    assert re.fullmatch(r"[a-z0-9]{8}", agent_id)
    assert f"agent ID {agent_id} generated" in first.stdout
    assert stat.S_IMODE((etc / "ssh_host_ed25519_key").stat().st_mode) == 0o600
    assert (tmp_path / "home" / "claude" / ".skel" / "CLAUDE.md").read_text().startswith("# Working in a convocate")
    assert "system users and units left untouched" in first.stdout

    second = run_install(tmp_path)
    assert f"agent ID {agent_id} kept" in second.stdout and "host key" in second.stdout
    assert (etc / "agent-id").read_text().strip() == agent_id
    assert (etc / "ssh_host_ed25519_key").read_bytes() == key


def test_install_reports_adopted_sessions(tmp_path):
    run_install(tmp_path)
    base = tmp_path / "home" / "claude"
    for _ in range(3):
        m = SessionMeta(new_uuid(), "old", 1, 1)
        (base / m.uuid).mkdir()
        (base / m.uuid / "session.json").write_text(json.dumps(m.to_json()))
    (base / "not-a-session").mkdir()
    assert "adopted 3 existing session(s)" in run_install(tmp_path).stdout


def test_install_refuses_a_corrupt_agent_id(tmp_path):
    etc = tmp_path / "etc" / "convocate-agent"
    etc.mkdir(parents=True)
    (etc / "agent-id").write_text("NOT VALID!\n")
    result = LocalCluster(root=tmp_path, image="x").run_role("convocate_agent", "install", check=False)
    assert result.returncode != 0 and "not an 8-character agent ID" in result.stderr
    assert (etc / "agent-id").read_text() == "NOT VALID!\n"


def test_version_and_help():
    c = LocalCluster(root=Path("/nonexistent"), image="x")
    assert c.run_role("convocate_agent", "version").stdout.strip() == "convocate-agent version v0.1.0"
    for flag in ("help", "--help", "-h"):
        assert "usage: convocate-agent" in c.run_role("convocate_agent", flag).stdout
    assert c.run_role("convocate_host", "version").stdout.strip() == "convocate-host version v0.1.0"
    assert c.run_role("convocate", "version").stdout.strip() == "convocate version v0.1.0"
