"""The import half of a move: a transfer tar checked, written below a fresh staging directory, verified, published.

The importer trusts the stream no more than the home (docs/security.md, "Moving a session"): it
refuses absolute names, ``..``, links pointing outside the tree, hard links, devices, FIFOs and
anything but a file, directory or inside-pointing symlink; it writes only below a fresh staging
directory with ``O_NOFOLLOW|O_EXCL``, hashes every file as it writes it and compares the set and
hashes with the manifest before anything is renamed into place. The stream format is
:mod:`convocate_agent.transfer`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tarfile
from pathlib import Path
from typing import IO, Any

from convocate.common import messages
from convocate_agent.transfer import (
    CHUNK,
    HOME_PREFIX,
    MANIFEST_MAX,
    MANIFEST_NAME,
    RECORDINGS_PREFIX,
    Manifest,
    TransferRefused,
    describe,
    link_inside,
    verify,
)


def check_member(member: tarfile.TarInfo, prefixes: frozenset[str]) -> str:
    """Check one member of a transfer tar against the import rules; return its normalised name.

    Raises:
        TransferRefused: naming the member and the rule it broke.
    """
    name = member.name

    def refuse(why: str) -> TransferRefused:
        return TransferRefused(messages.TRANSFER_REFUSED.format(member=name, why=why))

    if not name or "\x00" in name:
        raise refuse("empty name")
    if name.startswith("/"):
        raise refuse("absolute path")
    parts = name.rstrip("/").split("/")
    if any(p in ("..", "") for p in parts) or any(p == "." for p in parts):
        raise refuse("'..' or an empty part in the path")
    if name == MANIFEST_NAME:
        if not member.isreg():
            raise refuse("the manifest is not a file")
        return name
    if parts[0] not in prefixes:
        raise refuse(f"outside {sorted(prefixes)}")
    if member.islnk():
        raise refuse("hard link")
    if member.issym():
        if not link_inside(name, member.linkname):
            raise refuse(f"symlink pointing outside its tree ({member.linkname!r})")
    elif not (member.isreg() or member.isdir()):
        raise refuse("device, FIFO or other special file")
    return "/".join(parts)


def _open_parent(root_fd: int, parts: list[str]) -> int:
    """Open the directory holding ``parts[-1]`` below ``root_fd`` without following a link."""
    fd = os.dup(root_fd)
    for part in parts[:-1]:
        try:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nfd
    return fd


def import_tree(src: IO[bytes], root: Path, *, uid: int | None = None, gid: int | None = None) -> Manifest:
    """Read a transfer tar from ``src`` into the new directory ``root``; verify it; return its manifest.

    ``root`` gets one subdirectory per tree (``root/home``, ``root/recordings``). Nothing is
    renamed into place here: the caller does it after this returns.

    Args:
        src: A readable binary stream.
        root: A directory that must not exist yet (in the agent's staging directory).
        uid: Owner given to what is written (the ``claude`` user), or None to keep the writer's.
        gid: Group, likewise.

    Raises:
        TransferRefused: a member broke a rule, the manifest is missing or damaged, or a
            file's SHA-256 or the set of files differs from the manifest. ``root`` is removed.
        OSError: writing failed; ``root`` is removed.
    """
    os.mkdir(root, 0o700)
    try:
        return _import(src, root, uid, gid)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


class _TreeWriter:
    """Writes the members of a transfer tar below ``root_fd``, hashing every file it writes.

    Attributes:
        got: Member name → SHA-256 hex of each regular file written.
        total: Bytes of the regular files written.
    """

    def __init__(self, root_fd: int, uid: int | None, gid: int | None) -> None:
        self.root_fd = root_fd
        self.uid = uid
        self.gid = gid if gid is not None else -1
        self.chown = uid is not None and os.geteuid() == 0
        self.got: dict[str, str] = {}
        self.total = 0
        self._dir_modes: list[tuple[str, int]] = []

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        """Write one checked member (directory, symlink or regular file) named ``name``.

        Raises:
            TransferRefused: its parent is not a directory sent before it, or its name came before.
        """
        parts = name.split("/")
        try:
            parent = _open_parent(self.root_fd, parts)
        except OSError:  # ENOTDIR, ELOOP (a symlink in the way), ENOENT
            raise TransferRefused(messages.TRANSFER_REFUSED.format(
                member=name, why="its parent is not a directory sent before it")) from None
        try:
            leaf = parts[-1]
            if member.isdir():
                os.mkdir(leaf, 0o700, dir_fd=parent)
                self._dir_modes.append((name, member.mode & 0o7777))
            elif member.issym():
                os.symlink(member.linkname, leaf, dir_fd=parent)
            else:
                self._write_file(tar, member, name, parent, leaf)
            if self.chown and not member.isreg():
                os.chown(leaf, self.uid, self.gid, dir_fd=parent,  # type: ignore[arg-type]
                         follow_symlinks=False)
        except FileExistsError:
            raise TransferRefused(messages.TRANSFER_REFUSED.format(
                member=name, why="a second member of the same name")) from None
        except (NotADirectoryError, FileNotFoundError):
            raise TransferRefused(messages.TRANSFER_REFUSED.format(
                member=name, why="its parent is not a directory sent before it")) from None
        finally:
            os.close(parent)

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, parent: int, leaf: str) -> None:
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=parent)
        try:
            sha = hashlib.sha256()
            fobj = tar.extractfile(member)
            assert fobj is not None
            while chunk := fobj.read(CHUNK):
                sha.update(chunk)
                os.write(fd, chunk)  # a regular file: a short write raises
            os.fchmod(fd, member.mode & 0o777)
            if self.chown:
                os.fchown(fd, self.uid, self.gid)  # type: ignore[arg-type]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.got[name] = sha.hexdigest()
        self.total += member.size

    def set_dir_modes(self) -> None:
        """Give the directories their modes, deepest last-made first (a 0o500 directory could not be filled)."""
        for name, mode in reversed(self._dir_modes):
            parts = name.split("/")
            parent = _open_parent(self.root_fd, parts)
            try:
                os.chmod(parts[-1], mode, dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)


def _read_members(tar: tarfile.TarFile, writer: _TreeWriter) -> Manifest | None:
    """Check and write every member of ``tar``; return the manifest (its last member), None if it had none.

    Raises:
        TransferRefused: a member broke a rule or came after the manifest, or the manifest is damaged.
    """
    prefixes = frozenset({HOME_PREFIX, RECORDINGS_PREFIX})
    manifest: Manifest | None = None
    for member in tar:
        if manifest is not None:
            raise TransferRefused(messages.TRANSFER_REFUSED.format(
                member=member.name, why="a member after the manifest"))
        name = check_member(member, prefixes)
        if name == MANIFEST_NAME:
            if member.size > MANIFEST_MAX:
                raise TransferRefused(messages.TRANSFER_BAD_MANIFEST.format(detail="too large"))
            fobj = tar.extractfile(member)
            assert fobj is not None
            manifest = Manifest.from_json(fobj.read())
            continue
        writer.write(tar, member, name)
    return manifest


def _import(src: IO[bytes], root: Path, uid: int | None, gid: int | None) -> Manifest:
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        writer = _TreeWriter(root_fd, uid, gid)
        try:
            tar = tarfile.open(fileobj=src, mode="r|", bufsize=CHUNK)
        except tarfile.TarError as e:
            raise TransferRefused(messages.TRANSFER_BAD_TAR.format(detail=str(e))) from None
        with tar:
            try:
                manifest = _read_members(tar, writer)
            except tarfile.TarError as e:
                raise TransferRefused(messages.TRANSFER_BAD_TAR.format(detail=str(e))) from None
        if manifest is None:
            raise TransferRefused(messages.TRANSFER_BAD_MANIFEST.format(detail="missing (the stream ended early)"))
        verify(manifest, writer.got, writer.total)
        writer.set_dir_modes()
    finally:
        os.close(root_fd)
    return manifest


def _rename_across(staged: Path, target: Path) -> None:
    """Rename a verified staged tree to ``target``, also when they are on two filesystems.

    The staging directory is beside the homes (``/home/claude/.staging``) and the recordings are
    under ``/var/lib/convocate-agent``: often two filesystems, where rename(2) fails with
    ``EXDEV``. Then the tree is copied beside ``target`` first (``.<name>.incoming``, same
    filesystem) and renamed from there, so ``target`` still appears whole or not at all.
    """
    try:
        os.rename(staged, target)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    beside = target.with_name(f".{target.name}.incoming")
    shutil.rmtree(beside, ignore_errors=True)
    shutil.copytree(staged, beside, symlinks=True)
    os.rename(beside, target)


async def import_session(service: Any, meta: Any, src: IO[bytes]) -> dict[str, Any]:
    """Receive a moved session: stage, verify, then publish the record, home and recordings.

    The session keeps its UUID, name, port, DNS name, limits and credential name. The home is
    renamed into place only after every file matched the manifest; until then it lives in the
    staging directory, which the agent's recovery removes at start, so a crash mid-import never
    resurrects a half copy.

    Raises:
        Conflict: a session of that UUID exists here, or its DNS name or port is taken.
        Locked: the UUID is locked here (another import of it).
        TransferRefused: the stream broke a rule or failed verification (nothing kept).
    """
    import asyncio

    from convocate.common.errors import Conflict
    from convocate.common.fsutil import fsync_dir

    store, paths = service.store, service.paths
    sid = meta.uuid
    with service.locks.hold(sid, "move-import"):
        if os.path.lexists(paths.session_dir(sid)) or os.path.lexists(paths.session_record(sid)):
            raise Conflict(f'session "{sid}" exists already')
        async with service._names_lock:
            others = service._others(sid)
            service._check_dns(meta.dns_name, others)
            if meta.port:
                taken = [o for o in others if o.port == meta.port and o.protocol == meta.protocol]
                if taken:
                    raise Conflict(messages.TRANSFER_PORT_TAKEN.format(port=meta.port, name=taken[0].name))
        paths.staging_dir.mkdir(mode=0o700, exist_ok=True)
        root = paths.staging_dir / f"{sid}.move"
        if os.path.lexists(root):
            shutil.rmtree(root, ignore_errors=True)
        manifest = await asyncio.to_thread(import_tree, src, root, uid=store.uid, gid=store.gid)
        try:
            staged_home = root / HOME_PREFIX
            if not staged_home.is_dir():
                raise TransferRefused(messages.TRANSFER_BAD_MANIFEST.format(detail="no home in the stream"))
            home = store._staging_for(sid)
            os.rename(staged_home, home)
            await asyncio.to_thread(store._publish, home, meta)
            staged_rec = root / RECORDINGS_PREFIX
            if staged_rec.is_dir():
                target = paths.session_recordings_dir(sid)
                target.parent.mkdir(parents=True, exist_ok=True)
                if os.path.lexists(target):
                    shutil.rmtree(target)
                await asyncio.to_thread(_rename_across, staged_rec, target)
                fsync_dir(target.parent)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    from convocate.common.protocol import CONTAINER_CREATED

    service._emit(CONTAINER_CREATED, sid, service._view(meta, None, False).to_wire())
    return {"uuid": sid, **describe(manifest)}
