"""When a member publishes its status: readiness changes at once, other news at the next beat,
an idle member only every keep-alive, and a silent (killed) member stops counting within
:data:`~kestream.runtime.members.STALE_AFTER_S` all the same."""

from __future__ import annotations

import itertools
from typing import Any, cast

import pytest

from kestream.runtime import members
from kestream.runtime.context import BrokerContext
from kestream.runtime.health import Check, Health, LoopMonitor
from kestream.runtime.members import MemberPublisher, MemberStatus, Roster
from kestream.runtime.topics import Topics
from kestream.settings import Settings


class Clock:
    """One clock for the publisher's monotonic and wall times and the roster's."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class _Producer:
    def __init__(self) -> None:
        self.sent: list[bytes | None] = []

    async def send_and_wait(self, topic: str, value: bytes | None, key: bytes) -> None:
        self.sent.append(value)


class _Jobs:
    """A part with a fact that is state (jobs waiting), not a measurement."""

    health_name = "jobs"
    is_live = True
    is_ready = True

    def __init__(self) -> None:
        self.waiting = 0

    def health_detail(self) -> dict[str, Any]:
        return {"waiting": self.waiting}


def _publisher(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, health: Health
) -> tuple[MemberPublisher, _Producer]:
    monkeypatch.setattr(members.time, "monotonic", clock)
    settings = Settings(broker="127.0.0.1:1")
    ctx = BrokerContext(settings, "127.0.0.1:1", "kafka", Topics.of(settings))
    publisher = MemberPublisher(ctx, "executor", health, clock=clock)
    producer = _Producer()
    publisher._producer = cast(Any, producer)
    return publisher, producer


async def _look(publisher: MemberPublisher) -> None:
    """One look of the publisher's loop, without its sleep."""
    status = publisher._due()
    if status is not None:
        await publisher.publish(status)


async def test_an_idle_member_publishes_only_its_keepalive_and_still_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monitor = LoopMonitor(clock=clock)
    health = Health("executor", [monitor, Check("part", lambda: True)])
    publisher, producer = _publisher(monkeypatch, clock, health)
    roster = Roster(clock=clock, required_roles=("executor",))
    await publisher.publish()
    seen = 0
    for step in range(int(3 * members.KEEPALIVE_S)):
        clock.now += 1.0
        monitor.last_beat, monitor.lag = clock.now, 0.0001 * (step % 7)  # jitter: no news
        await _look(publisher)
        for value in producer.sent[seen:]:
            roster.apply(publisher.key, value)
        seen = len(producer.sent)
        assert roster.status()[0], f"an idle member stopped counting after {step + 1} s"
    assert len(producer.sent) == 1 + 3  # the first record, then one per keep-alive
    published = [MemberStatus.decode(v).ts for v in producer.sent]
    assert [b - a for a, b in itertools.pairwise(published)] == [members.KEEPALIVE_S] * 3

    clock.now += members.STALE_AFTER_S - 0.1  # killed: no tombstone, no more records
    assert roster.status()[0]
    clock.now += 0.2
    ok, details = roster.status()
    assert not ok and details["missingRoles"] == ["executor"]


async def test_news_is_published_at_the_next_beat_and_readiness_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    ready = [True]
    jobs = _Jobs()
    health = Health("executor", [jobs, Check("part", lambda: ready[0])])
    publisher, producer = _publisher(monkeypatch, clock, health)
    await publisher.publish()

    jobs.waiting = 3  # a fact that is state changed
    clock.now += members.HEARTBEAT_S / 2
    await _look(publisher)
    assert len(producer.sent) == 1  # not before the beat
    clock.now += members.HEARTBEAT_S / 2
    await _look(publisher)
    assert len(producer.sent) == 2
    assert MemberStatus.decode(producer.sent[-1]).facts["checks"]["jobs"]["waiting"] == 3

    ready[0] = False  # readiness: at the very next look
    clock.now += 0.01
    await _look(publisher)
    assert len(producer.sent) == 3 and not MemberStatus.decode(producer.sent[-1]).ready


async def test_a_ready_member_looks_less_often_than_one_that_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    clock.now = 1_000.25
    ready = [False]
    publisher, _ = _publisher(
        monkeypatch, clock, Health("executor", [Check("p", lambda: ready[0])])
    )
    await publisher.publish()

    def next_look_on(period: float) -> bool:
        """The next look falls on the next multiple of ``period`` (module docs)."""
        at = clock.now + publisher._next_look()
        return 0 < at - clock.now <= period and at / period == pytest.approx(round(at / period))

    assert next_look_on(members.STARTING_CHECK_S)  # never ready yet
    ready[0] = True
    await _look(publisher)
    assert next_look_on(members.CHECK_S) and publisher._next_look() == pytest.approx(0.75)
    ready[0] = False
    await _look(publisher)
    assert next_look_on(members.NOT_READY_CHECK_S) and members.NOT_READY_CHECK_S < members.CHECK_S
    assert members.CHECK_S * 2 <= members.STALE_AFTER_S  # a change is published long before


async def test_the_keepalives_of_members_started_apart_are_written_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Spread out, each member's keep-alive rang every board of the host into fetches of its
    own; on one grid of the host's monotonic clock they come together, whenever each started."""
    clock = Clock()
    publishers: list[tuple[MemberPublisher, _Producer]] = []
    for started in (1_000.0, 1_003.37, 1_007.91):
        clock.now = started
        publisher, producer = _publisher(
            monkeypatch, clock, Health("executor", [Check("p", lambda: True)])
        )
        await publisher.publish()
        publishers.append((publisher, producer))
    written: list[list[float]] = [[] for _ in publishers]
    wakes: set[float] = set()
    due = [clock.now + p._next_look() for p, _ in publishers]
    while min(due) < 1_055.0:  # each publisher's loop: sleep to its next look, then look
        index = min(range(len(due)), key=due.__getitem__)
        clock.now = due[index]
        wakes.add(round(clock.now, 6))
        publisher, producer = publishers[index]
        sent = len(producer.sent)
        await _look(publisher)
        if len(producer.sent) > sent:
            written[index].append(round(clock.now, 6))
        due[index] = clock.now + publisher._next_look()
    assert written[0] and written[0] == written[1] == written[2]
    assert all(
        b - a == pytest.approx(members.KEEPALIVE_S) for a, b in itertools.pairwise(written[0])
    )
    assert all(w == pytest.approx(round(w)) for w in wakes)  # one wake-up a second, shared
