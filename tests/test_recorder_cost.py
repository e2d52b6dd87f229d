"""What a recorder costs while its session is quiet, and its stream reading (issue 17 item 5; pure logic).

At 200 sessions the agent runs 200 recorders: the flusher must visit only those with buffered
events and sleep while every session is quiet, and the control stream is read in large chunks,
whole Docker frames parsed from whatever a read returned.
"""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from types import SimpleNamespace

from convocate.common.paths import Paths
from convocate_agent import recorder as recmod
from convocate_agent import recorderset
from convocate_agent.castfile import CastWriter
from convocate_agent.controlmode import ControlParser
from convocate_agent.recorder import Recorder, RecordingSettings
from convocate_agent.recorderset import RecorderSet


def _frame(payload: bytes, stream: int = 1) -> bytes:
    return struct.pack(">BxxxI", stream, len(payload)) + payload


def _recorder(tmp_path: Path, name: str, on_pending=None) -> Recorder:
    rec = Recorder(name, name, tmp_path / name, runtime=None, settings=RecordingSettings(1 << 30, False),
                   on_pending=on_pending)
    (tmp_path / name).mkdir()
    rec.writer = CastWriter(tmp_path / name / "x.cast", 80, 24, name, 0.0)
    return rec


def _events(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


async def test_the_flusher_visits_only_recorders_with_events_and_sleeps_while_all_are_quiet(tmp_path, monkeypatch):
    monkeypatch.setattr(recorderset, "FLUSH_INTERVAL_S", 0.05)
    recorders = RecorderSet(Paths(tmp_path), runtime=None, settings=lambda: None, title_of=str, keep=set)
    flushed: list[str] = []
    quiet = [_recorder(tmp_path, f"quiet-{i}", recorders._note_pending) for i in range(50)]
    busy = _recorder(tmp_path, "busy", recorders._note_pending)
    for rec in [*quiet, busy]:
        real = rec.flush
        rec.flush = lambda real=real, rec=rec: (flushed.append(rec.session_id), real())[1]  # type: ignore[method-assign]
    recorders._flusher = asyncio.ensure_future(recorders._flush_loop())
    try:
        await asyncio.sleep(0.3)
        assert flushed == []  # nothing buffered anywhere: no tick visits anyone
        busy._event("o", "hello")
        for _ in range(100):
            if flushed:
                break
            await asyncio.sleep(0.02)
        assert flushed == ["busy"]
        assert _events(busy.writer.path)[-1][1:] == ["o", "hello"]  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
        assert flushed == ["busy"]  # and nothing more once it is written
    finally:
        recorders._flusher.cancel()
        await asyncio.gather(recorders._flusher, return_exceptions=True)


async def test_frames_cut_anywhere_by_the_reads_give_the_same_events(tmp_path, monkeypatch):
    """Docker frames split across reads, several in one read, and stderr frames between them."""
    monkeypatch.setattr(recmod, "READ_BYTES", 7)  # every frame is cut by some read
    stream = (_frame(b"%output %1 one\\015\\012\n") + _frame(b"tmux says hello\n", stream=2)
              + _frame(b"%output %1 tw") + _frame(b"o\n%layout-change @1 b25f,100x30,0,0,2 b25f,100x30,0,0,2 *\n")
              + _frame(b"%output %1 three\n%exit\n"))
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    rec = _recorder(tmp_path, "cut")
    reason = await rec._follow(SimpleNamespace(reader=reader), ControlParser((80, 24)))
    rec.close()
    assert reason == "%exit"
    assert [e[1:] for e in _events(rec.writer.path)] == [  # type: ignore[union-attr]
        ["o", "one\r\n"], ["o", "two"], ["r", "100x30"], ["o", "three"]]


async def test_a_stream_that_ends_inside_a_frame_is_an_ended_stream(tmp_path):
    reader = asyncio.StreamReader()
    reader.feed_data(_frame(b"%output %1 whole\n") + _frame(b"%output %1 cut off\n")[:12])
    reader.feed_eof()
    rec = _recorder(tmp_path, "eof")
    assert await rec._follow(SimpleNamespace(reader=reader), ControlParser((80, 24))) == "its stream ended"
    rec.close()
    assert [e[1:] for e in _events(rec.writer.path)] == [["o", "whole"]]  # type: ignore[union-attr]
