"""``convocate-agent install`` under a relocated root, as a real subprocess.

Relocated, install writes its files under the root but leaves users, systemd and the packaged
files alone; what it does to the live system is shown by tests/test_packages.py.
"""

import json
import re
import stat
from pathlib import Path

import pytest

from convocate.common import messages
from convocate.common.errors import DockerError
from convocate.common.model import SessionMeta, new_uuid
from convocate_agent.admission import HostResources
from tests.harness import LocalCluster

REPO = Path(__file__).resolve().parent.parent


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


def test_install_moves_the_homes_session_json_into_the_agents_records_once(tmp_path):
    """Upgrade from an agent before issue 14: each home's session.json becomes a record, validated."""
    base = tmp_path / "home" / "claude"
    records = tmp_path / "var" / "lib" / "convocate-agent" / "sessions"
    base.mkdir(parents=True)
    good = SessionMeta(new_uuid(), "good", 1, 2, port=1001, dns_name="web", cpus=0.5, memory_mb=256)
    later = SessionMeta(new_uuid(), "later", 3, 4, port=1001, dns_name="web", cpus=0.5, memory_mb=256)
    bad = SessionMeta(new_uuid(), "bad", 1, 1)
    texts = {good.uuid: json.dumps(good.to_json()), later.uuid: json.dumps(later.to_json()),
             bad.uuid: json.dumps(dict(bad.to_json(), dns_name="x\n6.6.6.6 evil.example.org"))}
    for sid, text in texts.items():
        (base / sid).mkdir()
        (base / sid / "session.json").write_text(text)
    dead = new_uuid()
    (base / f"{dead}.lock").write_text("999999999\ncreate\n")  # a stale lock of the old agent

    out = run_install(tmp_path).stdout
    assert f"session {good.uuid}: its session.json moved from the home into {records / good.uuid}.json" in out
    assert f"session {bad.uuid}:" in out and "is not a valid session record" in out and "left out" in out
    assert f"dns_name 'web' of its session.json is already session {good.uuid}'s; cleared" in out
    assert "adopted 2 existing session(s)" in out
    assert SessionMeta.from_json(json.loads((records / f"{good.uuid}.json").read_text())) == good
    assert SessionMeta.from_json(json.loads((records / f"{later.uuid}.json").read_text())) == \
        later.with_changes(dns_name="", port=0)
    assert not (records / f"{bad.uuid}.json").exists() and (base / bad.uuid / "session.json").exists()
    assert not (base / good.uuid / "session.json").exists() and not (base / f"{dead}.lock").exists()

    # once: what a session writes into its home afterwards is not read again
    (base / good.uuid / "session.json").write_text(json.dumps(dict(good.to_json(), name="forged", cpus=8)))
    again = run_install(tmp_path).stdout
    assert "moved from the home" not in again and "adopted 2 existing session(s)" in again
    assert json.loads((records / f"{good.uuid}.json").read_text())["name"] == "good"


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


def test_second_install_changes_nothing(tmp_path):
    run_install(tmp_path)
    assert run_install(tmp_path).stdout.strip().endswith("convocate-agent install: nothing changed")


def test_install_writes_the_slice_limits_of_this_host(tmp_path):
    run_install(tmp_path)
    host = HostResources.probe()
    dropin = (tmp_path / "etc/systemd/system/convocate-sessions.slice.d/50-limits.conf").read_text()
    assert "[Slice]" in dropin
    assert f"CPUQuota={round(host.cpus * 90)}%" in dropin.splitlines()
    # MemoryMax=90% is static in the packaged slice (a share of physical memory); only CPUQuota varies.
    assert not any(line.startswith("MemoryMax=") for line in dropin.splitlines())
    assert "MemoryMax=90%" in (REPO / "packaging/systemd/convocate-sessions.slice").read_text().splitlines()


