"""Usage limits and replies without attaching (issue 15, items 3 and 4), without Docker: the ``limited``
activity from ``StopFailure``, the reporter's reading of the transcript (hostile ones too), the settings,
the wire field ``activity_until``, and how ``ls``, ``reply`` and the TUI model show and take them."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import time

import pytest

from convocate.cli import reply_text
from convocate.common.errors import BadRequest
from convocate.common.model import SessionMeta, SessionView
from convocate.common.timefmt import format_rfc3339
from convocate.render import activity_text, sessions_table, until_clock
from convocate.tui.model import ClusterModel, Row
from convocate_agent.activityrules import LIMIT_HORIZON_S, Activity, limit_until, next_activity
from convocate_agent.settings import Settings
from tests.harness import REPO

S = 1_000_000_000
NOW = 1_800_000_000 * S
SID = "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91"


def _reporter():
    spec = importlib.util.spec_from_file_location("convocate_report",
                                                  REPO / "packaging" / "image" / "session" / "convocate_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _reporter()


WORKING = Activity("working", "do it", 1)


def failure(current=WORKING, retry=300, **data):
    return next_activity(current, "hook", "StopFailure", {"error": "rate_limit", **data}, NOW, limit_retry_s=retry)


# --- the agent: StopFailure -> limited ---------------------------------------------------------------
def test_a_rate_limit_with_a_reset_time_is_limited_until_then():
    a = failure(last_assistant_message="You've hit your 5-hour limit · resets 12:27am (UTC)",
                resets_at=NOW // S + 3600, limit_type="five_hour")
    assert (a.state, a.detail, a.at, a.until) == ("limited", "You've hit your 5-hour limit · resets 12:27am (UTC)",
                                                  NOW, NOW + 3600 * S)


@pytest.mark.parametrize("resets_at", ["1800003600", -5, NOW // S - 1, NOW // S + LIMIT_HORIZON_S + 1, 10**30, True,
                                       1.8e9, None, [1], {"a": 1}])
def test_a_reset_time_that_is_not_an_int_within_eight_days_is_ignored(resets_at):
    a = failure(retry=120, resets_at=resets_at)
    assert a.state == "limited" and a.until == NOW + 120 * S
    assert a.detail == "rate limited"  # no message: a generic one


def test_the_edges_of_the_window_count():
    assert limit_until({"resets_at": NOW // S}, NOW, 300) == NOW
    assert limit_until({"resets_at": NOW // S + LIMIT_HORIZON_S}, NOW, 300) == NOW + LIMIT_HORIZON_S * S


def test_other_api_errors_end_the_turn_idle_and_say_why():
    a = next_activity(Activity("working", "x", 1), "hook", "StopFailure",
                      {"error": "authentication_failed", "last_assistant_message": "Invalid API key"}, NOW)
    assert (a.state, a.detail, a.until) == ("idle", "turn failed: authentication_failed (Invalid API key)", 0)
    a = next_activity(Activity("working"), "hook", "StopFailure", {}, NOW)
    assert (a.state, a.detail) == ("idle", "turn failed: unknown")
    a = next_activity(Activity("working"), "hook", "StopFailure", {"error": "x" * 5000,
                                                                    "last_assistant_message": "y" * 5000}, NOW)
    assert len(a.detail) <= 500


def test_limited_ends_with_the_next_prompt_tool_turn_or_start():
    limited = failure(resets_at=NOW // S + 60)
    for event, data, state in (("UserPromptSubmit", {"prompt": "continue"}, "working"),
                               ("PreToolUse", {"tool_name": "Bash"}, "working"),
                               ("Stop", {}, "idle"), ("SessionStart", {"source": "resume"}, "idle"),
                               ("Notification", {"message": "permission?"}, "waiting")):
        after = next_activity(limited, "hook", event, data, NOW + S)
        assert after.state == state and after.until == 0, event
    # The same limit reported again is not news; a new reset time is.
    assert next_activity(limited, "hook", "StopFailure", {"error": "rate_limit", "resets_at": NOW // S + 60},
                         NOW + S) is None
    assert failure(current=limited, resets_at=NOW // S + 90).until == NOW + 90 * S
    # A crash of claude while limited keeps the limit (the supervisor restarts it).
    crashed = next_activity(limited, "supervisor", "exit", {"status": 1}, NOW + S)
    assert crashed.state == "limited" and crashed.until == limited.until


# --- the wire and the record ------------------------------------------------------------------------
def meta(**changes):
    base = SessionMeta(uuid=SID, name="busy", created_at=NOW, last_accessed=NOW)
    return base.with_changes(**changes)


def test_activity_until_is_rfc3339_on_the_wire_and_omitted_when_zero():
    m = meta(activity="limited", activity_detail="limit", activity_at=NOW, activity_until=NOW + 60 * S)
    wire = SessionView(m, running=True).to_wire()
    assert wire["activity"] == "limited" and wire["activity_until"] == format_rfc3339(NOW + 60 * S)
    assert SessionView.from_wire(wire).meta == m
    assert SessionMeta.from_json(m.to_json()) == m
    assert "activity_until" not in SessionView(meta(activity="idle")).to_wire()
    # Only a limited session has one (a stale field of another state is dropped), and a bad one is refused.
    stale = {**meta(activity="idle").to_json(), "activity_until": format_rfc3339(NOW)}
    assert SessionMeta.from_json(stale).activity_until == 0
    with pytest.raises(BadRequest, match="activity_until"):
        SessionMeta.from_json({**m.to_json(), "activity_until": "soon"})


# --- settings ----------------------------------------------------------------------------------------
def test_the_limit_settings_have_defaults_and_rules():
    s = Settings()
    assert (s.limit_retry_s, s.resume_after_limit, s.resume_message) == (300, False, "continue")
    t = s.updated({"limit_retry_s": 1, "resume_after_limit": True, "resume_message": "go on please"})
    assert (t.limit_retry_s, t.resume_after_limit, t.resume_message) == (1, True, "go on please")
    for bad in ({"limit_retry_s": 0}, {"limit_retry_s": 86_401}, {"limit_retry_s": "5"},
                {"resume_after_limit": 1}, {"resume_after_limit": "yes"}, {"resume_message": ""},
                {"resume_message": "   "}, {"resume_message": "two\nlines"}, {"resume_message": "x" * 1001},
                {"resume_message": 5}):
        with pytest.raises(BadRequest, match=next(iter(bad))):
            s.updated(bad)


# --- how it is shown -----------------------------------------------------------------------------------
def test_ls_shows_limited_until_the_local_reset_time():
    until = int(time.time()) * S + 60 * S
    limited = meta(activity="limited", activity_until=until)
    assert activity_text(limited) == f"limited until {time.strftime('%H:%M', time.localtime(until / S))}"
    assert activity_text(meta(activity="limited")) == "limited"
    assert activity_text(meta()) == "-"
    assert until_clock(NOW + 3 * 86_400 * S, NOW) == time.strftime("%m-%d %H:%M", time.localtime(NOW / S + 3 * 86_400))
    assert "limited until " in sessions_table([SessionView(limited, agent_id="a1")])


def test_the_tui_model_takes_the_reset_time_from_the_event_and_counts_limited_and_waiting():
    model = ClusterModel({"a1": "127.0.0.1:1"})
    model.set_reach("a1", "reachable")
    other = "0b6b8c2e-3d4f-4a1b-9c2d-1e2f3a4b5c6d"
    model.replace_sessions("a1", [SessionView(meta(activity="idle"), running=True),
                                  SessionView(meta(uuid=other, name="asker", activity="waiting",
                                                   activity_detail="Shall I push?", activity_at=NOW),
                                              running=True)])
    until = NOW + 600 * S
    model.apply({"type": "session.activity", "agent_id": "a1", "session_id": SID,
                 "data": {"activity": "limited", "detail": "You've hit your limit", "at": format_rfc3339(NOW),
                          "until": format_rfc3339(until)}})
    view = model.find("a1", SID)
    assert view.meta.activity_until == until
    line = Row("a1", view).render(1)
    assert f"limited until {until_clock(until)}  You've hit your limit" in line
    assert line.split()[5] == "limited"
    assert model.activity_counts() == "1 waiting, 1 limited"
    assert [v.meta.name for v in model.waiting()] == ["asker"]
    model.apply({"type": "session.activity", "agent_id": "a1", "session_id": SID,
                 "data": {"activity": "working", "detail": "continue", "at": format_rfc3339(NOW + S)}})
    assert model.find("a1", SID).meta.activity_until == 0 and model.activity_counts() == "1 waiting"


def test_a_reply_is_one_line():
    assert reply_text(["yes,", "push", "it"], io.StringIO()) == "yes, push it"
    assert reply_text(["-"], io.StringIO("use\npostgres\n\n")) == "use postgres"
    with pytest.raises(BadRequest, match="empty"):
        reply_text(["-"], io.StringIO(" \n"))


# --- the reporter: StopFailure and the transcript (hostile ones included) ------------------------------
def api_error(resets_at=1_800_003_600, kind="five_hour", **extra):
    return json.dumps({"type": "assistant", "isApiErrorMessage": True, "apiErrorParams": {"rate_limit_info": {
        "status": "rejected", "resetsAt": resets_at, "rateLimitType": kind}}, **extra})


def hook(tmp_path, transcript, **fields):
    payload = {"session_id": "s", "transcript_path": str(transcript), "cwd": "/home/claude",
               "hook_event_name": "StopFailure", "error": "rate_limit",
               "last_assistant_message": "You've hit your 5-hour limit", **fields}
    return report.hook_message(json.dumps(payload).encode())


def test_the_reporter_keeps_the_failure_and_adds_the_reset_time_of_the_last_api_error(tmp_path):
    transcript = tmp_path / "t.jsonl"
    transcript.write_text("\n".join([json.dumps({"type": "user", "message": "hi"}), api_error(1_700_000_000),
                                     json.dumps({"type": "user", "message": "again"}), api_error(), ""]))
    event, data = hook(tmp_path, transcript, error_details={"status": 429})
    assert event == "StopFailure"
    assert data == {"session_id": "s", "error": "rate_limit", "last_assistant_message": "You've hit your 5-hour limit",
                    "error_details": '{"status": 429}', "resets_at": 1_800_003_600, "limit_type": "five_hour"}
    # A plain 429 (API key, no unified headers): the last API error has no rate_limit_info.
    transcript.write_text(api_error() + "\n" + json.dumps({"type": "assistant", "isApiErrorMessage": True}) + "\n")
    assert "resets_at" not in hook(tmp_path, transcript)[1]
    # Another error does not read the transcript at all.
    transcript.write_text(api_error() + "\n")
    assert "resets_at" not in hook(tmp_path, transcript, error="overloaded")[1]


@pytest.mark.parametrize("resets_at", ["1800003600", 1.8e9, True, None, [1]])
def test_a_reset_time_that_is_not_an_int_is_left_out(tmp_path, resets_at):
    transcript = tmp_path / "t.jsonl"
    transcript.write_text(api_error(resets_at) + "\n")
    data = hook(tmp_path, transcript)[1]
    assert "resets_at" not in data and data["limit_type"] == "five_hour"


def test_negative_and_far_future_reset_times_pass_as_ints_for_the_agent_to_refuse(tmp_path):
    transcript = tmp_path / "t.jsonl"
    for value in (-5, 10**30):
        transcript.write_text(api_error(value) + "\n")
        data = hook(tmp_path, transcript)[1]
        assert data["resets_at"] == value
        assert failure(resets_at=data["resets_at"]).until == NOW + 300 * S


def test_hostile_transcripts_cost_a_bounded_read_and_give_nothing(tmp_path):
    # Not JSON, a deep nesting, a huge file whose API error lies before the last 256 KiB, a link, a FIFO.
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\xff\xfe not json isApiErrorMessage\n" + b"[" * 100_000 + b"isApiErrorMessage\n")
    assert "resets_at" not in hook(tmp_path, junk)[1]

    huge = tmp_path / "huge.jsonl"
    with huge.open("w") as f:
        f.write(api_error() + "\n")
        f.write(("x" * 1023 + "\n") * 2048)  # 2 MiB after it
    assert len(report.read_tail(str(huge))) <= report.TRANSCRIPT_TAIL
    assert "resets_at" not in hook(tmp_path, huge)[1]
    with huge.open("a") as f:
        f.write(api_error(1_800_000_123) + "\n")
    assert hook(tmp_path, huge)[1]["resets_at"] == 1_800_000_123

    good = tmp_path / "good.jsonl"
    good.write_text(api_error() + "\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(good)
    assert report.read_tail(str(link)) == b"" and "resets_at" not in hook(tmp_path, link)[1]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert report.read_tail(str(fifo)) == b""  # does not block
    assert report.read_tail(str(tmp_path)) == b""  # a directory
    for path in ("relative.jsonl", 5, None, "/nonexistent/x.jsonl", "/tmp/\0x"):
        assert report.read_tail(path) == b""
    # A cut first line is dropped, whole lines are kept.
    assert report.rate_limit_info(report.read_tail(str(good))) == {"resets_at": 1_800_003_600, "limit_type": "five_hour"}


def test_the_reporter_cuts_the_texts_and_keeps_the_line_bounded():
    payload = {"hook_event_name": "StopFailure", "error": "rate_limit", "last_assistant_message": "m" * 100_000,
               "error_details": "d" * 100_000, "transcript_path": "/nonexistent"}
    event, data = report.hook_message(json.dumps(payload).encode())
    line = report.encode("hook", event, data)
    assert len(line) <= report.MAX_LINE
    sent = json.loads(line)["data"]
    assert len(sent["last_assistant_message"]) == 2000 and len(sent["error_details"]) == 2000
