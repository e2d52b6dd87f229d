"""A session's credential and env file at its start: the checks and the file a start hands over.

Part of :class:`~convocate_agent.service.AgentService` as a mixin (why, in that module's docstring),
used by the lifecycle ops (:mod:`convocate_agent.ops_lifecycle`): ``create`` and ``edit`` refuse a
named credential the agent does not hold, and each start writes the session's ``credential.env``
(the session env file's lines and the session's credential, ``convocate.common.credentials``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from convocate.common import messages
from convocate.common.credentials import Credential, CredentialStore, render_env_file, resolved_name, session_env
from convocate.common.errors import ConfigError, NotFound
from convocate.common.model import SessionMeta
from convocate.common.paths import Paths
from convocate_agent.activity import ReportSockets

log = logging.getLogger("convocate_agent.service")  # the name the agent's op log lines had before the split

#: Name of the systemd credential carrying the session env file (LoadCredential=).
SESSION_ENV_CREDENTIAL = "session.env"


class SessionEnvOps:
    """A session's credential and the env file its start reads; the annotations are the shared parts it uses."""

    # Shared parts (AgentService.__init__).
    paths: Paths
    reports: ReportSockets
    credentials: CredentialStore

    def _check_credential(self, name: str) -> None:
        """Refuse a session credential named explicitly that this agent does not hold.

        Raises:
            NotFound: no credential of that name (``""``, the default, is never refused).
        """
        if name and self.credentials.get(name) is None:
            raise NotFound(messages.CREDENTIAL_NOT_ON_AGENT.format(name=name))

    def _session_credential(self, meta: SessionMeta) -> Credential | None:
        """The credential a session starts with: its own, else ``default``; None (logged) when there is none."""
        name = resolved_name(meta.credential)
        try:
            credential = self.credentials.get(name)
        except (ConfigError, OSError) as e:
            log.warning("session %s: cannot read its credential %s (%s); it starts without one", meta.uuid, name, e)
            return None
        if credential is None and meta.credential:
            log.warning(messages.CREDENTIAL_MISSING_AT_START.format(id=meta.uuid, name=name))
        return credential

    def _session_environment(self) -> dict[str, str]:
        """``KEY=VALUE`` lines of the root-only session env file (e.g. ``ANTHROPIC_API_KEY``).

        Under systemd the unit hands the file over with ``LoadCredential=session.env:...``
        (systemd.exec(5)), so an agent running as an unprivileged user reads it
        from ``$CREDENTIALS_DIRECTORY``; otherwise it is read from its path.
        """
        env: dict[str, str] = {}
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        path = self.paths.session_env_file
        try:
            if credentials and (Path(credentials) / SESSION_ENV_CREDENTIAL).is_file():
                path = Path(credentials) / SESSION_ENV_CREDENTIAL
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except FileNotFoundError:
            return env
        except OSError as e:  # e.g. a credential systemd could not hand over: start sessions without it
            log.warning("session env file: cannot read %s (%s); sessions start without it", path, e)
            return env
        if mode & 0o077 and not credentials:
            log.warning("%s is readable by others (mode %o); it holds secrets: chmod 600 it", path, mode & 0o777)
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            key = key.strip().removeprefix("export ").strip()
            if key.isidentifier():
                env[key] = value.strip().strip('"').strip("'")
        return env

    def _write_credential_env(self, meta: SessionMeta) -> str:
        """Write the session's ``credential.env`` for its next container start; returns the fingerprint in it.

        Holds the session env file's lines and the session's credential (convocate.common.credentials);
        nothing of it goes into Docker's environment, labels or the session's record.
        """
        credential = self._session_credential(meta)
        env, skipped = session_env(self._session_environment(), credential)
        if skipped:
            log.warning("session env file: %s not passed to sessions (only Claude Code's, proxy and CA variables "
                        "are)", ", ".join(sorted(skipped)))
        self.reports.write_credential_env(meta.uuid, render_env_file(env) if env else None)
        if credential is not None:
            log.info("session %s starts with credential %s (%s, %s)", meta.uuid, credential.name, credential.kind,
                     credential.fingerprint)
        return credential.fingerprint if credential is not None else ""
