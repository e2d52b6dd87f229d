"""SSH client connections with a pinned ed25519 host key, for every convocate link.

The shell connects to agents (tcp/222) and the agent connects to the shell's
status listener (tcp/223) the same way: with one ed25519 private key, trusting
exactly one pinned host key, never the user's ssh config or ssh-agent.
asyncssh's failures are translated here, once, into convocate errors whose
messages say which peer and which file is involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh

from convocate.common import keys, messages
from convocate.common.errors import HostKeyMismatch, Unreachable
from convocate.common.paths import CLAUDE_USER

CONNECT_TIMEOUT_S = 10.0
#: Ciphers both convocate links offer, in order of preference (RFC 5647, OpenSSH's chacha20-poly1305):
#: AES-GCM first, about three times cheaper per packet than chacha20-poly1305 in asyncssh on hosts
#: with AES instructions (measured for docs/benchmarks.md); chacha20-poly1305 stays for peers without.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes256-ctr",
           "aes128-ctr")


async def connect_pinned(*, host: str, port: int, key_path: Path, known_host_path: Path, peer: str,
                         connect_timeout: float = CONNECT_TIMEOUT_S, **options: Any) -> asyncssh.SSHClientConnection:
    """Open an SSH connection authenticated by ``key_path``, trusting only the key in ``known_host_path``.

    Args:
        host: Host name or address.
        port: TCP port.
        key_path: ed25519 private key to log in with.
        known_host_path: File with the peer's pinned ed25519 host key.
        peer: How messages name the peer (``agent abcd1234``, ``shell host``).
        connect_timeout: Seconds for TCP connect plus SSH handshake.
        options: More ``asyncssh.connect`` options (keepalives, ...).

    Raises:
        ConfigError: either key file is unreadable or not ed25519.
        HostKeyMismatch: the peer presented another host key.
        Unreachable: the peer cannot be reached or refused the login.
    """
    client_key = keys.load_private_key(key_path)
    host_key = keys.load_public_key(known_host_path)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return await asyncssh.connect(
            host, port, username=CLAUDE_USER, client_keys=[client_key], known_hosts=([host_key], [], []),
            agent_path=None, config=None, server_host_key_algs=["ssh-ed25519"], preferred_auth=["publickey"],
            encryption_algs=list(CIPHERS), encoding=None, connect_timeout=connect_timeout, **options,
        )
    except asyncssh.HostKeyNotVerifiable as e:
        raise HostKeyMismatch(messages.HOST_KEY_MISMATCH.format(peer=peer, address=address,
                                                                path=known_host_path)) from e
    except asyncssh.PermissionDenied as e:
        raise Unreachable(messages.PEER_UNREACHABLE.format(
            peer=peer, address=address,
            detail=f"login refused ({e.reason}); is {key_path}.pub in its authorized keys?")) from e
    except (TimeoutError, OSError, asyncssh.Error) as e:
        raise Unreachable(messages.PEER_UNREACHABLE.format(peer=peer, address=address,
                                                           detail=str(e) or type(e).__name__)) from e
