"""Member status: who is running in this installation, and is every one of them ready?

Each role process runs a :class:`MemberPublisher`: every :data:`HEARTBEAT_S` seconds, and at once
whenever its readiness changes, it writes a record to the compacted, one-partition ``members``
topic, keyed ``<role>/<hostname>/<pid>``, saying what its :class:`~kestream.runtime.health.Health`
says (:class:`MemberStatus`). At a clean stop it writes a tombstone, so it leaves the table at once.

The API role runs a :class:`MemberBoard`: it reads the topic from the beginning without a
consumer group (every reader sees every member), keeps the latest record per key in a
:class:`Roster`, and answers whether the installation is ready:

- a member counts while it has been heard from within :data:`STALE_BEATS` heartbeats; one that
  fell silent longer (killed, or its host is gone) is ignored, as if it had written a tombstone;
- the installation is ready when every member that counts is ready and live, and the roles
  :data:`REQUIRED_ROLES` (an executor and a worker) are each present at least once.

Freshness compares the record's ``ts`` (the publisher's wall clock) with the reader's wall clock:
processes on several hosts need synchronised clocks (NTP), which a Kafka installation has anyway.
A silent member cannot be told apart from a member whose event loop is blocked: both stop
counting after three beats, and that member's own ``/health/live`` is what shows the block.

On the embedded broker (Tansu) nothing is ever compacted, so a board that starts late reads every
heartbeat ever written (about 0.5 records per second per process): a few seconds of reading after
a day of uptime, which the board does before it first says "ready".
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.compacted import assign_from_start, reached
from kestream.runtime.context import BrokerContext
from kestream.runtime.health import MEASUREMENTS, Health
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.member_rates import RateWindow
from kestream.runtime.record_values import RecordError, dumps, loads

if TYPE_CHECKING:  # the supervisor reads members and serves no metrics (prometheus_client)
    from kestream.runtime.metrics import Metrics

log = logging.getLogger("kestream.members")

#: A member looks at its whole status this often (seconds) and publishes it if it changed
#: (its readiness is looked at more often, :data:`CHECK_S`, and published at once).
HEARTBEAT_S = 2.0
#: A member whose status has not changed publishes it again this often all the same: the
#: keep-alive that tells a silent member from an idle one. Idle, a record every 2 s per role
#: woke every board of the host into fetches: most of an idle installation's broker requests.
KEEPALIVE_S = 10.0
#: A member silent for this many keep-alives no longer counts.
STALE_BEATS = 3
#: How long a killed member (no tombstone) still counts: :data:`STALE_BEATS` keep-alives.
STALE_AFTER_S = STALE_BEATS * KEEPALIVE_S
#: How often a ready publisher looks at its own readiness (a change is published at once).
CHECK_S = 1.0
#: The same while it is not ready (it was ready before): coming back is published sooner.
NOT_READY_CHECK_S = 0.2
#: The same, until its process has first been ready: an installation's start waits for that
#: record (the API's ``/health/ready``), and a look costs a few microseconds.
STARTING_CHECK_S = 0.02
#: A look that wakes this much before a multiple of its period counts as on it (a timer may
#: fire a hair early): see :func:`_slot`.
_EARLY_S = 0.001
#: Roles an installation cannot be ready without.
REQUIRED_ROLES = ("executor", "worker")
#: A board's reads wait this long when nothing comes: records end a wait at once, and a stop
#: cancels it, so a long wait costs no latency, only fewer empty wake-ups of the loop.
_FETCH_TIMEOUT_MS = 10_000
_RETRY_BACKOFF_S = 0.5

WallClock = Callable[[], float]


def member_key(role: str, host: str, pid: int) -> str:
    """The members topic's record key of one process."""
    return f"{role}/{host}/{pid}"


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One process's status as it last published it (times are Unix seconds)."""

    role: str
    host: str
    pid: int
    #: Its ops HTTP port (``/metrics``, ``/health/*``), if it serves one.
    port: int | None
    ready: bool
    live: bool
    started: float
    ts: float
    #: Names of its health parts that are not ready (empty when ready).
    not_ready: tuple[str, ...] = ()
    #: A worker's group (``kestream worker --group``); ``None`` for the default workers and
    #: for the other roles.
    group: str | None = None
    #: The task types a worker can run (built-ins and its plugins); empty for other roles.
    task_types: tuple[str, ...] = ()
    #: What the cluster page shows of the process (:func:`process_facts`): its health checks'
    #: public facts (partitions owned, jobs, executions), consumer lag, worker slots, dead
    #: letters, and throughput and latency since its last record (:mod:`.member_rates`).
    #: Numbers only, as the open ``/health`` shows.
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return member_key(self.role, self.host, self.pid)

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes | None) -> MemberStatus:
        """Parse a record value; raises :class:`.RecordError` when it is not a status."""
        body = loads(data)
        if not isinstance(body, dict):
            raise RecordError("a member status must be a JSON object")
        try:
            port = body.get("port")
            return cls(
                role=str(body["role"]),
                host=str(body["host"]),
                pid=int(body["pid"]),
                port=int(port) if port is not None else None,
                ready=bool(body["ready"]),
                live=bool(body["live"]),
                started=float(body["started"]),
                ts=float(body["ts"]),
                not_ready=tuple(str(name) for name in body.get("not_ready") or ()),
                group=str(group) if (group := body.get("group")) is not None else None,
                task_types=tuple(str(name) for name in body.get("task_types") or ()),
                facts=facts if isinstance(facts := body.get("facts"), dict) else {},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"bad member status: {type(exc).__name__}: {exc}") from None


