"""The daemons' runner (:mod:`convocate.common.daemon`), driven by real signals sent to a child process.

The child is this file run as ``python -m tests.test_daemon MODE``: it serves through
:func:`serve_until_signalled` with a shutdown that closes at once (``clean``), never ends while
cancellable (``hang``), or waits on a worker thread that nothing can cancel, with a bound of half a
second (``bounded``). The tests assert exit statuses and log lines, never durations: a deadline
only keeps a broken runner from hanging the suite.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convocate.common.daemon import EXIT_SHUTDOWN_GAVE_UP, serve_until_signalled

REPO = Path(__file__).resolve().parent.parent
#: Seconds a child may take to print what a test waits for (a broken runner, not a slow one).
DEADLINE_S = 60.0


# --- the child ---------------------------------------------------------------------------------
async def _child(mode: str) -> None:
    ticker = None

    async def start() -> None:
        nonlocal ticker
        ticker = asyncio.create_task(asyncio.sleep(3600), name="ticker")
        # Runs once the runner awaits the signal, so after it installed its handlers (the same loop step).
        asyncio.get_running_loop().call_soon(functools.partial(print, "ready", flush=True))

    async def shutdown() -> None:
        print("shutdown: started", flush=True)
        if mode == "hang":
            await asyncio.Event().wait()
        elif mode == "bounded":
            await asyncio.to_thread(time.sleep, 3600)  # a worker thread: cancelling the await leaves it running
        assert ticker is not None
        ticker.cancel()
        print("shutdown: closed", flush=True)

    timeout = 0.5 if mode == "bounded" else 3600.0
    await serve_until_signalled(start, shutdown, name="test-daemon", shutdown_timeout_s=timeout)
    restored = (signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    print(f"served; default handlers back: {restored}", flush=True)


# --- the tests ---------------------------------------------------------------------------------
class Child:
    """A child process in MODE, its output (stdout and stderr) read as it comes."""

    def __init__(self, mode: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.test_daemon", mode], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.output = b""

    def wait_for(self, text: str) -> None:
        """Read until ``text`` has been printed; fails if the child exits or the deadline passes first."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + DEADLINE_S
        while text.encode() not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} from the child:\n{self.text}"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, f"the child exited before printing {text!r}:\n{self.text}"
                self.output += chunk

    def finish(self) -> int:
        """Wait for the child to exit; returns its exit status with all its output read."""
        assert self.proc.stdout is not None
        try:
            self.output += self.proc.stdout.read()  # EOF once it (and every thread) is gone
            return self.proc.wait(DEADLINE_S)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


@pytest.fixture
def child():
    made: list[Child] = []

    def spawn(mode: str) -> Child:
        made.append(Child(mode))
        made[-1].wait_for("ready")
        return made[-1]

    yield spawn
    for c in made:
        c.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_shuts_down_cleanly_and_restores_the_default_handlers(child, sig):
    c = child("clean")
    c.proc.send_signal(sig)
    assert c.finish() == 0, c.text
    assert f"test-daemon: {sig.name} received, shutting down" in c.text
    assert "shutdown: closed" in c.text and "served; default handlers back: True" in c.text
    assert "gave up" not in c.text and "Traceback" not in c.text


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM),
                                           (signal.SIGTERM, signal.SIGINT)])
def test_a_second_signal_during_a_hanging_shutdown_exits_at_once(child, first, second):
    c = child("hang")  # its shutdown never ends and its bound is an hour: only the second signal ends it
    c.proc.send_signal(first)
    c.wait_for("shutdown: started")
    c.proc.send_signal(second)
    assert c.finish() == 128 + second, c.text
    assert (f"test-daemon: second {second.name} during the shutdown: exiting now with status {128 + second}"
            in c.text)
    assert "not finishing the shutdown in task shutdown at _child.<locals>.shutdown (" in c.text  # where it was stuck
    assert "shutdown: closed" not in c.text and "served" not in c.text


def test_a_shutdown_that_outlives_its_bound_is_given_up_and_says_what_it_left(child):
    c = child("bounded")  # without a second signal; its step waits on a thread that cancelling cannot stop
    c.proc.send_signal(signal.SIGTERM)
    assert c.finish() == EXIT_SHUTDOWN_GAVE_UP, c.text
    assert ("test-daemon: the shutdown did not finish within 0.5 s; gave up task shutdown at "
            "_child.<locals>.shutdown (" in c.text) and " > to_thread (" in c.text
    assert "test-daemon: cancelled task ticker at sleep (" in c.text
    assert "shutdown: closed" not in c.text and "served" not in c.text


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(_child(sys.argv[1]))
