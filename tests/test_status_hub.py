"""status-serve's agent states and fan-out (convocate.status_server.StatusHub), and the emitter's queue."""

import asyncio
import json

from convocate.common.model import SessionMeta, SessionView
from convocate.common.protocol import Event
from convocate.status_hub import StatusHub, take_all
from convocate_agent.status import EventQueue, backoff_delays

SID = "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def drain(queue):
    out = []
    while not queue.empty():
        item = queue.get_nowait()
        out.append(json.loads(item) if item else None)
    return out


def test_new_subscribers_get_a_replay_then_live_events():
    async def scenario():
        hub = StatusHub(clock=Clock())
        hub.connected("abcd1234", "127.0.0.1:5000")
        hub.record(Event.now("agent.started", "abcd1234", data={"version": "9", "heartbeat_interval_s": 5}))
        queue = hub.subscribe()
        replay = drain(queue)
        hub.record(Event.now("container.created", "abcd1234", SID, {"uuid": SID, "dns_name": "web"}))
        return replay, drain(queue), hub

    replay, live, hub = asyncio.run(scenario())
    assert [m["type"] for m in replay] == ["agent.status", "agent.sessions", "replay.done"]
    assert replay[0]["data"]["version"] == "9" and replay[0]["data"]["connected"] is True
    # status-serve has not listed the agent yet: its copy may not answer for it (issue 17)
    assert replay[1]["data"]["current"] is False and replay[1]["data"]["sessions"] is None
    assert [m["type"] for m in live] == ["container.created"]
    assert hub.agents["abcd1234"].sessions == {SID: "web"}


def test_an_agent_goes_stale_after_three_missed_heartbeats_and_recovers():
    async def scenario():
        clock = Clock()
        hub = StatusHub(clock=clock)
        hub.record(Event.now("agent.started", "abcd1234", data={"heartbeat_interval_s": 10}))
        queue = hub.subscribe()
        drain(queue)
        clock.now += 29
        hub.check_stale()
        assert drain(queue) == []
        clock.now += 2
        hub.check_stale()
        stale = drain(queue)
        hub.record(Event.now("agent.heartbeat", "abcd1234", data={"interval_s": 10}))
        return stale, drain(queue)

    stale, back = asyncio.run(scenario())
    assert stale[0]["type"] == "agent.status" and stale[0]["data"]["stale"] is True
    assert [m["type"] for m in back] == ["agent.heartbeat", "agent.status"] and back[1]["data"]["stale"] is False


def test_dns_changes_are_detected_from_events_and_resync():
    async def scenario():
        hub = StatusHub(clock=Clock())
        changed = [hub.record(Event.now("container.created", "a1b2c3d4", SID, {"dns_name": ""})),
                   hub.record(Event.now("container.edited", "a1b2c3d4", SID, {"dns_name": "api"})),
                   hub.record(Event.now("container.started", "a1b2c3d4", SID, {"dns_name": "api"})),
                   hub.record(Event.now("container.deleted", "a1b2c3d4", SID))]
        view = SessionView(SessionMeta(SID, "x", 1, 1, dns_name="db"))
        return changed, hub.resync("a1b2c3d4", [view]), hub.resync("a1b2c3d4", [view])

    changed, first, again = asyncio.run(scenario())
    assert changed == [False, True, False, True]  # no name yet; then api; the same again; gone
    assert (first, again) == (True, False)


def test_a_slow_subscriber_is_cut_off_not_waited_for():
    async def scenario():
        hub = StatusHub(clock=Clock(), backlog_bytes=4096)
        queue = hub.subscribe()
        for i in range(200):
            hub.broadcast({"type": "x", "n": i})
        return hub, queue, drain(queue)

    hub, queue, got = asyncio.run(scenario())
    assert queue not in hub.subscribers
    assert got[-1] is None  # what was queued, then the end of the connection
    assert 4096 <= sum(len(json.dumps(m, separators=(",", ":"))) + 1 for m in got[:-1]) < 4096 + 100


