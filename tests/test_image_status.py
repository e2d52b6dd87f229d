"""The shell host's image build record (``convocate.image_status``) and ``convocate image-status``."""

from __future__ import annotations

import json
import subprocess

from convocate import image_status
from convocate.common import messages
from convocate.common.errors import ConfigError
from convocate.common.paths import Paths
from convocate.common.version import __version__
from tests.harness import LocalCluster

TAG = f"convocate:{__version__}"
RETRY = messages.IMAGE_BUILD_RETRY.format(unit=image_status.BUILD_UNIT)


def _paths(tmp_path) -> Paths:
    paths = Paths(tmp_path)
    paths.shell_state_dir.mkdir(parents=True)
    return paths


def test_no_record_says_never_built_and_how_to_build(tmp_path):
    assert image_status.problem(_paths(tmp_path), TAG) == messages.IMAGE_NOT_YET.format(
        tag=TAG, reason="it has not been built", retry=RETRY)


def test_a_finished_build_of_this_tag_is_no_problem_and_an_older_tag_is(tmp_path):
    paths = _paths(tmp_path)
    image_status.finish(paths, image_status.start(paths, TAG))
    assert image_status.load(paths.image_build_status).state == image_status.BUILT
    assert image_status.problem(paths, TAG) is None
    assert "it has not been built" in image_status.problem(paths, "convocate:9.9.9")


def test_a_failed_build_says_why_and_how_to_retry(tmp_path):
    paths = _paths(tmp_path)
    image_status.finish(paths, image_status.start(paths, TAG), error="build-image.sh exited with status 1")
    problem = image_status.problem(paths, TAG)
    assert "its build failed (build-image.sh exited with status 1)" in problem and RETRY in problem


def test_a_build_whose_process_is_gone_was_interrupted(tmp_path):
    paths = _paths(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    image_status.record(paths, image_status.ImageBuild(image_status.BUILDING, TAG, pid=gone.pid, started="then"))
    assert "its build of then was interrupted" in image_status.problem(paths, TAG)
    image_status.record(paths, image_status.ImageBuild(image_status.BUILDING, TAG, pid=1, started="now"))
    assert "it is being built since now" in image_status.problem(paths, TAG)


def test_image_status_command_exits_78_until_built(tmp_path):
    paths = _paths(tmp_path)
    cluster = LocalCluster(root=tmp_path, image="unused")
    missing = cluster.run_role("convocate", "image-status", "--json", check=False)
    assert missing.returncode == ConfigError.exit_code == 78
    answer = json.loads(missing.stdout)
    assert answer["ready"] is False and answer["tag"] == TAG and RETRY in answer["problem"]
    image_status.finish(paths, image_status.start(paths, TAG))
    built = cluster.run_role("convocate", "image-status", check=False)
    assert built.returncode == 0 and built.stdout.startswith(f"session image {TAG}: built ")
