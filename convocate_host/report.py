"""What a ``convocate-host`` command did, printed step by step as it happens.

Every step ends as *changed* (it altered the host), *ok* (it found everything as wanted) or a
*note* (something the operator should know). The closing line counts the changes, so running a
command a second time visibly says ``nothing changed``.
"""

from __future__ import annotations

import sys
from typing import TextIO

from convocate.common.hostsetup import StepReport


class LiveReport(StepReport):
    """A :class:`StepReport` that also prints each step, prefixed by the host it ran on.

    Args:
        host: How lines name the host (``admin@10.0.0.5``).
        out: Where lines go (stdout).
    """

    def __init__(self, host: str, out: TextIO | None = None) -> None:
        super().__init__()
        self.host = host
        self._out = out or sys.stdout

    def _print(self, tag: str, line: str) -> None:
        print(f"{self.host}: {tag:<7} {line}", file=self._out, flush=True)

    def changed(self, line: str) -> None:
        super().changed(line)
        self._print("changed", line)

    def kept(self, line: str) -> None:
        super().kept(line)
        self._print("ok", line)

    def note(self, line: str) -> None:
        super().note(line)
        self._print("note", line)

    def step(self, changed: bool, line: str) -> bool:
        """Record ``line`` as changed or kept; returns ``changed``."""
        (self.changed if changed else self.kept)(line)
        return changed

    def finish(self, command: str) -> str:
        """Print and return the closing line (``init-agent on admin@h: 3 change(s)``)."""
        line = f"{command} on {self.host}: {self.summary()}"
        print(line, file=self._out, flush=True)
        return line
