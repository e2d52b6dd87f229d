"""Operator identity (issue 19 item 3): an operator's name is known to the agent and cannot be forged by another.

Against the real agent of the module's cluster, with real OpenSSH ``ssh-agent``/``ssh-add`` per operator
(sockets under the test's temp dir, each agent killed by its PID at teardown) and certificates issued by
the real ``convocate-host operator-cert``; the CA made and installed by the real init-shell/init-agent
steps (:mod:`convocate_host.operator_ca`) on a local target. The unit tests at the end check the claim
data and :func:`verify_claim` with keys made in memory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from convocate.common import messages, operator_claim
from convocate.common.errors import BadRequest, Forbidden
from convocate.common.ops.params import OperatorChallengeParams, OperatorIdentifyParams
from convocate.common.paths import Paths
from convocate_agent.identity import OperatorOps
from convocate_host import operator_ca
from convocate_host.report import LiveReport
from convocate_host.target import LocalTarget
from tests.conftest import connect, rpc, rpc_ok
from tests.harness import LocalCluster, python

REPO = Path(__file__).resolve().parent.parent


# --- fixtures: the CA, operators with their own ssh-agent ------------------------------------------
@pytest.fixture(scope="module")
def ca_cluster(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The module's cluster with an operator CA made by init-shell's step and installed by init-agent's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(operator_ca, "PATHS", cluster.paths)
        cluster.paths.shell_etc.mkdir(parents=True, exist_ok=True)
        target = LocalTarget("127.0.0.1")
        report = LiveReport("test")
        asyncio.run(operator_ca.ensure_shell_ca(target, report))
        assert asyncio.run(operator_ca.install_agent_ca(target, target, report))
        assert not asyncio.run(operator_ca.install_agent_ca(target, target, report))  # idempotent
    assert cluster.paths.operator_ca_key.stat().st_mode & 0o777 == 0o600
    assert cluster.paths.agent_operator_ca.read_text().split()[:2] == \
        cluster.paths.operator_ca_pub.read_text().split()[:2]
    yield cluster


@dataclass
class Operator:
    """One operator: an ed25519 key, maybe a certificate, and their own ssh-agent."""

    name: str
    key: Path
    socket: Path
    agent: subprocess.Popen

    @property
    def cert(self) -> Path:
        return Path(f"{self.key}-cert.pub")

    def env(self, cluster: LocalCluster) -> dict[str, str]:
        return {**cluster.env, "SSH_AUTH_SOCK": str(self.socket)}

    def add(self) -> None:
        """``ssh-add KEY``: loads the key and ``KEY-cert.pub`` beside it, as an operator's laptop would."""
        subprocess.run(["ssh-add", str(self.key)], env={"SSH_AUTH_SOCK": str(self.socket), "PATH": os.environ["PATH"]},
                       check=True, capture_output=True, timeout=30)

    def private_key(self) -> asyncssh.SSHKey:
        return asyncssh.read_private_key(self.key)


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True,
                   timeout=30)


@pytest.fixture
def operators(tmp_path: Path) -> Iterator[dict[str, Operator]]:
    """alice and bob, each with a key and a running ssh-agent of their own (no certificate yet)."""
    made: dict[str, Operator] = {}
    try:
        for name in ("alice", "bob"):
            home = tmp_path / name
            home.mkdir()
            key = home / "id_ed25519"
            _keygen(key, f"{name}@laptop")
            socket = home / "agent.sock"
            agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            made[name] = Operator(name, key, socket, agent)
            for _ in range(200):
                if socket.exists():
                    break
                time.sleep(0.02)
            assert socket.exists(), f"ssh-agent for {name} did not make {socket}"
        yield made
    finally:
        for op in made.values():
            op.agent.terminate()
            op.agent.wait(10)


def issue(cluster: LocalCluster, name: str, pubkey: Path, *extra: str) -> subprocess.CompletedProcess:
    """``convocate-host operator-cert --name NAME PUBKEY`` on this (shell) host."""
    return cluster.run_role("convocate_host", "operator-cert", "--name", name, str(pubkey), *extra)


