"""The cluster's Claude credentials: names, kinds, fingerprints and the on-disk store (issue 15 item 2).

A credential is a named secret of one kind: an Anthropic API key (``api_key``, given to Claude Code
as ``ANTHROPIC_API_KEY``) or the long-lived OAuth token ``claude setup-token`` prints
(``oauth_token``, given as ``CLAUDE_CODE_OAUTH_TOKEN``). The shell host keeps the cluster's copy in
``/etc/convocate/credentials/<name>.json`` (root, 0600) and sends it to every agent with the
``credential_set`` op; each agent keeps its copy in ``/var/lib/convocate-agent/credentials/<name>.json``
(the agent's user, 0600) and hands the secret to a session at every container start through the
session's ``credential.env`` (see :func:`render_env_file`). Anything shown to a person or a peer
names a credential by its :func:`fingerprint`, never by its secret.

Everything here but :class:`CredentialStore` is pure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convocate.common import messages
from convocate.common.errors import BadRequest, ConfigError, NotFound
from convocate.common.fsutil import atomic_write

# A credential's name and a session's credential field are rules of the session model (convocate.common.model,
# which the CLI loads without this module's store and hashing); they are found here too, by these names.
from convocate.common.model import (
    CREDENTIAL_NAME_PATTERN,
    validate_session_credential,  # noqa: F401
)
from convocate.common.model import DEFAULT_CREDENTIAL as DEFAULT_NAME
from convocate.common.model import validate_credential_name as validate_name
from convocate.common.timefmt import format_rfc3339, now_ns, parse_rfc3339

#: Kind → the environment variable Claude Code reads it from.
KIND_ENV = {"api_key": "ANTHROPIC_API_KEY", "oauth_token": "CLAUDE_CODE_OAUTH_TOKEN"}
KINDS = tuple(KIND_ENV)
#: Every variable a credential may set; a credential replaces all of them, so the other kind
#: (from the session env file, say) cannot take precedence over it.
AUTH_ENV_KEYS = frozenset(KIND_ENV.values())
#: Longest secret accepted, in characters (API keys and setup tokens are about 100).
SECRET_MAX = 4096
#: Name of the file the agent writes into a session's report directory at each container start.
ENV_FILE_NAME = "credential.env"
#: Variables a session's ``credential.env`` may carry (the entrypoint accepts these and no others):
#: Claude Code's own (``ANTHROPIC_*``, ``CLAUDE_CODE_*``, ``DISABLE_*``), the cloud providers it can
#: use (``AWS_*``), proxies and an extra CA bundle. Never PATH, HOME, LD_* or anything a shell or
#: loader acts on.
ENV_KEY_PATTERN = re.compile(
    r"(ANTHROPIC_[A-Z0-9_]+|CLAUDE_CODE_[A-Z0-9_]+|DISABLE_[A-Z0-9_]+|AWS_[A-Z0-9_]+|"
    r"(HTTP|HTTPS|NO|ALL)_PROXY|(http|https|no|all)_proxy|NODE_EXTRA_CA_CERTS)"
)

_SECRET = re.compile(rf"[\x21-\x7e]{{1,{SECRET_MAX}}}")
_FINGERPRINT_HEX = 16


def validate_kind(value: Any) -> str:
    """Check a credential kind: ``api_key`` or ``oauth_token``.

    Raises:
        BadRequest: any other value.
    """
    if value not in KINDS:
        shown = value if isinstance(value, str) and value.isprintable() else repr(value)
        raise BadRequest(messages.BAD_CREDENTIAL_KIND.format(value=str(shown)[:64]))
    return value


def validate_secret(value: Any) -> str:
    """Check a secret: 1-4096 printable ASCII characters, no space (so it is one safe ``KEY=VALUE`` line).

    The error never quotes the value.

    Raises:
        BadRequest: the secret breaks the rule.
    """
    if not isinstance(value, str) or not _SECRET.fullmatch(value):
        raise BadRequest(messages.BAD_CREDENTIAL_SECRET.format(limit=SECRET_MAX))
    return value


def fingerprint(secret: str) -> str:
    """``sha256:`` and the first 16 hex digits of the SHA-256 of the secret's UTF-8 bytes."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:_FINGERPRINT_HEX]


def resolved_name(session_credential: str) -> str:
    """The credential a session uses: its own name, or :data:`DEFAULT_NAME` for ``""``."""
    return session_credential or DEFAULT_NAME


@dataclass(frozen=True)
class Credential:
    """One stored credential.

    Attributes:
        name: See :func:`validate_name`.
        kind: ``api_key`` or ``oauth_token``.
        secret: The key or token itself. Never logged, never sent but by ``credential_set``.
        set_at: When it was set, ns since the epoch.
    """

    name: str
    kind: str
    secret: str
    set_at: int

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.secret)

    @property
    def env_key(self) -> str:
        """The variable Claude Code reads this credential from."""
        return KIND_ENV[self.kind]

    def summary(self) -> dict[str, Any]:
        """What may be shown: ``{name, kind, fingerprint, set_at}``, never the secret."""
        return {"name": self.name, "kind": self.kind, "fingerprint": self.fingerprint,
                "set_at": format_rfc3339(self.set_at)}

    def to_json(self) -> dict[str, Any]:
        """The stored file's object (with the secret)."""
        return {**self.summary(), "secret": self.secret}

    @classmethod
    def from_json(cls, obj: Any, expected_name: str) -> Credential:
        """Rebuild a stored credential, checking every field.

        Raises:
            BadRequest: a field is missing or breaks its rule (the message never quotes the secret).
        """
        if not isinstance(obj, dict):
            raise BadRequest("a credential file must hold a JSON object")
        name = validate_name(obj.get("name"))
        if name != expected_name:
            raise BadRequest(f'credential file for "{expected_name}" names "{name}"')
        try:
            set_at = parse_rfc3339(obj.get("set_at", ""))
        except (TypeError, ValueError) as e:
            raise BadRequest(f"bad set_at: {e}") from e
        return cls(name=name, kind=validate_kind(obj.get("kind")), secret=validate_secret(obj.get("secret")),
                   set_at=set_at)

    def __repr__(self) -> str:  # a traceback or a debug log must not print the secret
        return f"Credential(name={self.name!r}, kind={self.kind!r}, fingerprint={self.fingerprint!r})"


