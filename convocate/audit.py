"""``convocate audit``: read the agents' audit trails, merged by time, and verify their hash chains.

The records come from each agent through the op ``audit_read`` (paged, each page within one RPC line),
or from a local file with ``--file`` (the shell's forwarded copy ``/var/log/convocate-agent/<agent-id>.audit.jsonl``,
or an agent's ``/var/lib/convocate-agent/audit.jsonl``). ``--verify`` checks ``seq`` and ``prev`` of every
record (:mod:`convocate.common.auditchain`) and names the first broken one; the exit status is then 1.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from convocate.client import AgentClient
from convocate.cluster import Cluster
from convocate.common import messages
from convocate.common.auditchain import (
    ChainReport,
    ChainVerifier,
    compare_copies,
    iter_lines,
    lag_note,
    matches,
    parse_record,
    run_verifier,
    verify_lines,
)
from convocate.common.errors import BadRequest, ConfigError, ConvocateError
from convocate.common.model import validate_uuid
from convocate.common.ops.params import AuditReadParams
from convocate.common.timefmt import parse_rfc3339

#: Exit status of ``--verify`` when a chain is broken (2 is the CLI's usage error).
EXIT_BROKEN = 1
#: Records asked for per ``audit_read`` page.
PAGE = 1000


@dataclass
class AuditQuery:
    """The filters of ``convocate audit`` (all optional).

    Attributes:
        session: A session reference (UUID, unique prefix, name) or, for a deleted session, its UUID.
        operator: A verified operator's name or ``SHA256:`` fingerprint.
        since: RFC 3339 time; records at or after it.
        until: RFC 3339 time; records at or before it.
        agent: Only this agent.
    """

    session: str | None = None
    operator: str | None = None
    since: str | None = None
    until: str | None = None
    agent: str | None = None
    session_names: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Raises BadRequest naming ``--since``/``--until`` when one is not an RFC 3339 time."""
        for flag in ("since", "until"):
            value = getattr(self, flag)
            if value is not None:
                try:
                    parse_rfc3339(value)
                except ValueError as e:
                    raise BadRequest(messages.AUDIT_BAD_TIME.format(flag=flag, value=value, reason=e)) from None

    def params(self, session_id: str | None) -> dict[str, Any]:
        """The ``audit_read`` filters."""
        out: dict[str, Any] = {}
        if session_id:
            out["session"] = session_id
        for key in ("operator", "since", "until"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def format_record(record: dict[str, Any], names: dict[str, str]) -> str:
    """One record as a line: time, agent, operator, op, session, result.

    The operator is the verified name, else ``(unverified)`` and the comment of the SSH key that opened
    the connection.
    """
    who = record.get("operator")
    via = record.get("via") or {}
    if isinstance(who, dict) and who.get("name"):
        operator = str(who["name"])
    else:
        operator = "(unverified) " + (str(via.get("comment") or via.get("fingerprint") or "?"))
    session = record.get("session") or "-"
    if session in names:
        session = f"{names[session]} ({session[:8]})"
    op = str(record.get("op", "?"))
    if "duration_s" in record:
        op += f" {record['duration_s']}s in={record.get('input_bytes', 0)} out={record.get('output_bytes', 0)}"
    if record.get("repaired"):
        op += " [repaired]"
    return "  ".join([str(record.get("time", "?")), str(record.get("agent", "?")), operator, op, session,
                      str(record.get("result", "?"))])


async def fetch(client: AgentClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every record of one agent that passes ``params``, page by page (``audit_read``)."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await client.request(AuditReadParams(**{**params, "after_seq": after, "max": PAGE}))
        out += page.records
        if not page.more or page.next_seq <= after:
            return out
        after = page.next_seq


async def verify_agent(client: AgentClient, *, keep: bool = False) -> ChainVerifier:
    """Fetch one agent's whole chain (``audit_read`` with ``raw``) and verify it as it arrives.

    Args:
        client: The agent.
        keep: Keep the records' hashes, to compare with the shell's copy.
    """
    verifier = ChainVerifier(f"agent {client.agent_id}", keep=keep)
    after = 0
    while True:
        page = await client.request(AuditReadParams(raw=True, after_seq=after, max=PAGE))
        for entry in page.records:
            if not verifier.feed(entry["line"], entry["text"].encode("ascii", "backslashreplace")):
                verifier.finish()
                return verifier
        if not page.more or page.next_seq <= after:  # the end, or a page the verifier stopped on
            verifier.finish()
            return verifier
        after = page.next_seq


def check_shell_copy(agent: ChainVerifier, copy_path: Path) -> ChainReport:
    """Verify the shell's forwarded copy of an agent's chain and compare it with the agent's.

    Returns:
        The copy's report, its problems including those of the comparison (records the copy holds that
        the agent's chain lacks or holds otherwise), and a note when the copy lags behind.
    """
    copy = ChainVerifier(str(copy_path), duplicates=True)
    try:
        with copy_path.open("rb") as f:
            run_verifier(copy, iter_lines(f))
    except OSError as e:
        report = ChainReport()
        report.notes.append(messages.AUDIT_FILE_UNREADABLE.format(path=copy_path, error=e))
        return report
    report = copy.finish()
    if not report.ok:
        return report
    problems = compare_copies(agent, copy)
    if problems:
        report.broken = problems[0]
        return report
    lag = lag_note(agent, copy)
    if lag:
        report.notes.append(lag)
    report.notes.append(messages.AUDIT_COPY_AGREES.format(agent=agent.source, copy=copy_path,
                                                          count=len(copy.hashes)))
    return report


def _file_records(path: Path, query: AuditQuery) -> list[dict[str, Any]]:
    since = parse_rfc3339(query.since) if query.since else None
    until = parse_rfc3339(query.until) if query.until else None
    session = validate_uuid(query.session, "--session") if query.session else None
    out = []
    with _open(path) as f:
        for _number, line, whole in iter_lines(f):
            record = parse_record(line) if whole else None
            if record is not None and matches(record, session=session, operator=query.operator,
                                              since_ns=since, until_ns=until):
                out.append(record)
    return out


def _open(path: Path) -> Any:
    if str(path) == "-":
        return open(sys.stdin.fileno(), "rb", closefd=False)  # noqa: SIM115 (closed by the with of the caller)
    try:
        return path.open("rb")
    except OSError as e:
        raise ConfigError(messages.AUDIT_FILE_UNREADABLE.format(path=path, error=e)) from e


def print_reports(reports: Iterable[tuple[ChainReport, str]], out: TextIO | None = None,
                  err: TextIO | None = None) -> int:
    """Print each chain's verdict (``(report, source)``) and notes; returns :data:`EXIT_BROKEN` if any
    is broken, else 0."""
    out, err = out or sys.stdout, err or sys.stderr
    status = 0
    for report, source in reports:
        for note in report.notes:
            print(f"note: {note}", file=out)
        if report.ok:
            print(messages.AUDIT_CHAIN_OK.format(source=source, count=report.records), file=out)
        else:
            print(report.broken, file=err)
            status = EXIT_BROKEN
    return status


async def run_audit(cluster: Cluster | None, query: AuditQuery, *, verify: bool, as_json: bool,
                    file: Path | None) -> int:
    """``convocate audit``: print the records (or verify the chains); returns the exit status.

    Args:
        cluster: The registered agents (None with ``file``).
        query: The filters (ignored by ``verify``, which checks whole chains).
        verify: Check the chains instead of printing records.
        as_json: Print the records, or the verdicts, as JSON.
        file: Read this file (``-``: standard input) instead of asking the agents.

    Raises:
        ConvocateError: an agent's error, or an unreadable file.
    """
    query.check()
    if file is not None:
        if verify:  # the shell's copy (*.audit.jsonl) may hold a record twice: at least once delivery
            with _open(file) as f:
                report = verify_lines(iter_lines(f), str(file), duplicates=file.name.endswith(".audit.jsonl"))
            return _verdicts([(report, str(file))], as_json)
        return _print_records(_file_records(file, query), as_json, {})
    assert cluster is not None
    clients = [cluster.client(query.agent)] if query.agent else list(cluster.clients.values())
    if verify:
        copies = {c.agent_id: cluster.paths.forwarded_audit_log(c.agent_id) for c in clients}
        results = await asyncio.gather(*(verify_agent(c, keep=copies[c.agent_id].exists()) for c in clients),
                                       return_exceptions=True)
        reports: list[tuple[ChainReport, str]] = []
        for client, result in zip(clients, results, strict=True):
            source = f"agent {client.agent_id}"
            if isinstance(result, BaseException):
                if not isinstance(result, ConvocateError):
                    raise result
                reports.append((ChainReport(broken=f"{source}: {result}"), source))
                continue
            reports.append((result.report, source))
            if copies[client.agent_id].exists() and result.report.ok:
                copy = copies[client.agent_id]
                reports.append((check_shell_copy(result, copy), str(copy)))
        return _verdicts(reports, as_json)
    session_id = None
    names: dict[str, str] = {}
    listing = await cluster.list()
    for ref in listing.sessions:
        names[ref.view.meta.uuid] = ref.view.meta.name
    if query.session:
        try:
            session_id = validate_uuid(query.session, "--session")
        except BadRequest:
            session_id = (await cluster.resolve(query.session)).view.uuid
    results = await asyncio.gather(*(fetch(c, query.params(session_id)) for c in clients), return_exceptions=True)
    records: list[dict[str, Any]] = []
    for client, result in zip(clients, results, strict=True):
        if isinstance(result, ConvocateError):
            print(f"convocate: agent {client.agent_id} unavailable: {result}", file=sys.stderr)
        elif isinstance(result, BaseException):
            raise result
        else:
            records += [r for r in result if "seq" in r]
    return _print_records(records, as_json, names)


def _sort_key(record: dict[str, Any]) -> tuple[int, str, int]:
    try:
        ns = parse_rfc3339(str(record.get("time", "")))
    except ValueError:
        ns = 0
    return ns, str(record.get("agent", "")), int(record.get("seq", 0))


def _print_records(records: list[dict[str, Any]], as_json: bool, names: dict[str, str]) -> int:
    records.sort(key=_sort_key)
    if as_json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        for record in records:
            print(format_record(record, names))
    return 0


def _verdicts(reports: list[tuple[ChainReport, str]], as_json: bool) -> int:
    if as_json:
        print(json.dumps([{"source": source, "records": r.records, "ok": r.ok, "broken": r.broken,
                           "broken_seq": r.broken_seq, "broken_line": r.broken_line, "notes": r.notes}
                          for r, source in reports], indent=2))
        return 0 if all(r.ok for r, _ in reports) else EXIT_BROKEN
    return print_reports(reports)