class Roster:
    """The latest status per member, and the installation's readiness (pure: no I/O).

    Args:
        interval: the members' keep-alive period (:data:`KEEPALIVE_S`): members silent for
            ``STALE_BEATS`` of them no longer count.
        required_roles: roles that must each have a member that counts.
        clock: wall clock (Unix seconds), injected by tests.
    """

    def __init__(
        self,
        *,
        interval: float = KEEPALIVE_S,
        required_roles: Iterable[str] = REQUIRED_ROLES,
        clock: WallClock = time.time,
    ) -> None:
        self.stale_after = STALE_BEATS * interval
        self.required_roles = tuple(required_roles)
        self.clock = clock
        self._latest: dict[str, MemberStatus] = {}
        #: Live workers' last heartbeat by group and member key: what :meth:`group_alive` reads.
        self._workers: dict[str | None, dict[str, float]] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        """One record of the members topic: a status, or a tombstone (``None``)."""
        if value is None:
            self._forget(key)
            return
        try:
            status = MemberStatus.decode(value)
        except RecordError as exc:  # one bad record never stops the board
            log.warning("members: skipping the record of %s: %s", key or "<no key>", exc)
            return
        self._store(key, status)

    def put(self, status: MemberStatus) -> None:
        self._store(status.key, status)

    def _store(self, key: str, status: MemberStatus) -> None:
        self._forget(key)
        self._latest[key] = status
        if status.role == "worker" and status.live:
            self._workers.setdefault(status.group, {})[key] = status.ts

    def _forget(self, key: str) -> None:
        old = self._latest.pop(key, None)
        if old is not None and old.role == "worker":
            group = self._workers.get(old.group)
            if group is not None:
                group.pop(key, None)
                if not group:
                    del self._workers[old.group]

    def group_alive(self, group: str | None, now: float | None = None) -> bool:
        """Has a live worker of ``group`` been heard from recently enough to count?

        Costs at most the number of the group's workers (silent ones are dropped as they are
        met), not the size of the installation: the executor asks this for every job of a
        worker group it dispatches.
        """
        beats = self._workers.get(group)
        if not beats:
            return False
        horizon = (self.clock() if now is None else now) - self.stale_after
        for key, ts in list(beats.items()):
            if ts >= horizon:
                return True
            del beats[key]  # silent too long (killed): back if it beats again
        return False

    def members(self, now: float | None = None) -> list[MemberStatus]:
        """Members heard from recently enough to count, by key."""
        now = self.clock() if now is None else now
        horizon = now - self.stale_after
        return [s for _, s in sorted(self._latest.items()) if s.ts >= horizon]

    def status(self, now: float | None = None) -> tuple[bool, dict[str, Any]]:
        """``(ready, details)`` of the installation (see the module doc for the rule)."""
        now = self.clock() if now is None else now
        members = self.members(now)
        roles = {m.role for m in members}
        missing = [role for role in self.required_roles if role not in roles]
        not_ready = [m.key for m in members if not (m.ready and m.live)]
        ok = not missing and not not_ready
        return ok, {
            "status": "UP" if ok else "DOWN",
            "members": [_describe(m, now) for m in members],
            "notReady": not_ready,
            "missingRoles": missing,
        }


#: The label a role's own series carry, where it is not the role's name.
_OWN_LABEL = {"api": "index"}


