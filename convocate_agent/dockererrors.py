"""Docker's errors, translated once into :class:`~convocate.common.errors.DockerError`.

The Docker SDK raises :class:`docker.errors.APIError` (with the Engine API's HTTP status;
:class:`~docker.errors.NotFound` and :class:`~docker.errors.ImageNotFound` are its 404s) when
dockerd refused a call, other :class:`docker.errors.DockerException` subclasses when it cannot
be found or configured, and lets requests' :class:`~requests.exceptions.RequestException` and
plain :class:`OSError` through when the socket fails. Every agent module that talks to dockerd
(:mod:`~convocate_agent.runtime`, :mod:`~convocate_agent.images`, :mod:`~convocate_agent.install`)
turns them into a :class:`DockerError` here, with :func:`docker_errors` or :func:`translate`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import docker.errors
import requests.exceptions

from convocate.common.errors import DockerError

#: What a Docker SDK call raises when dockerd refuses it, fails, or cannot be reached.
SDK_ERRORS: tuple[type[Exception], ...] = (docker.errors.DockerException, requests.exceptions.RequestException,
                                           OSError)


def translate(e: Exception, doing: str, *, message: str | None = None) -> DockerError:
    """The :class:`DockerError` for one of :data:`SDK_ERRORS`.

    Args:
        e: The SDK's error.
        doing: What was being done, as the message's first words (``stop session UUID``);
            empty for none.
        message: A template with ``{detail}`` for every kind of error (``"DOING: what dockerd
            said"``), e.g. :data:`convocate.common.messages.DOCKER_UNREACHABLE`; None for the
            default wording, ``DOING: what dockerd said`` for a refusal and ``DOING: cannot reach
            dockerd: ERROR`` for the rest.

    Returns:
        The error to raise ``from e``; its ``status`` is the HTTP status of an :class:`APIError`
        (404 for ``NotFound`` and ``ImageNotFound``), else None.
    """
    prefix = f"{doing}: " if doing else ""
    if isinstance(e, docker.errors.APIError):  # dockerd answered and refused
        said, status, plain = f"{e.explanation or e}", e.status_code, f"{e.explanation or e}"
    else:
        said, status, plain = f"{e}", None, f"cannot reach dockerd: {e}"
    if message is not None:
        return DockerError(message.format(detail=prefix + said), status=status)
    return DockerError(prefix + plain, status=status)


@contextlib.contextmanager
def docker_errors(doing: str, *, message: str | None = None) -> Iterator[None]:
    """Raise what the block's Docker SDK calls raise as a :class:`DockerError` (:func:`translate`).

    Errors the block handles itself (an ``ImageNotFound`` that means "absent") never reach it;
    :class:`asyncio.CancelledError` and every error outside :data:`SDK_ERRORS` pass through.

    Args:
        doing: What the block does, for the message (see :func:`translate`).
        message: The template for every error, or None for the default wording.

    Raises:
        DockerError: dockerd refused a call (``status`` set) or cannot be reached.
    """
    try:
        yield
    except SDK_ERRORS as e:
        raise translate(e, doing, message=message) from e
