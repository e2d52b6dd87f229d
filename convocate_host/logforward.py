"""Session logs from agent hosts to the shell host over TLS: the PKI and rsyslog files put on both hosts.

The certificates come from :mod:`convocate_host.pki` and the rsyslog drop-ins from
:mod:`convocate_host.rsyslog` (both pure); this module reads what a host has, decides what to keep,
writes what differs, checks the whole rsyslog configuration with ``rsyslogd -N1`` and restarts
rsyslog only when one of its files changed. Where rsyslogd drops its privileges (Ubuntu's
``$PrivDropToUser syslog``), the keys it reads are made readable to its group (0640 ``root:syslog``)
and the log directory is its user's; Debian 12 runs it as root, and they stay root's alone.

- shell host (init-shell): the cluster CA in ``/etc/convocate/rsyslog-ca/`` (made once, never
  replaced: every agent certificate chains to it), the server certificate (reissued when a name is
  missing or it nears its end), ``/var/log/convocate-agent/``, the drop-in every agent's listener
  shares. The rotation of those logs is the ``convocate`` package's ``/etc/logrotate.d/convocate-agent-logs``.
- shell host (init-agent): the agent's own TLS log port, recorded in the registry
  (``/etc/convocate/agents/<id>/log-port``, kept on a re-run), and its listener drop-in, which admits
  only that agent's certificate (issue 14 item 7, see :mod:`convocate_host.rsyslog` for why a port
  per agent). Adding it restarts the shell's rsyslog: the other agents reconnect on their own and
  resend what they were sending (at least once). The ports come from ``--log-port`` on
  (:data:`rsyslog.PORT_COUNT` of them), which init-shell opens in ufw as one range.
- agent host (init-agent): the CA certificate, the agent's client certificate and key in
  ``/etc/convocate-agent/rsyslog-tls/``, the spool directory, the forwarding drop-in aimed at the
  agent's own port.
"""

from __future__ import annotations

from dataclasses import replace

from convocate.common.paths import Paths
from convocate_host import pki, rsyslog
from convocate_host.report import LiveReport
from convocate_host.target import HostError, Target

PATHS = Paths()
LOG_PORT = rsyslog.FIRST_PORT
RSYSLOG_UNIT = "rsyslog.service"


async def rsyslog_account(target: Target) -> tuple[str, str]:
    """The user and group the target's rsyslogd runs as (root on Debian 12, ``syslog`` on Ubuntu)."""
    conf = await target.read_file("/etc/rsyslog.conf")
    return rsyslog.rsyslog_account(conf.decode(errors="replace") if conf else "")


async def _write_tls_files(target: Target, directory: str, files: dict[str, bytes], account: tuple[str, str]) -> bool:
    """The TLS files, readable by rsyslogd: root's alone on Debian, its group's too where it drops privileges."""
    user, group = account
    shared = user != "root"
    await target.ensure_dir(directory, mode=0o750 if shared else 0o700, owner=f"root:{group}" if shared else "root:root")
    changed = False
    for name, data in files.items():
        mode = rsyslog.FILE_MODES[name]
        if shared and mode == 0o600:
            mode = 0o640
        changed |= await target.write_file(f"{directory}/{name}", data, mode=mode,
                                           owner=f"root:{group}" if shared else "root:root")
    return changed


async def _apply(target: Target, dropin_name: str, text: str, changed: bool, report: LiveReport) -> bool:
    """Write the drop-in (and the shared message-size one), validate rsyslog's configuration, restart
    it when anything changed."""
    await target.ensure_dir(str(PATHS.rsyslog_dropin_dir), mode=0o755)
    size_path = f"{PATHS.rsyslog_dropin_dir}/{rsyslog.MESSAGE_SIZE_DROPIN}"
    wrote = await target.write_file(size_path, rsyslog.render_message_size_dropin().encode(),
                                    mode=rsyslog.FILE_MODES[rsyslog.MESSAGE_SIZE_DROPIN])
    report.step(wrote, f"rsyslog drop-in {size_path}")
    changed |= wrote
    path = f"{PATHS.rsyslog_dropin_dir}/{dropin_name}"
    wrote = await target.write_file(path, text.encode(), mode=rsyslog.FILE_MODES.get(dropin_name, rsyslog.FILE_MODES[rsyslog.SHELL_AGENT_DROPIN]))
    report.step(wrote, f"rsyslog drop-in {path}")
    changed |= wrote
    await target.run(["rsyslogd", "-N1"], what="checking the rsyslog configuration", reads=True)
    active = (await target.run(["systemctl", "is-active", RSYSLOG_UNIT], check=False,
                                reads=True)).text.strip() == "active"
    if changed or not active:
        await target.run(["systemctl", "enable", RSYSLOG_UNIT], what="enabling rsyslog", check=False)
        await target.run(["systemctl", "restart", RSYSLOG_UNIT], what="restarting rsyslog")
        report.changed(f"{RSYSLOG_UNIT} restarted with the new configuration")
    else:
        report.kept(f"{RSYSLOG_UNIT} running with this configuration")
    return changed


