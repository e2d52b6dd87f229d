"""What a daemon read when it started, as one digest: restart it only when that changed.

``dpkg-reconfigure`` and every upgrade run the role's install step from the postinst. Restarting the
agent ends every attached operator's relay, so the install step restarts a service only when
something the service reads *at start* differs from what it read when it last started: its unit
file and drop-ins, its ``/etc/default`` file, its keys and peers, its zipapp. Each daemon records the
digest of those files in its runtime directory when it starts (:func:`record`); the install step
computes the digest of the same files as they are now and compares (:func:`changed_since_start`).
Files read later (``authorized_keys``, ``current-image``, ``settings.json``) are not inputs: the
daemon picks their changes up without a restart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from convocate.common.fsutil import atomic_write

#: Name of the record in a daemon's runtime directory (``/run/convocate-agent``, ``/run/convocate``).
RECORD_NAME = "started-with.sha256"


def digest(inputs: Iterable[tuple[str, Path]]) -> str:
    """SHA-256 over named files: each name, then the file's bytes, or a marker when it is missing.

    A directory stands for its ``*.conf`` files in name order (systemd's drop-in directories).

    Args:
        inputs: ``(name, path)`` pairs. The name, not the path, goes into the digest, so a daemon
            may read an input through another path than the install step (the agent reads the
            root-only session env file as a systemd credential).

    Returns:
        The hex digest.

    Raises:
        OSError: a file exists but cannot be read.
    """
    h = hashlib.sha256()
    for name, path in inputs:
        files = [(f"{name}/{f.name}", f) for f in sorted(path.glob("*.conf"))] if path.is_dir() else [(name, path)]
        for label, file in files:
            h.update(f"{label}\0".encode())
            try:
                data = file.read_bytes()
            except FileNotFoundError:
                h.update(b"\0missing\0")
                continue
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
    return h.hexdigest()


def record(run_dir: Path, value: str) -> None:
    """Write the digest a daemon started with into its runtime directory (atomically).

    Raises:
        OSError: the runtime directory is missing or not writable.
    """
    atomic_write(run_dir / RECORD_NAME, (value + "\n").encode(), mode=0o644)


def recorded(run_dir: Path) -> str | None:
    """The digest the running daemon recorded, or None (it predates records, or never started)."""
    try:
        return (run_dir / RECORD_NAME).read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def changed_since_start(run_dir: Path, inputs: Iterable[tuple[str, Path]]) -> bool:
    """Whether the inputs differ now from what the running daemon recorded at its start."""
    return recorded(run_dir) != digest(inputs)
