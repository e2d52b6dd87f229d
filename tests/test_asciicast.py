"""convocate.common.asciicast: parsing, merging, strip_ansi, the line splitter, export (issue 19 item 2).

Pure logic, tested without an agent; tests/test_replay.py reads the same files through the real agent.
"""

from __future__ import annotations

import json

import pytest

from convocate.common import asciicast
from convocate.common.asciicast import CastFormatError, Event, LineSplitter, parse_cast, plain_lines, strip_ansi
from convocate.player import Player
from convocate.replay import parse_time

T0 = 1_795_000_000.0


def cast_text(events: list[list], width: int = 80, height: int = 24, timestamp: float = T0) -> str:
    header = {"version": 2, "width": width, "height": height, "timestamp": timestamp, "env": {"TERM": "xterm"},
              "title": "s"}
    return "\n".join(json.dumps(x) for x in [header, *events]) + "\n"


def test_parse_cast_gives_absolute_times_and_the_header():
    cast = parse_cast(cast_text([[0.5, "o", "hi\r\n"], [1.25, "r", "100x30"], [2, "m", "mark"]]), "a.cast")
    assert cast.header.width == 80 and cast.header.height == 24 and cast.header.env == {"TERM": "xterm"}
    assert cast.events == [Event(T0 + 0.5, "o", "hi\r\n"), Event(T0 + 1.25, "r", "100x30"), Event(T0 + 2, "m", "mark")]
    assert not cast.torn


def test_a_torn_last_line_is_skipped():
    text = cast_text([[0.5, "o", "a"]]) + '[0.7, "o", "unfinish'
    cast = parse_cast(text, "a.cast")
    assert cast.torn and [e.data for e in cast.events] == ["a"]


def test_a_bad_line_in_the_middle_is_an_error_naming_the_line():
    text = cast_text([[0.5, "o", "a"]]) + '[0.6, "x", "?"]\n' + json.dumps([0.7, "o", "b"]) + "\n"
    with pytest.raises(CastFormatError, match=r"a\.cast line 3: .*code 'x'"):
        parse_cast(text, "a.cast")


@pytest.mark.parametrize("header, reason", [
    ('{"version": 1, "width": 80, "height": 24}', "version is 1"),
    ('{"version": 2, "height": 24}', '"width" must be a positive integer'),
    ("[1, 2]", "not a JSON object"),
    ("{nope", "not JSON"),
])
def test_a_bad_header_is_named(header: str, reason: str):
    with pytest.raises(CastFormatError, match="b.cast line 1: not an asciicast v2 header: " + reason[:12]):
        parse_cast(header + "\n", "b.cast")


def test_file_names_carry_their_start_time():
    name = asciicast.file_name(T0 + 0.123456)
    assert asciicast.FILE_NAME_PATTERN.fullmatch(name)
    assert asciicast.file_start(name) == pytest.approx(T0 + 0.123456)
    with pytest.raises(CastFormatError):
        asciicast.file_start("../x.cast")


def test_merge_orders_several_files_by_absolute_time():
    a = parse_cast(cast_text([[0, "o", "a1"], [10, "o", "a2"]], timestamp=T0), "a")
    b = parse_cast(cast_text([[0, "o", "b1"], [1, "o", "b2"]], timestamp=T0 + 5), "b")
    assert [e.data for e in asciicast.merge([a, b])] == ["a1", "b1", "b2", "a2"]
    assert [e.data for e in asciicast.window(asciicast.merge([a, b]), T0 + 5, T0 + 6)] == ["b1", "b2"]


@pytest.mark.parametrize("raw, plain", [
    ("\x1b[1;31mred\x1b[0m plain", "red plain"),
    ("\x1b]0;title\x07after", "after"),
    ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
    ("\x1bP1$r0m\x1b\\dcs", "dcs"),
    ("\x1b_apc\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\ok", "ok"),
    ("\x1b(B\x1b=\x1b7text\x1b8", "text"),
    ("a\x07b\x00c\x7fd\re\tf\ng", "abcde\tf\ng"),
    ("\x9b31mc1", "c1"),
    ("\x1b]2;never ended", ""),
])
def test_strip_ansi(raw: str, plain: str):
    assert strip_ansi(raw) == plain


