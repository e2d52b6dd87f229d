"""Every host path convocate uses, declared once (DESIGN §4, §5).

Nothing else in the code spells ``/etc/convocate-agent`` or ``/home/claude``.
A root prefix taken from the environment variable ``CONVOCATE_ROOT`` relocates
all of them, so tests and the demo run a whole cluster under a directory:
``$CONVOCATE_ROOT/etc/convocate-agent/agent-id``, ``$CONVOCATE_ROOT/home/claude/<uuid>/``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# The ``claude`` account (DESIGN §4), re-exported for the callers that find it beside the paths.
from convocate.common.constants import CLAUDE_GID, CLAUDE_UID, CLAUDE_USER  # noqa: F401
from convocate.common.model import validate_uuid

ROOT_ENV = "CONVOCATE_ROOT"

#: The metadata file inside a home, as the original convocate and versions before issue 14 kept it.
LEGACY_SESSION_FILE = "session.json"


@dataclass(frozen=True)
class Paths:
    """The filesystem layout of one convocate installation.

    Args:
        root: Prefix of every path; ``/`` on a real host.
    """

    root: Path = Path("/")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Paths:
        """Build the layout for ``$CONVOCATE_ROOT`` (``/`` when unset or empty)."""
        env = os.environ if environ is None else environ
        value = env.get(ROOT_ENV, "")
        return cls(Path(value).absolute() if value else Path("/"))

    @property
    def relocated(self) -> bool:
        """True under a ``CONVOCATE_ROOT`` prefix: system users and units must not be touched."""
        return self.root != Path("/")

    def _p(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # --- agent host: /etc/convocate-agent (DESIGN §4) ----------------------------
    @property
    def agent_etc(self) -> Path:
        return self._p("etc", "convocate-agent")

    @property
    def agent_id_file(self) -> Path:
        return self.agent_etc / "agent-id"

    @property
    def agent_host_key(self) -> Path:
        return self.agent_etc / "ssh_host_ed25519_key"

    @property
    def agent_authorized_keys(self) -> Path:
        return self.agent_etc / "authorized_keys"

    @property
    def agent_operator_ca(self) -> Path:
        """``/etc/convocate-agent/operator-ca.pub`` (0644): the cluster's operator CA, as init-agent installs it;
        ``operator_identify`` accepts certificates it signed (issue 19). Absent: no operator can identify."""
        return self.agent_etc / "operator-ca.pub"

    @property
    def shell_host_file(self) -> Path:
        return self.agent_etc / "shell-host"

    @property
    def agent_to_shell_key(self) -> Path:
        return self.agent_etc / "agent_to_shell_ed25519_key"

    @property
    def shell_known_host(self) -> Path:
        return self.agent_etc / "shell_known_host"

    # --- agent host: /var/lib/convocate-agent, state the agent and convocate-host write ---------
    @property
    def agent_state_dir(self) -> Path:
        """State that is not configuration (FHS §5.8): settings the agent writes, the current image."""
        return self._p("var", "lib", "convocate-agent")

    @property
    def current_image_file(self) -> Path:
        return self.agent_state_dir / "current-image"

    @property
    def agent_settings(self) -> Path:
        return self.agent_state_dir / "settings.json"

    @property
    def agent_moving_dir(self) -> Path:
        """``<uuid>`` files naming the agent a move takes that session to (issue 18): its copy here
        is not started again until the move rolls back or ends (``override`` ``moving_to``)."""
        return self.agent_state_dir / "moving"

    @property
    def agent_image_spool(self) -> Path:
        """Where ``convocate-agent load-image`` spools an image archive until its digest is checked."""
        return self.agent_state_dir / "incoming"

    @property
    def agent_credentials_dir(self) -> Path:
        """``/var/lib/convocate-agent/credentials/``: ``<name>.json`` (0600, the agent's user), the cluster's
        Claude credentials as the shell host sent them (``credential_set``); no session mounts it."""
        return self.agent_state_dir / "credentials"

    def session_credential_env(self, session_id: str) -> Path:
        """``/run/convocate-agent/sessions/<uuid>/credential.env``: the session's credential for its entrypoint,
        written at each container start (0600, the session user), seen in that container only."""
        return self.session_run_dir(session_id) / "credential.env"

    @property
    def agent_rsyslog_tls(self) -> Path:
        return self.agent_etc / "rsyslog-tls"

    @property
    def session_env_file(self) -> Path:
        """Root-only ``KEY=VALUE`` file (e.g. ``ANTHROPIC_API_KEY``) passed to every session container."""
        return self.agent_etc / "session.env"

    @property
    def agent_run_dir(self) -> Path:
        """Runtime state of the agent (``/run/convocate-agent``): the sessions' report sockets."""
        return self._p("run", "convocate-agent")

    @property
    def agent_log_socket(self) -> Path:
        """The Unix datagram socket the agent host's rsyslog reads session logs from (imuxsock).

        Session containers log there through Docker's ``syslog`` driver
        (``syslog-address=unixgram://<this>``); rsyslog forwards them to the shell host over TLS.
        """
        return self.agent_run_dir / "syslog.sock"

    @property
    def agent_audit_socket(self) -> Path:
        """The Unix datagram socket the agent host's rsyslog reads the agent's audit records from (a second
        imuxsock input, forwarding only the agent user's datagrams to the shell host; issue 19)."""
        return self.agent_run_dir / "audit.sock"

    def session_run_dir(self, session_id: str) -> Path:
        """``/run/convocate-agent/sessions/<uuid>/``: mounted read-only in the session as ``/run/convocate-agent``."""
        return self.agent_run_dir / "sessions" / validate_uuid(session_id)

    # --- agent host: the agent's records of its sessions (issue 14) ---------------------------
    # A session owns its home and nothing else: what the agent knows about a session (its metadata,
    # its lifecycle lock, the metadata of its trash entries) lives in the agent's state directory,
    # which no session container mounts. Only staging and trash stay beside the homes, because
    # rename(2) must not cross filesystems; no container mounts those either.
    @property
    def session_records_dir(self) -> Path:
        """``/var/lib/convocate-agent/sessions/``: one ``<uuid>.json`` per session, written by the agent alone."""
        return self.agent_state_dir / "sessions"

    def session_record(self, session_id: str) -> Path:
        """``/var/lib/convocate-agent/sessions/<uuid>.json``, the agent's record of one session."""
        return self.session_records_dir / f"{validate_uuid(session_id)}.json"

    @property
    def session_locks_dir(self) -> Path:
        """``/var/lib/convocate-agent/locks/``: the lifecycle locks."""
        return self.agent_state_dir / "locks"

    def lock_file(self, session_id: str) -> Path:
        """``/var/lib/convocate-agent/locks/<uuid>.lock``, holding the PID of the lifecycle operation in progress."""
        return self.session_locks_dir / f"{validate_uuid(session_id)}.lock"

    def legacy_lock_file(self, session_id: str) -> Path:
        """``/home/claude/<uuid>.lock``, where versions before issue 14 kept the lock."""
        return self.session_base / f"{validate_uuid(session_id)}.lock"

    @property
    def recordings_dir(self) -> Path:
        """``/var/lib/convocate-agent/recordings/``: ``<uuid>/<start>.cast``, the sessions' terminal
        recordings (asciicast v2, issue 19), written by the agent, out of every session's reach."""
        return self.agent_state_dir / "recordings"

    def session_recordings_dir(self, session_id: str) -> Path:
        return self.recordings_dir / validate_uuid(session_id)

    @property
    def agent_audit_log(self) -> Path:
        """``/var/lib/convocate-agent/audit.jsonl``: the agent's audit trail, one JSON record per line,
        each carrying the SHA-256 of the line before it (issue 19)."""
        return self.agent_state_dir / "audit.jsonl"

    @property
    def trash_records_dir(self) -> Path:
        """``/var/lib/convocate-agent/trash/``: ``<trash-id>.json``, the record of each deleted session."""
        return self.agent_state_dir / "trash"

    # --- agent host: sessions under /home/claude ----------------------------------
    @property
    def session_base(self) -> Path:
        return self._p("home", CLAUDE_USER)

    @property
    def skel_dir(self) -> Path:
        return self.session_base / ".skel"

    @property
    def trash_dir(self) -> Path:
        """Deleted homes, ``<uuid>.<ns>/`` (beside the homes: a rename must stay on their filesystem)."""
        return self.session_base / ".trash"

    @property
    def staging_dir(self) -> Path:
        """Where create and clone assemble a home before renaming it into place."""
        return self.session_base / ".staging"

    @property
    def claude_shared_dir(self) -> Path:
        """Claude credentials and settings shared read-only with every session."""
        return self.session_base / ".claude-shared"

    def session_dir(self, session_id: str) -> Path:
        """``/home/claude/<uuid>``, the session's home; the UUID is validated before it becomes a path."""
        return self.session_base / validate_uuid(session_id)

    def legacy_session_file(self, session_id: str) -> Path:
        """``/home/claude/<uuid>/session.json``: where the original convocate and versions before issue 14
        kept the metadata, inside the home the session can write. Read only to migrate it once (agent
        host) and to show orphans (shell host)."""
        return self.session_dir(session_id) / LEGACY_SESSION_FILE

    # --- shell host: /etc/convocate (DESIGN §5) ----------------------------------
    @property
    def shell_etc(self) -> Path:
        return self._p("etc", "convocate")

    @property
    def agents_dir(self) -> Path:
        return self.shell_etc / "agents"

    def agent_dir(self, agent_id: str) -> Path:
        """``/etc/convocate/agents/<agent-id>/``: one registered agent."""
        return self.agents_dir / agent_id

    def agent_address_file(self, agent_id: str) -> Path:
        """Host name or address of the agent."""
        return self.agent_dir(agent_id) / "address"

    def agent_port_file(self, agent_id: str) -> Path:
        """The agent's SSH port (222 when absent)."""
        return self.agent_dir(agent_id) / "port"

    def agent_log_port_file(self, agent_id: str) -> Path:
        """The shell's TLS log port that only this agent's client certificate may send to (issue 14 item 7)."""
        return self.agent_dir(agent_id) / "log-port"

    def shell_to_agent_key(self, agent_id: str) -> Path:
        """Private key this shell authenticates to the agent with."""
        return self.agent_dir(agent_id) / "shell_to_agent_ed25519_key"

    def agent_known_host(self, agent_id: str) -> Path:
        """The agent's pinned host key."""
        return self.agent_dir(agent_id) / "known_host"

    def agent_status_key(self, agent_id: str) -> Path:
        """The public half of the agent's status key: the one key status-serve takes as this agent (issue 14)."""
        return self.agent_dir(agent_id) / "status_ed25519_key.pub"

    @property
    def operator_ca_key(self) -> Path:
        """``/etc/convocate/operator-ca`` (root, 0600): the operator CA's private key, made by init-shell; it signs
        the operators' SSH user certificates (``convocate-host operator-cert``, issue 19)."""
        return self.shell_etc / "operator-ca"

    @property
    def operator_ca_pub(self) -> Path:
        """``/etc/convocate/operator-ca.pub`` (0644): the operator CA's public key, read by every operator's
        ``convocate`` to find its certificate, and installed on each agent by init-agent."""
        return self.shell_etc / "operator-ca.pub"

    @property
    def shell_domain_file(self) -> Path:
        """The cluster's DNS domain (one line)."""
        return self.shell_etc / "domain"

    @property
    def shell_credentials_dir(self) -> Path:
        """``/etc/convocate/credentials/``: ``<name>.json`` (0600, root), the cluster's Claude credentials
        (``convocate auth set``), sent to every agent."""
        return self.shell_etc / "credentials"

    @property
    def status_host_key(self) -> Path:
        return self.shell_etc / "status_host_ed25519_key"

    @property
    def status_authorized_keys(self) -> Path:
        return self.shell_etc / "status_authorized_keys"

    @property
    def rsyslog_ca_dir(self) -> Path:
        return self.shell_etc / "rsyslog-ca"

    @property
    def run_dir(self) -> Path:
        return self._p("run", "convocate")

    @property
    def status_socket(self) -> Path:
        return self.run_dir / "status.sock"

    @property
    def shell_state_dir(self) -> Path:
        return self._p("var", "lib", "convocate")

    @property
    def dnsmasq_hosts(self) -> Path:
        return self.shell_state_dir / "dnsmasq-hosts"

    # --- system integration: what the packages ship and the install steps write (DESIGN §7) ---
    # Under a relocated root the install steps write their files here too, but never act on the
    # live system (users, /etc/shells, systemctl, dnsmasq).
    @property
    def systemd_unit_dir(self) -> Path:
        """Where the packages install their units (dh_installsystemd, Debian 12)."""
        return self._p("lib", "systemd", "system")

    def unit_file(self, unit: str) -> Path:
        """A packaged unit file, e.g. ``convocate-agent.service``."""
        return self.systemd_unit_dir / unit

    @property
    def systemd_runtime_dir(self) -> Path:
        """Exists when systemd is the running init (sd_booted(3))."""
        return self._p("run", "systemd", "system")

    @property
    def slice_limits_dropin(self) -> Path:
        """The slice's computed ``CPUQuota=``/``MemoryMax=`` (systemd.unit(5) drop-in)."""
        return self._p("etc", "systemd", "system", "convocate-sessions.slice.d", "50-limits.conf")

    def unit_dropin_dir(self, unit: str) -> Path:
        """The administrator's (and convocate-host's) drop-ins of ``unit`` (systemd.unit(5))."""
        return self._p("etc", "systemd", "system", f"{unit}.d")

    def zipapp(self, package: str) -> Path:
        """The zipapp a package ships: ``/usr/lib/<package>/<package>.pyz``."""
        return self._p("usr", "lib", package, f"{package}.pyz")

    def agent_start_inputs(self) -> list[tuple[str, Path]]:
        """What ``convocate-agent serve`` reads when it starts (``convocate.common.startinputs``).

        The root-only session env file is not among them: the service cannot read it itself (systemd
        hands it over as a credential, or not at all in a container), no install step changes it,
        and whoever edits it restarts the service.
        """
        unit = "convocate-agent.service"
        return [("unit", self.unit_file(unit)), ("dropins", self.unit_dropin_dir(unit)),
                ("defaults", self.agent_defaults), ("shell-host", self.shell_host_file),
                ("shell-known-host", self.shell_known_host), ("shell-key", self.agent_to_shell_key),
                ("host-key", self.agent_host_key), ("agent-id", self.agent_id_file),
                ("zipapp", self.zipapp("convocate-agent"))]

    def shell_start_inputs(self) -> list[tuple[str, Path]]:
        """What ``convocate status-serve`` reads when it starts (``convocate.common.startinputs``)."""
        unit = "convocate-status.service"
        return [("unit", self.unit_file(unit)), ("dropins", self.unit_dropin_dir(unit)),
                ("defaults", self.shell_defaults), ("domain", self.shell_domain_file),
                ("host-key", self.status_host_key), ("zipapp", self.zipapp("convocate"))]

    @property
    def agent_defaults(self) -> Path:
        """``KEY=VALUE`` settings of ``convocate-agent.service`` (its ``EnvironmentFile=``)."""
        return self._p("etc", "default", "convocate-agent")

    @property
    def shell_defaults(self) -> Path:
        """``KEY=VALUE`` settings of ``convocate-status.service`` (its ``EnvironmentFile=``)."""
        return self._p("etc", "default", "convocate")

    @property
    def image_prune_cron(self) -> Path:
        return self._p("etc", "cron.daily", "convocate-image-prune")

    @property
    def agent_logs_logrotate(self) -> Path:
        """Shell host: rotation of the agents' session logs in :attr:`forwarded_log_dir` (the convocate package's)."""
        return self._p("etc", "logrotate.d", "convocate-agent-logs")

    @property
    def login_shells(self) -> Path:
        """``/etc/shells`` (shells(5)); maintained with add-shell(8)."""
        return self._p("etc", "shells")

    @property
    def shell_program(self) -> Path:
        """The ``convocate`` command: the TUI, and the login shell of ``claude`` on a shell host."""
        return self._p("usr", "bin", "convocate")

    @property
    def dnsmasq_dropin(self) -> Path:
        """dnsmasq configuration that adds :attr:`dnsmasq_hosts` (``addn-hosts``)."""
        return self._p("etc", "dnsmasq.d", "convocate")

    @property
    def image_context(self) -> Path:
        """The session image's build context as the ``convocate`` package ships it."""
        return self._p("usr", "share", "convocate", "image")

    @property
    def rsyslog_dropin_dir(self) -> Path:
        """``/etc/rsyslog.d``: rsyslog drop-ins (Debian's rsyslog.conf includes ``*.conf`` there)."""
        return self._p("etc", "rsyslog.d")

    @property
    def rsyslog_spool_dir(self) -> Path:
        """``/var/spool/rsyslog``: Debian's rsyslog work directory, where the forwarding queue spills."""
        return self._p("var", "spool", "rsyslog")

    @property
    def forwarded_log_dir(self) -> Path:
        """Shell host: ``/var/log/convocate-agent/<agent-id>.log``, the agents' session logs received over TLS."""
        return self._p("var", "log", "convocate-agent")

    def forwarded_audit_log(self, agent_id: str) -> Path:
        """Shell host: ``/var/log/convocate-agent/<agent-id>.audit.jsonl``, an agent's audit records as
        forwarded, byte for byte (issue 19)."""
        return self.forwarded_log_dir / f"{agent_id}.audit.jsonl"

    @property
    def image_archive_dir(self) -> Path:
        """Shell host: session images saved by ``convocate-host`` for transfer to agents."""
        return self._p("var", "cache", "convocate", "transfer")

    @property
    def host_deb_cache(self) -> Path:
        """Any host: where ``convocate-host`` copies the .debs it installs."""
        return self._p("var", "cache", "convocate-host", "debs")

    @property
    def migrated_dir(self) -> Path:
        """Shell host: session directories ``convocate-host migrate-session`` moved to an agent, kept as a backup."""
        return self.session_base / ".migrated"

    @property
    def image_build_status(self) -> Path:
        """Shell host: the record of the last session image build (``convocate.image_status``)."""
        return self.shell_state_dir / "image-build.json"

    @property
    def image_cache_dir(self) -> Path:
        """The base image's rootfs tarball cache of ``build-image.sh``."""
        return self._p("var", "cache", "convocate", "images")
