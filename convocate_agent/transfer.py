"""Moving a session's files between agents (issue 18 item 2): the export and import halves.

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
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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


# --- export --------------------------------------------------------------------------------------

def _link_inside(member: str, target: str) -> bool:
    """Whether a symlink named ``member`` pointing at ``target`` resolves inside its tree.

    ``member`` is ``<prefix>/<path>``; the tree is ``<prefix>``. Absolute targets are outside.
    """
    if not target or target.startswith("/") or "\x00" in target:
        return False
    prefix = member.split("/", 1)[0]
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member), target))
    return resolved == prefix or resolved.startswith(prefix + "/")


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
            if not _link_inside(child, target):
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


# --- import --------------------------------------------------------------------------------------

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
        if not _link_inside(name, member.linkname):
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


def _import(src: IO[bytes], root: Path, uid: int | None, gid: int | None) -> Manifest:
    prefixes = frozenset({HOME_PREFIX, RECORDINGS_PREFIX})
    got: dict[str, str] = {}
    total = 0
    manifest: Manifest | None = None
    dir_modes: list[tuple[str, int]] = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    chown = uid is not None and os.geteuid() == 0
    try:
        try:
            tar = tarfile.open(fileobj=src, mode="r|", bufsize=CHUNK)
        except tarfile.TarError as e:
            raise TransferRefused(messages.TRANSFER_BAD_TAR.format(detail=str(e))) from None
        with tar:
            try:
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
                    parts = name.split("/")
                    try:
                        parent = _open_parent(root_fd, parts)
                    except OSError:  # ENOTDIR, ELOOP (a symlink in the way), ENOENT
                        raise TransferRefused(messages.TRANSFER_REFUSED.format(
                            member=name, why="its parent is not a directory sent before it")) from None
                    try:
                        leaf = parts[-1]
                        if member.isdir():
                            os.mkdir(leaf, 0o700, dir_fd=parent)
                            dir_modes.append((name, member.mode & 0o7777))
                        elif member.issym():
                            os.symlink(member.linkname, leaf, dir_fd=parent)
                        else:
                            fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                                         dir_fd=parent)
                            try:
                                sha = hashlib.sha256()
                                fobj = tar.extractfile(member)
                                assert fobj is not None
                                while chunk := fobj.read(CHUNK):
                                    sha.update(chunk)
                                    os.write(fd, chunk)  # a regular file: a short write raises
                                os.fchmod(fd, member.mode & 0o777)
                                if chown:
                                    os.fchown(fd, uid, gid if gid is not None else -1)  # type: ignore[arg-type]
                                os.fsync(fd)
                            finally:
                                os.close(fd)
                            got[name] = sha.hexdigest()
                            total += member.size
                        if chown and not member.isreg():
                            os.chown(leaf, uid, gid if gid is not None else -1, dir_fd=parent,  # type: ignore[arg-type]
                                     follow_symlinks=False)
                    except FileExistsError:
                        raise TransferRefused(messages.TRANSFER_REFUSED.format(
                            member=name, why="a second member of the same name")) from None
                    except (NotADirectoryError, FileNotFoundError):
                        raise TransferRefused(messages.TRANSFER_REFUSED.format(
                            member=name, why="its parent is not a directory sent before it")) from None
                    finally:
                        os.close(parent)
            except tarfile.TarError as e:
                raise TransferRefused(messages.TRANSFER_BAD_TAR.format(detail=str(e))) from None
        if manifest is None:
            raise TransferRefused(messages.TRANSFER_BAD_MANIFEST.format(detail="missing (the stream ended early)"))
        verify(manifest, got, total)
        for name, mode in reversed(dir_modes):  # modes last: a 0o500 directory could not be filled
            parts = name.split("/")
            parent = _open_parent(root_fd, parts)
            try:
                os.chmod(parts[-1], mode, dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)
    return manifest


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


# --- the convocate-agent-transfer subsystem ------------------------------------------------------
#
# Header line (JSON): {"op": "export", "id": UUID} or {"op": "import", "meta": <session.json object>}.
#   export: the agent answers one line, a Response whose result is {"meta": session.json object,
#           "bytes": the files' total (for the progress bar)}, then the
#           transfer tar; the channel closes after it (exit 0). An error is the one line (exit 1).
#   import: the client sends the tar after the header and then EOF; the agent answers one line,
#           a Response whose result is {"uuid", "files", "bytes", "skipped"} (exit 0) or an error (exit 1).
# The session's lock is held for the whole channel on either side.

#: Longest header accepted, in bytes (a session.json object is well below it).
TRANSFER_HEADER_MAX = 64 * 1024


class _ChannelWriter:
    """A blocking file-like over an async SSH writer, for tarfile running in a worker thread."""

    def __init__(self, writer: Any, loop: Any) -> None:
        self.writer, self.loop = writer, loop

    def write(self, data: bytes) -> int:
        import asyncio

        async def put() -> None:
            self.writer.write(bytes(data))
            await self.writer.drain()

        asyncio.run_coroutine_threadsafe(put(), self.loop).result()
        return len(data)

    def flush(self) -> None:
        pass


class _ChannelReader:
    """A blocking file-like over an async SSH reader, for tarfile running in a worker thread."""

    def __init__(self, reader: Any, loop: Any, first: bytes = b"") -> None:
        self.reader, self.loop, self.buf = reader, loop, first

    def read(self, n: int = -1) -> bytes:
        import asyncio

        if self.buf:
            out = self.buf if n < 0 else self.buf[:n]
            self.buf = self.buf[len(out):]
            return out
        size = CHUNK if n < 0 else min(n, CHUNK)
        return asyncio.run_coroutine_threadsafe(self.reader.read(size), self.loop).result()


def parse_transfer_header(line: bytes) -> dict[str, Any]:
    """Decode and check a transfer header.

    Raises:
        BadRequest: ``bad transfer header: ...`` naming the field.
    """
    from convocate.common.model import SessionMeta, validate_uuid
    from convocate.common.protocol import decode_object

    def bad(detail: str) -> BadRequest:
        return BadRequest(messages.TRANSFER_BAD_HEADER.format(detail=detail))

    try:
        obj = decode_object(line, what="header")
    except BadRequest as e:
        raise bad(e.message) from e
    op = obj.get("op")
    if op == "export":
        if set(obj) - {"op", "id"}:
            raise bad(messages.UNKNOWN_FIELD.format(field=sorted(set(obj) - {"op", "id"})[0]))
        try:
            return {"op": op, "id": validate_uuid(obj.get("id"))}
        except BadRequest as e:
            raise bad(e.message) from e
    if op == "import":
        if set(obj) - {"op", "meta"}:
            raise bad(messages.UNKNOWN_FIELD.format(field=sorted(set(obj) - {"op", "meta"})[0]))
        try:
            return {"op": op, "meta": SessionMeta.from_json(obj.get("meta"))}
        except BadRequest as e:
            raise bad(e.message) from e
    raise bad('"op" must be "export" or "import"')


async def serve_transfer_channel(process: Any, service: Any, caller: Any) -> None:
    """Serve one ``convocate-agent-transfer`` channel (see the comment above for the wire).

    Args:
        process: The asyncssh server process (``encoding=None``).
        service: The agent's :class:`~convocate_agent.service.AgentService`; its ``store``,
            ``runtime``, ``locks`` and ``paths`` are used.
        caller: Who opened the channel (for the log).
    """
    import asyncio
    import logging

    from convocate.common.errors import ConvocateError, InternalError
    from convocate.common.protocol import Response, encode_line

    log = logging.getLogger(__name__)
    loop = asyncio.get_running_loop()
    stdin = process.stdin
    data = b""
    try:
        while b"\n" not in data:
            chunk = await asyncio.wait_for(stdin.read(CHUNK), 60)
            if not chunk:
                break
            data += chunk
            if len(data) > TRANSFER_HEADER_MAX and b"\n" not in data[:TRANSFER_HEADER_MAX]:
                raise BadRequest(messages.TRANSFER_BAD_HEADER.format(detail="header line too long"))
        line, _, rest = data.partition(b"\n")
        header = parse_transfer_header(line)
        if header["op"] == "export":
            sid = header["id"]
            meta = service.store.load(sid)
            with service.locks.hold(sid, "move-export"):
                state = await service.runtime.container(sid)
                if state is not None and state.running:
                    from convocate.common.errors import Conflict
                    raise Conflict(messages.SESSION_RUNNING.format(id=sid))
                trees = {HOME_PREFIX: service.paths.session_dir(sid),
                         RECORDINGS_PREFIX: service.paths.session_recordings_dir(sid)}
                size = await asyncio.to_thread(lambda: sum(tree_bytes(d) for d in trees.values()))
                process.stdout.write(encode_line(Response.success({"meta": meta.to_json(), "bytes": size}).to_wire()))
                manifest = await asyncio.to_thread(export_tree, _ChannelWriter(process.stdout, loop), trees)
                # The stopped container holds nothing a restart keeps (restart makes a new one from the
                # home), and its name (convocate-session-<uuid>) would keep the target from starting the
                # session where both agents share a dockerd (tests, a demo). A rollback's restart makes it again.
                await service.runtime.remove(sid)
            log.info("move: exported session %s to %s (%s)", sid, caller.peer, describe(manifest))
            process.exit(0)
            return
        meta = header["meta"]
        result = await import_session(service, meta, _ChannelReader(stdin, loop, rest))
        log.info("move: imported session %s from %s (%s)", meta.uuid, caller.peer, result)
        process.stdout.write(encode_line(Response.success(result).to_wire()))
        process.exit(0)
    except ConvocateError as e:
        _fail(process, Response.failure(e).to_wire(), encode_line)
    except (TimeoutError, OSError) as e:
        log.warning("move: transfer channel from %s failed: %s", getattr(caller, "peer", "?"), e)
        _fail(process, Response.failure(InternalError(str(e) or type(e).__name__)).to_wire(), encode_line)


def _fail(process: Any, wire: dict[str, Any], encode_line: Any) -> None:
    import contextlib

    with contextlib.suppress(Exception):
        process.stdout.write(encode_line(wire))
        process.exit(1)


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