def lines_of(*chunks: str) -> list[str]:
    splitter = LineSplitter()
    out = []
    for i, chunk in enumerate(chunks):
        out += splitter.feed(float(i), chunk)
    out += splitter.flush()
    return [line for _, line in out]


def test_line_endings_crlf_lf_and_a_bare_cr_overwrite():
    assert lines_of("one\r\ntwo\nthree") == ["one", "two", "three"]
    assert lines_of("progress 10%\rprogress 100%\r\n") == ["progress 100%"]
    assert lines_of("abcdef\rXY\n") == ["XYcdef"]  # what a terminal shows: the rest stays


def test_erase_in_line_and_cursor_moves_on_one_line():
    assert lines_of("50%\r\x1b[Kdone\n") == ["done"]
    assert lines_of("abc\x1b[2D\x1b[KZ\n") == ["aZ"]
    assert lines_of("abc\x1b[2Kx\n") == ["   x"]
    assert lines_of("ab\x1b[5Gc\n") == ["ab  c"]
    assert lines_of("a\tb\n") == ["a       b"]
    assert lines_of("ab\bc\n") == ["ac"]


def test_a_sequence_split_across_events_is_joined():
    assert lines_of("red \x1b[3", "1mtext\x1b", "[0m!\n") == ["red text!"]
    assert lines_of("\x1b]0;ti", "tle\x07shown\n") == ["shown"]


def test_lines_carry_the_time_their_first_character_was_written():
    events = [Event(T0, "o", "\x1b[H"), Event(T0 + 1, "o", "hel"), Event(T0 + 2, "o", "lo\n"),
              Event(T0 + 3, "i", "typed\n"), Event(T0 + 4, "o", "\n")]
    assert list(plain_lines(events)) == [(T0 + 1, "hello"), (T0 + 4, "")]


def test_export_retimes_several_files_onto_one_timeline_and_keeps_markers():
    a = parse_cast(cast_text([[0.5, "o", "a"], [1, "m", "here"]], width=100, height=30), "a")
    b = parse_cast(cast_text([[0.25, "o", "b"]], width=90, height=20, timestamp=T0 + 10), "b")
    back = parse_cast("\n".join(asciicast.export_lines([a, b])) + "\n", "export")
    assert (back.header.width, back.header.height, back.header.timestamp) == (100, 30, T0)
    assert [(round(e.time - T0, 6), e.code, e.data) for e in back.events] == [
        (0.5, "o", "a"), (1.0, "m", "here"), (10.0, "r", "90x20"), (10.25, "o", "b")]


def test_export_since_puts_the_earlier_output_of_that_file_at_time_zero():
    a = parse_cast(cast_text([[0, "o", "screen"], [5, "o", "later"], [9, "o", "after"]]), "a")
    back = parse_cast("\n".join(asciicast.export_lines([a], since=T0 + 4, until=T0 + 6)) + "\n", "export")
    assert back.header.timestamp == T0 + 4
    assert [(e.time - T0 - 4, e.data) for e in back.events] == [(0.0, "screen"), (1.0, "later")]


def test_relative_and_absolute_times():
    assert parse_time("-10m", now=T0) == T0 - 600
    assert parse_time("-2h", now=T0) == T0 - 7200
    assert parse_time("2026-11-21T14:29:00Z") == pytest.approx(1795271340.0)
    with pytest.raises(Exception, match="neither an RFC 3339 time"):
        parse_time("yesterday")


class Keys:
    """Scripted key presses for the player: each read returns the next one (b"" = timeout)."""

    def __init__(self, *keys: bytes) -> None:
        self.keys = list(keys)

    def __call__(self, timeout: float | None) -> bytes:
        if self.keys:
            return self.keys.pop(0)
        if timeout is None:
            return b"q"
        return b""


