"""Running the session image's ``build-image.sh`` for ``convocate install`` (DESIGN §4): which docker CLI,
whether dockerd answers, the build's output as a progress bar, and the image ID before and after.

:func:`convocate.shell_install.build_session_image` decides what to build and records it; this
module only runs the commands (docker(1) ``version`` and ``image inspect``, build-image.sh).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys

from convocate.common import hostsetup, progress


def docker_command() -> str | None:
    """The docker CLI build-image.sh will use: ``$DOCKER``, ``/usr/bin/docker``, else ``docker`` on PATH."""
    if os.environ.get("DOCKER"):
        return shutil.which(os.environ["DOCKER"])
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    return shutil.which("docker")


#: docker build's progress line, as build-image.sh passes it on (``    Step 3/34 : RUN ...``).
_DOCKER_STEP = re.compile(r"\bStep (\d+)/(\d+) : (.*)$")
#: Lines of a failed build shown again below the progress bar.
_FAILED_TAIL = 40


def run_build(command: list[str]) -> int:
    """Run build-image.sh; returns its exit status.

    On a terminal its output becomes one progress bar (docker build's steps, with an ETA) and, if it
    fails, its last lines; anywhere else (the journal of convocate-image-build.service, a pipe) the
    output passes through as it is.
    """
    env, stdin = hostsetup.child_env(), subprocess.DEVNULL
    if not sys.stderr.isatty():
        return subprocess.run(command, check=False, env=env, stdin=stdin).returncode
    tail: collections.deque[str] = collections.deque(maxlen=_FAILED_TAIL)
    with subprocess.Popen(command, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace") as build, \
            progress.Progress("building the session image", unit="steps", out=sys.stderr) as bar:
        assert build.stdout is not None
        for line in build.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            found = _DOCKER_STEP.search(line)
            if found:
                bar.step(int(found.group(1)), int(found.group(2)), found.group(3))
            elif line.startswith("build-image: ["):
                bar.update(bar.done, line.partition("] ")[2])
        status = build.wait()
    if status != 0:
        sys.stderr.write("\n".join(tail) + "\n")
    return status


def docker_unreachable(docker: str) -> str:
    """Why dockerd does not answer ``docker version``, or ``""`` when it does."""
    probe = subprocess.run([docker, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True,
                           check=False, env=hostsetup.child_env(), stdin=subprocess.DEVNULL)
    if probe.returncode == 0:
        return ""
    return f"Docker is not reachable ({(probe.stderr.strip().splitlines() or ['no answer'])[-1]})"


def image_id(docker: str, tag: str) -> str | None:
    """The ID (``sha256:...``) of image ``tag`` as ``docker image inspect`` gives it; None when there is none."""
    result = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True,
                            check=False, env=hostsetup.child_env(), stdin=subprocess.DEVNULL)
    return result.stdout.strip() if result.returncode == 0 else None
