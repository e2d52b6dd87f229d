"""A cluster brought up from bare Debian 12 hosts entirely through ``convocate-host`` over SSH (DESIGN §6).

Three containers running systemd and sshd on a Docker network of their own stand for a shell host
and two agent hosts. The operator (this test) has only an SSH key that logs in as ``op``, a user
with NOPASSWD sudo, and a known_hosts file; everything else is done by ``convocate-host``:
``install`` on each host, ``init-shell``, ``init-agent`` for both agents, then a session on each
agent, created and attached from the shell host's own CLI, whose container log lines arrive in the
shell's per-agent log over TLS. Then every command runs a second time and says ``nothing changed``;
an orphan session is migrated to an agent (twice: the second run changes nothing); ``update --all``
rolls a newer build to both agents while their sessions keep running, then ``update --all --drain``
(nothing left to update) empties each agent before its turn: every session moves away and back.
Refusals: a wrong host key for the target, and a user without NOPASSWD sudo.

The agent hosts drive this machine's dockerd through its socket (the session containers are this
machine's), so their session homes and runtime directory are bind mounts from this machine at the
same place the agent declares with ``--docker-path-prefix``. Everything made here carries the
label ``convocate.test=host-e2e`` and is removed at teardown, session containers included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from convocate.common import keys
from tests.conftest import TEST_IMAGE
from tests.harness import REPO, python
from tests.systemd_hosts import DOCKER, UPGRADE_VERSION, Host, run, start_host
from tests.test_cli import Terminal

pytestmark = [pytest.mark.slow, pytest.mark.docker]

LABEL = "convocate.test=host-e2e"


@dataclass
class Cluster:
    """The three hosts and the operator's credentials."""

    network: str
    shell: Host
    agents: list[Host]
    ips: dict[str, str]
    root: Path
    identity: Path
    known_hosts: Path
    agent_ids: list[str] = field(default_factory=list)

    def host_tool(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``convocate-host`` here as the operator."""
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        result = subprocess.run([python(), "-m", "convocate_host", *args, "--user", "op", "--identity",
                                 str(self.identity), "--known-hosts", str(self.known_hosts)],
                                capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
        if check:
            assert result.returncode == 0, f"convocate-host {' '.join(args)} exited {result.returncode}:\n" \
                                           f"{result.stdout}\n{result.stderr}"
        return result

    def shell_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The ``convocate`` CLI on the shell host, as ``claude``."""
        return self.shell.sh("runuser -u claude -- convocate " + shlex.join(args), check=check, timeout=120)


def _add_operator(host: Host, public_key: str, *, sudo: bool = True, user: str = "op") -> None:
    host.sh(f"useradd --create-home --shell /bin/bash {user}"
            f" && install -d -m 700 -o {user} -g {user} /home/{user}/.ssh"
            f" && printf '%s\\n' {shlex.quote(public_key)} > /home/{user}/.ssh/authorized_keys"
            f" && chown {user}:{user} /home/{user}/.ssh/authorized_keys")
    if sudo:
        host.sh(f"echo '{user} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{user} && chmod 440 /etc/sudoers.d/{user}")


@pytest.fixture(scope="module")
def cluster(systemd_host_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("e2e")
    network = f"convocate-e2e-{uuid.uuid4().hex[:8]}"
    run([DOCKER, "network", "create", "--label", LABEL, network])
    hosts: list[Host] = []
    made: Cluster | None = None
    try:
        shell = start_host(systemd_host_image, LABEL, network=network, hostname="shell")
        hosts.append(shell)
        agents = []
        for name in ("agent1", "agent2"):
            prefix = root / name
            for sub in ("home/claude", "run/convocate-agent"):
                (prefix / sub).mkdir(parents=True)
            agents.append(start_host(systemd_host_image, LABEL, network=network, hostname=name, volumes=(
                f"{prefix}/home/claude:/home/claude", f"{prefix}/run/convocate-agent:/run/convocate-agent")))
            hosts.append(agents[-1])
        operator = keys.generate_key("operator")
        identity = root / "operator_ed25519"
        keys.write_private_key(identity, operator)
        known = []
        ips = {}
        for name, host in zip(("shell", "agent1", "agent2"), hosts, strict=True):
            _add_operator(host, keys.public_key_line(operator))
            host.sh("systemctl enable --now ssh >/dev/null 2>&1 || systemctl enable --now ssh.service")
            ips[name] = host.ip(network)
            known.append(f"{ips[name]} {host.read('/etc/ssh/ssh_host_ed25519_key.pub').strip()}")
        known_hosts = root / "known_hosts"
        known_hosts.write_text("\n".join(known) + "\n")
        made = Cluster(network, shell, agents, ips, root, identity, known_hosts)
        yield made
    finally:
        for agent_id in made.agent_ids if made is not None else []:  # the agents' session containers
            ids = subprocess.run([DOCKER, "ps", "-aq", f"--filter=label=convocate.agent={agent_id}"],
                                 capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run([DOCKER, "rm", "--force", *ids], capture_output=True)
        for host in hosts:
            host.remove()
        # The agents' cgroup parent, which this machine's dockerd made in every hierarchy for their sessions
        # (the agents, in their containers, cannot remove it themselves); only when empty.
        for parent in Path("/sys/fs/cgroup").glob("*/convocate-sessions"):
            with contextlib.suppress(OSError):
                parent.rmdir()
        subprocess.run([DOCKER, "network", "rm", network], capture_output=True)
        subprocess.run(["rm", "-rf", str(root)], capture_output=True)


def _summary(output: str) -> list[str]:
    """The closing lines (``<command> on <host>: ...``) of a convocate-host run."""
    return [line for line in output.splitlines() if " on " in line and line.rsplit(": ", 1)[-1].endswith(
        ("change(s)", "nothing changed"))]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def test_a_cluster_from_bare_hosts_through_convocate_host(cluster: Cluster, debs, upgrade_debs):
    debs_dir = str(debs["convocate"].parent)
    shell_ip = cluster.ips["shell"]
    agent_ips = [cluster.ips["agent1"], cluster.ips["agent2"]]

    # --- install: the three hosts prepared at once ------------------------------------------------
    installs = [["install", "--host", shell_ip, "--role", "shell"]] + \
               [["install", "--host", ip, "--role", "agent"] for ip in agent_ips]
    first = _parallel(cluster, installs)
    for out in first:
        assert "installed jq" in out and "firewall allows 22/tcp" in out, out
    for host in (cluster.shell, *cluster.agents):
        assert host.sh("getent passwd claude").stdout.split(":")[2:4] == ["1337", "1337"]
        assert host.sh("readlink -f /etc/localtime").stdout.strip().endswith("UTC")
        assert "Status: active" in host.sh("ufw status").stdout
    assert "223/tcp" in cluster.shell.sh("ufw status").stdout
    assert "222/tcp" in cluster.agents[0].sh("ufw status").stdout

    # --- init-shell ------------------------------------------------------------------------------------
    out = cluster.host_tool("init-shell", "--host", shell_ip, "--debs", debs_dir, "--no-image",
                            "--name", "shell").stdout
    assert "convocate 0.1.0 installed" in out or "convocate " in out, out
    assert cluster.shell.sh("systemctl is-active convocate-status.service rsyslog.service").stdout.split() == \
        ["active", "active"]

    # --- init-agent, both agents ---------------------------------------------------------------------
    for name, ip in zip(("agent1", "agent2"), agent_ips, strict=True):
        out = cluster.host_tool("init-agent", "--host", ip, "--shell-host", shell_ip, "--debs", debs_dir,
                                "--image", TEST_IMAGE, "--docker-path-prefix", str(cluster.root / name)).stdout
        assert "events reach the shell host" in out, out
        cluster.agent_ids.append(cluster.agents[len(cluster.agent_ids)].read("/etc/convocate-agent/agent-id").strip())
    agents = json.loads(cluster.shell_cli("agents", "--json").stdout)
    assert sorted((a["agent_id"], a["status"], a["status_link"]["connected"]) for a in agents) == \
        sorted((a, "ok", True) for a in cluster.agent_ids)

    # --- a session on each agent, created and attached from the shell host -----------------------------
    sessions = {}
    for agent_id in cluster.agent_ids:
        made = json.loads(cluster.shell_cli("new", f"e2e-{agent_id}", "--agent", agent_id, "--dns", f"e2e-{agent_id}",
                                            "--cpus", "0.2", "--memory", "200", "--json").stdout)
        sessions[agent_id] = made["uuid"]
    listing = {s["uuid"]: s for s in json.loads(cluster.shell_cli("ls", "--json").stdout)}
    for agent_id, sid in sessions.items():
        assert listing[sid]["agent_id"] == agent_id and listing[sid]["state"] == "R", listing[sid]
    for agent_id, sid in sessions.items():
        terminal = Terminal(dict(os.environ))
        try:
            terminal.start(f"{DOCKER} exec -it {cluster.shell.id} runuser -u claude -- convocate attach {sid};"
                           " echo EXIT=$?; sleep 60")
            terminal.wait_for("convocate stand-in claude", timeout=30)
            terminal.tmux("send-keys", "-t", "t", f"typed from the shell to {agent_id}", "Enter")
            terminal.wait_for(f"echo: typed from the shell to {agent_id}")
            terminal.tmux("send-keys", "-t", "t", "C-b", "d")
            terminal.wait_for("EXIT=0")
        finally:
            terminal.close()

    # --- the sessions' container logs reach the shell's per-agent logs over TLS -----------------------
    for agent_id, sid in sessions.items():
        log = f"/var/log/convocate-agent/{agent_id}.log"
        _wait(lambda log=log, sid=sid: cluster.shell.exists(log) and f"session {sid}" in cluster.shell.read(log),
              60, f"the supervisor's first line of {sid} in {log}")
    tls = cluster.shell.sh("ss -tnp state established '( sport >= :6514 and sport <= :6769 )'").stdout
    assert tls.count("rsyslogd") >= 2, tls  # one TLS connection per agent, each on its own port

    # --- every command a second time: nothing changed -----------------------------------------------------
    again = _parallel(cluster, installs)
    again.append(cluster.host_tool("init-shell", "--host", shell_ip, "--debs", debs_dir, "--no-image",
                                   "--name", "shell").stdout)
    for name, ip in zip(("agent1", "agent2"), agent_ips, strict=True):
        again.append(cluster.host_tool("init-agent", "--host", ip, "--shell-host", shell_ip, "--debs", debs_dir,
                                       "--image", TEST_IMAGE, "--docker-path-prefix",
                                       str(cluster.root / name)).stdout)
    for out in again:
        summaries = _summary(out)
        assert summaries and all(s.endswith("nothing changed") for s in summaries), out

    # --- migrate-session: an orphan on the shell host moves to agent 1 ---------------------------------------
    orphan = str(uuid.uuid4())
    meta = json.loads(cluster.agents[0].read(f"/var/lib/convocate-agent/sessions/{sessions[cluster.agent_ids[0]]}.json"))
    meta.update(uuid=orphan, name="orphan", port=0, dns_name="")
    cluster.shell.sh(f"mkdir -p /home/claude/{orphan}/work && echo kept > /home/claude/{orphan}/work/notes.txt"
                     f" && ln -s work/notes.txt /home/claude/{orphan}/link"
                     f" && printf '%s' {shlex.quote(json.dumps(meta))} > /home/claude/{orphan}/session.json"
                     f" && chown -R 1337:1337 /home/claude/{orphan}")
    out = cluster.host_tool("migrate-session", "--agent", cluster.agent_ids[0], "--session", orphan,
                            "--shell-host", shell_ip).stdout
    assert f"session {orphan} in place" in out, out
    assert cluster.agents[0].read(f"/home/claude/{orphan}/work/notes.txt") == "kept\n"
    assert cluster.agents[0].sh(f"readlink /home/claude/{orphan}/link").stdout.strip() == "work/notes.txt"
    assert cluster.agents[0].sh(f"stat -c %u /home/claude/{orphan}/work/notes.txt").stdout.strip() == "1337"
    # the metadata became the agent's record; the home the session can write holds none (issue 14)
    assert json.loads(cluster.agents[0].read(f"/var/lib/convocate-agent/sessions/{orphan}.json"))["name"] == "orphan"
    assert not cluster.agents[0].exists(f"/home/claude/{orphan}/session.json")
    listing = {s["uuid"]: s for s in json.loads(cluster.shell_cli("ls", "--json").stdout)}
    assert listing[orphan]["agent_id"] == cluster.agent_ids[0] and listing[orphan]["name"] == "orphan"
    assert cluster.shell.exists(f"/home/claude/.migrated/{orphan}/session.json")
    out = cluster.host_tool("migrate-session", "--agent", cluster.agent_ids[0], "--session", orphan,
                            "--shell-host", shell_ip).stdout
    assert all(s.endswith("nothing changed") for s in _summary(out)), out

    # --- update --all: both agents to the next build, one after the other ----------------------------------
    out = cluster.host_tool("update", "--all", "--shell-host", shell_ip, "--debs",
                            str(upgrade_debs["convocate-agent"].parent), "--image", TEST_IMAGE).stdout
    assert f"updated 2 agent(s): {', '.join(sorted(cluster.agent_ids))}" in out, out  # in registry order
    agents = json.loads(cluster.shell_cli("agents", "--json").stdout)
    assert sorted((a["agent_id"], a["status"], a["version"]) for a in agents) == \
        sorted((a, "ok", UPGRADE_VERSION) for a in cluster.agent_ids)
    listing = {s["uuid"]: s for s in json.loads(cluster.shell_cli("ls", "--json").stdout)}
    assert all(listing[sid]["state"] == "R" for sid in sessions.values())  # the sessions kept running

    # --- update --all --drain: each agent emptied before its (now empty) update and undrained after -------
    # agent 1's sessions move to agent 2, then agent 2's (all of them) to agent 1; none is lost or stopped.
    before = {s["uuid"]: s for s in json.loads(cluster.shell_cli("ls", "--json").stdout)}
    out = cluster.host_tool("update", "--all", "--drain", "--shell-host", shell_ip, "--debs",
                            str(upgrade_debs["convocate-agent"].parent), "--image", TEST_IMAGE).stdout
    assert len(_summary(out)) == 3, out
    changed = [line.split(" changed ", 1)[1] for line in out.splitlines() if ": changed " in line]
    first, second = sorted(cluster.agent_ids)
    for agent_id in (first, second):  # the packages and image were current: only the drains changed anything
        assert f"agent {agent_id} is draining: it takes no new session" in changed, out
        assert f"agent {agent_id} takes new sessions again" in changed, out
    moves = [line for line in changed if line.startswith("moved ")]
    assert sorted(moves) == sorted([f"moved {before[sid]['name']} to {second}" for sid in before
                                    if before[sid]["agent_id"] == first]
                                   + [f"moved {before[sid]['name']} to {first}" for sid in before]), out
    assert len(changed) == 4 + len(moves), out
    after = {s["uuid"]: s for s in json.loads(cluster.shell_cli("ls", "--json").stdout)}
    assert sorted(after) == sorted(before)  # no session lost, none doubled
    assert all(after[sid]["agent_id"] == first and after[sid]["state"] == before[sid]["state"] for sid in before)
    agents = json.loads(cluster.shell_cli("agents", "--json").stdout)
    assert not any((a.get("capacity") or {}).get("draining") for a in agents), agents

    def published() -> dict[str, str]:  # session UUID -> agent, from the shell's dnsmasq hosts file
        lines = cluster.shell.read("/var/lib/convocate/dnsmasq-hosts").splitlines()
        return {f[-1]: f[-2] for f in (line.split() for line in lines) if "# convocate" in " ".join(f)}

    named = [sid for sid in before if before[sid].get("dns_name")]
    assert named, before
    _wait(lambda: {sid: published().get(sid) for sid in named} == {sid: first for sid in named}, 30,
          f"the DNS records of {named} on {first} alone")


def _parallel(cluster: Cluster, commands: list[list[str]]) -> list[str]:
    """Run several convocate-host commands at once; their outputs, in order."""
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    procs = [subprocess.Popen([python(), "-m", "convocate_host", *c, "--user", "op", "--identity",
                               str(cluster.identity), "--known-hosts", str(cluster.known_hosts)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
             for c in commands]
    outputs = []
    for command, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"convocate-host {' '.join(command)} exited {proc.returncode}:\n{out}\n{err}"
        outputs.append(out)
    return outputs


def test_a_wrong_host_key_is_refused(cluster: Cluster, tmp_path):
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{cluster.ips['agent2']} {keys.public_key_line(keys.generate_key())}\n")
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    result = subprocess.run([python(), "-m", "convocate_host", "install", "--host", cluster.ips["agent2"],
                             "--no-upgrade", "--user", "op", "--identity", str(cluster.identity),
                             "--known-hosts", str(wrong)], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=120)
    assert result.returncode != 0
    assert "the host key is not the one in" in result.stderr and "never trusts a new key" in result.stderr, \
        result.stderr


def test_a_user_without_nopasswd_sudo_is_told_so(cluster: Cluster):
    public = keys.public_key_line(keys.load_private_key(cluster.identity))
    _add_operator(cluster.agents[1], public, sudo=False, user="nosudo")
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    result = subprocess.run([python(), "-m", "convocate_host", "install", "--host", cluster.ips["agent2"],
                             "--no-upgrade", "--user", "nosudo", "--identity", str(cluster.identity),
                             "--known-hosts", str(cluster.known_hosts)], capture_output=True, text=True, cwd=REPO,
                            env=env, timeout=120)
    assert result.returncode == 77, result.stderr
    assert "cannot run sudo without a password" in result.stderr and "NOPASSWD" in result.stderr, result.stderr