def test_player_plays_everything_then_waits_for_q_and_seeks_by_redrawing_the_file():
    a = parse_cast(cast_text([[0, "o", "A"], [20, "o", "B"], [40, "o", "C"]]), "a")
    out: list[bytes] = []
    player = Player([a], out.append, Keys(), speed=1000, idle_limit=0.01, name="s")
    player.play()
    text = b"".join(out).decode()
    assert text.startswith("ABC") and "convocate replay s: end" in text
    out.clear()
    player.seek(T0 + 25)  # back to between B and C: the file's output to B, at once
    assert b"".join(out).decode() == "\x1b[0m\x1b[H\x1b[2JAB"


def test_player_step_while_paused():
    a = parse_cast(cast_text([[0, "o", "A"], [100, "o", "B"], [200, "o", "C"]]), "a")
    out: list[bytes] = []
    # space pauses right after A (B is 100 s away, idle limit off), "." writes B alone, q quits.
    Player([a], out.append, Keys(b"", b" ", b".", b"q"), speed=1, idle_limit=None).play()
    assert b"".join(out).decode() == "AB"


def test_relative_times_are_arguments_not_options():
    from convocate.cli import build_parser

    args = build_parser().parse_args(["replay", "s", "--since", "-2h", "--until", "-1m", "--speed", "4"])
    assert args.until - args.since == pytest.approx(7200 - 60, abs=1) and args.speed == 4
    assert build_parser().parse_args(["grep", "x", "--since", "-10m"]).since == pytest.approx(
        parse_time("-10m"), abs=1)


def test_export_writes_an_integer_timestamp_and_keeps_the_fraction_in_the_times():
    a = parse_cast(cast_text([[0.25, "o", "x"]], timestamp=T0 + 0.5), "a")
    lines = list(asciicast.export_lines([a]))
    assert json.loads(lines[0])["timestamp"] == int(T0) and json.loads(lines[1]) == [0.75, "o", "x"]


def test_the_terminal_is_restored_when_the_player_fails(monkeypatch):
    import os
    import pty
    import select
    import termios

    from convocate import player

    controller, terminal = pty.openpty()
    try:
        before = termios.tcgetattr(terminal)

        def broken(self, since=None, until=None):
            assert termios.tcgetattr(terminal)[3] & termios.ECHO == 0  # raw while playing
            raise RuntimeError("player failed")

        monkeypatch.setattr(player.Player, "play", broken)
        cast = parse_cast(cast_text([[0, "o", "x"]]), "a")
        with pytest.raises(RuntimeError, match="player failed"):
            player.play_in_terminal([cast], "s", in_fd=terminal, out_fd=terminal)
        assert termios.tcgetattr(terminal) == before
        # A pty hands what was written to its controller side a moment later (the kernel's flip
        # buffer work): read until the end arrives, or nothing more does for 5 s.
        written = b""
        while not written.endswith(player._LEAVE.encode()) and select.select([controller], [], [], 5)[0]:
            written += os.read(controller, 65536)
        assert written.endswith(player._LEAVE.encode()), written  # alternate screen left, modes reset
    finally:
        os.close(controller)
        os.close(terminal)


def test_a_move_to_another_row_ends_the_line_as_claude_code_draws_its_rows():
    """Claude Code 2.1.330 writes a row as words placed with CSI G and moves between rows with CSI B/H, no newline."""
    drawn = ("\x1b[H\r\x1b[8B\x1b[38;5;231m●\x1b[3G\x1b[39mHello\x1b[9Gfrom\x1b[14Gthe\x1b[18Gfake\x1b[23GAPI:"
             "\x1b[28Gforty-two.\r\x1b[36B\x1b[38;5;174m✢\x1b[3G\x1b[38;5;216mTransmogrifying…\x1b[50;5Hlast")
    splitter = asciicast.LineSplitter()
    lines = [line for _, line in splitter.feed(1.0, drawn) + splitter.flush(2.0)]
    assert lines == ["● Hello from the fake API: forty-two.", "✢ Transmogrifying…", "    last"]
