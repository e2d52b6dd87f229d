"""What a ``convocate-host`` command did, printed step by step as it happens.

Every step ends as *changed* (it altered the host), *ok* (it found everything as wanted) or a
*note* (something the operator should know). The closing line counts the changes, so running a
command a second time visibly says ``nothing changed``.

Two modes of the command line reach every report through :func:`configure` (set once by
``convocate-host``'s ``main``, so reports made deep in a subcommand follow them too):

- ``--dry-run``: a changed step is printed as ``would`` (nothing was changed), and the commands,
  file writes and directories the dry-run target recorded are printed as ``plan`` lines under it;
- ``--json``: nothing is printed while the command runs; :func:`json_document` gives every report
  of the run as one JSON object for stdout at the end.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from convocate.common import messages
from convocate.common.hostsetup import StepReport
from convocate_host.dryrun import DryRunTarget
from convocate_host.target import Target

#: Entry kinds of :attr:`LiveReport.entries`.
CHANGED, KEPT, NOTE, PLANNED = "changed", "ok", "note", "planned"


@dataclass
class ReportMode:
    """How the reports of this run print (see the module docstring).

    Attributes:
        json: Print nothing live; the command prints :func:`json_document` at the end.
        dry_run: Changes are only what would be changed.
        reports: Every report made in this run, in order of creation.
    """

    json: bool = False
    dry_run: bool = False
    reports: list[LiveReport] = field(default_factory=list)


_MODE = ReportMode()


def configure(*, json: bool = False, dry_run: bool = False) -> ReportMode:
    """Set the mode of every report made from now on (and forget earlier reports); returns it."""
    global _MODE
    _MODE = ReportMode(json=json, dry_run=dry_run)
    return _MODE


def json_document(command: str) -> dict[str, Any]:
    """Every report of this run as one JSON-ready object.

    Returns:
        ``{"ok": true, "command", "dry_run", "changes", "hosts": [{"host", "command", "changes",
        "summary", "steps": [{"status", "line"}]}]}``; ``status`` is ``changed``, ``ok``, ``note``
        or ``planned`` (a command or write a dry run did not make).
    """
    hosts = [r.to_json() for r in _MODE.reports]
    return {"ok": True, "command": command, "dry_run": _MODE.dry_run,
            "changes": sum(h["changes"] for h in hosts), "hosts": hosts}


class LiveReport(StepReport):
    """A :class:`StepReport` that also prints each step, prefixed by the host it ran on.

    Args:
        host: How lines name the host (``admin@10.0.0.5``).
        out: Where lines go (stdout).

    Attributes:
        entries: ``(kind, line)`` for every step, in order (kinds: :data:`CHANGED`, :data:`KEPT`,
            :data:`NOTE`, :data:`PLANNED`).
        dry_run: Changed steps are what would change.
        command: The subcommand, once :meth:`finish` named it.
    """

    def __init__(self, host: str, out: TextIO | None = None) -> None:
        super().__init__()
        self.host = host
        self._out = out or sys.stdout
        self._quiet = _MODE.json and out is None
        self.dry_run = _MODE.dry_run
        self.entries: list[tuple[str, str]] = []
        self.command = ""
        _MODE.reports.append(self)

    def _print(self, tag: str, line: str) -> None:
        if not self._quiet:
            print(f"{self.host}: {tag:<7} {line}", file=self._out, flush=True)

    def changed(self, line: str) -> None:
        super().changed(line)
        self.entries.append((CHANGED, line))
        self._print("would" if self.dry_run else "changed", line)

    def kept(self, line: str) -> None:
        super().kept(line)
        self.entries.append((KEPT, line))
        self._print("ok", line)

    def note(self, line: str) -> None:
        super().note(line)
        self.entries.append((NOTE, line))
        self._print("note", line)

    def planned(self, line: str) -> None:
        """Record a command, file write or directory a dry run did not make (``DryRunTarget.on_plan``)."""
        self.steps.append(line)
        self.entries.append((PLANNED, line))
        self._print("plan", line)

    def step(self, changed: bool, line: str) -> bool:
        """Record ``line`` as changed or kept; returns ``changed``."""
        (self.changed if changed else self.kept)(line)
        return changed

    def summary(self) -> str:
        if not self.dry_run:
            return super().summary()
        return messages.DRY_RUN_SUMMARY.format(count=self.changes) if self.changes else messages.DRY_RUN_NOTHING

    def finish(self, command: str) -> str:
        """Print and return the closing line (``init-agent on admin@h: 3 change(s)``)."""
        self.command = command
        line = f"{command} on {self.host}: {self.summary()}"
        if not self._quiet:
            print(line, file=self._out, flush=True)
        return line

    def to_json(self) -> dict[str, Any]:
        """This report as ``{"host", "command", "changes", "summary", "steps": [{"status", "line"}]}``."""
        return {"host": self.host, "command": self.command, "changes": self.changes, "summary": self.summary(),
                "steps": [{"status": kind, "line": line} for kind, line in self.entries]}


def report_for(target: Target) -> LiveReport:
    """A report for ``target``, named after it; a dry-run target tells it every change it did not make."""
    report = LiveReport(target.description)
    if isinstance(target, DryRunTarget):
        target.on_plan = report.planned
    return report