def test_the_backlog_is_counted_in_bytes_not_messages():
    async def scenario():
        hub = StatusHub(clock=Clock(), backlog_bytes=1 << 20)
        queue = hub.subscribe()
        drain(queue)
        for i in range(20_000):  # a burst of small events, 20 agents' worth of one read each
            hub.broadcast({"type": "agent.heartbeat", "n": i})
        kept = queue in hub.subscribers
        return kept, queue.pending_bytes, len(drain(queue)), queue.pending_bytes

    kept, pending, count, after = asyncio.run(scenario())
    assert kept and count == 20_000
    assert pending == sum(len(f'{{"type":"agent.heartbeat","n":{i}}}\n') for i in range(20_000))
    assert after == 0


def test_the_subscriber_writer_takes_everything_queued_at_once():
    async def scenario():
        hub = StatusHub(clock=Clock())
        queue = hub.subscribe()
        hub.broadcast({"type": "x"})
        return take_all(queue), take_all(queue)

    first, second = asyncio.run(scenario())
    assert [json.loads(line)["type"] for line in first] == ["replay.done", "x"] and second == []


def test_event_queue_drops_the_oldest_and_counts():
    async def scenario():
        q = EventQueue(limit=3)
        for i in range(5):
            q.push(Event("container.edited", "abcd1234", timestamp=str(i)))
        kept = []
        while q.peek() is not None:
            kept.append(q.peek().timestamp)
            q.pop()
        return kept, q.take_dropped(), q.take_dropped()

    assert asyncio.run(scenario()) == (["2", "3", "4"], 2, 0)


def test_backoff_doubles_from_one_second_to_thirty():
    delays = backoff_delays()
    assert [next(delays) for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_an_agent_is_down_only_when_its_last_link_ends():
    async def scenario():
        hub = StatusHub(clock=Clock())
        live, second = object(), object()
        hub.connected("abcd1234", "127.0.0.1:5000", live)
        hub.connected("abcd1234", "127.0.0.1:5001", second)
        queue = hub.subscribe()
        drain(queue)
        left = hub.disconnected("abcd1234", second)
        after_second = (left, hub.agents["abcd1234"].connected, drain(queue))
        left = hub.disconnected("abcd1234", live)
        return after_second, (left, hub.agents["abcd1234"].connected, drain(queue))

    (left1, up1, msgs1), (left2, up2, msgs2) = asyncio.run(scenario())
    assert (left1, up1, msgs1) == (1, True, [])
    assert (left2, up2) == (0, False) and [m["data"]["connected"] for m in msgs2] == [False]


def test_a_resync_drops_names_the_session_may_not_publish():
    hub = StatusHub(clock=Clock())
    views = [SessionView(SessionMeta(SID, "x", 1, 1, dns_name="api.anthropic.com")),
             SessionView(SessionMeta(SID, "y", 1, 1, dns_name="web.convocate.internal"))]
    kept = hub.valid_names(views, "convocate.internal")
    assert [v.meta.dns_name for v in kept] == ["", "web.convocate.internal"]
    assert [v.meta.name for v in kept] == ["x", "y"]


def test_a_moving_sessions_record_follows_the_copy_that_runs():
    """A move's events as the two agents send them: the hub says when the records must be
    rendered again, and which copy runs (convocate.dns.one_per_session picks by it)."""
    async def scenario():
        hub = StatusHub(clock=Clock())
        meta = {"uuid": SID, "dns_name": "web"}
        steps = [("aaaa1111", "container.created"), ("aaaa1111", "container.started"),
                 ("aaaa1111", "container.stopped"),  # the move stops it on the source
                 ("bbbb2222", "container.created"),  # the target's import
                 ("bbbb2222", "container.started"),  # started there: now this copy has the record
                 ("aaaa1111", "container.deleted")]  # the source's copy goes to its trash
        seen = []
        for agent, kind in steps:
            changed = hub.record(Event.now(kind, agent, SID, meta))
            seen.append((kind, agent, changed, sorted(hub.running_copies())))
        return seen

    seen = asyncio.run(scenario())
    assert seen == [
        ("container.created", "aaaa1111", True, []),
        ("container.started", "aaaa1111", False, [("aaaa1111", SID)]),  # one holder: its record stands
        ("container.stopped", "aaaa1111", False, []),
        ("container.created", "bbbb2222", True, []),
        ("container.started", "bbbb2222", True, [("bbbb2222", SID)]),
        ("container.deleted", "aaaa1111", True, [("bbbb2222", SID)]),
    ]
