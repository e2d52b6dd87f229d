"""``convocate-agent prune-images``: which session image tags go, and when nothing does.

The decision is a pure function; :func:`prune_images` is driven with a fake Docker API client
here, because a real prune on this machine's dockerd would remove the tags the other tests use.
"""

from __future__ import annotations

import json

import docker.errors
import pytest

from convocate.common.errors import DockerError
from convocate.common.paths import Paths
from convocate_agent.images import ImageTag, prune_images, tags_to_prune

OLD, CURRENT, ALIAS, USED = "sha256:old", "sha256:current", "sha256:current", "sha256:used"


def test_only_unused_convocate_tags_that_are_not_current_go():
    tags = [ImageTag("convocate:0.0.9", OLD), ImageTag("convocate:0.1.0", CURRENT), ImageTag("convocate:latest", ALIAS),
            ImageTag("convocate:0.0.8", USED), ImageTag("convocate-base:bookworm", OLD), ImageTag("debian:12", OLD),
            ImageTag("registry:5000/convocate:0.0.1", OLD)]
    assert tags_to_prune(tags, {USED}, "convocate:0.1.0", CURRENT) == ["convocate:0.0.9"]


def test_a_current_image_docker_lacks_keeps_only_its_name():
    tags = [ImageTag("convocate:0.1.0", OLD), ImageTag("convocate:0.0.9", OLD)]
    assert tags_to_prune(tags, set(), "convocate:0.1.0", None) == ["convocate:0.0.9"]


class FakeApi:
    """The docker.APIClient calls prune_images makes."""

    def __init__(self, refuse: str = "") -> None:
        self.removed: list[str] = []
        self.refuse = refuse

    def inspect_image(self, name):
        if name != "convocate:0.1.0":
            raise docker.errors.ImageNotFound(name)
        return {"Id": CURRENT}

    def images(self, name):
        return [{"Id": OLD, "RepoTags": ["convocate:0.0.9", "convocate:0.0.7"]}, {"Id": CURRENT, "RepoTags": None},
                {"Id": CURRENT, "RepoTags": ["convocate:0.1.0"]}, {"Id": USED, "RepoTags": ["convocate:0.0.8"]}]

    def containers(self, all):
        return [{"ImageID": USED}]

    def remove_image(self, tag):
        if tag == self.refuse:
            raise docker.errors.APIError("conflict", explanation="image is being used by a new container")
        self.removed.append(tag)


def layout(tmp_path, current: str | None = "convocate:0.1.0", settings: dict | None = None) -> Paths:
    paths = Paths(tmp_path)
    paths.agent_etc.mkdir(parents=True)
    paths.agent_state_dir.mkdir(parents=True)
    if current is not None:
        paths.current_image_file.write_text(current + "\n")
    if settings is not None:
        paths.agent_settings.write_text(json.dumps(settings))
    return paths


def test_prune_removes_the_unused_tags(tmp_path):
    api = FakeApi()
    report = prune_images(layout(tmp_path), client=api)
    assert report.removed == api.removed == ["convocate:0.0.7", "convocate:0.0.9"] and not report.failed


def test_dry_run_removes_nothing(tmp_path):
    api = FakeApi()
    assert prune_images(layout(tmp_path), client=api, dry_run=True).removed == ["convocate:0.0.7", "convocate:0.0.9"]
    assert api.removed == []


def test_a_refused_removal_is_reported_and_the_rest_still_go(tmp_path):
    api = FakeApi(refuse="convocate:0.0.7")
    report = prune_images(layout(tmp_path), client=api)
    assert api.removed == ["convocate:0.0.9"]
    assert report.failed == ["convocate:0.0.7: image is being used by a new container"]


@pytest.mark.parametrize("current, settings, reason", [
    (None, None, "no current image is set"),
    ("", None, "no current image is set"),
    ("convocate:0.1.0", {"image_prune": "never"}, "image_prune is 'never'"),
])
def test_nothing_is_pruned_without_a_current_image_or_when_turned_off(tmp_path, current, settings, reason):
    api = FakeApi()
    report = prune_images(layout(tmp_path, current, settings), client=api)
    assert reason in report.skipped and report.removed == [] and api.removed == []


def test_an_unreachable_dockerd_is_a_docker_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(DockerError, match="cannot reach dockerd"):
        prune_images(layout(tmp_path))
