"""Log forwarding (convocate_host.rsyslog): the drop-ins, run by two real rsyslogd on loopback, and Docker's driver.

Every live test lays out a shell host and an agent host under one short temporary root (a Unix socket path
must stay under 108 bytes), issues the PKI with :mod:`convocate_host.pki`, renders the drop-ins exactly as
``convocate-host`` installs them and includes each from a main configuration of the test's own (instead of
``/etc/rsyslog.conf``, so no ``/dev/log`` and no system ``/var/log``). Both daemons are checked with
``rsyslogd -N1`` first, run in the foreground (``-n``) and are stopped by their PID at teardown.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from convocate.common import syslog as common_syslog
from convocate.common.errors import ConfigError
from convocate.common.paths import Paths
from convocate_host import pki, rsyslog
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parent.parent
LOGROTATE_FILE = REPO / "packaging" / "logrotate" / "convocate-agent-logs"
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
GTLS_DRIVER = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")
AGENT = "ab12cd34"
SESSION = "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91"
BASE_IMAGE = "convocate-base:bookworm"
TEST_LABEL = {"convocate.test": "rsyslog"}
WAIT_S = 20.0


def docker_datagram(line: str, *, session: str = SESSION, severity: int = 6) -> bytes:
    """A datagram as Docker 20.10's syslog driver sends it with syslog-format=rfc5424 (facility daemon)."""
    tag = common_syslog.session_log_tag(session)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"<{3 * 8 + severity}>1 {stamp} dockerhost {tag} 4607 {tag} - {line}\n".encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the daemons ---------------------------------------------------------------------------------------

class Rsyslogd:
    """One rsyslogd of this test, in the foreground, with its own main config, work dir and pid file."""

    def __init__(self, name: str, conf: Path, ready: Callable[[], bool]) -> None:
        self.name = name
        self.conf = conf
        self.pidfile = conf.with_suffix(".pid")
        self.output = conf.with_suffix(".out")
        self.ready = ready
        self.proc: subprocess.Popen | None = None

    def check(self) -> None:
        result = subprocess.run([RSYSLOGD, "-N1", "-f", str(self.conf)], capture_output=True, text=True)
        assert result.returncode == 0, f"rsyslogd -N1 {self.conf}:\n{result.stderr}"
        assert "error" not in result.stderr.lower(), result.stderr

    def start(self) -> None:
        self.check()
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: self.ready() or self.proc.poll() is not None, f"{self.name} rsyslogd to start")
        finally:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} rsyslogd exited with {self.proc.returncode}:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM to this rsyslogd by its PID (then SIGKILL after 10 s); never any other process."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def hup(self) -> None:
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGHUP)

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


