"""Session image transfer from the shell host to agent hosts, verified by SHA-256 on the far side.

The shell host builds the session image (``convocate install``); agents cannot pull it from a
registry, so ``convocate-host`` carries it: the shell host saves it once into an archive under
``/var/cache/convocate/transfer/`` (kept with its image ID, size and SHA-256 until the image
changes), and each agent receives the archive as a stream into ``convocate-agent load-image``,
which spools it, checks the digest announced here, and only then loads it: a stream damaged or
tampered with on the way is refused with nothing loaded. An agent that already has the image
(same image ID) receives nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from convocate.common import messages
from convocate.common.errors import BadRequest
from convocate.common.paths import Paths
from convocate.common.progress import Progress
from convocate_host.report import LiveReport
from convocate_host.target import HostError, Target, relay

ARCHIVE_DIR = str(Paths().image_archive_dir)
AGENT_COMMAND: tuple[str, ...] = ("convocate-agent",)


@dataclass(frozen=True)
class ImageArchive:
    """A saved image on the shell host.

    Attributes:
        tag: ``convocate:<version>``.
        image_id: Docker's image ID (``sha256:...``).
        path: The archive on the shell host.
        sha256: The archive's SHA-256 (hex).
        size: Its size in bytes.
    """

    tag: str
    image_id: str
    path: str
    sha256: str
    size: int


def archive_name(tag: str) -> str:
    """The archive file name for ``tag`` (``convocate_0.1.0.tar``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", tag) + ".tar"


async def image_id(target: Target, tag: str) -> str | None:
    """The ID of ``tag`` in the target's Docker (``docker`` CLI), or None when absent."""
    result = await target.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag], check=False, reads=True)
    return result.text.strip() or None if result.ok else None


async def ensure_archive(shell: Target, tag: str, report: LiveReport) -> ImageArchive:
    """Save ``tag`` on the shell host unless the archive of that same image is there already.

    Raises:
        BadRequest: the shell host's Docker has no such image.
        HostError: docker save or the checksum failed.
    """
    wanted = await image_id(shell, tag)
    if wanted is None:
        raise BadRequest(messages.HOST_NO_IMAGE.format(tag=tag, host=shell.description))
    path = f"{ARCHIVE_DIR}/{archive_name(tag)}"
    meta_path = path + ".json"
    meta_bytes = await shell.read_file(meta_path)
    if meta_bytes:
        try:
            meta = json.loads(meta_bytes)
        except ValueError:
            meta = {}
        size = (await shell.sh('stat -c %s -- "$1" 2>/dev/null || echo -1', path, reads=True)).text.strip()
        if meta.get("image_id") == wanted and str(meta.get("size")) == size:
            report.kept(f"image archive {path} ({int(size) >> 20} MiB) matches {tag}")
            return ImageArchive(tag, wanted, path, meta["sha256"], int(size))
    await shell.ensure_dir(ARCHIVE_DIR, mode=0o750)
    saved = await shell.sh('set -e; docker save -o "$1.tmp" "$2"; sha256sum < "$1.tmp" | cut -d" " -f1; '
                           'stat -c %s -- "$1.tmp"; mv -f -- "$1.tmp" "$1"', path, tag,
                           what=f"saving {tag}")
    if shell.dry_run:  # nothing was saved, so there is no digest to announce
        report.changed(f"image {tag} would be saved to {path}")
        return ImageArchive(tag, wanted, path, "", 0)
    digest, size_text = saved.text.split()
    archive = ImageArchive(tag, wanted, path, digest, int(size_text))
    await shell.write_file(meta_path, json.dumps({"tag": tag, "image_id": wanted, "sha256": digest,
                                                  "size": archive.size}).encode() + b"\n", mode=0o640)
    report.changed(f"image {tag} saved to {path} ({archive.size >> 20} MiB, sha256 {digest[:12]}...)")
    return archive


async def agent_image(agent: Target, tag: str, command: Sequence[str] = AGENT_COMMAND) -> str | None:
    """The image ID the agent host's Docker has for ``tag``, or None."""
    result = await agent.run([*command, "image-info", tag], what=f"asking for {tag}", reads=True)
    info = json.loads(result.text)
    return info["id"] if info.get("present") else None


async def send_archive(shell: Target, agent: Target, archive: ImageArchive, *,
                       command: Sequence[str] = AGENT_COMMAND, progress: TextIO | None = None) -> dict:
    """Stream ``archive`` from the shell host into ``convocate-agent load-image`` on the agent host.

    Args:
        shell: Where the archive is.
        agent: Where it goes.
        archive: What to send; its ``sha256`` is the digest the agent checks.
        command: How to run ``convocate-agent`` there.
        progress: Where the progress bar goes (stderr): redrawn in place on a terminal, else a
            line every 10 s (:mod:`convocate.common.progress`); None for none.

    Returns:
        ``load-image``'s answer (``{"tag", "id", "bytes", "current_set"}``).

    Raises:
        HostError: the agent refused the archive (digest mismatch: nothing was loaded) or a side failed.
    """
    source = await shell.open_process(["cat", "--", archive.path])
    sink = await agent.open_process([*command, "load-image", "--sha256", archive.sha256, "--tag", archive.tag, "-"])
    digest = hashlib.sha256()
    bar = None if progress is None else Progress(f"sending {archive.tag}", archive.size, out=progress)

    def observe(chunk: bytes) -> None:
        digest.update(chunk)
        if bar is not None:
            bar.advance(len(chunk))

    sent, read_result, load_result = await relay(source, sink, observe=observe)
    if bar is not None:
        bar.finish()
    if not read_result.ok:
        raise HostError(messages.HOST_COMMAND_FAILED.format(host=shell.description, what="reading the image archive",
                                                            command=f"cat {archive.path}",
                                                            status=read_result.returncode,
                                                            detail=read_result.detail()))
    if not load_result.ok:
        raise HostError(messages.HOST_COMMAND_FAILED.format(host=agent.description, what=f"loading {archive.tag}",
                                                            command="convocate-agent load-image",
                                                            status=load_result.returncode,
                                                            detail=load_result.detail()))
    if digest.hexdigest() != archive.sha256:  # the agent took it, so the archive changed after it was saved
        raise HostError(messages.IMAGE_DIGEST_MISMATCH.format(tag=archive.tag, got=digest.hexdigest(),
                                                              expected=archive.sha256, size=sent))
    return json.loads(load_result.text.strip().splitlines()[-1])


async def ensure_agent_image(shell: Target, agent: Target, tag: str, report: LiveReport, *,
                             command: Sequence[str] = AGENT_COMMAND, progress: TextIO | None = sys.stderr,
                             shell_report: LiveReport | None = None) -> bool:
    """Make the agent host have ``tag`` as the shell host has it; returns True when it was sent.

    Raises:
        BadRequest: the shell host has no such image.
        HostError: saving, sending or loading failed.
    """
    wanted = await image_id(shell, tag)
    if wanted is None:
        raise BadRequest(messages.HOST_NO_IMAGE.format(tag=tag, host=shell.description))
    if await agent_image(agent, tag, command) == wanted:
        report.kept(f"image {tag} present ({wanted[:19]})")
        return False
    archive = await ensure_archive(shell, tag, shell_report or report)
    if shell.dry_run or agent.dry_run:
        report.changed(f"image {tag} would be sent and loaded (SHA-256 verified on arrival)")
        return True
    answer = await send_archive(shell, agent, archive, command=command, progress=progress)
    report.changed(f"image {tag} loaded ({answer['bytes'] >> 20} MiB, SHA-256 verified on arrival)")
    return True
