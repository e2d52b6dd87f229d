"""ed25519 key handling for host keys, client keys and peering keys.

ed25519 is the only SSH key type convocate generates or accepts (DESIGN §2).
Keys are asyncssh ``SSHKey`` objects; files use the OpenSSH formats so the
OpenSSH client and ``ssh-keygen`` read them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from convocate.common import messages
from convocate.common.errors import ConfigError
from convocate.common.fsutil import atomic_write

ED25519 = "ssh-ed25519"


def generate_key(comment: str = "") -> asyncssh.SSHKey:
    """Generate a new ed25519 private key.

    Args:
        comment: Comment stored with the key (shown after the public key).
    """
    key = asyncssh.generate_private_key(ED25519, comment=comment or None)
    return key


def write_private_key(path: Path, key: asyncssh.SSHKey, *, uid: int | None = None, gid: int | None = None) -> None:
    """Write ``key`` in OpenSSH format, mode 0600, atomically; and ``<path>.pub`` beside it (0644)."""
    atomic_write(path, key.export_private_key("openssh"), mode=0o600, uid=uid, gid=gid)
    atomic_write(path.with_name(path.name + ".pub"), key.export_public_key("openssh"), mode=0o644, uid=uid, gid=gid)


def ensure_private_key(path: Path, comment: str = "", *, uid: int | None = None,
                       gid: int | None = None) -> tuple[asyncssh.SSHKey, bool]:
    """Load the ed25519 key at ``path``, generating it first if it does not exist.

    Returns:
        ``(key, created)``.

    Raises:
        ConfigError: the file exists but is unreadable or not ed25519; it is
            left untouched.
    """
    if path.exists():
        return load_private_key(path), False
    key = generate_key(comment)
    write_private_key(path, key, uid=uid, gid=gid)
    return key, True


def load_private_key(path: Path) -> asyncssh.SSHKey:
    """Read an ed25519 private key.

    Raises:
        ConfigError: unreadable, unparsable, or another key type.
    """
    try:
        key = asyncssh.read_private_key(str(path))
    except (OSError, asyncssh.KeyImportError) as e:
        raise ConfigError(messages.KEY_UNREADABLE.format(path=path, detail=e)) from e
    _require_ed25519(key, path)
    return key


def load_public_key(path: Path) -> asyncssh.SSHKey:
    """Read one ed25519 public key (OpenSSH ``type base64 [comment]`` or a known_hosts-style line).

    A line may start with host patterns (``[127.0.0.1]:2222 ssh-ed25519 AAAA...``);
    they are ignored, the key is what matters for pinning.

    Raises:
        ConfigError: unreadable, unparsable, or another key type.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(messages.KEY_UNREADABLE.format(path=path, detail=e)) from e
    return parse_public_key(text, source=str(path))


