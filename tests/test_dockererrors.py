"""Docker's errors, translated into DockerError (:mod:`convocate_agent.dockererrors`), against the real dockerd."""

from __future__ import annotations

import docker
import docker.errors
import pytest

from convocate.common import messages
from convocate.common.errors import DockerError
from convocate_agent.dockererrors import docker_errors, translate

pytestmark = pytest.mark.docker


@pytest.fixture
def api(docker_client):
    client = docker.APIClient(**docker.utils.kwargs_from_env(), timeout=60)
    yield client
    client.close()


def test_a_refusal_keeps_dockerds_words_and_its_status(api):
    with pytest.raises(DockerError) as caught, docker_errors("inspecting convocate:no-such-tag"):
        api.inspect_image("convocate:no-such-tag")
    assert isinstance(caught.value.__cause__, docker.errors.ImageNotFound)
    assert caught.value.status == 404 and caught.value.code == "docker_error"
    said = caught.value.__cause__.explanation
    assert "No such image: convocate:no-such-tag" in said
    assert str(caught.value) == f"inspecting convocate:no-such-tag: {said}"


def test_an_unreachable_dockerd_says_so(tmp_path):
    with pytest.raises(DockerError) as caught, docker_errors("listing containers"):
        docker.APIClient(base_url=f"unix://{tmp_path}/no-docker.sock", timeout=5).containers()
    assert caught.value.status is None
    assert str(caught.value).startswith("listing containers: cannot reach dockerd: ")


def test_a_template_words_every_kind_of_error_and_an_empty_doing_adds_no_prefix(api):
    with pytest.raises(docker.errors.NotFound) as caught:
        api.inspect_container("convocate-no-such-container")
    refused = translate(caught.value, "", message=messages.DOCKER_UNREACHABLE)
    assert refused.status == 404
    assert refused.message == messages.DOCKER_UNREACHABLE.format(detail=caught.value.explanation)
    assert "No such container: convocate-no-such-container" in refused.message


def test_what_is_not_dockers_passes_through():
    with pytest.raises(KeyError), docker_errors("anything"):
        raise KeyError("ours")