def session_env(base: Mapping[str, str], credential: Credential | None) -> tuple[dict[str, str], list[str]]:
    """What a session's ``credential.env`` holds: the session env file's lines, then its credential.

    A credential replaces every authentication variable of the base (:data:`AUTH_ENV_KEYS`), so an
    OAuth token is not shadowed by an ``ANTHROPIC_API_KEY`` left in the session env file.

    Args:
        base: ``KEY=VALUE`` pairs of the root-only session env file.
        credential: The session's credential, or None.

    Returns:
        ``(environment, skipped)``: the variables to write (only names :data:`ENV_KEY_PATTERN`
        accepts and values fit for one line), and the names left out (for the log; never values).
    """
    env: dict[str, str] = {}
    skipped: list[str] = []
    for key, value in base.items():
        if not ENV_KEY_PATTERN.fullmatch(key) or any(c in value for c in "\n\r\x00"):
            skipped.append(key)
        elif credential is None or key not in AUTH_ENV_KEYS:
            env[key] = value
    if credential is not None:
        env[credential.env_key] = credential.secret
    return env, skipped


def render_env_file(env: Mapping[str, str]) -> bytes:
    """``KEY=VALUE`` lines, unquoted, as the image's entrypoint reads them (never through ``source``).

    Raises:
        ValueError: a name outside :data:`ENV_KEY_PATTERN` or a value with a line break or NUL
            (:func:`session_env` never yields one).
    """
    lines = []
    for key, value in env.items():
        if not ENV_KEY_PATTERN.fullmatch(key) or any(c in value for c in "\n\r\x00"):
            raise ValueError(f"{key!r} cannot go into {ENV_FILE_NAME}")
        lines.append(f"{key}={value}\n")
    return "".join(lines).encode("utf-8")


class CredentialStore:
    """A directory of ``<name>.json`` files, each 0600, written atomically.

    The shell host's is ``/etc/convocate/credentials`` (root), an agent's is
    ``/var/lib/convocate-agent/credentials`` (the agent's user); both come from
    :class:`~convocate.common.paths.Paths`.

    Args:
        directory: Where the files live; created 0700 on the first write.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, name: str) -> Path:
        return self.directory / f"{validate_name(name)}.json"

    def put(self, name: str, kind: str, secret: str, set_at: int | None = None) -> Credential:
        """Store (or replace) a credential.

        Raises:
            BadRequest: a field breaks its rule.
            OSError: the file could not be written (the old one is kept).
        """
        credential = Credential(validate_name(name), validate_kind(kind), validate_secret(secret),
                                now_ns() if set_at is None else set_at)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        atomic_write(self._path(name), (json.dumps(credential.to_json(), indent=2) + "\n").encode(), mode=0o600)
        return credential

    def get(self, name: str) -> Credential | None:
        """The credential called ``name``, or None.

        Raises:
            ConfigError: the file is there but unreadable or broken.
        """
        path = self._path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except PermissionError:
            raise
        except OSError as e:
            raise ConfigError(f"cannot read credential {name}: {e.strerror}") from e
        try:
            return Credential.from_json(json.loads(text), name)
        except (ValueError, BadRequest) as e:
            detail = e.message if isinstance(e, BadRequest) else "not valid JSON"
            raise ConfigError(f"credential file {path} is broken: {detail}") from None

    def names(self) -> list[str]:
        """Names of the stored credentials, sorted (files that are not ``<valid name>.json`` are ignored)."""
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return []
        return sorted(p.stem for p in entries if p.suffix == ".json" and CREDENTIAL_NAME_PATTERN.fullmatch(p.stem))

    def all(self) -> list[Credential]:
        """Every readable credential, sorted by name (a broken file is skipped)."""
        out = []
        for name in self.names():
            try:
                credential = self.get(name)
            except ConfigError:
                continue
            if credential is not None:
                out.append(credential)
        return out

    def fingerprints(self) -> dict[str, str]:
        """Name → fingerprint of every readable credential."""
        return {c.name: c.fingerprint for c in self.all()}

    def delete(self, name: str) -> None:
        """Remove a credential.

        Raises:
            NotFound: there is none of that name.
        """
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            raise NotFound(messages.CREDENTIAL_NOT_FOUND.format(name=name)) from None


def summaries(credentials: Iterable[Credential]) -> list[dict[str, Any]]:
    """:meth:`Credential.summary` of each."""
    return [c.summary() for c in credentials]
