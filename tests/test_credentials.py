"""The cluster's Claude credentials (issue 15 item 2): the store, and sessions through the real agent.

The agent tests run the stand-in ``claude`` in the real image: the environment of its process
(``/proc/<pid>/environ``, read inside the container as the session user) is what Claude Code would get.
"""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from convocate.common import credentials as creds
from convocate.common.errors import BadRequest, NotFound
from tests.conftest import rpc, rpc_ok

SECRET = "sk-ant-api03-test-" + "a1" * 20
ROTATED = "sk-ant-api03-rotated-" + "b2" * 20
TOKEN = "sk-ant-oat01-test-" + "c3" * 20

#: Prints, as JSON, the environment of the stand-in claude process of this container (``{}`` if none runs yet).
CLAUDE_ENV = r"""
import json, os
found = {}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        continue
    if b"/usr/local/bin/claude" in argv:
        found = dict(e.decode().split("=", 1) for e in env if b"=" in e)
print(json.dumps(found))
"""


# --- pure ------------------------------------------------------------------------------------
def test_fingerprint_is_sha256_prefix():
    assert creds.fingerprint("x") == "sha256:2d711642b726b044"
    assert len(creds.fingerprint(SECRET)) == len("sha256:") + 16


@pytest.mark.parametrize("name", ["default", "team-b", "a", "0" * 32])
def test_good_names(name):
    assert creds.validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "A", "a_b", "a.b", "../x", "a" * 33, "x\n"])
def test_bad_names(name):
    with pytest.raises(BadRequest):
        creds.validate_name(name)


def test_store_writes_0600_files_in_a_0700_directory_and_never_shows_the_secret(tmp_path):
    store = creds.CredentialStore(tmp_path / "credentials")
    made = store.put("default", "api_key", SECRET)
    path = tmp_path / "credentials" / "default.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.get("default") == made and store.names() == ["default"]
    assert SECRET not in json.dumps(made.summary()) and SECRET not in repr(made)
    assert made.summary()["fingerprint"] == creds.fingerprint(SECRET)
    store.put("default", "oauth_token", TOKEN)
    assert store.fingerprints() == {"default": creds.fingerprint(TOKEN)}
    assert [p.name for p in path.parent.iterdir()] == ["default.json"]  # the atomic write left no temp file
    store.delete("default")
    with pytest.raises(NotFound):
        store.delete("default")
    assert store.get("default") is None and store.all() == []


def test_a_credential_replaces_every_auth_variable_and_unknown_names_are_left_out():
    base = {"ANTHROPIC_API_KEY": "from-env-file", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9", "OTHER": "x",
            "PATH": "/evil", "LD_PRELOAD": "/evil.so", "HTTPS_PROXY": "http://proxy:3128"}
    token = creds.Credential("team-b", "oauth_token", TOKEN, 0)
    env, skipped = creds.session_env(base, token)
    assert env == {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9", "HTTPS_PROXY": "http://proxy:3128",
                   "CLAUDE_CODE_OAUTH_TOKEN": TOKEN}
    assert sorted(skipped) == ["LD_PRELOAD", "OTHER", "PATH"]
    assert creds.session_env(base, None)[0]["ANTHROPIC_API_KEY"] == "from-env-file"
    assert creds.render_env_file(env).decode().splitlines()[-1] == f"CLAUDE_CODE_OAUTH_TOKEN={TOKEN}"
    with pytest.raises(ValueError):
        creds.render_env_file({"PATH": "/x"})
    with pytest.raises(ValueError):
        creds.render_env_file({"ANTHROPIC_API_KEY": "a\nPATH=/x"})


# --- through the real agent and the stand-in image --------------------------------------------------
async def claude_env(docker_client, sid: str, timeout: float = 20.0) -> dict[str, str]:
    """The stand-in claude's environment in session ``sid`` (waits until it runs)."""
    container = docker_client.containers.get(f"convocate-session-{sid}")
    for _ in range(int(timeout / 0.1)):
        code, out = container.exec_run(["python3", "-I", "-c", CLAUDE_ENV], user="1337:1337")
        assert code == 0, out
        env = json.loads(out)
        if env:
            return env
        await asyncio.sleep(0.1)
    raise AssertionError(f"no claude process in session {sid}")


def no_secret_in_docker(docker_client, sid: str, *secrets: str) -> None:
    container = docker_client.containers.get(f"convocate-session-{sid}")
    shown = json.dumps(container.attrs) + container.logs().decode("utf-8", "replace")
    for secret in secrets:
        assert secret not in shown