def parse_public_key(text: str, source: str = "key") -> asyncssh.SSHKey:
    """Parse the first key line of ``text`` as in :func:`load_public_key`."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0] not in (ED25519,) and len(words) >= 2 and words[1].startswith(("ssh-", "ecdsa-")):
            line = " ".join(words[1:])
        try:
            key = asyncssh.import_public_key(line)
        except asyncssh.KeyImportError as e:
            raise ConfigError(messages.KEY_UNREADABLE.format(path=source, detail=e)) from e
        _require_ed25519(key, source)
        return key
    raise ConfigError(messages.KEY_UNREADABLE.format(path=source, detail="no key found"))


def _require_ed25519(key: asyncssh.SSHKey, source: object) -> None:
    if key.algorithm.decode() != ED25519:
        raise ConfigError(messages.NOT_ED25519.format(path=source, algorithm=key.algorithm.decode()))


def public_key_line(key: asyncssh.SSHKey, comment: str | None = None) -> str:
    """The OpenSSH public key line ``ssh-ed25519 AAAA... [comment]``, no newline."""
    pub = key.convert_to_public()
    if comment is not None:
        pub.set_comment(comment)
    return pub.export_public_key("openssh").decode().strip()


def fingerprint(key: asyncssh.SSHKey) -> str:
    """The SHA-256 fingerprint as OpenSSH prints it: ``SHA256:<base64>``."""
    return key.get_fingerprint("sha256")


@dataclass
class AuthorizedKeys:
    """An ``authorized_keys`` file reduced to its ed25519 keys.

    Attributes:
        keys: Parsed asyncssh authorized keys (options such as ``from=`` kept),
            or ``None`` when the file holds no usable key.
        skipped: Human-readable notes for lines that were ignored.
        count: Number of usable ed25519 keys.
        comments: Fingerprint → the comment of the key's line (``convocate-agent abcd1234``).
    """

    keys: asyncssh.SSHAuthorizedKeys | None
    skipped: list[str] = field(default_factory=list)
    count: int = 0
    comments: dict[str, str] = field(default_factory=dict)


def read_authorized_keys(path: Path) -> AuthorizedKeys:
    """Parse ``path`` (OpenSSH authorized_keys format), keeping only ed25519 keys.

    A missing file means no key is authorized. Lines with another key type
    are reported in ``skipped`` and ignored, never trusted.

    Raises:
        ConfigError: the file exists but cannot be read or parsed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return AuthorizedKeys(keys=None)
    except OSError as e:
        raise ConfigError(messages.KEY_UNREADABLE.format(path=path, detail=e)) from e
    kept: list[str] = []
    skipped: list[str] = []
    comments: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        words = stripped.split()
        if ED25519 not in words:
            skipped.append(messages.AUTH_KEYS_SKIPPED.format(path=path, line=number))
            continue
        at = words.index(ED25519)
        try:
            key = asyncssh.import_public_key(" ".join(words[at:at + 2]))
        except asyncssh.KeyImportError as e:
            raise ConfigError(messages.KEY_UNREADABLE.format(path=f"{path}: line {number}", detail=e)) from e
        comments[fingerprint(key)] = " ".join(words[at + 2:])
        kept.append(stripped)
    if not kept:
        return AuthorizedKeys(keys=None, skipped=skipped)
    try:
        keys = asyncssh.import_authorized_keys("\n".join(kept) + "\n")
    except (ValueError, asyncssh.KeyImportError) as e:
        raise ConfigError(messages.KEY_UNREADABLE.format(path=path, detail=e)) from e
    return AuthorizedKeys(keys=keys, skipped=skipped, count=len(kept), comments=comments)


def upsert_authorized_key(text: str, line: str) -> str:
    """``authorized_keys`` content with ``line`` in it, once.

    A line with the same key is replaced by ``line`` (its comment may have changed); so is a
    line with the same comment when the comment names a convocate peer (``convocate-agent
    <id>``, ``convocate-shell <host>``): a re-keyed peer replaces its old key instead of adding
    a second one. Every other line, comments and blank lines included, stays as it is.

    Args:
        text: The current file content (``""`` for none).
        line: ``ssh-ed25519 AAAA... comment``.

    Returns:
        The new content, newline-terminated.

    Raises:
        ConfigError: ``line`` is not an ed25519 public key line.
    """
    wanted = parse_public_key(line, source="authorized key")
    comment = " ".join(line.split()[2:])
    peer = comment if comment.startswith(("convocate-agent ", "convocate-shell ")) else None
    kept: list[str] = []
    placed = False
    for existing in text.splitlines():
        words = existing.split()
        same = False
        if ED25519 in words:
            at = words.index(ED25519)
            try:
                key = asyncssh.import_public_key(" ".join(words[at:at + 2]))
            except asyncssh.KeyImportError:
                key = None
            same = (key is not None and key.public_data == wanted.public_data) or \
                (peer is not None and " ".join(words[at + 2:]) == peer)
        if same:
            if not placed:
                kept.append(line.strip())
                placed = True
            continue
        kept.append(existing)
    if not placed:
        kept.append(line.strip())
    return "\n".join(kept) + "\n"
