"""Pruning of unused session images: ``convocate-agent prune-images`` (DESIGN §4).

``/etc/cron.daily/convocate-image-prune`` runs it as root once a day. It removes every
``convocate:*`` tag that is not the agent's current image (``current-image``, by name or by
image ID) and that no container uses, running or stopped; dockerd deletes an image once no tag
and no container refers to it. A container keeps its tag until it is restarted with the current
image (DESIGN §6), so an update never pulls an image from under a running session.

Nothing is removed when the agent's setting ``image_prune`` is ``never``, or when no current
image is set yet: a host between ``convocate install`` and ``convocate-host init-agent`` would
otherwise lose the image it is about to use.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

import docker
import docker.errors

from convocate.common import messages
from convocate.common.errors import BadRequest
from convocate.common.fsutil import atomic_write, read_token
from convocate.common.paths import Paths
from convocate.common.progress import Progress
from convocate_agent.dockererrors import docker_errors, translate
from convocate_agent.settings import load_settings

#: The repository of session image tags (``convocate:<version>``).
IMAGE_REPOSITORY = "convocate"


@dataclass(frozen=True)
class ImageTag:
    """One tag of a local image.

    Attributes:
        tag: ``repository:tag``, e.g. ``convocate:0.1.0``.
        image_id: The image it names, ``sha256:...``.
    """

    tag: str
    image_id: str


def tags_to_prune(tags: Iterable[ImageTag], used_ids: set[str], current: str, current_id: str | None) -> list[str]:
    """The ``convocate:*`` tags that can go (the pure part of :func:`prune_images`).

    Args:
        tags: Every local tag (other repositories are ignored).
        used_ids: Image IDs of every container, running or stopped.
        current: The current image as ``current-image`` names it.
        current_id: Its image ID, or None if Docker does not have it.

    Returns:
        The tags to remove, sorted.
    """
    doomed = []
    for t in tags:
        repository = t.tag.rpartition(":")[0]
        if repository != IMAGE_REPOSITORY or t.tag == current or t.image_id == current_id or t.image_id in used_ids:
            continue
        doomed.append(t.tag)
    return sorted(doomed)


@dataclass
class PruneReport:
    """What a prune did.

    Attributes:
        removed: Tags removed (or, in a dry run, that would be).
        failed: ``tag: reason`` for tags dockerd refused to remove.
        skipped: Why nothing was considered, if so.
    """

    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: str = ""


def prune_images(paths: Paths, *, dry_run: bool = False, client: docker.APIClient | None = None) -> PruneReport:
    """Remove the unused ``convocate:*`` tags of this host.

    Args:
        paths: Installation layout (for ``current-image`` and ``settings.json``).
        dry_run: Only report what would be removed.
        client: Docker API client (default: from the environment, ``DOCKER_HOST``).

    Returns:
        The report; a tag dockerd refuses to remove (e.g. a container started meanwhile) is in
        ``failed`` and the others still go.

    Raises:
        DockerError: dockerd is not reachable.
        ConfigError: ``settings.json`` is invalid.
    """
    report = PruneReport()
    if load_settings(paths.agent_settings).image_prune == "never":
        report.skipped = f"the agent's setting image_prune is 'never' ({paths.agent_settings})"
        return report
    current = read_token(paths.current_image_file)
    if not current:
        report.skipped = f"no current image is set ({paths.current_image_file} is missing or empty)"
        return report
    doing = "pruning session images"
    with docker_errors(doing):
        api = client or docker.APIClient(**docker.utils.kwargs_from_env(), timeout=60)
    try:
        with docker_errors(doing):
            try:
                current_id: str | None = api.inspect_image(current)["Id"]
            except docker.errors.ImageNotFound:
                current_id = None
            tags = [ImageTag(tag, image["Id"]) for image in api.images(name=IMAGE_REPOSITORY)
                    for tag in image.get("RepoTags") or ()]
            used = {c["ImageID"] for c in api.containers(all=True)}
            for tag in tags_to_prune(tags, used, current, current_id):
                if not dry_run:
                    try:
                        api.remove_image(tag)
                    except docker.errors.APIError as e:  # refused (a container started meanwhile): the rest go
                        report.failed.append(str(translate(e, tag)))
                        continue
                report.removed.append(tag)
    finally:
        if client is None:
            api.close()
    return report


# --- image transfer: ``convocate-agent load-image`` / ``image-info`` ----------------------------------
#: Bytes read per chunk while spooling an image archive.
CHUNK = 1 << 20


@dataclass(frozen=True)
class LoadedImage:
    """What :func:`load_image` put in place.

    Attributes:
        tag: The tag that was asked for and is now present.
        image_id: Its image ID.
        size: Bytes of the archive.
        current_set: Whether ``current-image`` was (re)written.
    """

    tag: str
    image_id: str
    size: int
    current_set: bool


def _api(client: docker.APIClient | None, what: str) -> docker.APIClient:
    if client is not None:
        return client
    with docker_errors(what):
        return docker.APIClient(**docker.utils.kwargs_from_env(), timeout=600)


def image_info(tag: str, *, client: docker.APIClient | None = None) -> dict:
    """``{"tag", "present", "id"}`` of a local image tag (``id`` is None when it is absent).

    Raises:
        DockerError: dockerd is not reachable.
    """
    api = _api(client, f"inspecting {tag}")
    try:
        with docker_errors(f"inspecting {tag}"):
            try:
                return {"tag": tag, "present": True, "id": api.inspect_image(tag)["Id"]}
            except docker.errors.ImageNotFound:
                return {"tag": tag, "present": False, "id": None}
    finally:
        if client is None:
            api.close()


def _layer_progress(messages_: Iterable[dict], bar: Progress | None) -> None:
    """Follow ``POST /images/load``'s progress stream: ``Loading layer`` messages carry ``progressDetail``.

    Each layer's ``current``/``total`` (bytes) adds to the bar; a finished layer's total stays counted.
    """
    finished = 0
    layers: dict[str, int] = {}
    for message in messages_:
        detail = message.get("progressDetail") or {}
        if bar is None or "current" not in detail:
            continue
        layer = str(message.get("id", ""))
        layers[layer] = int(detail.get("current") or 0)
        if detail.get("total") and layers[layer] >= int(detail["total"]):
            finished += layers.pop(layer)
        bar.update(finished + sum(layers.values()))


def load_image(paths: Paths, source: BinaryIO, *, sha256: str, tag: str, set_current: bool = False,
               client: docker.APIClient | None = None, uid: int | None = None, gid: int | None = None,
               size_hint: int | None = None, progress: TextIO | None = None) -> LoadedImage:
    """Load an image archive (``docker save`` format) only if it is exactly the one announced.

    The archive is spooled to a private file under ``paths.agent_image_spool`` while its SHA-256 is
    computed; on a mismatch the file is removed and nothing reaches Docker. Only then is it handed
    to the Engine API (``POST /images/load``), and the archive must have carried ``tag``.

    Args:
        paths: Installation layout (spool directory, ``current-image``).
        source: A binary file object to read the archive from (stdin).
        sha256: The archive's expected SHA-256, 64 hex digits, as the sender computed it.
        tag: The ``repository:tag`` the archive must contain.
        set_current: Also make ``tag`` this agent's current image (written atomically).
        client: Docker API client (default: from the environment).
        uid: Owner for a new ``current-image`` (the service user), or None.
        gid: Group for it, or None.
        size_hint: The archive's size in bytes as the sender announced it, for the progress
            bar's total and ETA; None when unknown.
        progress: Where the progress bars of receiving and loading go (stderr); they are drawn
            only when it is a terminal (:mod:`convocate.common.progress`). None for none.

    Returns:
        What was loaded.

    Raises:
        BadRequest: ``sha256`` is not 64 hex digits, or the archive's digest differs from it
            (nothing loaded), or the archive does not carry ``tag``.
        DockerError: dockerd refused the archive or is not reachable.
    """
    expected = sha256.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise BadRequest(f"--sha256: {sha256!r} is not a SHA-256 digest (64 hex digits)")
    paths.agent_image_spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, spool = tempfile.mkstemp(prefix="image-", suffix=".tar", dir=paths.agent_image_spool)
    try:
        size = _spool_verified(fd, source, expected, tag, size_hint, progress)
        image_id = _load_spooled(spool, tag, size, client, progress)
    finally:
        os.unlink(spool)
    current_set = False
    if set_current and read_token(paths.current_image_file) != tag:
        atomic_write(paths.current_image_file, f"{tag}\n".encode(), mode=0o644, uid=uid, gid=gid)
        current_set = True
    return LoadedImage(tag, image_id, size, current_set)


def _spool_verified(fd: int, source: BinaryIO, expected: str, tag: str, size_hint: int | None,
                    progress: TextIO | None) -> int:
    """Copy ``source`` into the spool file ``fd`` (closed after), hashing it; returns its size in bytes.

    Raises:
        BadRequest: its SHA-256 is not ``expected``.
    """
    digest = hashlib.sha256()
    size = 0
    receiving = None if progress is None else Progress(f"receiving {tag}", size_hint, out=progress,
                                                       plain_interval=None)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
            if receiving is not None:
                receiving.update(size)
    if receiving is not None:
        receiving.finish()
    if digest.hexdigest() != expected:
        raise BadRequest(messages.IMAGE_DIGEST_MISMATCH.format(tag=tag, got=digest.hexdigest(),
                                                               expected=expected, size=size))
    return size


def _load_spooled(spool: str, tag: str, size: int, client: docker.APIClient | None,
                  progress: TextIO | None) -> str:
    """Hand the verified archive to dockerd (``POST /images/load``); returns the image ID of ``tag``.

    Raises:
        BadRequest: the archive does not carry ``tag``.
        DockerError: dockerd refused the archive or is not reachable.
    """
    api = _api(client, f"loading {tag}")
    try:
        loading = None if progress is None else Progress(f"loading {tag}", size, out=progress,
                                                         plain_interval=None)
        with open(spool, "rb") as archive, docker_errors(f"loading {tag}"):
            _layer_progress(api.load_image(archive, quiet=progress is None), loading)
        if loading is not None:
            loading.update(size)
            loading.finish()
        with docker_errors(f"loading {tag}"):
            try:
                return str(api.inspect_image(tag)["Id"])
            except docker.errors.ImageNotFound as e:
                raise BadRequest(f"the archive loaded, but it does not carry {tag}") from e
    finally:
        if client is None:
            api.close()