@pytest.mark.docker
async def test_a_session_gets_the_default_credential_in_claude_env_and_nowhere_else(ssh, cluster, docker_client):
    summary = await rpc_ok(ssh, "credential_set", {"name": "default", "kind": "api_key", "secret": SECRET})
    assert summary["fingerprint"] == creds.fingerprint(SECRET) and SECRET not in json.dumps(summary)
    assert [c["name"] for c in await rpc_ok(ssh, "credential_list")] == ["default"]
    stored = cluster.paths.agent_credentials_dir / "default.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    made = await rpc_ok(ssh, "create", {"name": "cred-a", "cpus": 0.1, "memory_mb": 160, "start": True})
    sid = made["uuid"]
    try:
        assert made["credential"] == "" and made["credential_fingerprint"] == creds.fingerprint(SECRET)
        assert made["credential_stale"] is False and made["credential_missing"] is False
        env = await claude_env(docker_client, sid)
        assert env["ANTHROPIC_API_KEY"] == SECRET and "CLAUDE_CODE_OAUTH_TOKEN" not in env
        no_secret_in_docker(docker_client, sid, SECRET)
        assert not cluster.paths.session_credential_env(sid).exists()  # gone once the session was ready
        assert SECRET not in cluster.paths.session_record(sid).read_text()
        assert SECRET not in cluster.log_text()

        # Rotation: the running session is marked, a restart takes the new one.
        await rpc_ok(ssh, "credential_set", {"name": "default", "kind": "api_key", "secret": ROTATED})
        view = await rpc_ok(ssh, "get", {"id": sid})
        assert view["credential_stale"] is True
        assert f"event container.edited session={sid}" in cluster.log_text()  # TUIs learn it at once
        assert any(s["uuid"] == sid and s["credential_stale"] for s in await rpc_ok(ssh, "list"))
        restarted = await rpc_ok(ssh, "restart", {"id": sid})
        assert restarted["credential_stale"] is False
        assert restarted["credential_fingerprint"] == creds.fingerprint(ROTATED)
        assert (await claude_env(docker_client, sid))["ANTHROPIC_API_KEY"] == ROTATED
        no_secret_in_docker(docker_client, sid, SECRET, ROTATED)
    finally:
        await rpc_ok(ssh, "kill", {"id": sid})
        await rpc_ok(ssh, "delete", {"id": sid})
        await rpc_ok(ssh, "credential_delete", {"name": "default"})


@pytest.mark.docker
async def test_a_named_oauth_token_wins_over_the_session_env_file_and_clone_keeps_the_name(ssh, cluster,
                                                                                          docker_client):
    env_file = cluster.paths.session_env_file
    env_file.write_text(f"ANTHROPIC_API_KEY={SECRET}\nANTHROPIC_BASE_URL=http://127.0.0.1:9\nOTHER=x\n")
    env_file.chmod(0o600)
    await rpc_ok(ssh, "credential_set", {"name": "team-b", "kind": "oauth_token", "secret": TOKEN})
    made = await rpc_ok(ssh, "create", {"name": "cred-b", "cpus": 0.1, "memory_mb": 160, "start": True,
                                        "credential": "team-b"})
    sid, clone_id = made["uuid"], None
    try:
        env = await claude_env(docker_client, sid)
        assert env["CLAUDE_CODE_OAUTH_TOKEN"] == TOKEN and "ANTHROPIC_API_KEY" not in env
        assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9" and "OTHER" not in env
        no_secret_in_docker(docker_client, sid, SECRET, TOKEN)
        assert "OTHER not passed to sessions" in cluster.log_text()
        clone = await rpc_ok(ssh, "clone", {"source_id": sid, "name": "cred-b-copy"})
        clone_id = clone["uuid"]
        assert clone["credential"] == "team-b"
        edited = await rpc_ok(ssh, "edit", {"id": clone_id, "credential": ""})
        assert edited["credential"] == ""

        # The credential goes away: the running session is stale, the stopped one says it is missing,
        # and a start goes on without it (said in the agent's log).
        await rpc_ok(ssh, "credential_delete", {"name": "team-b"})
        view = await rpc_ok(ssh, "get", {"id": sid})
        assert view["credential_stale"] is True and view["credential_missing"] is True
        restarted = await rpc_ok(ssh, "restart", {"id": sid})
        assert restarted["credential_fingerprint"] == "" and restarted["credential_stale"] is False
        env = await claude_env(docker_client, sid)
        assert "CLAUDE_CODE_OAUTH_TOKEN" not in env and env["ANTHROPIC_API_KEY"] == SECRET  # the env file's
        assert 'its credential "team-b" does not exist on this agent' in cluster.log_text()
    finally:
        env_file.unlink()
        await rpc_ok(ssh, "kill", {"id": sid})
        for s in (sid, clone_id):
            if s:
                await rpc_ok(ssh, "delete", {"id": s})


@pytest.mark.docker
async def test_naming_a_credential_the_agent_lacks_is_a_clear_error(ssh, cluster):
    refused = await rpc(ssh, "create", {"name": "nocred", "credential": "nope", "start": False})
    assert refused["code"] == "not_found" and 'credential "nope" does not exist on this agent' in refused["error"]
    assert not any(s["name"] == "nocred" for s in await rpc_ok(ssh, "list"))
    made = await rpc_ok(ssh, "create", {"name": "nocred", "start": False})
    try:
        refused = await rpc(ssh, "edit", {"id": made["uuid"], "credential": "nope"})
        assert refused["code"] == "not_found"
        gone = await rpc(ssh, "credential_delete", {"name": "nope"})
        assert gone["code"] == "not_found"
        bad = await rpc(ssh, "credential_set", {"name": "x", "kind": "api_key", "secret": "has space"})
        assert bad["code"] == "bad_request" and "has space" not in bad["error"]
        assert "has space" not in cluster.log_text()
    finally:
        await rpc_ok(ssh, "delete", {"id": made["uuid"]})


@pytest.mark.docker
async def test_ping_lists_the_credential_ops(ssh):
    capabilities = (await rpc_ok(ssh, "ping"))["capabilities"]
    assert {"credential_set", "credential_list", "credential_delete"} <= set(capabilities)


def test_the_entrypoint_passes_the_same_names_as_the_agent_writes():
    """The rule lives twice (Python for the agent, bash in the image's entrypoint): they must be one rule."""
    entrypoint = (Path(__file__).resolve().parents[1] / "packaging" / "image" / "entrypoint").read_text()
    (line,) = [ln for ln in entrypoint.splitlines() if ln.startswith("readonly CREDENTIAL_KEY_RE=")]
    assert line == f"readonly CREDENTIAL_KEY_RE='^{creds.ENV_KEY_PATTERN.pattern}$'"