def _shell_listener(account: tuple[str, str]) -> rsyslog.ShellListener:
    listener = rsyslog.ShellListener.from_paths(PATHS)
    if account[0] != "root":  # rsyslogd writes the logs as its own user there
        listener = replace(listener, file_owner=account[0])
    return listener


async def ensure_shell(shell: Target, names: list[str], port: int, report: LiveReport) -> bool:
    """CA, server certificate, log directory and the listeners' shared drop-in on the shell host.

    The listeners themselves are each agent's (:func:`ensure_agent`).

    Args:
        shell: The shell host.
        names: Names and addresses agents reach it by (the server certificate carries them).
        port: The first of the agents' TLS log ports (checked here, used by init-agent).
        report: Where steps go.

    Returns:
        True when anything changed.

    Raises:
        ConfigError: half a CA is there, or it is unusable (nothing is replaced).
        HostError: a command failed, e.g. ``rsyslogd -N1`` rejected the configuration.
    """
    ca_dir = str(PATHS.rsyslog_ca_dir)
    installed = {name: await shell.read_file(f"{ca_dir}/{name}")
                 for name in (rsyslog.CA_CERT, rsyslog.CA_KEY, rsyslog.SERVER_CERT, rsyslog.SERVER_KEY)}
    state = pki.ensure_shell_pki(installed[rsyslog.CA_CERT], installed[rsyslog.CA_KEY],
                                 installed[rsyslog.SERVER_CERT], installed[rsyslog.SERVER_KEY], dns_names=names)
    for warning in state.ca_warnings:
        report.note(warning)
    account = await rsyslog_account(shell)
    # The CA's key stays root's alone: rsyslog never reads it, only convocate-host does.
    changed = await _write_tls_files(shell, ca_dir, {rsyslog.CA_CERT: state.ca.cert_pem,
                                                     rsyslog.SERVER_CERT: state.server.cert_pem,
                                                     rsyslog.SERVER_KEY: state.server.key_pem}, account)
    changed |= await shell.write_file(f"{ca_dir}/{rsyslog.CA_KEY}", state.ca.key_pem, mode=0o600)
    report.step(state.ca_created, f"rsyslog CA {'created' if state.ca_created else 'kept'} ({ca_dir})")
    if state.server_reasons:
        report.changed(f"rsyslog server certificate issued for {', '.join(names)}: {'; '.join(state.server_reasons)}")
    else:
        report.kept(f"rsyslog server certificate kept (names {', '.join(names)})")
    log_dir = str(PATHS.forwarded_log_dir)
    rsyslog.port_range(port)  # a first port whose range leaves 1..65535 fails before anything is written
    listener = _shell_listener(account)
    made = await shell.ensure_dir(log_dir, mode=rsyslog.LOG_DIR_MODE,
                                  owner=f"{listener.file_owner}:{rsyslog.LOG_GROUP}")
    report.step(made, f"session log directory {log_dir}")
    listeners = await shell.sh('ls "$1"/' + rsyslog.SHELL_AGENT_DROPIN.format(agent_id="*") + " 2>/dev/null; true",
                               str(PATHS.rsyslog_dropin_dir), what="looking for the agents' listeners", reads=True)
    text = rsyslog.render_shell_dropin(listener, load_imtcp=bool(listeners.text.strip()))
    return await _apply(shell, rsyslog.SHELL_DROPIN, text, changed, report)


async def listening_ports(target: Target) -> set[int]:
    """The TCP ports something listens on at ``target`` (``ss -Htln``, iproute2); empty when ss fails."""
    result = await target.run(["ss", "-Htln"], check=False, reads=True)
    ports = set()
    for line in result.text.splitlines() if result.ok else []:
        fields = line.split()
        if len(fields) >= 4 and fields[3].rpartition(":")[2].isdigit():
            ports.add(int(fields[3].rpartition(":")[2]))
    return ports


