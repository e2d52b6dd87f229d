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

from collections.abc import Iterable
from dataclasses import dataclass, field

import docker
import docker.errors
import requests.exceptions

from convocate.common.errors import DockerError
from convocate.common.fsutil import read_token
from convocate.common.paths import Paths
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
    try:
        api = client or docker.APIClient(**docker.utils.kwargs_from_env(), timeout=60)
    except docker.errors.DockerException as e:
        raise DockerError(f"pruning session images: cannot reach dockerd: {e}") from e
    try:
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
                except docker.errors.APIError as e:
                    report.failed.append(f"{tag}: {e.explanation or e}")
                    continue
            report.removed.append(tag)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise DockerError(f"pruning session images: cannot reach dockerd: {e}") from e
    finally:
        if client is None:
            api.close()
    return report