@dataclass
class Cluster:
    """A shell host and an agent host laid out under ``paths.root``, with their rsyslog configs and PKI."""

    paths: Paths
    ca: pki.CertificateAuthority
    listener: rsyslog.ShellListener
    port: int
    forwarder: rsyslog.AgentForwarder
    shell: Rsyslogd
    agent: Rsyslogd

    @property
    def log_dir(self) -> Path:
        return self.listener.log_dir

    def agent_log(self, agent_id: str = AGENT) -> Path:
        return self.log_dir / f"{agent_id}.log"

    def lines(self, agent_id: str = AGENT) -> list[str]:
        path = self.agent_log(agent_id)
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def send(self, *datagrams: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, str(self.forwarder.socket))

    def wait_for_lines(self, *texts: str, agent_id: str = AGENT, timeout: float = WAIT_S) -> list[str]:
        def arrived() -> list[str] | None:
            lines = self.lines(agent_id)
            return lines if all(any(line.endswith(t) for line in lines) for t in texts) else None

        try:
            return wait_for(arrived, f"{texts} in {self.agent_log(agent_id)}", timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\nshell:\n{self.shell.log()}\nagent:\n{self.agent.log()}") from None

    def tls_send(self, frames: list[bytes], cert: pki.IssuedCert) -> Exception | bytes:
        """Send octet-counted frames to the shell listener as a TLS client with ``cert``; what reading then gave."""
        return tls_send(self.port, self.ca, cert, frames, scratch=self.paths.root)


def tls_send(port: int, ca: pki.CertificateAuthority, cert: pki.IssuedCert, frames: list[bytes], *,
             scratch: Path) -> Exception | bytes:
    """Octet-counted frames (RFC 6587 §3.4.1) to ``port`` on loopback as a TLS client holding ``cert``.

    Args:
        port: The listener's port.
        ca: The CA the listener's certificate is checked against.
        cert: The client certificate to present.
        frames: The syslog messages.
        scratch: A directory for the key files ssl needs on disk (removed again at once).

    Returns:
        What reading then gave: ``b""`` (the listener closed), ``b"open"`` (still open after 3 s; the
        listener never writes), or the exception the handshake or the connection raised.
    """
    d = Path(tempfile.mkdtemp(dir=scratch))
    (d / "c.pem").write_bytes(cert.cert_pem)
    (d / "c.key").write_bytes(cert.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    ctx.load_cert_chain(d / "c.pem", d / "c.key")
    shutil.rmtree(d)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=pki.SHELL_PEER_NAME) as tls:
            for f in frames:
                tls.sendall(f"{len(f)} ".encode() + f)
            tls.settimeout(3)
            try:
                return tls.recv(1)
            except TimeoutError:
                return b"open"
    except (ssl.SSLError, OSError) as e:
        return e


def frame(hostname: str, text: str) -> bytes:
    """An RFC 5424 message as the agents' template writes it."""
    return f"<30>1 2026-01-01T00:00:00Z {hostname} {common_syslog.session_log_tag(SESSION)} 4607 - - {text}".encode()


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


@pytest.fixture
def short_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="cvrs-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster(short_root: Path) -> Iterator[Cluster]:
    if not Path(RSYSLOGD).exists() or not GTLS_DRIVER.exists():
        pytest.fail("rsyslogd or its gtls driver is missing: run ./build.sh deps (rsyslog, rsyslog-gnutls)")
    paths = Paths(short_root)
    shell_pki = pki.ensure_shell_pki(None, None, None, None, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    ca = shell_pki.ca
    port = free_port()  # this agent's listener on the shell host
    listener = replace(rsyslog.ShellListener.from_paths(paths, address="127.0.0.1"),
                       file_owner=None, file_group=None)  # rsyslogd runs as this test's user
    _write(listener.ca_file, ca.cert_pem, rsyslog.FILE_MODES[rsyslog.CA_CERT])
    _write(listener.ca_file.with_name(rsyslog.CA_KEY), ca.key_pem, rsyslog.FILE_MODES[rsyslog.CA_KEY])
    _write(listener.cert_file, shell_pki.server.cert_pem, rsyslog.FILE_MODES[rsyslog.SERVER_CERT])
    _write(listener.key_file, shell_pki.server.key_pem, rsyslog.FILE_MODES[rsyslog.SERVER_KEY])
    forwarder = replace(rsyslog.AgentForwarder.from_paths(paths, AGENT, "127.0.0.1", shell_port=port),
                        resume_interval_s=1, resume_interval_max_s=2)
    client, _ = pki.ensure_agent_cert(ca, AGENT, None, None)
    _write(forwarder.ca_file, ca.cert_pem, rsyslog.FILE_MODES[rsyslog.CA_CERT])
    _write(forwarder.cert_file, client.cert_pem, rsyslog.FILE_MODES[rsyslog.CLIENT_CERT])
    _write(forwarder.key_file, client.key_pem, rsyslog.FILE_MODES[rsyslog.CLIENT_KEY])
    forwarder.spool_dir.mkdir(parents=True, mode=0o700)  # Debian's package makes /var/spool/rsyslog
    listener.log_dir.parent.mkdir(parents=True)  # /var/log; rsyslog makes convocate-agent/ in it

    dropins = rsyslog.rsyslog_dropin_dir(paths)
    dropins.mkdir(parents=True)
    (dropins / rsyslog.SHELL_DROPIN).write_text(rsyslog.render_shell_dropin(listener))
    (dropins / rsyslog.shell_agent_dropin(AGENT)).write_text(rsyslog.render_shell_agent_dropin(listener, AGENT, port))
    (dropins / rsyslog.AGENT_DROPIN).write_text(rsyslog.render_agent_dropin(forwarder))
    (dropins / rsyslog.MESSAGE_SIZE_DROPIN).write_text(rsyslog.render_message_size_dropin())
    confs = short_root / "test-rsyslog"
    for name in ("shell", "agent"):
        (confs / f"{name}-work").mkdir(parents=True)
    # The test's main configs stand for /etc/rsyslog.conf: the agent's loads imuxsock as Debian's does,
    # but without the system socket /dev/log.
    (confs / "shell.conf").write_text(
        f'global(workDirectory="{confs / "shell-work"}")\n'
        f'include(file="{dropins / rsyslog.MESSAGE_SIZE_DROPIN}")\n'
        f'include(file="{dropins / rsyslog.SHELL_DROPIN}")\n'
        f'include(file="{dropins / rsyslog.shell_agent_dropin(AGENT)}")\n')
    (confs / "agent.conf").write_text(
        f'global(workDirectory="{confs / "agent-work"}")\n'
        'module(load="imuxsock" SysSock.Use="off")\n'
        f'include(file="{dropins / rsyslog.MESSAGE_SIZE_DROPIN}")\n'
        f'include(file="{dropins / rsyslog.AGENT_DROPIN}")\n')

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    shell = Rsyslogd("shell", confs / "shell.conf", listening)
    agent = Rsyslogd("agent", confs / "agent.conf", forwarder.socket.exists)
    try:
        yield Cluster(paths, ca, listener, port, forwarder, shell, agent)
    finally:
        agent.stop()
        shell.stop()


# --- rendering -----------------------------------------------------------------------------------------

def test_installed_defaults_come_from_paths():
    paths = Paths()
    listener = rsyslog.ShellListener.from_paths(paths)
    shell = rsyslog.render_shell_dropin(listener)
    mine = rsyslog.render_shell_agent_dropin(listener, AGENT, rsyslog.FIRST_PORT)
    agent = rsyslog.render_agent_dropin(rsyslog.AgentForwarder.from_paths(paths, AGENT, "shell.example.net"))
    assert "input(" not in shell, "the shared drop-in has no listener: each agent has its own"
    assert 'port="6514"' in mine and "address=" not in mine
    assert f'permittedPeer=["{AGENT}.agents.convocate"]' in mine and "*" not in mine
    assert f'streamDriver.CAFile="{paths.rsyslog_ca_dir}/ca.pem"' in mine
    assert f'if $hostname == "{AGENT}" then' in mine
    assert f'file="/var/log/convocate-agent/{AGENT}.log"' in mine
    assert 'file="/var/log/convocate-agent/_rejected.log"' in shell
    for text in (shell, mine):
        assert 'fileOwner="root" dirOwner="root" fileGroup="adm" dirGroup="adm")' in text
        assert 'dirCreateMode="0750" fileCreateMode="0640"' in text
    assert rsyslog.shell_agent_dropin(AGENT) == f"61-convocate-agent-{AGENT}.conf"
    assert f'Socket="{paths.agent_audit_socket}"' in agent and paths.agent_audit_socket.name == "audit.sock"
    assert f'Socket="{paths.agent_log_socket}"' in agent and str(paths.agent_log_socket) == "/run/convocate-agent/syslog.sock"
    assert f'StreamDriver.KeyFile="{paths.agent_rsyslog_tls}/client.key"' in agent
    assert 'queue.spoolDirectory="/var/spool/rsyslog"' in agent
    assert 'target="shell.example.net" port="6514"' in agent
    assert f'StreamDriverPermittedPeers="{pki.SHELL_PEER_NAME}"' in agent
    assert f'constant(value=" {AGENT} ")' in agent
    for text in (shell, mine, agent):
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "global(" not in code
        assert re.findall(r'module\(load="(\w+)"', code) == (["imtcp"] if text is shell else [])


def test_docker_log_options_point_at_the_agent_socket(tmp_path):
    paths = Paths(tmp_path)
    assert rsyslog.docker_log_options(SESSION, paths.agent_log_socket) == {
        "syslog-address": f"unixgram://{tmp_path}/run/convocate-agent/syslog.sock",
        "syslog-format": "rfc5424",
        "tag": f"convocate-{SESSION}",
        "mode": "non-blocking",
    }
    assert len(common_syslog.session_log_tag(SESSION)) <= 48, "RFC 5424 APP-NAME"


@pytest.mark.parametrize("bad", ['/var/log/x"y', "/var/log/a b", "relative/dir", "/var/log/$x", "/var/log/a\nb",
                                 "/var/log/../../etc", "/var/log/a\\b"])
def test_paths_that_could_break_out_of_a_rainerscript_string_are_refused(bad):
    listener = rsyslog.ShellListener.from_paths(Paths())
    with pytest.raises(ConfigError, match="log_dir"):
        rsyslog.render_shell_dropin(replace(listener, log_dir=Path(bad)))
    forwarder = rsyslog.AgentForwarder.from_paths(Paths(), AGENT, "shell.example.net")
    with pytest.raises(ConfigError, match="socket"):
        rsyslog.render_agent_dropin(replace(forwarder, socket=Path(bad)))


@pytest.mark.parametrize("field,value", [("agent_id", "AB12CD34"), ("agent_id", "ab12cd34/.."),
                                         ("shell_address", 'shell"x'), ("shell_address", "a b"),
                                         ("shell_port", 0), ("shell_port", 70000), ("shell_peer_name", "*"),
                                         ("queue_max_disk_bytes", 10), ("resume_interval_s", 0)])
def test_agent_parameters_are_checked(field, value):
    forwarder = rsyslog.AgentForwarder.from_paths(Paths(), AGENT, "shell.example.net")
    with pytest.raises(ConfigError):
        rsyslog.render_agent_dropin(replace(forwarder, **{field: value}))


@pytest.mark.parametrize("field,value", [("address", "not an address"), ("file_owner", 'root"'), ("dir_mode", -1),
                                         ("ca_file", Path('/etc/x"y'))])
def test_shell_parameters_are_checked(field, value):
    listener = rsyslog.ShellListener.from_paths(Paths())
    with pytest.raises(ConfigError):
        rsyslog.render_shell_agent_dropin(replace(listener, **{field: value}), AGENT, rsyslog.FIRST_PORT)


@pytest.mark.parametrize("agent_id,port", [("AB12CD34", 6514), ("ab12cd34/..", 6514), ('ab12"d34', 6514),
                                           ("*", 6514), (AGENT, 0), (AGENT, 70000)])
def test_a_listener_needs_an_agent_id_and_a_port(agent_id, port):
    with pytest.raises(ConfigError):
        rsyslog.render_shell_agent_dropin(rsyslog.ShellListener.from_paths(Paths()), agent_id, port)


def test_log_ports_are_kept_then_the_lowest_free_one():
    ports = rsyslog.port_range()
    assert (ports[0], ports[-1]) == (6514, 6769) and rsyslog.firewall_rule() == "6514:6769/tcp"
    others = {"zz99yy88": 6514, "yy88zz99": 6516}
    # A re-run keeps the agent's port even though its own listener is on it now.
    assert rsyslog.choose_log_port(AGENT, 6520, others, {6520}, ports) == 6520
    # A new agent: neither another agent's port nor one some other daemon listens on.
    assert rsyslog.choose_log_port(AGENT, None, others, {6515}, ports) == 6517
    # A recorded port another agent holds, or one outside the range, is given up for a free one.
    assert rsyslog.choose_log_port(AGENT, 6516, others, set(), ports) == 6515
    assert rsyslog.choose_log_port(AGENT, 514, others, set(), ports) == 6515
    full = {f"a{i:07d}": p for i, p in enumerate(rsyslog.port_range(7000, 3))}
    with pytest.raises(ConfigError, match="no free TLS log port"):
        rsyslog.choose_log_port(AGENT, None, full, set(), rsyslog.port_range(7000, 3))
    with pytest.raises(ConfigError):
        rsyslog.port_range(65500, 256)


def test_rsyslog_account_reads_the_privilege_drop():
    assert rsyslog.rsyslog_account("module(load=\"imuxsock\")\n$FileOwner root\n") == ("root", "root")
    ubuntu = "$PrivDropToUser syslog\n$PrivDropToGroup syslog   # Ubuntu\n#$PrivDropToUser nobody\n"
    assert rsyslog.rsyslog_account(ubuntu) == ("syslog", "syslog")


def test_dropins_pass_rsyslogd_check_beside_debians_rsyslog_conf(tmp_path):
    """Both drop-ins in one /etc/rsyslog.d with Debian's own rsyslog.conf: no module loaded twice, no global clash."""
    system_conf = Path("/etc/rsyslog.conf")
    if not system_conf.exists():
        pytest.fail("/etc/rsyslog.conf is missing: run ./build.sh deps (rsyslog)")
    text = system_conf.read_text()
    assert "$IncludeConfig /etc/rsyslog.d/*.conf" in text
    dropins = tmp_path / "rsyslog.d"
    dropins.mkdir()
    main = tmp_path / "rsyslog.conf"
    main.write_text(text.replace("$IncludeConfig /etc/rsyslog.d/*.conf", f"$IncludeConfig {dropins}/*.conf"))
    paths = Paths()
    listener = rsyslog.ShellListener.from_paths(paths)
    (dropins / rsyslog.SHELL_DROPIN).write_text(rsyslog.render_shell_dropin(listener))
    for i, agent_id in enumerate((AGENT, "zz99yy88")):  # two agents' listeners beside each other
        (dropins / rsyslog.shell_agent_dropin(agent_id)).write_text(
            rsyslog.render_shell_agent_dropin(listener, agent_id, rsyslog.FIRST_PORT + i))
    (dropins / rsyslog.AGENT_DROPIN).write_text(
        rsyslog.render_agent_dropin(rsyslog.AgentForwarder.from_paths(paths, AGENT, "shell.example.net")))
    (dropins / rsyslog.MESSAGE_SIZE_DROPIN).write_text(rsyslog.render_message_size_dropin())
    result = subprocess.run([RSYSLOGD, "-N1", "-f", str(main)], capture_output=True, text=True)
    assert result.returncode == 0 and "error" not in result.stderr.lower(), result.stderr
    # The check does catch a drop-in that loads a module Debian's file already loads.
    (dropins / "99-twice.conf").write_text('module(load="imuxsock")\n')
    result = subprocess.run([RSYSLOGD, "-N1", "-f", str(main)], capture_output=True, text=True)
    assert "already in this config" in result.stderr


# --- the real thing ------------------------------------------------------------------------------------

def test_a_session_line_arrives_in_the_agents_log_over_tls(cluster: Cluster):
    system_log_dir = Path("/var/log/convocate-agent")
    existed = system_log_dir.exists()
    cluster.shell.start()
    cluster.agent.start()
    cluster.send(docker_datagram("hello from the session"), docker_datagram("to stderr", severity=3),
                 docker_datagram("ünïcödé and a tab\tin it"))
    lines = cluster.wait_for_lines("hello from the session", "to stderr", "ünïcödé and a tab#011in it")
    tag = common_syslog.session_log_tag(SESSION)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d"
    assert re.fullmatch(rf"{stamp} {tag}: hello from the session", lines[0]), lines
    assert os.listdir(cluster.log_dir) == [f"{AGENT}.log"], "nothing rejected"
    assert stat.S_IMODE(cluster.log_dir.stat().st_mode) == rsyslog.LOG_DIR_MODE
    assert stat.S_IMODE(cluster.agent_log().stat().st_mode) == rsyslog.LOG_FILE_MODE
    assert system_log_dir.exists() == existed, "the system's /var/log was not touched"


def test_a_client_certificate_of_another_ca_is_refused(cluster: Cluster):
    cluster.shell.start()
    foreign = pki.CertificateAuthority.create().issue_agent("zz99yy88")
    outcome = cluster.tls_send([frame("zz99yy88", "from an outsider")], foreign)
    assert outcome != b"open", "the listener kept a connection with a foreign certificate open"
    wait_for(lambda: "certificate invalid: signer not found" in cluster.shell.log(), "the listener's refusal")
    # The shell's own server certificate is issued by the same CA but is no agent's (name, serverAuth only).
    shell_cert = pki.IssuedCert(cluster.listener.cert_file.read_bytes(), cluster.listener.key_file.read_bytes())
    outcome = cluster.tls_send([frame("yy88zz99", "from the shell's key")], shell_cert)
    assert outcome != b"open"
    wait_for(lambda: "key purpose OID does not match" in cluster.shell.log(), "the listener's refusal")
    # The listener itself works: an agent's certificate gets through.
    good, _ = pki.ensure_agent_cert(cluster.ca, AGENT, None, None)
    assert cluster.tls_send([frame(AGENT, "from the agent")], good) == b"open"
    cluster.wait_for_lines("from the agent")
    assert sorted(os.listdir(cluster.log_dir)) == [f"{AGENT}.log"]
    assert "from an outsider" not in cluster.agent_log().read_text()


@pytest.mark.parametrize("impostor", ["another CA", "an agent's certificate", "another name"])
def test_the_agent_sends_nothing_to_a_shell_it_cannot_authenticate(cluster: Cluster, impostor: str):
    if impostor == "another CA":
        fake = pki.CertificateAuthority.create().issue_server(["localhost"], ["127.0.0.1"])
        refusal = "signer not found"
    elif impostor == "an agent's certificate":  # the cluster CA's, but clientAuth only
        fake = cluster.ca.issue_agent("zz99yy88")
        refusal = "key purpose OID does not match"
    else:  # a genuine shell certificate, but the agent expects another name
        fake = cluster.ca.issue_server(["localhost"])
        forwarder = replace(cluster.forwarder, shell_peer_name="elsewhere.convocate")
        dropin = rsyslog.rsyslog_dropin_dir(cluster.paths) / rsyslog.AGENT_DROPIN
        dropin.write_text(rsyslog.render_agent_dropin(forwarder))
        refusal = "not permitted to talk to it"
    cluster.listener.cert_file.write_bytes(fake.cert_pem)
    cluster.listener.key_file.write_bytes(fake.key_pem)
    # The impostor accepts this agent's certificate, so only the agent's own check can stop the lines.
    cluster.shell.start()
    cluster.agent.start()
    cluster.send(docker_datagram("for the real shell only"))
    wait_for(lambda: refusal in cluster.agent.log(), f"the agent's refusal ({refusal!r})")
    assert not cluster.log_dir.exists() or os.listdir(cluster.log_dir) == []


def test_forged_agent_ids_never_name_a_file_outside_the_log_dir(cluster: Cluster):
    cluster.shell.start()
    before = {p for p in cluster.paths.root.rglob("*")}
    forged = ["../../../../tmp/evil", f"{AGENT}/../../x", "..", "AB12CD34", "ab12cd3", "ab12cd345", "-",
              "ab12cd3%", "_rejected"]
    good, _ = pki.ensure_agent_cert(cluster.ca, AGENT, None, None)
    frames = [frame(h, f"forged {i}") for i, h in enumerate(forged)] + [frame(AGENT, "genuine")]
    assert cluster.tls_send(frames, good) == b"open"
    cluster.wait_for_lines("genuine")
    reject = cluster.log_dir / rsyslog.REJECT_LOG
    rejected = wait_for(lambda: reject.exists() and len(reject.read_text().splitlines()) == len(forged) and
                        reject.read_text().splitlines(), "every forged message in the reject file")
    assert all(f"forged {i}" in line for i, line in enumerate(rejected))
    assert f'from 127.0.0.1 by convocate_agent_{AGENT} hostname="..\\/..\\/..\\/..\\/tmp\\/evil" ' in rejected[0], \
        "JSON-escaped, with the input (the certificate) it came by"
    assert sorted(os.listdir(cluster.log_dir)) == [rsyslog.REJECT_LOG, f"{AGENT}.log"]
    new = {p for p in cluster.paths.root.rglob("*")} - before
    unexpected = {p for p in new if p.parent not in (cluster.log_dir, cluster.shell.conf.parent / "shell-work")
                  and p != cluster.log_dir}
    assert not unexpected
    assert not Path("/tmp/evil").exists()


def test_lines_wait_in_the_queue_while_the_shell_is_down_even_across_an_agent_restart(cluster: Cluster):
    cluster.agent.start()
    cluster.send(*(docker_datagram(f"queued {i}") for i in range(5)))
    time.sleep(2)  # a few failed connection attempts (nothing listens on the shell's port)
    assert cluster.lines() == []
    cluster.agent.stop()  # queue.saveOnShutdown: what is still queued goes to the spool directory
    spooled = list(cluster.forwarder.spool_dir.glob("convocate-forward*"))
    assert spooled, f"nothing spooled in {cluster.forwarder.spool_dir}:\n{cluster.agent.log()}"
    cluster.agent.start()
    cluster.send(*(docker_datagram(f"queued {i}") for i in range(5, 8)))
    time.sleep(1)
    cluster.shell.start()
    lines = cluster.wait_for_lines(*(f"queued {i}" for i in range(8)))
    # At least once, in no promised order: plain TCP syslog has no acknowledgements, and when the
    # connection comes up rsyslog 8.2302's omfwd sends again the batch it was retrying, then the queue
    # (seen in CI and here: 5 6 7 5 0 1 2 3 4 ..., and 1 2 3 4 0 1 2 ...). Each line keeps its timestamp.
    texts = [line.rsplit(": ", 1)[1] for line in lines]
    assert sorted(set(texts)) == [f"queued {i}" for i in range(8)], texts


def test_logrotate_rotates_and_rsyslog_reopens_the_file(cluster: Cluster, tmp_path: Path):
    if shutil.which("logrotate") is None:
        pytest.fail("logrotate is missing: run ./build.sh deps")
    text = LOGROTATE_FILE.read_text()
    assert "/var/log/convocate-agent/*.log {" in text
    conf = tmp_path / "convocate-shell-logs"
    postrotate = re.compile(r"(postrotate\n)(.*?)(\n\s*endscript)", re.S)
    assert postrotate.search(text)
    # The packaged file, pointed at this test's directory and at this test's rsyslogd instead of the system's.
    conf.write_text(postrotate.sub(r"\g<1>\t\tkill -HUP {pid}\g<3>", text)
                    .replace("/var/log/convocate-agent/", f"{cluster.log_dir}/"))
    cluster.shell.start()
    cluster.agent.start()
    conf.write_text(conf.read_text().replace("{pid}", str(cluster.shell.proc.pid)))
    cluster.send(docker_datagram("before rotation"))
    cluster.wait_for_lines("before rotation")
    result = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rotated = cluster.log_dir / f"{AGENT}.log.1"
    assert rotated.read_text().endswith("before rotation\n")
    cluster.send(docker_datagram("after rotation"))
    lines = cluster.wait_for_lines("after rotation")
    assert not any("before rotation" in line for line in lines)


# --- Docker's syslog driver ----------------------------------------------------------------------------

@pytest.fixture
def run_container(docker_client) -> Iterator[Callable[..., str]]:
    """Run a short-lived labelled container to its end; every one is force-removed afterwards."""
    import docker

    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {BASE_IMAGE} is missing; run ./build.sh image")
    for stale in docker_client.containers.list(all=True, filters={"label": "convocate.test=rsyslog",
                                                                   "status": "exited"}):
        with contextlib.suppress(docker.errors.APIError):
            stale.remove(force=True)
    created = []

    def run(script: str, log_config: dict[str, str]) -> str:
        c = docker_client.containers.create(
            BASE_IMAGE, ["sh", "-c", script], labels=TEST_LABEL,
            log_config=docker.types.LogConfig(type="syslog", config=log_config))
        created.append(c)
        c.start()
        assert c.wait(timeout=60)["StatusCode"] == 0
        return c.id

    yield run
    for c in created:
        with contextlib.suppress(docker.errors.APIError):
            c.remove(force=True)


@pytest.mark.docker
def test_dockers_syslog_driver_sends_rfc5424_with_the_tag_as_app_name(run_container, short_root: Path):
    paths = Paths(short_root)
    paths.agent_log_socket.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(paths.agent_log_socket))
        s.settimeout(WAIT_S)
        run_container("echo out; echo err >&2", rsyslog.docker_log_options(SESSION, paths.agent_log_socket))
        got = sorted(s.recv(65536) for _ in range(2))
    tag = re.escape(common_syslog.session_log_tag(SESSION))
    head = rf"1 \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S+ {tag} \d+ {tag} - "
    assert re.fullmatch(rb"<27>" + head.encode() + rb"err\n", got[0]), got
    assert re.fullmatch(rb"<30>" + head.encode() + rb"out\n", got[1]), got


@pytest.mark.docker
def test_a_container_line_reaches_the_shell_through_dockers_syslog_driver(cluster: Cluster, run_container):
    cluster.shell.start()
    cluster.agent.start()
    session = str(uuid.uuid4())
    run_container("echo hello from a container; echo and its stderr >&2",
                  rsyslog.docker_log_options(session, cluster.forwarder.socket))
    lines = cluster.wait_for_lines("hello from a container", "and its stderr")
    assert all(line.split(" ", 2)[1] == f"{common_syslog.session_log_tag(session)}:" for line in lines)


@pytest.mark.docker
def test_a_running_container_keeps_logging_across_a_restart_of_the_agents_rsyslog(cluster: Cluster, docker_client):
    """init-agent and update restart rsyslog under running sessions: Docker reconnects, the container never blocks."""
    import docker

    cluster.shell.start()
    cluster.agent.start()
    session = str(uuid.uuid4())
    script = "i=0; while [ $i -lt 40 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done"
    c = docker_client.containers.run(
        BASE_IMAGE, ["sh", "-c", script], labels=TEST_LABEL, detach=True,
        log_config=docker.types.LogConfig(type="syslog",
                                          config=rsyslog.docker_log_options(session, cluster.forwarder.socket)))
    try:
        cluster.wait_for_lines("tick 3")
        cluster.agent.stop()
        cluster.agent.start()
        assert c.wait(timeout=60)["StatusCode"] == 0
        cluster.wait_for_lines("tick 39")
        assert c.logs().decode().splitlines()[-1] == "tick 39", "docker logs (dual logging) still has it all"
    finally:
        with contextlib.suppress(docker.errors.APIError):
            c.remove(force=True)


# --- init-agent on the shell host: a port of its own per agent ------------------------------------------

async def test_init_agent_gives_each_agent_its_own_log_port_and_keeps_it(tmp_path: Path, monkeypatch):
    """logforward.ensure_log_port through a real Target on this machine, with the registry under tmp_path."""
    from convocate_host import logforward
    from convocate_host.report import LiveReport
    from convocate_host.target import LocalTarget

    paths = Paths(tmp_path)
    monkeypatch.setattr(logforward, "PATHS", paths)
    for agent_id in (AGENT, "zz99yy88"):
        paths.agent_dir(agent_id).mkdir(parents=True)  # peering registers the agent first
    target = LocalTarget("127.0.0.1")
    report = LiveReport(target.description, io.StringIO())
    with socket.socket() as busy:  # something else already listens on the first port of the range
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        first = busy.getsockname()[1]
        assert first in await logforward.listening_ports(target)
        mine = await logforward.ensure_log_port(target, AGENT, first, report)
        other = await logforward.ensure_log_port(target, "zz99yy88", first, report)
    assert first < mine < other < first + rsyslog.PORT_COUNT
    assert paths.agent_log_port_file(AGENT).read_text() == f"{mine}\n"
    # A re-run keeps both, even with the agents' own listeners up on them now.
    with socket.socket() as up:
        up.bind(("0.0.0.0", mine))
        up.listen()
        assert await logforward.ensure_log_port(target, AGENT, first, report) == mine
    assert await logforward.ensure_log_port(target, "zz99yy88", first, report) == other


def test_the_shared_drop_in_loads_imtcp_only_once_a_listener_needs_it(tmp_path):
    """rsyslogd -N1 refuses a loaded imtcp without an input: a new shell host's drop-in leaves it out."""
    listener = rsyslog.ShellListener.from_paths(Paths())
    later = rsyslog.render_shell_dropin(listener, load_imtcp=False)
    assert 'module(load="imtcp")' not in later and "once the first agent's listener exists" in later
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(f'global(workDirectory="{tmp_path}")\n' + later)
    result = subprocess.run([RSYSLOGD, "-N1", "-f", str(conf)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    conf.write_text(f'global(workDirectory="{tmp_path}")\n' + rsyslog.render_shell_dropin(listener))
    refused = subprocess.run([RSYSLOGD, "-N1", "-f", str(conf)], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "no listeners defined" in refused.stderr + refused.stdout