def process_facts(role: str, checks: dict[str, Any], metrics: Metrics | None) -> dict[str, Any]:
    """The figures a member publishes for the cluster page (see :attr:`MemberStatus.facts`).

    ``checks`` are its health's checks as ``/health/ready`` shows them (public facts only). From
    ``metrics``: the role's own records behind the high watermark (the sum over the partitions
    it reads, and per partition number) and dead letters, for a worker the jobs running and its
    thread slots, and for an executor its stream threads (executor processors running). A
    process may host several roles (standalone) with one registry: each role's record keeps the
    series labelled with its own name (the API's dead letters are the index's). Read from the
    process's own registry: no request, no lock held long.
    """
    facts: dict[str, Any] = {"checks": checks}
    if metrics is None:
        return facts
    own = _OWN_LABEL.get(role, role)
    lag = _samples(metrics.consumer_lag, "consumer")
    dead = _samples(metrics.dead_letters_total, "source", suffix="_total")
    facts["consumerLag"] = {k: v for k, v in lag.items() if k == own}
    facts["partitionLag"] = {
        sample.labels["partition"]: sample.value
        for family in metrics.consumer_partition_lag.collect()
        for sample in family.samples
        if sample.labels.get("consumer") == own
    }
    facts["deadLetters"] = {k: v for k, v in dead.items() if k == own}
    if role == "worker":
        facts["jobsRunning"] = _single(metrics.worker_job_running)
        facts["slots"] = _single(metrics.worker_job_thread)
    if role == "executor":
        facts["streamThreads"] = _single(metrics.executor_threads)
    return facts


def _samples(metric: Any, label: str, suffix: str = "") -> dict[str, float]:
    """One metric's samples by the value of ``label`` (counters: the ``_total`` ones)."""
    return {
        sample.labels[label]: sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith(suffix) and label in sample.labels
    }


def _single(metric: Any) -> float:
    """The value of an unlabelled gauge."""
    return float(next(s.value for family in metric.collect() for s in family.samples))


def _describe(member: MemberStatus, now: float) -> dict[str, Any]:
    out = asdict(member)
    out["key"] = member.key
    out["ageS"] = round(max(0.0, now - member.ts), 3)
    out["not_ready"] = list(member.not_ready)
    del out["facts"]  # behind credentials, on the cluster route; /health is open
    return out


