"""The shell host's record of its session image build: built, building, failed or never tried.

The session image is built outside the package's postinst (which must not run network work): by
``convocate-image-build.service``, a oneshot the postinst starts without waiting, or by hand with
``convocate install --image``. Each build records its state in ``/var/lib/convocate/image-build.json``
(written atomically) so that the TUI, ``convocate ls`` and ``convocate-host init-agent`` can say
"no session image yet" and how to build it, instead of failing later on a missing image.

The record: ``{"state": "building"|"built"|"failed", "tag": str, "pid": int, "started": str,
"finished": str, "error": str}`` (times RFC 3339 UTC). A ``building`` record whose PID is gone
was interrupted (the unit was stopped, the machine rebooted).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from convocate.common import messages
from convocate.common.fsutil import atomic_write
from convocate.common.paths import Paths
from convocate.common.timefmt import format_rfc3339, now_ns
from convocate.common.version import __version__

BUILDING = "building"
BUILT = "built"
FAILED = "failed"
#: The oneshot unit that builds the image on a packaged shell host.
BUILD_UNIT = "convocate-image-build.service"


@dataclass(frozen=True)
class ImageBuild:
    """One image build's record.

    Attributes:
        state: ``building``, ``built`` or ``failed``.
        tag: The image tag it builds (``convocate:<version>``).
        pid: The building process (for ``building``).
        started: When it started (RFC 3339, UTC).
        finished: When it ended (``""`` while building).
        error: Why it failed (``""`` otherwise).
    """

    state: str
    tag: str
    pid: int = 0
    started: str = ""
    finished: str = ""
    error: str = ""


def record(paths: Paths, build: ImageBuild) -> None:
    """Write ``build`` as the current record (atomically; the state directory must exist).

    Raises:
        OSError: the record cannot be written.
    """
    atomic_write(paths.image_build_status, (json.dumps(asdict(build), indent=2) + "\n").encode(), mode=0o644)


def start(paths: Paths, tag: str) -> ImageBuild:
    """Record that this process starts building ``tag``; returns the record."""
    build = ImageBuild(BUILDING, tag, pid=os.getpid(), started=format_rfc3339(now_ns()))
    record(paths, build)
    return build


def finish(paths: Paths, build: ImageBuild, error: str = "") -> None:
    """Record the end of ``build``: built, or failed with ``error``."""
    record(paths, ImageBuild(FAILED if error else BUILT, build.tag, pid=build.pid, started=build.started,
                             finished=format_rfc3339(now_ns()), error=error))


def load(path: Path) -> ImageBuild | None:
    """The record at ``path``, or None when there is none or it cannot be read as one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ImageBuild(**{k: data[k] for k in ImageBuild.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def alive(build: ImageBuild) -> bool:
    """Whether ``build`` is a ``building`` record whose process still runs."""
    return build.state == BUILDING and _alive(build.pid)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (root builds, claude reads)
        return True
    return True


def problem(paths: Paths, tag: str) -> str | None:
    """What to tell the operator while ``tag`` is not built, or None once it is.

    Args:
        paths: The layout (the record is ``paths.image_build_status``).
        tag: The image this version wants (``convocate:<version>``).

    Returns:
        One sentence saying the image is missing, why (never built, building, interrupted, failed and
        the error) and the command that builds it; None when the record says ``tag`` was built.
    """
    build = load(paths.image_build_status)
    retry = messages.IMAGE_BUILD_RETRY.format(unit=BUILD_UNIT)
    if build is None or build.tag != tag:
        return messages.IMAGE_NOT_YET.format(tag=tag, reason="it has not been built", retry=retry)
    if build.state == BUILT:
        return None
    if alive(build):
        return messages.IMAGE_NOT_YET.format(tag=tag, reason=f"it is being built since {build.started}",
                                             retry=messages.IMAGE_BUILD_FOLLOW.format(unit=BUILD_UNIT))
    if build.state == BUILDING:
        return messages.IMAGE_NOT_YET.format(tag=tag, reason=f"its build of {build.started} was interrupted",
                                             retry=retry)
    return messages.IMAGE_NOT_YET.format(tag=tag, reason=f"its build failed ({build.error})", retry=retry)


def packaged_problem(paths: Paths) -> str | None:
    """:func:`problem` for this version's image on a shell host installed from the package, else None.

    Where the packaged build context is missing (the demo, tests, a host without the convocate
    package) the image comes from elsewhere and nothing is said.
    """
    if not paths.image_context.is_dir():
        return None
    return problem(paths, f"convocate:{__version__}")
