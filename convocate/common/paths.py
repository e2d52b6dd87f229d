"""Every host path convocate uses, declared once (DESIGN §4, §5).

Nothing else in the code spells ``/etc/convocate-agent`` or ``/home/claude``.
A root prefix taken from the environment variable ``CONVOCATE_ROOT`` relocates
all of them, so tests and the demo run a whole cluster under a directory:
``$CONVOCATE_ROOT/etc/convocate-agent/agent-id``, ``$CONVOCATE_ROOT/home/claude/<uuid>/``.
The agent host's paths are declared in :mod:`convocate.common.agentpaths` (a base of :class:`Paths`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from convocate.common.agentpaths import LEGACY_SESSION_FILE as LEGACY_SESSION_FILE
from convocate.common.agentpaths import AgentPaths

# The ``claude`` account (DESIGN §4), re-exported for the callers that find it beside the paths.
from convocate.common.constants import CLAUDE_GID, CLAUDE_UID, CLAUDE_USER  # noqa: F401

ROOT_ENV = "CONVOCATE_ROOT"


@dataclass(frozen=True)
class Paths(AgentPaths):
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
