"""The test side of the fake Messages API: script responses, read requests, attach it to a session.

:class:`FakeAPI` owns one host directory (the queue and the request log, see
``fake_messages_api.py``) and one helper container that runs the server inside a
session container's network namespace (``network_mode="container:<id>"``), so Claude
Code's ``ANTHROPIC_BASE_URL=http://127.0.0.1:PORT`` reaches it on that namespace's
loopback and nothing leaves it. A container restart (the ``restart`` op, or a clone
started anew) gives the session a new namespace: call :meth:`FakeAPI.attach` again with
the new container's ID; the queue and the request log carry on.

The helper runs the real session image's ``python3`` (Debian's), read-only root,
every capability dropped, no new privileges, as uid 1337, labelled
``convocate.test=realcc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import docker

#: Port of the fake API on the session namespace's loopback (each session has its own namespace).
PORT = 8765
BASE_URL = f"http://127.0.0.1:{PORT}"
#: Label on every container, network and image these tests make (a crashed run is swept by it).
TEST_LABEL = {"convocate.test": "realcc"}
SERVER = Path(__file__).with_name("fake_messages_api.py")
CONTAINER_DIR = "/fake"
SESSION_UID = 1337


class FakeAPI:
    """One scripted fake Messages API, for one session (and whatever restarts or copies it).

    Args:
        client: A docker SDK client.
        directory: Host directory for the server script, the queue and the request log
            (created; handed to uid 1337, the helper's user).
        image: Image to run the helper from (one with ``python3``: the real session image).
        name: Name of the helper container (unique per test run).
    """

    def __init__(self, client: docker.DockerClient, directory: Path, image: str, name: str) -> None:
        self.client = client
        self.dir = directory
        self.image = image
        self.name = name
        self.container_id: str | None = None
        self._queued = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "queue").mkdir(exist_ok=True)
        (self.dir / "requests").mkdir(exist_ok=True)
        shutil.copy2(SERVER, self.dir / SERVER.name)
        for path in (self.dir, self.dir / "queue", self.dir / "requests"):
            os.chown(path, SESSION_UID, SESSION_UID)

    # --- scripting ---------------------------------------------------------------------
    def _queue(self, script: dict[str, Any]) -> None:
        self._queued += 1
        name = f"{time.time_ns():020d}-{self._queued:04d}.json"
        tmp = self.dir / "queue" / f".{name}.tmp"
        tmp.write_text(json.dumps(script))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.dir / "queue" / name)

    def queue_text(self, text: str) -> None:
        """The next ``POST /v1/messages`` gets an assistant turn saying ``text`` (``end_turn``)."""
        self._queue({"kind": "text", "text": text})

    def queue_tool_use(self, name: str, tool_input: dict[str, Any], text: str = "") -> None:
        """The next ``POST /v1/messages`` asks for tool ``name`` with ``tool_input`` (``stop_reason`` ``tool_use``)."""
        self._queue({"kind": "tool_use", "name": name, "input": tool_input, "text": text})

    def queue_error(self, status: int, headers: dict[str, str] | None = None, body: dict | None = None) -> None:
        """The next ``POST /v1/messages`` gets HTTP ``status`` with ``headers`` and a JSON ``body``."""
        self._queue({"kind": "error", "status": status, "headers": headers or {}, "body": body})

    def pending(self) -> int:
        """Scripted responses not taken yet."""
        return len(list((self.dir / "queue").glob("*.json")))

    # --- reading back ----------------------------------------------------------------------
    def requests(self) -> list[dict[str, Any]]:
        """Every request the server got, oldest first (see ``fake_messages_api.py`` for the fields)."""
        out = []
        for path in sorted((self.dir / "requests").glob("*.json")):
            with contextlib.suppress(ValueError):  # written atomically; a torn read cannot happen, but be safe
                out.append(json.loads(path.read_text()))
        return out

    def message_requests(self) -> list[dict[str, Any]]:
        """The ``POST /v1/messages`` requests (the model turns), oldest first."""
        return [r for r in self.requests() if r["method"] == "POST" and r["path"].split("?")[0] == "/v1/messages"]

    def wait_message_requests(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` model requests arrived; returns them all.

        Raises:
            AssertionError: fewer arrived within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            got = self.message_requests()
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"the fake API got {len(got)} model request(s) in {timeout} s, "
                                     f"wanted {count}; log:\n{self.server_log()}")
            time.sleep(0.1)

    def server_log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text() if path.exists() else "(no request yet)"

    # --- attaching -------------------------------------------------------------------------
    def attach(self, container_id: str, timeout: float = 30.0) -> None:
        """Run the server in ``container_id``'s network namespace (replacing an earlier helper).

        Raises:
            AssertionError: the server did not say it listens within ``timeout`` seconds.
        """
        self.detach()
        ready = self.dir / "ready"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        helper = self.client.containers.run(
            self.image, ["/fake/" + SERVER.name, "--port", str(PORT), "--dir", CONTAINER_DIR],
            entrypoint=["python3", "-I"], name=self.name, detach=True, labels=TEST_LABEL,
            network_mode=f"container:{container_id}", read_only=True, cap_drop=["ALL"],
            security_opt=["no-new-privileges"], user=f"{SESSION_UID}:{SESSION_UID}", pids_limit=64,
            mem_limit="128m", volumes={str(self.dir): {"bind": CONTAINER_DIR, "mode": "rw"}},
        )
        self.container_id = container_id
        deadline = time.monotonic() + timeout
        while not ready.exists():
            helper.reload()
            if helper.status == "exited" or time.monotonic() > deadline:
                logs = helper.logs().decode(errors="replace")
                raise AssertionError(f"the fake API did not start ({helper.status}):\n{logs}")
            time.sleep(0.05)

    def detach(self) -> None:
        """Remove the helper container, if any (the queue and the log stay)."""
        with contextlib.suppress(docker.errors.NotFound):
            self.client.containers.get(self.name).remove(force=True)
        self.container_id = None


def texts(obj: Any) -> list[str]:
    """Every ``text``, string ``content`` and ``tool_use`` input (as JSON) in a request body's ``messages``."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "tool_use":
                found.append(json.dumps(node.get("input"), ensure_ascii=False))
            for key, value in node.items():
                if key in ("text", "content") and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(obj.get("messages", []) if isinstance(obj, dict) else obj)
    return found


def conversation(request: dict[str, Any]) -> str:
    """The text of a model request's ``messages``, joined: what the model was shown."""
    return "\n".join(texts(request["body"]))

