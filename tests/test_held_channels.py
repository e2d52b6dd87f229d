"""Held RPC channels against a real agent: pipelining, the idle limit, the read-ahead cap, the client's reuse and retry.

The protocol side is driven with the OpenSSH client and with raw asyncssh
channels; the client side with :class:`convocate.client.AgentClient` on the
registered agent, counting the channels it opened and the ones the agent
logged ("rpc channel from ... done: N request(s)").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator

import asyncssh
import pytest

from convocate.client import HELD_OPS, AgentClient
from convocate.common import messages
from convocate.common.errors import ConvocateError
from convocate.common.framing import encode_line
from convocate.common.protocol import RPC_SUBSYSTEM
from convocate.registry import load_agent
from convocate_agent.rpc import REQUEST_TIMEOUT_S, RPC_READ_BYTES
from tests.conftest import connect, make_cluster, openssh_args, run_openssh
from tests.harness import LocalCluster

IDLE_S = 2.0  # the idle limit of the short-idle agent below


@pytest.fixture(scope="module")
def short_idle(tmp_path_factory: pytest.TempPathFactory, session_image: str) -> Iterator[LocalCluster]:
    """An agent whose held channels may stay silent only ``IDLE_S`` between requests."""
    yield from make_cluster(tmp_path_factory.mktemp("idle"), session_image,
                            agent_args=["--rpc-idle-timeout", str(IDLE_S)])


def _done_counts(cluster: LocalCluster) -> list[int]:
    """Requests answered by each RPC channel that ended, in log order."""
    return [int(n) for n in re.findall(r"rpc channel from .* done: (\d+) request\(s\)", cluster.log_text())]


async def _wait_done(cluster: LocalCluster, before: int, more: int) -> list[int]:
    """The counts of the ``more`` channels that end after the first ``before`` (polled until they are logged)."""
    deadline = time.monotonic() + 30
    while True:
        counts = _done_counts(cluster)
        if len(counts) >= before + more or time.monotonic() > deadline:
            return counts[before:]
        await asyncio.sleep(0.1)


def _client(cluster: LocalCluster, identify: bool = False) -> AgentClient:
    return AgentClient(load_agent(cluster.paths, cluster.agent_id), paths=cluster.paths, identify=identify)


def test_openssh_pipelines_three_requests_and_reads_three_answers_in_order(cluster: LocalCluster, tmp_path) -> None:
    lines = b"".join(encode_line({"op": op, "params": {}, "id": rid})
                     for op, rid in (("ping", 1), ("list", "two"), ("capacity", [3])))
    done = run_openssh([*openssh_args(cluster, tmp_path), "-s", RPC_SUBSYSTEM], lines)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["id"] for a in answers] == [1, "two", [3]], answers
    assert all(a["ok"] for a in answers), answers
    assert "agent_id" in answers[0]["result"] and isinstance(answers[1]["result"], list)


async def test_pipelined_requests_past_the_read_ahead_cap_are_all_answered_in_order(cluster: LocalCluster) -> None:
    """More than RPC_READ_BYTES of requests written at once: the agent reads on as it answers, none is lost."""
    count = RPC_READ_BYTES // 30 * 2  # each ping line is ~40 bytes: about three times the cap
    stream = b"".join(encode_line({"op": "ping", "params": {}, "id": i}) for i in range(count))
    assert len(stream) > 2 * RPC_READ_BYTES
    before = len(_done_counts(cluster))
    async with connect(cluster) as conn:
        process = await conn.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
        process.stdin.write(stream)
        process.stdin.write_eof()
        out = await asyncio.wait_for(process.stdout.read(), 120)
        process.close()
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["id"] for a in answers] == list(range(count))
    assert all(a["ok"] for a in answers)
    assert await _wait_done(cluster, before, 1) == [count]


async def test_a_held_channel_outlives_the_request_timeout_between_requests(cluster: LocalCluster) -> None:
    async with connect(cluster) as conn:
        process = await conn.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
        try:
            for rid in (1, 2):
                process.stdin.write(encode_line({"op": "ping", "params": {}, "id": rid}))
                answer = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
                assert answer["ok"] and answer["id"] == rid, answer
                if rid == 1:
                    await asyncio.sleep(REQUEST_TIMEOUT_S + 2)  # silent past the per-request deadline
        finally:
            process.close()


@contextlib.asynccontextmanager
async def _pinged_channel(cluster: LocalCluster) -> AsyncIterator[asyncssh.SSHClientProcess]:
    """An RPC channel to ``cluster``'s agent that has answered one ping (id 1); closed when the block ends."""
    async with connect(cluster) as conn:
        process = await conn.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
        try:
            process.stdin.write(encode_line({"op": "ping", "params": {}, "id": 1}))
            assert json.loads(await asyncio.wait_for(process.stdout.readline(), 30))["id"] == 1
            yield process
        finally:
            process.close()


