"""``convocate auth`` against a real agent: set, push, status, rm, and ``new --credential`` (issue 15 item 2)."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import subprocess

import pytest

from convocate.common import keys, messages
from convocate.common.credentials import fingerprint
from convocate.registry import register_agent
from tests.harness import LocalCluster

pytestmark = pytest.mark.docker

SECRET = "sk-ant-api03-cli-" + "d4" * 20
TOKEN = "sk-ant-oat01-cli-" + "e5" * 20


def cli(cluster: LocalCluster, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return cluster.run_role("convocate", *args, check=False, timeout=120, input=input)


def test_auth_set_from_a_file_stores_root_only_and_reaches_the_agent(cluster, tmp_path):
    secret_file = tmp_path / "key"
    secret_file.write_text(SECRET + "\n")
    done = cli(cluster, "auth", "set", "--api-key", "--from-file", str(secret_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == messages.AUTH_SET_OK.format(agent=cluster.agent_id, name="default", kind="api_key",
                                                              fingerprint=fingerprint(SECRET))
    stored = cluster.paths.shell_credentials_dir / "default.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600 and stored.stat().st_uid == 0
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    assert json.loads((cluster.paths.agent_credentials_dir / "default.json").read_text())["secret"] == SECRET
    status = json.loads(cli(cluster, "auth", "status", "--json").stdout)
    assert status["credentials"] == [{"agent_id": cluster.agent_id, "name": "default", "kind": "api_key",
                                      "fingerprint": fingerprint(SECRET), "shell_fingerprint": fingerprint(SECRET),
                                      "state": "ok"}]
    assert SECRET not in done.stdout + done.stderr + json.dumps(status)


def test_auth_set_from_stdin_push_status_and_rm(cluster):
    done = cli(cluster, "auth", "set", "--name", "team-b", "--oauth-token", input=TOKEN + "\n")
    assert done.returncode == 0, done.stderr
    assert f"team-b (oauth_token) {fingerprint(TOKEN)} set" in done.stdout

    (cluster.paths.agent_credentials_dir / "team-b.json").unlink()  # as on an agent that was down
    status = cli(cluster, "auth", "status")
    assert status.returncode == 1
    row = next(line for line in status.stdout.splitlines() if "team-b" in line)
    assert row.split()[:4] == [cluster.agent_id, "team-b", "oauth_token", "-"] and row.endswith("missing")

    pushed = cli(cluster, "auth", "push", "--name", "team-b")
    assert pushed.returncode == 0 and f"team-b (oauth_token) {fingerprint(TOKEN)} set" in pushed.stdout
    (cluster.paths.agent_credentials_dir / "team-b.json").write_text(json.dumps(
        {"name": "team-b", "kind": "api_key", "secret": "sk-other", "set_at": "2026-12-01T00:00:00Z"}))
    differs = cli(cluster, "auth", "status")
    assert differs.returncode == 1 and messages.AUTH_STATUS_DIFFERS in differs.stdout
    assert cli(cluster, "auth", "push").returncode == 0
    assert cli(cluster, "auth", "status").returncode == 0

    removed = cli(cluster, "auth", "rm", "team-b")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines() == ["shell host: team-b removed",
                                           messages.AUTH_RM_OK.format(agent=cluster.agent_id, name="team-b")]
    assert not (cluster.paths.agent_credentials_dir / "team-b.json").exists()
    assert not (cluster.paths.shell_credentials_dir / "team-b.json").exists()


@pytest.mark.parametrize("argv", [["--api-key", "sk-ant-in-argv"], ["--api-key=sk-ant-in-argv"],
                                  ["--oauth-token", "--from-file", "/dev/null", "sk-ant-in-argv"]])
def test_a_secret_on_the_command_line_is_refused_without_being_echoed(cluster, argv):
    done = cli(cluster, "auth", "set", *argv)
    assert done.returncode == 2 and messages.AUTH_SECRET_IN_ARGV in done.stderr
    assert "sk-ant-in-argv" not in done.stdout + done.stderr


def test_a_bad_or_empty_secret_is_refused(cluster, tmp_path):
    empty = cli(cluster, "auth", "set", "--api-key", input="\n")
    assert empty.returncode == 2 and messages.AUTH_NO_SECRET in empty.stderr
    spaced = cli(cluster, "auth", "set", "--api-key", input="two words\n")
    assert spaced.returncode == 2 and "printable ASCII" in spaced.stderr and "two words" not in spaced.stderr


def test_an_agent_that_does_not_answer_fails_set_and_names_push(cluster, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    host_key = keys.public_key_line(keys.load_private_key(cluster.paths.agent_host_key))
    register_agent(cluster.paths, "deadbeef", "127.0.0.1", closed_port, host_key,
                   keys.load_private_key(cluster.shell_key_path))
    try:
        done = cli(cluster, "auth", "set", "--name", "down", "--api-key", input=SECRET)
        assert done.returncode == 1
        assert f"agent {cluster.agent_id}: down (api_key)" in done.stdout
        assert "agent deadbeef: failed:" in done.stderr and "convocate auth push" in done.stderr
        assert (cluster.paths.shell_credentials_dir / "down.json").exists()  # kept, for the push
    finally:
        shutil.rmtree(cluster.paths.agent_dir("deadbeef"))
    assert cli(cluster, "auth", "push", "--name", "down").returncode == 0
    assert cli(cluster, "auth", "rm", "down").returncode == 0


def test_new_with_a_credential_the_agent_lacks_fails_clearly_and_edit_sets_one(cluster, tmp_path):
    refused = cli(cluster, "new", "needs-cred", "--no-start", "--credential", "nope")
    assert refused.returncode == 3 and 'credential "nope" does not exist on this agent' in refused.stderr
    bad = cli(cluster, "new", "needs-cred", "--no-start", "--credential", "Not A Name")
    assert bad.returncode == 2 and "a credential name is" in bad.stderr
    assert cli(cluster, "auth", "set", "--name", "team-c", "--api-key", input=SECRET).returncode == 0
    try:
        made = json.loads(cli(cluster, "new", "needs-cred", "--no-start", "--credential", "team-c", "--json").stdout)
        assert made["credential"] == "team-c" and made["credential_missing"] is False
        edited = json.loads(cli(cluster, "edit", made["uuid"], "--credential", "", "--json").stdout)
        assert edited["credential"] == ""
        listed = json.loads(cli(cluster, "ls", "--json").stdout)
        assert next(s for s in listed if s["uuid"] == made["uuid"])["credential"] == ""
        assert cli(cluster, "delete", made["uuid"]).returncode == 0
    finally:
        cli(cluster, "auth", "rm", "team-c")
