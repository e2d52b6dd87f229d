"""Issue 14 item 7: an agent's forwarded log lines are filed under the agent its client certificate names.

The attacker holds agent A's rsyslog client key (a compromised agent host: root there reads
``/etc/convocate-agent/rsyslog-tls/client.key``) and writes RFC 5424 frames straight to the shell
host's TLS listener, naming agent B as HOSTNAME. The shell host is a real rsyslogd running the
drop-ins exactly as ``convocate-host`` renders them (the recipe of tests/test_rsyslog.py), with a
listener for both agents; B's log must stay as B wrote it.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from convocate.common.paths import Paths
from convocate_host import pki, rsyslog
from tests.conftest import wait_for
from tests.test_rsyslog import GTLS_DRIVER, RSYSLOGD, Rsyslogd, _write, frame, free_port, tls_send

AGENT_A = "aaaa1111"
AGENT_B = "bbbb2222"


@dataclass
class Shell:
    """The shell host's rsyslogd with a listener for agents A and B; ``ports`` maps agent ID to its port."""

    ca: pki.CertificateAuthority
    log_dir: Path
    ports: dict[str, int]
    daemon: Rsyslogd
    root: Path

    def log(self, agent_id: str) -> str:
        path = self.log_dir / f"{agent_id}.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def send(self, port: int, cert: pki.IssuedCert, frames: list[bytes]) -> Exception | bytes:
        """Frames, octet-counted, to ``port`` as a TLS client holding ``cert``; what reading then gave."""
        return tls_send(port, self.ca, cert, frames, scratch=self.root)


@pytest.fixture
def shell() -> Iterator[Shell]:
    if not Path(RSYSLOGD).exists() or not GTLS_DRIVER.exists():
        pytest.fail("rsyslogd or its gtls driver is missing: run ./build.sh deps (rsyslog, rsyslog-gnutls)")
    root = Path(tempfile.mkdtemp(prefix="cvli-", dir="/tmp"))
    paths = Paths(root)
    state = pki.ensure_shell_pki(None, None, None, None, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    listener = replace(rsyslog.ShellListener.from_paths(paths, address="127.0.0.1"),
                       file_owner=None, file_group=None)  # rsyslogd runs as this test's user
    _write(listener.ca_file, state.ca.cert_pem, 0o644)
    _write(listener.cert_file, state.server.cert_pem, 0o644)
    _write(listener.key_file, state.server.key_pem, 0o600)
    listener.log_dir.parent.mkdir(parents=True)
    dropins = rsyslog.rsyslog_dropin_dir(paths)
    dropins.mkdir(parents=True)
    (dropins / rsyslog.SHELL_DROPIN).write_text(rsyslog.render_shell_dropin(listener))
    # What init-agent does on the shell host for each agent: a port from the range, its own listener.
    ports: dict[str, int] = {}
    for agent_id in (AGENT_A, AGENT_B):
        ports[agent_id] = rsyslog.choose_log_port(agent_id, None, ports, set(), range(free_port(), 65536))
        (dropins / rsyslog.shell_agent_dropin(agent_id)).write_text(
            rsyslog.render_shell_agent_dropin(listener, agent_id, ports[agent_id]))
    work = root / "work"
    work.mkdir()
    conf = root / "shell.conf"
    conf.write_text(f'global(workDirectory="{work}")\ninclude(file="{dropins}/*.conf")\n')

    def listening() -> bool:
        for p in set(ports.values()):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", p)) != 0:
                    return False
        return True

    daemon = Rsyslogd("shell", conf, listening)
    try:
        daemon.start()
        yield Shell(state.ca, listener.log_dir, ports, daemon, root)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_agent_a_cannot_write_into_agent_bs_log(shell: Shell):
    cert_a, _ = pki.ensure_agent_cert(shell.ca, AGENT_A, None, None)
    cert_b, _ = pki.ensure_agent_cert(shell.ca, AGENT_B, None, None)
    # B's own line first, so B's file exists and its contents are known.
    assert shell.send(shell.ports[AGENT_B], cert_b, [frame(AGENT_B, "genuine from B")]) == b"open"
    wait_for(lambda: "genuine from B" in shell.log(AGENT_B), "B's own line in B's log")
    before_b = shell.log(AGENT_B)

    # A, on its own listener, claims to be B; then a line of its own as a marker.
    forged = [frame(AGENT_B, "forged by A as B"), frame(AGENT_B.upper(), "forged by A as B upper"),
              frame(f"{AGENT_B} ", "forged by A as B space"), frame(AGENT_A, "marker from A")]
    assert shell.send(shell.ports[AGENT_A], cert_a, forged) == b"open"
    wait_for(lambda: "marker from A" in shell.log(AGENT_A), "A's marker in A's log")
    time.sleep(1.0)  # anything else of that connection has been written by now
    assert shell.log(AGENT_B) == before_b, "agent A's certificate wrote into agent B's log"
    # Refused rather than filed under A: A's own log holds only what A said about itself, and the
    # refusal names the certificate (the input) that sent each forged line.
    assert "forged by A" not in shell.log(AGENT_A)
    rejected = wait_for(lambda: len(lines := shell.log(rsyslog.REJECT_LOG.removesuffix(".log")).splitlines()) == 3
                        and lines, "the three forged lines in the reject log")
    assert all(f" by convocate_agent_{AGENT_A} " in line and "forged by A as B" in line for line in rejected)

    # A's certificate on B's listener is refused outright, whatever it claims.
    outcome = shell.send(shell.ports[AGENT_B], cert_a, [frame(AGENT_B, "A on B's listener")])
    assert outcome != b"open", "B's listener accepted agent A's certificate"
    wait_for(lambda: any("not permitted to talk to it" in line and f"{AGENT_A}.agents.convocate" in line
                         for line in shell.daemon.log().splitlines()), "B's listener's refusal of A's name")
    time.sleep(1.0)
    assert shell.log(AGENT_B) == before_b
    assert "A on B's listener" not in shell.log(AGENT_A)
