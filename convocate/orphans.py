"""Orphan sessions: session directories on the shell host that no agent claims (state ``O``, DESIGN §4).

A shell host that once ran sessions itself (the single-host convocate) keeps their homes in
``/home/claude/<uuid>/``. Nothing runs them any more; the operator sees them as ``O`` rows and moves
each to an agent with ``convocate-host migrate-session``. Whether an agent claims one can only be
said when every agent answered, so callers list orphans only then.
"""

from __future__ import annotations

import json
import logging

from convocate.common.errors import BadRequest
from convocate.common.model import SessionMeta, SessionView, is_uuid4
from convocate.common.paths import LEGACY_SESSION_FILE, Paths

log = logging.getLogger(__name__)

#: What ``convocate`` says when asked to act on an orphan.
MIGRATE_HINT = ("{name} ({id}) is an orphan session on this shell host: no agent runs it. Move it to an agent with"
                " `convocate-host migrate-session --agent AGENT --session {uuid}`")


def scan_orphans(paths: Paths) -> list[SessionView]:
    """Every session directory under the shell host's session base, as orphan views.

    Directories whose name is not a UUIDv4 or whose ``session.json`` is unreadable are skipped
    (and logged): they are not sessions anyone could run. The shell host has no record store: an
    orphan's metadata is the ``session.json`` a single-host convocate left in the home, read here for
    display only; ``convocate-host migrate-session`` validates it and turns it into the agent's record.
    """
    try:
        entries = sorted(p for p in paths.session_base.iterdir() if p.is_dir() and is_uuid4(p.name))
    except OSError:
        return []
    views = []
    for directory in entries:
        try:
            meta = SessionMeta.from_json(json.loads((directory / LEGACY_SESSION_FILE).read_text(encoding="utf-8")),
                                         expected_uuid=directory.name)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, BadRequest) as e:
            log.info("%s is not a readable session: %s", directory, e)
            continue
        views.append(SessionView(meta=meta, orphan=True))
    return views


def unclaimed(orphans: list[SessionView], claimed: set[str]) -> list[SessionView]:
    """The orphans whose UUID no agent lists, oldest access last."""
    left = [v for v in orphans if v.meta.uuid not in claimed]
    return sorted(left, key=lambda v: v.meta.last_accessed, reverse=True)