async def ensure_log_port(shell: Target, agent_id: str, first_port: int, report: LiveReport) -> int:
    """The agent's own TLS log port on the shell host, recorded in its registry dir (kept on a re-run).

    Args:
        shell: The shell host; the agent's registry directory must exist (peering made it).
        agent_id: The agent.
        first_port: The first port of the range (:func:`rsyslog.port_range`).
        report: Where the shell's steps go.

    Returns:
        The port (see :func:`rsyslog.choose_log_port`).

    Raises:
        ConfigError: the range is full.
        HostError: the registry cannot be read or written.
    """
    script = ('for f in "$1"/*/log-port; do [ -f "$f" ] && '
              'printf "%s %s\\n" "$(basename "$(dirname "$f")")" "$(head -n1 "$f")"; done; true')
    result = await shell.sh(script, str(PATHS.agents_dir), what="reading the agents' TLS log ports", reads=True)
    recorded = {}
    for line in result.text.splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            recorded[name] = int(value)
    port = rsyslog.choose_log_port(agent_id, recorded.get(agent_id), recorded, await listening_ports(shell),
                                   rsyslog.port_range(first_port))
    path = str(PATHS.agent_log_port_file(agent_id))
    report.step(await shell.write_file(path, f"{port}\n".encode(), mode=0o644),
                f"agent {agent_id}'s TLS log port {port} ({path})")
    return port


async def ensure_agent(shell: Target, agent: Target, agent_id: str, shell_address: str, port: int,
                       report: LiveReport, shell_report: LiveReport) -> bool:
    """The agent's listener on the shell host, its client certificate and its forwarding; True when any changed.

    Args:
        shell: The shell host (holds the CA's key).
        agent: The agent host.
        agent_id: Its ID (the certificate's name, the log file's name).
        shell_address: How the agent reaches the shell host.
        port: The first of the shell's TLS log ports; the agent gets one of them (:func:`ensure_log_port`).
        report: Where the agent's steps go.
        shell_report: Where the shell's steps go.

    Raises:
        HostError: the shell host has no CA (run init-shell), or a command failed.
        ConfigError: the CA is unusable, or no port of the range is free.
    """
    ca_dir = str(PATHS.rsyslog_ca_dir)
    ca_cert = await shell.read_file(f"{ca_dir}/{rsyslog.CA_CERT}")
    ca_key = await shell.read_file(f"{ca_dir}/{rsyslog.CA_KEY}")
    if ca_cert is None or ca_key is None:
        raise HostError(f"{shell.description}: no rsyslog CA in {ca_dir}: run `convocate-host init-shell` first")
    ca = pki.CertificateAuthority.load(ca_cert, ca_key)
    # The shell side first, so the listener is up when the agent's rsyslog starts sending.
    own_port = await ensure_log_port(shell, agent_id, port, shell_report)
    listener = _shell_listener(await rsyslog_account(shell))
    # The shared drop-in loads imtcp from the first listener on (init-shell leaves it out until then).
    shared = f"{PATHS.rsyslog_dropin_dir}/{rsyslog.SHELL_DROPIN}"
    loaded = await shell.write_file(shared, rsyslog.render_shell_dropin(listener).encode(),
                                    mode=rsyslog.FILE_MODES[rsyslog.SHELL_DROPIN])
    shell_report.step(loaded, f"rsyslog drop-in {shared} loads imtcp")
    text = rsyslog.render_shell_agent_dropin(listener, agent_id, own_port)
    changed = await _apply(shell, rsyslog.shell_agent_dropin(agent_id), text, loaded, shell_report)
    tls = str(PATHS.agent_rsyslog_tls)
    pair, reasons = pki.ensure_agent_cert(ca, agent_id, await agent.read_file(f"{tls}/{rsyslog.CLIENT_CERT}"),
                                          await agent.read_file(f"{tls}/{rsyslog.CLIENT_KEY}"))
    changed |= await _write_tls_files(agent, tls, {rsyslog.CA_CERT: ca.cert_pem, rsyslog.CLIENT_CERT: pair.cert_pem,
                                                  rsyslog.CLIENT_KEY: pair.key_pem}, await rsyslog_account(agent))
    if reasons:
        report.changed(f"rsyslog client certificate {pki.agent_peer_name(agent_id)} issued: {'; '.join(reasons)}")
    else:
        report.kept(f"rsyslog client certificate {pki.agent_peer_name(agent_id)} kept")
    await agent.ensure_dir(str(PATHS.rsyslog_spool_dir), mode=0o700)
    text = rsyslog.render_agent_dropin(rsyslog.AgentForwarder.from_paths(PATHS, agent_id, shell_address,
                                                                         shell_port=own_port))
    return await _apply(agent, rsyslog.AGENT_DROPIN, text, changed, report)
