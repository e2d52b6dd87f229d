"""The export half of a move: a session's trees walked through directory fds into a transfer tar.

The home is written by the session, so it is hostile (docs/security.md, "Moving a session"): the
walk uses directory file descriptors and ``O_NOFOLLOW`` (a symlink swapped in during the walk is
never followed, as :meth:`SessionStore.clone` does), sends symlinks as links only when their target
stays inside the tree, never sends hard links (each file is sent as its own bytes) and skips
sockets, FIFOs and device nodes (named in the manifest's ``skipped``). The stream format is
:mod:`convocate_agent.transfer`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from pathlib import Path
from typing import IO

from convocate_agent.transfer import CHUNK, MANIFEST_NAME, Manifest, link_inside


def _info(name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    info.uid, info.gid = st.st_uid, st.st_gid
    return info


class _HashingReader:
    """Reads a file descriptor, hashing what it hands out (``tarfile.addfile`` reads it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = os.read(self.fd, CHUNK if n < 0 else min(n, CHUNK))
        self.sha.update(data)
        return data


def _export_dir(tar: tarfile.TarFile, dir_fd: int, member: str, manifest: Manifest) -> None:
    for name in sorted(os.listdir(dir_fd)):
        child = f"{member}/{name}"
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while the walk ran (the session is stopped: only a hostile race)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dir_fd)
            if not link_inside(child, target):
                manifest.skipped.append(child)
                continue
            info = _info(child, st, tarfile.SYMTYPE)
            info.linkname = target
            tar.addfile(info)
        elif stat.S_ISDIR(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                tar.addfile(_info(child, os.fstat(fd), tarfile.DIRTYPE))
                _export_dir(tar, fd, child, manifest)
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError:  # swapped for a link or a FIFO since the stat
                manifest.skipped.append(child)
                continue
            try:
                fst = os.fstat(fd)
                if not stat.S_ISREG(fst.st_mode):
                    manifest.skipped.append(child)
                    continue
                info = _info(child, fst, tarfile.REGTYPE)
                info.size = fst.st_size
                reader = _HashingReader(fd)
                tar.addfile(info, reader)  # type: ignore[arg-type]
                manifest.files[child] = reader.sha.hexdigest()
                manifest.bytes += fst.st_size
            finally:
                os.close(fd)
        else:
            manifest.skipped.append(child)  # socket, FIFO, device: they belong to the stopped processes


def export_tree(out: IO[bytes], trees: dict[str, Path]) -> Manifest:
    """Write a transfer tar of ``trees`` to ``out``; return its manifest (also its last member).

    Args:
        out: A writable binary stream (the SSH channel's writer, a pipe, a file).
        trees: Member prefix (:data:`HOME_PREFIX`, :data:`RECORDINGS_PREFIX`) → directory; an
            absent directory is left out.

    Raises:
        OSError: a directory could not be read. A file growing while it is read makes tarfile
            raise too: a session is stopped before its export.
    """
    manifest = Manifest()
    # bufsize: the stream's writes and reads go CHUNK at a time (tarfile's 10 KiB default made each
    # 10 KiB one hop between the export's thread and the event loop: a 500 MB home moved 6x slower
    # than tar | ssh | tar, tests/bench/bench_move.py).
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as tar:
        for prefix, directory in trees.items():
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            try:
                tar.addfile(_info(prefix, os.fstat(fd), tarfile.DIRTYPE))
                _export_dir(tar, fd, prefix, manifest)
            finally:
                os.close(fd)
        data = manifest.to_json()
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size = len(data)
        info.mode = 0o600
        tar.addfile(info, _BytesReader(data))  # type: ignore[arg-type]
    return manifest


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        out, self.data = (self.data, b"") if n < 0 else (self.data[:n], self.data[n:])
        return out