def certified(cluster: LocalCluster, op: Operator) -> Operator:
    """``op`` with a certificate for their own name (:func:`issue`) and both loaded into their ssh-agent."""
    issue(cluster, op.name, op.key.with_suffix(".pub"))
    op.add()
    return op


@contextlib.contextmanager
def agent_ca_missing(cluster: LocalCluster) -> Iterator[Path]:
    """The agent's ``operator-ca.pub`` moved aside for the block, put back after; yields its path."""
    ca_file = cluster.paths.agent_operator_ca
    kept = ca_file.with_name("operator-ca.pub.kept")
    ca_file.rename(kept)
    try:
        yield ca_file
    finally:
        kept.rename(ca_file)


def whoami(cluster: LocalCluster, env: dict[str, str]) -> tuple[list[dict], subprocess.CompletedProcess]:
    result = subprocess.run([python(), "-m", "convocate", "whoami", "--json"], env=env, cwd=REPO, text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result


def ca_key(cluster: LocalCluster) -> asyncssh.SSHKey:
    return asyncssh.read_private_key(cluster.paths.operator_ca_key)


async def claim(conn: asyncssh.SSHClientConnection, cluster: LocalCluster, cert_line: str,
                key: asyncssh.SSHKey) -> tuple[dict, dict]:
    """A challenge on ``conn``, signed by ``key``; returns (identify response, the identify params)."""
    nonce = base64.b64decode((await rpc_ok(conn, "operator_challenge"))["nonce"])
    data = operator_claim.claim_data(cluster.agent_id, nonce)
    params = {"certificate": cert_line, "signature": base64.b64encode(key.sign(data, b"ssh-ed25519")).decode()}
    return await rpc(conn, "operator_identify", params), params


# --- end to end: two operators, each their own name ------------------------------------------------------
def test_two_operators_each_get_their_own_name(ca_cluster: LocalCluster, operators: dict[str, Operator]):
    cluster = ca_cluster
    for op in operators.values():
        result = issue(cluster, op.name, op.key.with_suffix(".pub"))
        assert f"certificate for {op.name}" in result.stdout and str(op.cert) in result.stdout
        op.add()
    seen = {}
    for op in operators.values():
        rows, run = whoami(cluster, op.env(cluster))
        assert [r["agent_id"] for r in rows] == [cluster.agent_id]
        seen[op.name] = rows[0]
        fingerprint = op.private_key().get_fingerprint("sha256")
        assert rows[0]["name"] == op.name and rows[0]["fingerprint"] == fingerprint, rows
        assert "warning" not in run.stderr
        assert messages.OPERATOR_IDENTIFIED.format(name=op.name, fingerprint=fingerprint) in cluster.log_text()
    assert seen["alice"]["fingerprint"] != seen["bob"]["fingerprint"]
    # the text form, one line per agent
    text = subprocess.run([python(), "-m", "convocate", "whoami"], env=operators["alice"].env(cluster), cwd=REPO,
                          text=True, capture_output=True, timeout=60)
    assert text.stdout.strip() == messages.WHOAMI_LINE.format(agent=cluster.agent_id, name="alice",
                                                              fingerprint=seen["alice"]["fingerprint"])


def test_without_a_certificate_the_operator_is_unidentified_quietly(ca_cluster: LocalCluster,
                                                                     operators: dict[str, Operator]):
    """No SSH_AUTH_SOCK, or one holding no certificate of the CA: unidentified, said by whoami, no warning."""
    cluster = ca_cluster
    rows, _ = whoami(cluster, cluster.env)  # the harness drops SSH_AUTH_SOCK
    assert rows[0]["name"] is None and rows[0]["reason"] == messages.OPERATOR_NO_AGENT_SOCKET
    bob = operators["bob"]
    bob.add()  # his key, no certificate
    rows, run = whoami(cluster, bob.env(cluster))
    assert rows[0]["name"] is None and rows[0]["reason"] == messages.OPERATOR_NO_CERTIFICATE
    ls = subprocess.run([python(), "-m", "convocate", "ls"], env=bob.env(cluster), cwd=REPO, text=True,
                        capture_output=True, timeout=60)
    assert ls.returncode == 0 and "warning" not in ls.stderr, ls.stderr


def test_a_certificate_of_another_ca_in_the_ssh_agent_is_not_used(ca_cluster: LocalCluster,
                                                                  operators: dict[str, Operator], tmp_path: Path):
    """bob signs himself a certificate "alice" with a CA of his own: the client does not offer it, and
    sent by hand it is refused (below)."""
    cluster = ca_cluster
    bob = operators["bob"]
    own_ca = tmp_path / "bob-ca"
    _keygen(own_ca, "bob's CA")
    subprocess.run(["ssh-keygen", "-q", "-s", str(own_ca), "-I", "alice", "-n", "alice", "-V", "-5m:+1d",
                    str(bob.key.with_suffix(".pub"))], check=True, timeout=30)
    bob.add()
    rows, _ = whoami(cluster, bob.env(cluster))
    assert rows[0]["name"] is None and rows[0]["reason"] == messages.OPERATOR_NO_CERTIFICATE


def test_a_refused_claim_is_one_warning_and_the_command_works(ca_cluster: LocalCluster,
                                                              operators: dict[str, Operator]):
    """The agent lacks its operator-ca.pub: `convocate ls` warns once, naming the file, and succeeds."""
    cluster = ca_cluster
    alice = certified(cluster, operators["alice"])
    with agent_ca_missing(cluster) as ca_file:
        ls = subprocess.run([python(), "-m", "convocate", "ls"], env=alice.env(cluster), cwd=REPO, text=True,
                            capture_output=True, timeout=60)
        rows, _ = whoami(cluster, alice.env(cluster))
    assert ls.returncode == 0, ls.stderr
    warnings = [line for line in ls.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(ca_file) in warnings[0], ls.stderr
    assert rows[0]["name"] is None and str(ca_file) in rows[0]["reason"]


def test_a_key_file_names_the_operator(ca_cluster: LocalCluster, operators: dict[str, Operator]):
    """CONVOCATE_OPERATOR_KEY with its -cert.pub, no SSH agent."""
    cluster = ca_cluster
    alice = operators["alice"]
    issue(cluster, "alice", alice.key.with_suffix(".pub"))
    rows, _ = whoami(cluster, {**cluster.env, "CONVOCATE_OPERATOR_KEY": str(alice.key)})
    assert rows[0]["name"] == "alice"


# --- attacks, by hand on the RPC channel ---------------------------------------------------------------
@pytest.fixture
def alice_cert(ca_cluster: LocalCluster, operators: dict[str, Operator]) -> str:
    alice = operators["alice"]
    issue(ca_cluster, "alice", alice.key.with_suffix(".pub"))
    return alice.cert.read_text().strip()


async def test_alices_certificate_with_bobs_key_is_refused(ca_cluster, operators, alice_cert):
    async with connect(ca_cluster) as conn:
        response, _ = await claim(conn, ca_cluster, alice_cert, operators["bob"].private_key())
        assert response["code"] == "forbidden" and "signature is not by the certificate's key" in response["error"]
        assert (await rpc_ok(conn, "operator_whoami"))["operator"] is None
        assert (await rpc_ok(conn, "ping"))["agent_id"] == ca_cluster.agent_id


async def test_a_certificate_from_bobs_own_ca_is_refused(ca_cluster, operators, tmp_path):
    bob = operators["bob"]
    own_ca = asyncssh.generate_private_key("ssh-ed25519")
    cert = own_ca.generate_user_certificate(bob.private_key(), "alice", principals=["alice"],
                                            valid_after=int(time.time()) - 60, valid_before=int(time.time()) + 3600)
    async with connect(ca_cluster) as conn:
        response, _ = await claim(conn, ca_cluster, cert.export_certificate().decode(), bob.private_key())
        assert response["code"] == "forbidden" and "not by this cluster's operator CA" in response["error"], response
        assert (await rpc_ok(conn, "operator_whoami"))["operator"] is None


async def test_an_expired_certificate_is_refused(ca_cluster, operators):
    alice = operators["alice"]
    now = int(time.time())
    cert = ca_key(ca_cluster).generate_user_certificate(alice.private_key(), "alice", principals=["alice"],
                                                        valid_after=now - 7200, valid_before=now - 3600)
    async with connect(ca_cluster) as conn:
        response, _ = await claim(conn, ca_cluster, cert.export_certificate().decode(), alice.private_key())
        assert response["code"] == "forbidden" and "expired" in response["error"], response


async def test_a_replayed_identify_is_refused_on_another_connection(ca_cluster, operators, alice_cert):
    alice = operators["alice"]
    async with connect(ca_cluster) as first:
        response, params = await claim(first, ca_cluster, alice_cert, alice.private_key())
        assert response["ok"] and response["result"]["name"] == "alice", response
        assert (await rpc_ok(first, "operator_whoami"))["operator"]["name"] == "alice"  # another channel, same claim
    async with connect(ca_cluster) as second:  # bob's connection, with what he saw of alice's
        replay = await rpc(second, "operator_identify", params)
        assert replay["code"] == "forbidden" and replay["error"] == messages.OPERATOR_NO_CHALLENGE
        await rpc_ok(second, "operator_challenge")
        replay = await rpc(second, "operator_identify", params)
        assert replay["code"] == "forbidden" and "signature is not by the certificate's key" in replay["error"]
        assert (await rpc_ok(second, "operator_whoami"))["operator"] is None


async def test_a_challenge_is_single_use(ca_cluster, operators, alice_cert):
    alice = operators["alice"]
    async with connect(ca_cluster) as conn:
        response, params = await claim(conn, ca_cluster, alice_cert, alice.private_key())
        assert response["ok"]
        again = await rpc(conn, "operator_identify", params)
        assert again["code"] == "forbidden" and again["error"] == messages.OPERATOR_CHALLENGE_USED
        assert (await rpc_ok(conn, "operator_whoami"))["operator"]["name"] == "alice"  # the first claim stands


async def test_garbage_and_oversized_input_is_bad_request_and_the_agent_stays_up(ca_cluster, operators, alice_cert):
    cases = [
        {"certificate": "ssh-ed25519-cert-v01@openssh.com AAAAnotbase64!!", "signature": "AAAA"},
        {"certificate": "ssh-ed25519 " + base64.b64encode(os.urandom(64)).decode(), "signature": "AAAA"},
        {"certificate": "x" * (operator_claim.MAX_CERTIFICATE_CHARS + 1), "signature": "AAAA"},
        {"certificate": alice_cert, "signature": "A" * (operator_claim.MAX_SIGNATURE_CHARS + 1)},
        {"certificate": alice_cert, "signature": "not base64 at all"},
        {"certificate": alice_cert},
        {"certificate": 7, "signature": "AAAA"},
    ]
    async with connect(ca_cluster) as conn:
        for params in cases:
            await rpc_ok(conn, "operator_challenge")
            response = await rpc(conn, "operator_identify", params)
            assert response["code"] == "bad_request", (params, response)
        # a signature blob of the right base64 but nonsense inside: no proof (forbidden), no crash
        await rpc_ok(conn, "operator_challenge")
        response = await rpc(conn, "operator_identify", {"certificate": alice_cert,
                                                        "signature": base64.b64encode(os.urandom(83)).decode()})
        assert response["code"] == "forbidden", response
        assert (await rpc_ok(conn, "ping"))["agent_id"] == ca_cluster.agent_id
    assert ca_cluster.process is not None and ca_cluster.process.poll() is None


async def test_an_agent_without_the_ca_file_names_it(ca_cluster, operators, alice_cert):
    ca_file = ca_cluster.paths.agent_operator_ca
    kept = ca_file.with_name("operator-ca.pub.kept")
    ca_file.rename(kept)
    try:
        async with connect(ca_cluster) as conn:
            response, _ = await claim(conn, ca_cluster, alice_cert, operators["alice"].private_key())
    finally:
        kept.rename(ca_file)
    assert response["code"] == "forbidden" and str(ca_file) in response["error"], response


def test_operator_cert_refuses_a_bad_name_and_names_the_rule(ca_cluster, operators):
    result = ca_cluster.run_role("convocate_host", "operator-cert", "--name", "Alice Smith",
                                 str(operators["alice"].key.with_suffix(".pub")), check=False)
    assert result.returncode == 2 and "an operator name is 1-32 of a-z" in result.stderr, result.stderr
    assert not operators["alice"].cert.exists()


# --- unit tests of the claim data and the checks -----------------------------------------------------------
AGENT = "k3v9x2qa"


def _keys() -> tuple[asyncssh.SSHKey, asyncssh.SSHKey]:
    return asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-ed25519")


def _cert(ca: asyncssh.SSHKey, user: asyncssh.SSHKey, key_id: str = "alice", principals: tuple[str, ...] = ("alice",),
          after: float = -60, before: float = 3600, host: bool = False) -> str:
    now = int(time.time())
    make = ca.generate_host_certificate if host else ca.generate_user_certificate
    cert = make(user, key_id, principals=list(principals), valid_after=now + int(after), valid_before=now + int(before))
    return cert.export_certificate().decode()


def _sign(key: asyncssh.SSHKey, nonce: bytes, agent: str = AGENT) -> str:
    return base64.b64encode(key.sign(operator_claim.claim_data(agent, nonce), b"ssh-ed25519")).decode()


def test_claim_data_binds_context_agent_and_nonce():
    nonce = bytes(range(32))
    assert operator_claim.claim_data(AGENT, nonce) == b"convocate-operator-claim-v1\0" + AGENT.encode() + b"\0" + nonce


def test_operator_names():
    for good in ("alice", "a", "bob.smith", "ops_1", "x" * 32):
        assert operator_claim.validate_operator_name(good) == good
    for bad in ("", "Alice", "1alice", "alice smith", "x" * 33, "al\nice", "-a", "ällice"):
        with pytest.raises(BadRequest, match="operator name"):
            operator_claim.validate_operator_name(bad)


def test_verify_claim_accepts_a_good_claim():
    ca, user = _keys()
    nonce = os.urandom(32)
    identity = operator_claim.verify_claim(ca, _cert(ca, user), _sign(user, nonce), AGENT, nonce)
    assert identity == operator_claim.OperatorIdentity("alice", user.get_fingerprint("sha256"), "alice")
    assert identity.to_state() == {"name": "alice", "fingerprint": user.get_fingerprint("sha256"), "key_id": "alice",
                                   "verified": True}


@pytest.mark.parametrize("case, expected", [
    ("other_agent", "signature is not by"),
    ("other_nonce", "signature is not by"),
    ("not_yet", "not valid before"),
    ("expired", "expired"),
    ("host_cert", "not an SSH user certificate"),
    ("principal", "do not include its key ID"),
    ("bad_key_id", "is not an operator name"),
    ("other_ca", "not by this cluster's operator CA"),
])
def test_verify_claim_refusals(case: str, expected: str):
    ca, user = _keys()
    nonce = os.urandom(32)
    cert = {"not_yet": lambda: _cert(ca, user, after=600, before=3600),
            "expired": lambda: _cert(ca, user, after=-7200, before=-1),
            "host_cert": lambda: _cert(ca, user, host=True),
            "principal": lambda: _cert(ca, user, principals=("bob",)),
            "bad_key_id": lambda: _cert(ca, user, key_id="Root Admin", principals=("Root Admin",)),
            "other_ca": lambda: _cert(asyncssh.generate_private_key("ssh-ed25519"), user)}.get(case, lambda: _cert(ca, user))()
    signature = _sign(user, nonce, agent="zzzzzzzz") if case == "other_agent" else \
        _sign(user, os.urandom(32)) if case == "other_nonce" else _sign(user, nonce)
    with pytest.raises(Forbidden, match=expected):
        operator_claim.verify_claim(ca, cert, signature, AGENT, nonce)


def test_verify_claim_bounds_and_garbage_are_bad_requests():
    ca, user = _keys()
    nonce = os.urandom(32)
    good = _cert(ca, user)
    for cert, sig in [("x" * (operator_claim.MAX_CERTIFICATE_CHARS + 1), "AAAA"),
                      (good, "A" * (operator_claim.MAX_SIGNATURE_CHARS + 1)),
                      ("garbage", "AAAA"), (good[:60], "AAAA"), (good, "%%%%")]:
        with pytest.raises(BadRequest):
            operator_claim.verify_claim(ca, cert, sig, AGENT, nonce)


async def test_the_challenge_is_single_use_and_expires(tmp_path: Path):
    from convocate.common.sshpeers import Caller

    now = [1000.0]
    ops = OperatorOps(Paths(tmp_path), AGENT, clock=lambda: now[0])
    caller = Caller("SHA256:shell")
    with pytest.raises(Forbidden, match="no operator challenge"):
        ops._take_nonce(caller.state)
    challenge = await ops.challenge(OperatorChallengeParams(), caller)
    assert len(base64.b64decode(challenge["nonce"])) == operator_claim.NONCE_BYTES
    assert ops._take_nonce(caller.state) == base64.b64decode(challenge["nonce"])
    with pytest.raises(Forbidden, match="already used"):
        ops._take_nonce(caller.state)
    await ops.challenge(OperatorChallengeParams(), caller)
    now[0] += operator_claim.NONCE_TTL_S
    with pytest.raises(Forbidden, match="expired"):
        ops._take_nonce(caller.state)
    with pytest.raises(BadRequest, match="connection state"):
        await ops.challenge(OperatorChallengeParams(), "a bare string caller")
    await ops.challenge(OperatorChallengeParams(), caller)
    with pytest.raises(Forbidden, match="operator-ca.pub"):  # no CA: refused, naming the file
        await ops.identify(OperatorIdentifyParams(certificate="x", signature="y"), caller)


def test_certificate_default_name_and_bounds(tmp_path: Path):
    assert operator_ca.default_output(Path("/h/id_ed25519.pub")) == Path("/h/id_ed25519-cert.pub")
    assert operator_ca.default_output(Path("/h/key")) == Path("/h/key-cert.pub")
    paths = Paths(tmp_path)
    paths.shell_etc.mkdir(parents=True)
    _keygen(paths.operator_ca_key, "ca")
    _keygen(tmp_path / "k", "k")
    with pytest.raises(BadRequest, match="operator name"):
        operator_ca.issue_certificate(paths, "Bad Name", tmp_path / "k.pub")
    with pytest.raises(BadRequest, match="valid-days"):
        operator_ca.issue_certificate(paths, "alice", tmp_path / "k.pub", valid_days=0)
    out, cert = operator_ca.issue_certificate(paths, "alice", tmp_path / "k.pub", valid_days=2)
    parsed = asyncssh.read_certificate(out)
    assert out == tmp_path / "k-cert.pub" and parsed.principals == ["alice"] and parsed._key_id == "alice"
    assert parsed._valid_before - time.time() == pytest.approx(2 * 86400, abs=120)
    assert cert.signing_key.public_data == asyncssh.read_public_key(paths.operator_ca_pub).public_data


def test_the_tui_shows_a_refused_claim_on_its_status_line(ca_cluster: LocalCluster, operators: dict[str, Operator]):
    """The same refusal as above, in the TUI: its status line says it, the table works."""
    from tests.test_tui import TUI

    cluster = ca_cluster
    alice = certified(cluster, operators["alice"])
    with agent_ca_missing(cluster), TUI(alice.env(cluster)) as term:
        term.open(cols=200)
        term.wait_for(f"agent {cluster.agent_id}: operator identity refused")
        screen = term.screen()
        assert "convocate: warning" not in screen, screen  # on the status line, not stderr behind curses
        assert "ACCESSED" in screen
        term.keys("q")
        term.wait_for("EXIT=0")


async def test_the_client_claim_never_raises(tmp_path: Path):
    """An older agent (unknown op) is quiet; an odd answer is one failed claim, not an exception."""
    from convocate import operator

    paths = Paths(tmp_path)
    paths.shell_etc.mkdir(parents=True)
    _keygen(paths.operator_ca_key, "ca")
    _keygen(tmp_path / "k", "k")
    operator_ca.issue_certificate(paths, "alice", tmp_path / "k.pub")
    env = {operator.KEY_ENV: str(tmp_path / "k")}

    async def old_agent(op, params):
        raise BadRequest(messages.UNKNOWN_OP.format(op=op))

    async def odd_agent(op, params):
        return {"nonce": "not base64!"}

    quiet = await operator.claim(old_agent, AGENT, paths, env)
    assert quiet == operator.OperatorClaim(reason=messages.OPERATOR_AGENT_TOO_OLD)
    odd = await operator.claim(odd_agent, AGENT, paths, env)
    assert odd.failed and odd.name is None and odd.reason
    missing = await operator.claim(old_agent, AGENT, Paths(tmp_path / "none"), env)
    assert not missing.failed and "operator-ca.pub" in missing.reason


# --- the audit names the operator (issue 19: "prove the audit names the right operator") -----------------
def _cli(op: Operator | None, cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    env = op.env(cluster) if op is not None else cluster.env
    return subprocess.run([python(), "-m", "convocate", *args], env=env, cwd=REPO, text=True, capture_output=True,
                          timeout=120)


def test_the_audit_names_the_operator_who_did_each_action(ca_cluster: LocalCluster, operators: dict[str, Operator]):
    """alice creates a session and types into it, bob kills and deletes it; the trail says who did which."""
    cluster = ca_cluster
    for op in operators.values():
        certified(cluster, op)
    alice, bob = operators["alice"], operators["bob"]
    made = _cli(alice, cluster, "new", "audited-by-name", "--cpus", "0.1", "--memory", "128", "--json")
    assert made.returncode == 0, made.stderr
    sid = json.loads(made.stdout)["uuid"]
    sent = _cli(alice, cluster, "send", sid, "echo from alice")
    assert sent.returncode == 0, sent.stderr
    for step in ("kill", "delete"):
        done = _cli(bob, cluster, step, sid)
        assert done.returncode == 0, done.stderr
    listed = _cli(None, cluster, "audit", "--session", sid, "--json")
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    by_op = {r["op"]: r for r in records}
    assert {"create", "send", "kill", "delete"} <= set(by_op), records
    fingerprints = {name: op.private_key().get_fingerprint("sha256") for name, op in operators.items()}
    for op_name, who in (("create", "alice"), ("send", "alice"), ("kill", "bob"), ("delete", "bob")):
        operator = by_op[op_name]["operator"]
        assert operator and operator["name"] == who and operator["verified"] is True, by_op[op_name]
        assert operator["fingerprint"] == fingerprints[who]
    assert by_op["send"]["params"]["text"] == "echo from alice"
    # Both came through the same peering key: only the claim tells them apart.
    assert by_op["create"]["via"]["fingerprint"] == by_op["delete"]["via"]["fingerprint"]
    # --operator picks one operator's actions, by name or by fingerprint.
    for selector in ("bob", fingerprints["bob"]):
        only = _cli(None, cluster, "audit", "--session", sid, "--operator", selector, "--json")
        assert only.returncode == 0, only.stderr
        ops = [r["op"] for r in json.loads(only.stdout)]
        assert ops == ["kill", "delete"], (selector, only.stdout)
    # An unidentified run of the CLI is recorded without a name, never as the last operator seen.
    bare = _cli(None, cluster, "new", "audited-anonymous", "--cpus", "0.1", "--memory", "128", "--json")
    assert bare.returncode == 0, bare.stderr
    anon = json.loads(bare.stdout)["uuid"]
    _cli(None, cluster, "kill", anon)
    shown = _cli(None, cluster, "audit", "--session", anon, "--json")
    rows = json.loads(shown.stdout)
    assert isinstance(rows, list), (shown.stdout, shown.stderr)
    assert rows and all(r["operator"] is None for r in rows), rows
