"""TUI benchmark: 20 agents x 50 sessions (1000 rows), through a real terminal.

Figures (milliseconds, median of the runs unless said):
- model: rebuilding the table model from 20 list results and rendering one screen of rows;
- open: from starting ``convocate`` in tmux to the screen showing all 1000 sessions; baseline:
  ``convocate ls`` printing the same 1000 sessions from the same agents;
- repaint: from a key press (PageDown / PageUp) to the changed screen, p50 and p99; baseline:
  ``less`` paging a 1000-line file in the same tmux (a terminal program repainting).
The agents are the lightweight stand-ins of tests/fake_agents.py (real SSH, canned lists).

Run: ``.venv/bin/python -m tests.bench.bench_tui [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from convocate.tui.model import ClusterModel
from tests.fake_agents import start_fake_cluster
from tests.harness import REPO, python

AGENTS, SESSIONS = 20, 50


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def bench_model(fakes) -> float:
    times = []
    for _ in range(30):
        started = time.perf_counter()
        model = ClusterModel({f.agent_id: "" for f in fakes})
        for fake in fakes:
            model.set_reach(fake.agent_id, "reachable")
            model.replace_sessions(fake.agent_id, list(fake.views.values()))
        rows = model.rows()
        _ = [row.render(i) for i, row in enumerate(rows[:40], start=1)]
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


class Tmux:
    def __init__(self, env):
        self.socket = f"convocate-bench-{uuid.uuid4().hex[:8]}"
        self.env = env

    def run(self, *args) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], env=self.env, capture_output=True, text=True,
                              check=True).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def bench_less(runs: int) -> list[float]:
    """PageDown/PageUp repaints of ``less`` on 1000 lines in tmux: the baseline of the TUI's repaint."""
    import os

    text = Path(tempfile.mkdtemp()) / "rows.txt"
    text.write_text("".join(f"{i:4d}  session-{i:04d}  {'x' * 80}\n" for i in range(1000)))
    repaints = []
    for _ in range(runs):
        term = Tmux(dict(os.environ))
        try:
            term.run("new-session", "-d", "-s", "t", "-x", "160", "-y", "50", f"less {text}")
            while "session-0000" not in term.screen():
                time.sleep(0.01)
            for i in range(40):
                before = term.screen()
                sent = time.perf_counter()
                term.run("send-keys", "-t", "t", "NPage" if i % 2 == 0 else "PPage")
                while term.screen() == before:
                    pass
                repaints.append((time.perf_counter() - sent) * 1000)
        finally:
            term.close()
    shutil.rmtree(text.parent, ignore_errors=True)
    return repaints


def bench_ls(root: Path, runs: int) -> list[float]:
    import os

    env = {**os.environ, "CONVOCATE_ROOT": str(root)}
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([python(), "-m", "convocate", "ls"], env=env, cwd=REPO, capture_output=True, text=True)
        assert done.stdout.count("\n") > AGENTS * SESSIONS, done.stderr
        times.append((time.perf_counter() - started) * 1000)
    return times


def bench_terminal(root: Path, runs: int) -> tuple[list[float], list[float]]:
    import os

    env = {**os.environ, "CONVOCATE_ROOT": str(root)}
    opens, repaints = [], []
    for _ in range(runs):
        term = Tmux(env)
        try:
            started = time.perf_counter()
            term.run("new-session", "-d", "-s", "t", "-x", "160", "-y", "50",
                     f"cd {REPO} && {python()} -m convocate; sleep 30")
            while f"{AGENTS * SESSIONS} session(s)" not in term.screen() or " 1    " not in term.screen():
                if time.perf_counter() - started > 60:
                    raise RuntimeError("the TUI did not show every session within 60 s:\n" + term.screen())
                time.sleep(0.01)
            opens.append((time.perf_counter() - started) * 1000)
            for i in range(40):
                before = term.screen()
                key = "NPage" if i % 2 == 0 else "PPage"
                sent = time.perf_counter()
                term.run("send-keys", "-t", "t", key)
                while term.screen() == before:
                    if time.perf_counter() - sent > 10:
                        raise RuntimeError("no repaint within 10 s")
                repaints.append((time.perf_counter() - sent) * 1000)
        finally:
            term.close()
    return opens, repaints


def serve_fake_cluster(root: Path) -> tuple[asyncio.AbstractEventLoop, Any]:
    """The :data:`AGENTS` x :data:`SESSIONS` stand-in agents, served by a loop on a thread of their own.

    Returns:
        ``(loop, fakes)``: stop the loop with ``loop.call_soon_threadsafe(loop.stop)``.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        holder["fakes"] = loop.run_until_complete(start_fake_cluster(root, AGENTS, SESSIONS))
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    if not ready.wait(60):
        raise RuntimeError("the stand-in agents did not start within 60 s")
    return loop, holder["fakes"]


def run(runs: int = 3) -> list:
    """The TUI figures with their baselines (for tests/bench/run.py)."""
    from tests.bench.common import Figure, median

    root = Path(tempfile.mkdtemp(prefix="convocate-bench-tui-"))
    loop, fakes = serve_fake_cluster(root)
    opens, repaints = bench_terminal(root, runs)
    lists = bench_ls(root, runs)
    less = bench_less(runs)
    loop.call_soon_threadsafe(loop.stop)
    shutil.rmtree(root, ignore_errors=True)
    label = f"{AGENTS} agents x {SESSIONS} sessions"
    return [Figure(f"TUI open, {label}", "ms", median(opens), median(lists), "convocate ls of the same sessions"),
            Figure("TUI repaint after a key p50", "ms", percentile(repaints, 0.5), percentile(less, 0.5),
                   "less paging 1000 lines in the same tmux"),
            Figure("TUI repaint after a key p99", "ms", percentile(repaints, 0.99), percentile(less, 0.99),
                   "less paging 1000 lines in the same tmux"),
            Figure(f"TUI model rebuild, {label}", "ms", bench_model(fakes))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_tui")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="convocate-bench-tui-"))
    loop, fakes = serve_fake_cluster(root)
    model_ms = bench_model(fakes)
    opens, repaints = bench_terminal(root, args.runs)
    figures = {
        "agents": AGENTS, "sessions": AGENTS * SESSIONS,
        "model_rebuild_ms": round(model_ms, 2),
        "open_ms_median": round(statistics.median(opens), 1),
        "repaint_ms_p50": round(percentile(repaints, 0.5), 1),
        "repaint_ms_p99": round(percentile(repaints, 0.99), 1),
        "repaint_samples": len(repaints),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:20} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
