"""The daemons' one runner: start, serve until SIGTERM or SIGINT, shut down within a bound.

``convocate-agent serve`` and ``convocate status-serve`` both run through
:func:`serve_until_signalled`, so both answer signals the same way:

- the first SIGTERM or SIGINT after the start has returned begins the shutdown;
- a second one (either signal) while the shutdown runs ends the process at once,
  with exit status 128 + the signal's number (143 for SIGTERM, 130 for SIGINT, the
  shell's convention), skipping the rest of the shutdown;
- a shutdown still running after its bound is given up: its step and every other
  task left are logged and cancelled, and the process exits with status
  :data:`EXIT_SHUTDOWN_GAVE_UP`. The bounds are kept under the units'
  ``TimeoutStopSec=30s``, so the log says what was left before systemd's SIGKILL would.

A process ended either way exits with :func:`os._exit`: a Docker call blocked in a
worker thread would otherwise hold the interpreter's exit (it joins the executors'
threads) for as long as it blocks. Logging's handlers are flushed first; nothing else
(``atexit`` handlers, unflushed files) is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn

log = logging.getLogger(__name__)

#: The signals that stop a daemon (systemd sends SIGTERM; a terminal's ^C is SIGINT).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Exit status of a daemon whose shutdown did not finish within its bound (a failure for systemd).
EXIT_SHUTDOWN_GAVE_UP = 1
#: Seconds the tasks cancelled after the bound get to unwind before the process exits regardless.
CANCEL_GRACE_S = 1.0


async def serve_until_signalled(start: Callable[[], Awaitable[Any]], shutdown: Callable[[], Coroutine[Any, Any, None]], *,
                                name: str, shutdown_timeout_s: float) -> None:
    """Run ``start``, serve until SIGTERM or SIGINT, then run ``shutdown`` within ``shutdown_timeout_s``.

    The handlers are installed on the running loop once ``start`` has returned (a signal
    during the start has its default effect: the process ends) and removed once the
    shutdown has finished, which restores the default dispositions (SIGINT raises
    :class:`KeyboardInterrupt` again). If the task running this is cancelled while it
    serves, the shutdown still runs.

    Args:
        start: Opens the listeners and starts the daemon's tasks; its result is ignored.
        shutdown: Closes what ``start`` opened, in the daemon's order.
        name: The daemon as its log lines name it (``convocate-agent``).
        shutdown_timeout_s: Seconds the whole shutdown may take, in seconds of the loop's clock.

    Raises:
        Exception: whatever ``start`` or ``shutdown`` raised (a :class:`ConfigError` at start, say).

    The process does not return from here when a second signal arrives during the
    shutdown (exit status 128 + signal) or when the shutdown outlives its bound (exit
    status :data:`EXIT_SHUTDOWN_GAVE_UP`); see the module's docstring.
    """
    await start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    shutting_down: list[asyncio.Task[None]] = []

    def on_signal(sig: signal.Signals) -> None:
        if not stopping.is_set():
            log.info("%s: %s received, shutting down (again to exit at once)", name, sig.name)
            stopping.set()
            return
        where = f" in {describe_task(shutting_down[0])}" if shutting_down else ""
        log.error("%s: second %s during the shutdown: exiting now with status %d, not finishing the shutdown%s",
                  name, sig.name, 128 + sig, where)
        exit_now(128 + sig)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await stopping.wait()
    finally:
        try:
            task = asyncio.create_task(shutdown(), name="shutdown")
            shutting_down.append(task)
            done, _ = await asyncio.wait({task}, timeout=shutdown_timeout_s)
            if not done:
                await _give_up(name, task, shutdown_timeout_s)
            task.result()
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)


async def _give_up(name: str, step: asyncio.Task[None], timeout_s: float) -> NoReturn:
    """Log and cancel the shutdown ``step`` and every other task left, then end the process."""
    log.error("%s: the shutdown did not finish within %g s; gave up %s", name, timeout_s, describe_task(step))
    current = asyncio.current_task()
    left = sorted((t for t in asyncio.all_tasks() if t is not current and t is not step and not t.done()),
                  key=lambda t: t.get_name())
    for task in left:
        log.error("%s: cancelled %s", name, describe_task(task))
    for task in (step, *left):
        task.cancel()
    await asyncio.wait({step, *left}, timeout=CANCEL_GRACE_S)
    exit_now(EXIT_SHUTDOWN_GAVE_UP)


def describe_task(task: asyncio.Task[Any]) -> str:
    """``task NAME at OUTER (FILE:LINE) > ... > INNERMOST (FILE:LINE)``: where a task is suspended, for a log line.

    The chain follows the coroutines each one awaits (``cr_await``), the outermost first.
    """
    frames = []
    coro: Any = task.get_coro()
    while coro is not None and len(frames) < 20:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            frames.append(f"{code.co_qualname} ({code.co_filename}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return f"task {task.get_name()}" + (f" at {' > '.join(frames)}" if frames else "")


def exit_now(status: int) -> NoReturn:
    """End the process with ``status`` after flushing the log handlers, stdout and stderr (:func:`os._exit`)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or its reader went away
            pass
    os._exit(status)
