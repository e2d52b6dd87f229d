"""The SSH servers' view of their peers: listen addresses, the authorized keys, and who opened a channel.

Shared by the agent's server and status-serve through :mod:`convocate.common.sshserver`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convocate.common import keys
from convocate.common.errors import ConfigError

log = logging.getLogger("convocate.common.sshserver")  # the name these lines had before the split


def parse_listen(value: str, default_port: int) -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``:PORT``, ``[V6]:PORT`` or ``HOST``.

    An empty host means every address. Port 0 asks the kernel for a free port.

    Raises:
        ConfigError: not a valid address.
    """
    host, port = value, str(default_port)
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ConfigError(f"listen address {value!r}: unbalanced '['")
        host, rest = value[1:end], value[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"listen address {value!r}: expected ':PORT' after ']'")
            port = rest[1:]
    elif ":" in value:
        host, port = value.rsplit(":", 1)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {value!r}: port must be 0-65535")
    return host, int(port)


def format_address(addr: tuple[str, int]) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AuthorizedKeysFile:
    """An ``authorized_keys`` file re-read whenever it changes (by inode, size and mtime).

    Args:
        path: The file; a missing file authorizes nobody.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._current = keys.AuthorizedKeys(keys=None)

    def current(self) -> keys.AuthorizedKeys:
        """The keys as of now; reloads if the file changed, keeps the last good set if it became unreadable."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            try:
                loaded = keys.read_authorized_keys(self.path)
            except ConfigError as e:
                log.error("%s; keeping the previous %d key(s)", e, self._current.count)
                return self._current
            for note in loaded.skipped:
                log.warning("%s", note)
            if self._stamp is not None or loaded.count:
                log.info("authorized keys: %d ed25519 key(s) from %s", loaded.count, self.path)
            self._stamp, self._current = stamp, loaded
        return self._current


@dataclass(frozen=True)
class Caller:
    """Who opened a channel.

    Attributes:
        fingerprint: SHA-256 fingerprint of the client key (``SHA256:...``).
        comment: The comment of the matching ``authorized_keys`` line (for logs only: it names
            nobody; status-serve binds a key to its agent through the shell's registry).
        peer: ``host:port`` the connection came from.
        state: What the subsystems learn about this connection while it lasts, shared by its channels
            (one ``Caller`` per connection): ``state["operator"]``, the operator a claim proved
            (issue 19), a dict ``{"name", "fingerprint", "key_id", "verified"}``.
    """

    fingerprint: str
    comment: str = ""
    peer: str = ""
    state: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        return self.fingerprint