async def test_a_silent_held_channel_is_closed_at_the_idle_limit(short_idle: LocalCluster) -> None:
    async with _pinged_channel(short_idle) as process:
        out = await asyncio.wait_for(process.stdout.read(), 60)  # then silence: the agent closes it
    detail = messages.RPC_IDLE_TIMEOUT.format(seconds=IDLE_S)
    assert json.loads(out) == {"ok": False, "code": "bad_request",
                               "error": messages.MALFORMED_REQUEST.format(detail=detail)}, out


async def test_a_partial_line_on_a_held_channel_still_has_only_the_request_timeout(short_idle: LocalCluster) -> None:
    """The idle limit is for silence; a started line is bounded by REQUEST_TIMEOUT_S, not by the idle limit."""
    async with _pinged_channel(short_idle) as process:
        process.stdin.write(b'{"op": "ping", "par')
        out = await asyncio.wait_for(process.stdout.read(), REQUEST_TIMEOUT_S + 30)
    detail = messages.RPC_REQUEST_TIMEOUT.format(seconds=REQUEST_TIMEOUT_S)
    assert json.loads(out)["error"] == messages.MALFORMED_REQUEST.format(detail=detail), out


async def test_the_client_holds_one_channel_for_many_concurrent_reads(cluster: LocalCluster) -> None:
    before = len(_done_counts(cluster))
    client = _client(cluster, identify=True)
    try:
        results = await asyncio.gather(*(client.call(op) for op in ["ping", "list", "capacity", "trash"] * 10))
        assert all("agent_id" in r for r in results[0::4]) and all(isinstance(r, list) for r in results[1::4])
        for _ in range(10):
            await client.call("ping")
        whoami = await client.call("operator_whoami")  # the claim was made on the connection first
        assert client.operator is not None and not client.operator.failed, client.operator
        assert whoami, whoami
        # one held channel, and the one channel of the first ping that learns the agent's protocol (compat)
        assert client.channels_opened == 2
    finally:
        await client.close()
    # The claim's own channels (the original one-request form) end first, then the held one with 51 requests.
    counts = await _wait_done(cluster, before, 1)
    assert 51 in counts, counts


async def test_a_read_whose_held_channel_dies_is_sent_again_on_a_new_channel(cluster: LocalCluster) -> None:
    client = _client(cluster)
    try:
        await client.call("ping")
        held = client._held
        assert held is not None
        task = asyncio.ensure_future(client.call("list"))
        while not held._pending:  # the request is written, its answer not read yet
            await asyncio.sleep(0)
        held.process.close()  # the channel dies under the read
        assert isinstance(await task, list)
        # the protocol-learning ping's own channel (compat), the first held channel, the second one
        assert client.channels_opened == 3 and client._held is not held
    finally:
        await client.close()


async def test_a_create_whose_channel_dies_is_not_sent_again(cluster: LocalCluster) -> None:
    assert "create" not in HELD_OPS
    client = _client(cluster)
    opened = []
    real_open = client._open_channel

    async def open_and_note(subsystem, conn=None):
        process = await real_open(subsystem, conn)
        opened.append(process)
        return process

    client._open_channel = open_and_note  # type: ignore[method-assign]
    creates = _creates(cluster)
    try:
        task = asyncio.ensure_future(client.call("create", {"name": "held-no-retry"}))
        while not opened:  # the request is written in the same step as the channel is handed over
            await asyncio.sleep(0)
        opened[0].close()  # the channel dies under the create
        with pytest.raises(ConvocateError):
            await task
        assert len(opened) == 1 and client.channels_opened == 1
    finally:
        await client.close()
    deadline = time.monotonic() + 15
    while _creates(cluster) == creates and time.monotonic() < deadline:  # the agent ends a create it got
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    assert _creates(cluster) in (creates, creates + 1)  # at most the one sent: it was not sent again


def _creates(cluster: LocalCluster) -> int:
    return len(re.findall(r"rpc op=create caller=", cluster.log_text()))
