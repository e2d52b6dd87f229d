"""The agent host's paths (DESIGN §4): ``/etc/convocate-agent``, ``/var/lib/convocate-agent``, ``/run``, ``/home/claude``.

:class:`AgentPaths` is a part of :class:`convocate.common.paths.Paths`, which every caller uses;
it holds the agent host's half of the layout so each host's paths read in one place.
"""

from __future__ import annotations

from pathlib import Path

from convocate.common.constants import CLAUDE_USER
from convocate.common.model import validate_uuid

#: The metadata file inside a home, as the original convocate and versions before issue 14 kept it.
LEGACY_SESSION_FILE = "session.json"


class AgentPaths:
    """The agent host's paths, under ``root`` (a base of :class:`~convocate.common.paths.Paths`)."""

    root: Path

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