def test_install_applies_the_debconf_answers_and_keeps_them(tmp_path):
    first = run_install_with(tmp_path, "--shell-host", "shell.example.org", "--listen-port", "2222",
                             "--shell-port", "2223")
    defaults = tmp_path / "etc" / "default" / "convocate-agent"
    assert (tmp_path / "etc/convocate-agent/shell-host").read_text() == "shell.example.org\n"
    assert {"CONVOCATE_AGENT_LISTEN=:2222", "CONVOCATE_AGENT_SHELL_PORT=2223"} <= set(defaults.read_text().splitlines())
    assert "shell host (shell.example.org)" in first.stdout

    # An operator's own line stays; without options nothing is touched; the same answers change nothing.
    defaults.write_text(defaults.read_text() + "CONVOCATE_LOG_LEVEL=debug\n")
    assert run_install(tmp_path).stdout.strip().endswith("nothing changed")
    again = run_install_with(tmp_path, "--shell-host", "shell.example.org", "--listen-port", "2222",
                             "--shell-port", "2223")
    assert again.stdout.strip().endswith("nothing changed")
    run_install_with(tmp_path, "--listen-port", "222", "--shell-host", "")
    assert "CONVOCATE_AGENT_LISTEN=:222" in defaults.read_text().splitlines()
    assert "CONVOCATE_LOG_LEVEL=debug" in defaults.read_text().splitlines()
    assert (tmp_path / "etc/convocate-agent/shell-host").read_text() == ""


@pytest.mark.parametrize("args, message", [
    (("--listen-port", "http"), messages.BAD_INSTALL_PORT.format(option="--listen-port", value="http")),
    (("--shell-port", "70000"), messages.BAD_INSTALL_PORT.format(option="--shell-port", value="70000")),
    (("--listen-port", "２２２"), messages.BAD_INSTALL_PORT.format(option="--listen-port", value="２２２")),
    (("--shell-host", "bad host!"), messages.BAD_INSTALL_HOST.format(option="--shell-host", value="bad host!")),
])
def test_install_refuses_a_bad_answer_and_says_which(tmp_path, args, message):
    result = LocalCluster(root=tmp_path, image="x").run_role("convocate_agent", "install", *args, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "etc" / "convocate-agent").exists()


def test_install_without_docker_says_what_to_do(tmp_path):
    cluster = LocalCluster(root=tmp_path, image="x", extra_env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    result = cluster.run_role("convocate_agent", "install", check=False)
    assert result.returncode == DockerError.exit_code
    assert "Docker is not reachable" in result.stderr and "install docker.io" in result.stderr
    assert not (tmp_path / "etc" / "convocate-agent").exists()


def run_install_with(root, *args):
    return LocalCluster(root=root, image="unused").run_role("convocate_agent", "install", *args)


def test_install_moves_the_state_older_versions_kept_in_etc_to_var_lib(tmp_path):
    etc = tmp_path / "etc" / "convocate-agent"
    etc.mkdir(parents=True)
    (etc / "settings.json").write_text('{"default_memory_mb": 300}\n')
    (etc / "current-image").write_text("convocate:0.0.9\n")
    result = run_install(tmp_path)
    state = tmp_path / "var" / "lib" / "convocate-agent"
    assert (state / "settings.json").read_text() == '{"default_memory_mb": 300}\n'
    assert (state / "current-image").read_text() == "convocate:0.0.9\n"
    assert not (etc / "settings.json").exists() and not (etc / "current-image").exists()
    assert f"settings.json moved to {state / 'settings.json'} (state belongs under /var/lib)" in result.stdout
    assert "moved to" not in run_install(tmp_path).stdout


def test_install_prints_the_defaults_file_for_ucf_as_older_versions_wrote_it(tmp_path):
    printed = run_install_with(tmp_path, "--print-defaults", "--listen-port", "2222", "--shell-port", "").stdout
    assert [line for line in printed.splitlines() if not line.startswith("#")] == [
        "CONVOCATE_AGENT_LISTEN=:2222", "CONVOCATE_AGENT_SHELL_PORT=223"]
    assert not (tmp_path / "etc").exists()
    # A file an older version wrote with the default answers is byte for byte the rendered one: ucf takes it over.
    run_install(tmp_path)
    written = (tmp_path / "etc/default/convocate-agent").read_text()
    assert written == run_install_with(tmp_path, "--print-defaults", "--listen-port", "", "--shell-port", "").stdout