class MemberPublisher:
    """Publishes this process's :class:`MemberStatus` (see the module doc).

    Args:
        ctx: the broker and topics.
        role: ``executor``, ``worker``, ``scheduler`` or ``api``.
        health: this process's health; its ``ready()`` is what is published.
        port: the process's ops HTTP port, published so tools can find ``/metrics``.
        metrics: if given, its ``kestream_ready`` gauge follows the published readiness.
        interval: how often the whole status is looked at, and published if it changed.
        keepalive: how often an unchanged status is published all the same; the boards'
            :class:`Roster` must count members silent for ``STALE_BEATS`` of these.
        group: a worker's group (``None``: the default workers), published so executors know
            whether the group has a live worker (:meth:`Roster.group_alive`).
        task_types: the task types a worker can run, published for operators.
    """

    def __init__(
        self,
        ctx: BrokerContext,
        role: str,
        health: Health,
        *,
        port: int | None = None,
        metrics: Metrics | None = None,
        interval: float = HEARTBEAT_S,
        keepalive: float = KEEPALIVE_S,
        check_every: float = CHECK_S,
        host: str | None = None,
        pid: int | None = None,
        clock: WallClock = time.time,
        group: str | None = None,
        task_types: Iterable[str] = (),
    ) -> None:
        self.ctx = ctx
        self.role = role
        self.group = group
        self.task_types = tuple(task_types)
        self.health = health
        self.port = port
        self.metrics = metrics
        #: Throughput and latency since the last record (:mod:`.member_rates`).
        self._rates = RateWindow(role, metrics) if metrics is not None else None
        self.interval = interval
        self.keepalive = max(keepalive, interval)
        self.check_every = check_every
        self.host = host or socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.clock = clock
        self.started = clock()
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[bool, bool, tuple[str, ...]] | None = None
        #: What the last record said, its time and measurements aside (:func:`_content`).
        self._last_content: bytes | None = None
        self._last_sent = 0.0
        self._last_looked = 0.0
        self._failing = False
        #: It has published "ready" once: from then on it looks every ``check_every``.
        self._was_ready = False

    @property
    def key(self) -> str:
        return member_key(self.role, self.host, self.pid)

    def status(self) -> MemberStatus:
        """What this process would publish now."""
        ready, detail = self.health.ready()
        live, _ = self.health.live()
        not_ready = () if ready else tuple(self.health.not_ready())
        facts = process_facts(self.role, detail.get("checks", {}), self.metrics)
        if self._rates is not None:
            facts.update(self._rates.figures())
        return MemberStatus(
            self.role, self.host, self.pid, self.port, ready, live, self.started, self.clock(),
            not_ready, self.group, self.task_types, facts,
        )  # fmt: skip

    async def start(self) -> None:
        """Publish a first status, then keep publishing in a background task."""
        ctx = self.ctx
        self._producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
        await self._producer.start()
        await self.publish()
        self._task = asyncio.create_task(self._run(), name="member-publisher")

    async def stop(self) -> None:
        """Stop publishing and leave the table (a tombstone), best effort."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await producer.send_and_wait(self.ctx.topics.members, None, key=self.key.encode())
        except KafkaError as exc:  # the board forgets a silent member after a few beats anyway
            log.warning("members: could not write the tombstone of %s: %s", self.key, exc)
        finally:
            await producer.stop()

    async def publish(self, status: MemberStatus | None = None) -> MemberStatus:
        """Write ``status`` (by default the current one) now (also what the loop calls)."""
        status = status if status is not None else self.status()
        self._last = (status.ready, status.live, status.not_ready)
        self._last_content = _content(status)
        self._was_ready = self._was_ready or status.ready
        self._last_sent = self._last_looked = time.monotonic()
        if self.metrics is not None:
            self.metrics.ready_gauge.set(1 if status.ready else 0)
        producer = self._producer
        if producer is None:
            raise RuntimeError("the member publisher is not started")
        try:
            await producer.send_and_wait(
                self.ctx.topics.members, status.encode(), key=self.key.encode()
            )
        except KafkaError as exc:
            if not self._failing:  # say it once per outage, not every beat
                log.warning("members: publishing the status of %s failed: %s", self.key, exc)
            self._failing = True
        else:
            self._failing = False
        return status

    def _next_look(self) -> float:
        """Seconds to the next look: often until first ready (the installation's start waits
        for that record), then every :attr:`check_every` while ready, more often while not.

        Looks fall on multiples of their period on the monotonic clock, which every process of
        a host shares (as do :attr:`interval`'s and :attr:`keepalive`'s, :meth:`_due`): the
        publishers of one process wake in one turn of its loop, not one each, and the idle
        keep-alives of every process of the host are written at the same moment, so that each
        board fetches once for all of them. Spread out, each record rang every board of the
        host into fetches of its own: most of an idle standalone's broker requests."""
        if not self._was_ready:
            period = STARTING_CHECK_S
        elif self._last is not None and self._last[0]:
            period = self.check_every
        else:
            period = min(self.check_every, NOT_READY_CHECK_S)
        now = time.monotonic()
        return (_slot(now, period) + 1) * period - now

    def _due(self) -> MemberStatus | None:
        """The status to publish now, or ``None``: a readiness change at once; every
        :attr:`interval` the whole status if it changed; every :attr:`keepalive` whatever."""
        ready, _ = self.health.ready()
        live, _ = self.health.live()
        now = (ready, live, () if ready else tuple(self.health.not_ready()))
        if now != self._last:
            return self.status()
        clock = time.monotonic()
        if _slot(clock, self.interval) == _slot(self._last_looked, self.interval):
            return None
        self._last_looked = clock
        status = self.status()
        keepalive_due = _slot(clock, self.keepalive) != _slot(self._last_sent, self.keepalive)
        if keepalive_due or _content(status) != self._last_content:
            return status
        return None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._next_look())
            try:
                status = self._due()
                if status is not None:
                    await self.publish(status)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the heartbeat die: its silence reads as "gone"
                log.exception("members: publishing failed")
                await asyncio.sleep(_RETRY_BACKOFF_S)


def _slot(ticks: float, period: float) -> int:
    """Which multiple of ``period`` the monotonic time ``ticks`` is in (one a hair before a
    multiple, :data:`_EARLY_S`, counts as on it): what lines up the looks and records of every
    publisher of a host (:meth:`MemberPublisher._next_look`)."""
    return math.floor((ticks + _EARLY_S) / period)


def _content(status: MemberStatus) -> bytes:
    """What a status says, its time and measurements aside: an idle member's records differ
    only in these (the loop's lag jitters by a fraction of a millisecond, a rate window's
    length by the loop's wake-ups), and publishing them would cost a record every beat."""
    body = asdict(status)
    body["ts"] = 0.0
    facts = dict(status.facts)
    facts.pop("windowS", None)
    checks = facts.get("checks")
    if isinstance(checks, dict):
        facts["checks"] = {
            name: {k: v for k, v in check.items() if k not in MEASUREMENTS}
            if isinstance(check, dict)
            else check
            for name, check in checks.items()
        }
    body["facts"] = facts
    return dumps(body)


