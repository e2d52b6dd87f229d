"""A scripted fake of the Anthropic Messages API for the real-Claude tests (stdlib only).

It runs inside a session's own network namespace (a helper container started with
``network_mode="container:<session container>"``), listens on ``127.0.0.1:PORT`` only, and
talks to the test through a directory both can reach (the host's temp dir, mounted at ``--dir``):

- ``queue/*.json``: scripted responses, taken in name order, one per ``POST /v1/messages``
  (the test writes them atomically: temp file, rename). Each is an object with ``kind``:

  - ``{"kind": "text", "text": T}``: an assistant turn with one text block, ``stop_reason`` ``end_turn``;
  - ``{"kind": "tool_use", "name": N, "input": {...}, "text": T (optional)}``: an optional text block,
    then a ``tool_use`` block whose input arrives as ``input_json_delta`` chunks, ``stop_reason`` ``tool_use``;
  - ``{"kind": "error", "status": 429, "headers": {...}, "body": {...}}``: a plain HTTP error response.

- ``requests/NNNNNN.json``: every request received, in order: ``{"n", "method", "path", "headers",
  "body" (the parsed JSON, or the text when it is not JSON), "answer" (what it got: ``scripted``,
  ``count_tokens``, ``unscripted``, ``not_found``), "script" (the queue file it took, if any), "at"}``.
- ``ready``: written once the server listens (``PORT PID``); ``server.log``: one line per request.

The Messages streaming format (Server-Sent Events ``message_start``, ``content_block_start``,
``content_block_delta`` with ``text_delta`` / ``input_json_delta``, ``content_block_stop``,
``message_delta``, ``message_stop``) is Anthropic's, as documented at
https://docs.anthropic.com/en/api/messages-streaming; Claude Code 2.1.330 sends
``POST /v1/messages?beta=true`` with ``"stream": true`` and may call ``/v1/messages/count_tokens``.
A ``POST /v1/messages`` with an empty queue gets HTTP 500 with an ``api_error`` saying that no
response was scripted (``x-should-retry: false``, so Claude Code ends the turn at once and shows it);
any other path gets a 404 ``not_found_error``. Both are recorded like the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: Text of the error an unscripted ``POST /v1/messages`` gets (tests look for it on screen).
UNSCRIPTED = "fake Messages API: no response scripted for this request"
MODEL = "claude-sonnet-4-5"


def write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file in the same dir, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


class Store:
    """The queue and the request log under one directory; one lock for both."""

    def __init__(self, root: Path) -> None:
        self.queue = root / "queue"
        self.requests = root / "requests"
        self.log = root / "server.log"
        self.queue.mkdir(exist_ok=True)
        self.requests.mkdir(exist_ok=True)
        self.lock = threading.Lock()
        self.count = len(list(self.requests.glob("*.json")))  # a re-attached server continues the numbering

    def take(self) -> tuple[str, dict] | None:
        """The next scripted response (removed from the queue), or None."""
        for path in sorted(self.queue.glob("*.json")):
            try:
                script = json.loads(path.read_text())
                path.unlink()
            except (OSError, ValueError):
                continue
            return path.name, script
        return None

    def record(self, entry: dict) -> None:
        self.count += 1
        entry["n"] = self.count
        write_json(self.requests / f"{self.count:06d}.json", entry)
        with open(self.log, "a") as f:
            f.write(f"{entry['at']:.3f} #{self.count} {entry['method']} {entry['path']} -> {entry['answer']}"
                    f" {entry.get('script') or ''}\n")


def sse_events(script: dict, message_id: str) -> list[tuple[str, dict]]:
    """The streaming events of one scripted assistant turn."""
    blocks: list[tuple[dict, list[dict]]] = []
    if script.get("text"):
        blocks.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": script["text"]}]))
    if script["kind"] == "tool_use":
        raw = json.dumps(script.get("input", {}))
        half = len(raw) // 2
        chunks = [raw[:half], raw[half:]] if half else [raw]
        blocks.append(({"type": "tool_use", "id": script.get("id") or f"toolu_{message_id}", "name": script["name"],
                        "input": {}}, [{"type": "input_json_delta", "partial_json": c} for c in chunks]))
    events: list[tuple[str, dict]] = [("message_start", {"type": "message_start", "message": {
        "id": message_id, "type": "message", "role": "assistant", "model": MODEL, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}})]
    for index, (start, deltas) in enumerate(blocks):
        events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": start}))
        events += [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                   for d in deltas]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    stop = "tool_use" if script["kind"] == "tool_use" else "end_turn"
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                     "usage": {"output_tokens": 5}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def make_handler(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

        def _body(self) -> object:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                return json.loads(raw)
            except ValueError:
                return raw.decode("utf-8", "replace")

        def _json(self, status: int, obj: object, headers: dict | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, str(value))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            body = self._body() if method == "POST" else None
            entry = {"method": method, "path": self.path, "headers": dict(self.headers), "body": body,
                     "at": time.time(), "script": None}
            route = self.path.split("?", 1)[0]
            with store.lock:
                if method == "POST" and route == "/v1/messages":
                    taken = store.take()
                    entry["answer"] = "scripted" if taken else "unscripted"
                    if taken:
                        entry["script"] = taken[0]
                elif method == "POST" and route == "/v1/messages/count_tokens":
                    entry["answer"] = "count_tokens"
                else:
                    entry["answer"] = "not_found"
                store.record(entry)
            if entry["answer"] == "count_tokens":
                self._json(200, {"input_tokens": 10})
            elif entry["answer"] == "not_found":
                self._json(404, {"type": "error", "error": {"type": "not_found_error",
                                                            "message": f"fake Messages API: no route {route}"}})
            elif entry["answer"] == "unscripted":
                self._json(500, {"type": "error", "error": {"type": "api_error", "message": UNSCRIPTED}},
                           {"x-should-retry": "false"})
            else:
                self._scripted(taken[1], entry["n"])

        def _scripted(self, script: dict, n: int) -> None:
            if script["kind"] == "error":
                self._json(int(script.get("status", 500)), script.get("body") or {
                    "type": "error", "error": {"type": "api_error", "message": "scripted error"}},
                    script.get("headers"))
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            for name, data in sse_events(script, f"msg_fake_{n:06d}"):
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()
            self.close_connection = True

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self._handle("POST")

        def do_GET(self) -> None:  # noqa: N802
            self._handle("GET")

        def do_HEAD(self) -> None:  # noqa: N802
            self._handle("HEAD")

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    store = Store(args.dir)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(store))
    server.daemon_threads = True
    write_json(args.dir / "ready", {"port": args.port, "pid": os.getpid()})
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
