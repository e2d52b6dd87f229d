"""Moving a session's files between agents (issue 18 item 2): the transfer stream's format.

A move carries a session's home (``Paths.session_dir``) and its recordings
(``Paths.session_recordings_dir``, issue 19) from the source agent to the
target through the shell host; the two agents never talk to each other. The
stream is a POSIX tar (Python's :mod:`tarfile`, streaming mode) whose members
are named ``home/...`` and ``recordings/...`` and whose LAST member is
``MANIFEST_NAME``: a JSON object ``{"files": {member: sha256-hex}, "bytes": N,
"skipped": [member, ...]}``. Putting the manifest inside the tar keeps the
stream self-delimiting (a tar reader in streaming mode reads ahead in 10 KiB
records, so a line after the archive would be half-eaten).

Trust boundary (docs/security.md, "Moving a session"): the home is written by
the session, so it is hostile. The exporter walks it with directory file
descriptors and ``O_NOFOLLOW`` (a symlink swapped in during the walk is never
followed, as :meth:`SessionStore.clone` does), sends symlinks as links only
when their target stays inside the tree, never sends hard links (each file is
sent as its own bytes) and skips sockets, FIFOs and device nodes (named in
``skipped``). The importer trusts the stream no more than the home: it refuses
absolute names, ``..``, links pointing outside the tree, hard links, devices,
FIFOs and anything but a file, directory or inside-pointing symlink; it writes
only below a fresh staging directory with ``O_NOFOLLOW|O_EXCL``, hashes every
file as it writes it and compares the set and hashes with the manifest before
anything is renamed into place.

This module holds the format (the manifest, its rules, the sizes and hashes of a tree); the halves
are :mod:`convocate_agent.transferexport` and :mod:`convocate_agent.transferimport`, and the
``convocate-agent-transfer`` subsystem that carries them is :mod:`convocate_agent.transferchannel`.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convocate.common import messages
from convocate.common.errors import BadRequest

#: Name of the manifest, the last member of a transfer tar.
MANIFEST_NAME = ".convocate-manifest.json"
#: The two trees a transfer carries, as member prefixes.
HOME_PREFIX = "home"
RECORDINGS_PREFIX = "recordings"
#: Largest manifest accepted, in bytes (a path and a 64-digit hash per file).
MANIFEST_MAX = 64 << 20
#: Bytes copied at a time.
CHUNK = 256 * 1024


class TransferRefused(BadRequest):
    """A transfer stream broke a rule (a hostile or damaged tar); nothing of it was kept."""


@dataclass
class Manifest:
    """What a transfer carried.

    Attributes:
        files: Member name → SHA-256 hex of its bytes, for every regular file.
        bytes: Total bytes of the regular files.
        skipped: Members the exporter left out (sockets, FIFOs, devices, links pointing outside).
    """

    files: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps({"files": self.files, "bytes": self.bytes, "skipped": self.skipped},
                          sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Decode a manifest.

        Raises:
            TransferRefused: not a JSON object of the expected shape.
        """
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise TransferRefused(messages.TRANSFER_BAD_MANIFEST.format(detail=str(e))) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("files"), dict) \
                or not isinstance(obj.get("bytes"), int) or not isinstance(obj.get("skipped", []), list):
            raise TransferRefused(messages.TRANSFER_BAD_MANIFEST.format(detail="not {files, bytes, skipped}"))
        files = obj["files"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise TransferRefused(messages.TRANSFER_BAD_MANIFEST.format(detail="files must map names to hashes"))
        return cls(dict(files), obj["bytes"], [str(s) for s in obj.get("skipped", [])])


def link_inside(member: str, target: str) -> bool:
    """Whether a symlink named ``member`` pointing at ``target`` resolves inside its tree.

    ``member`` is ``<prefix>/<path>``; the tree is ``<prefix>``. Absolute targets are outside.
    """
    if not target or target.startswith("/") or "\x00" in target:
        return False
    prefix = member.split("/", 1)[0]
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member), target))
    return resolved == prefix or resolved.startswith(prefix + "/")


def verify(manifest: Manifest, got: dict[str, str], total: int) -> None:
    """Compare what was written with the manifest.

    Raises:
        TransferRefused: a file is missing, extra, or differs (naming the first of them).
    """
    for name in sorted(set(manifest.files) | set(got)):
        if manifest.files.get(name) != got.get(name):
            why = "missing" if name not in got else "not in the manifest" if name not in manifest.files \
                else "SHA-256 differs from the manifest"
            raise TransferRefused(messages.TRANSFER_VERIFY_FAILED.format(member=name, why=why))
    if total != manifest.bytes:
        raise TransferRefused(messages.TRANSFER_VERIFY_FAILED.format(
            member="(all)", why=f"{total} bytes written, the manifest says {manifest.bytes}"))


def hash_tree(directory: Path) -> dict[str, str]:
    """SHA-256 of every regular file below ``directory`` by relative path (tests, ``--dry-run``)."""
    out: dict[str, str] = {}
    for path in sorted(_walk(directory)):
        out[path.relative_to(directory).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _walk(directory: Path) -> Iterator[Path]:
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


def tree_bytes(directory: Path) -> int:
    """About the bytes the tar stream of ``directory`` takes (0 when it is absent): the move's progress total.

    A tar member is a 512-byte header and its data padded to 512 bytes (POSIX.1-2001 ustar/pax);
    directories are members too. Pax headers of long names and the end-of-archive blocks are not
    counted, so the bar ends at or a little past 100 %, never far below.
    """
    total = 0
    try:
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                total += tarfile.BLOCKSIZE + tree_bytes(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                size = entry.stat(follow_symlinks=False).st_size
                total += tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    except FileNotFoundError:
        return 0
    return total


def describe(manifest: Manifest) -> dict[str, Any]:
    """A short summary for logs and the CLI: file count, bytes, skipped members."""
    return {"files": len(manifest.files), "bytes": manifest.bytes, "skipped": list(manifest.skipped)}