class MemberBoard:
    """Follows the members topic and says whether the installation is ready (the API uses it;
    the executor's worker-group router reads its roster).

    :meth:`status` is "not ready" until the topic has been read up to the high watermark found at
    start: before that, the board cannot know who is running. ``ctx`` may be given to
    :meth:`start` instead, so the board can exist (and be handed to the HTTP routes) before the
    process has connected to the broker.

    The boards of one process share one reading of the topic (:class:`_MembersFeed`): each
    record reaches every board's roster, and a board started later is handed the latest record
    of every member first, which is what reading the topic from its start would leave. A
    standalone process hosts three or four boards (the API's, its executors' routers); each
    reading the topic itself fetched three or four times per member record.
    """

    def __init__(self, ctx: BrokerContext | None = None, roster: Roster | None = None) -> None:
        self.ctx = ctx
        self.roster = roster if roster is not None else Roster()
        #: Set once the topic has been read to the end found at start.
        self.loaded = asyncio.Event()
        self._feed: _MembersFeed | None = None

    async def start(self, ctx: BrokerContext | None = None) -> None:
        """Follow the topic from the beginning in the background (:attr:`loaded` when caught
        up), sharing the process's reading of it."""
        ctx = self.ctx = ctx or self.ctx
        if ctx is None:
            raise ValueError("MemberBoard.start needs a broker context")
        key = (asyncio.get_running_loop(), ctx.bootstrap, ctx.topics.members)
        while self._feed is None:
            feed = _FEEDS.get(key)
            if feed is None:
                feed = _FEEDS[key] = _MembersFeed(ctx, key)
            if await feed.join(self):
                self._feed = feed

    async def stop(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.leave(self)

    def status(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, details)`` of the whole installation."""
        if not self.loaded.is_set():
            return False, {"status": "DOWN", "reason": "reading the members topic"}
        return self.roster.status()


_FeedKey = tuple[asyncio.AbstractEventLoop, str, str]
#: The running feeds by event loop, bootstrap and topic (one per process in practice).
_FEEDS: dict[_FeedKey, _MembersFeed] = {}


class _MembersFeed:
    """One reading of the members topic without a consumer group, shared by the process's
    :class:`MemberBoard` s (see there); it stops with its last board."""

    def __init__(self, ctx: BrokerContext, key: _FeedKey) -> None:
        self.ctx = ctx
        self.key = key
        #: The latest record value of every member (tombstoned ones removed): what a board
        #: that joins later is handed first.
        self.latest: dict[str, bytes] = {}
        self.boards: list[MemberBoard] = []
        self.loaded = False
        self.closed = False
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def join(self, board: MemberBoard) -> bool:
        """Feed ``board`` from now on (``False``: this feed closed meanwhile, take another)."""
        async with self._lock:
            if self.closed:
                return False
            if self._consumer is None:
                await self._open()
            for key, value in self.latest.items():
                board.roster.apply(key, value)
            self.boards.append(board)
            if self.loaded:
                board.loaded.set()
            return True

    async def leave(self, board: MemberBoard) -> None:
        async with self._lock:
            if board in self.boards:
                self.boards.remove(board)
            if self.boards:
                return
            self.closed = True
            if _FEEDS.get(self.key) is self:
                del _FEEDS[self.key]
            task, self._task = self._task, None
            await cancel_and_wait(task)
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                await consumer.stop()

    async def _open(self) -> None:
        ctx = self.ctx
        consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        await consumer.start()
        try:
            targets = await assign_from_start(consumer, ctx.topics.members)
        except BaseException:
            self.closed = True
            if _FEEDS.get(self.key) is self:
                del _FEEDS[self.key]
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer, targets), name="member-board")

    async def _run(self, consumer: AIOKafkaConsumer, targets: dict[TopicPartition, int]) -> None:
        while True:
            try:
                # Looked at before each read too: an empty topic is loaded before any record,
                # and a read waits up to _FETCH_TIMEOUT_MS when nothing comes.
                if not self.loaded and await reached(consumer, targets):
                    self.loaded = True
                    for board in self.boards:
                        board.loaded.set()
                    log.info("members table loaded: %d members", len(self.latest))
                await self._poll(consumer)
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:  # transient broker trouble: keep following
                log.warning("members: fetch failed (%s); retrying", exc)
                await asyncio.sleep(_RETRY_BACKOFF_S)

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        batch = await consumer.getmany(timeout_ms=_FETCH_TIMEOUT_MS)
        for recs in batch.values():
            for record in recs:
                key = record.key.decode("utf-8", "replace") if record.key is not None else ""
                if record.value is None:
                    self.latest.pop(key, None)
                else:
                    self.latest[key] = record.value
                for board in self.boards:
                    board.roster.apply(key, record.value)
