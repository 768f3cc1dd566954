"""Chaos tests' harness: kestream's roles as separate OS processes on the broker under test,
killed with SIGKILL while executions run, and a tally of what that did to each execution.

The roles run as ``kestream standalone`` runs them (``python -m kestream.cli executor``,
``worker``, ``scheduler``, :func:`kestream.runtime.supervisor.role_command`), each configured
only through ``KESTREAM_*`` variables, with a topic prefix of the test's own. The test process
holds a :class:`~kestream.client.Client` (deploys, submits) and an :class:`UpdatesWatch` that
reads ``execution-updates`` from the beginning and notes when each execution was updated and
when each (execution, attempt) ended, and ``executions`` for when each was asked for, with the
records' own timestamps (their producers' clocks: this machine's).

What is counted, per (execution, attempt) (:class:`Tally`):

- **lost**: submitted (acknowledged by the broker), never ended, or ended without the effect its
  task must leave;
- **doubled**: two different end states, or two effects of one task of one execution (the
  ``chaos.tasks.Effect`` task appends one line per attempt, naming its task; no chaos flow
  retries, so a second line is a second effect, whether under the same attempt, a new attempt
  number or a task-run id derived again);
- **stuck**: ended, but later than a bound after its submission.

And two times per kill (:class:`Kill`: a SIGKILL, a SIGSTOP, a broker restart), each for each
partition the killed (or frozen) process owned, as its last "owns partitions" / "partitions
assigned" log line said, and for the kill the worst of those partitions: how long the last of
them waited. A partition with no sign after the kill is left out. Neither is asserted: the 15 s
target is printed against the takeover in the table (a timed assertion would fail on a busy
machine for reasons that are not kestream's).

- **takeover**: from the kill to the first moment, after it, that work of an execution of that
  partition starts again on a live process: the service has recovered then. What starts again
  depends on the role killed (:attr:`Kill.kind`):

  - a worker: the first task run of an execution of that partition started by another process
    (the ``chaos.tasks.Effect`` task appends a start line, with its pid and time, to
    ``<path>.starts`` before it does anything else). Not the task run's RUNNING update on
    ``execution-updates``: the executor writes it when it dispatches the attempt, before any
    worker has the job, and the job the next owner runs again is the same attempt, dispatched
    once, so no update says it started again;
  - an executor: the first ``execution-updates`` record of an execution of that partition (only
    its owner writes them: the new owner's first step on it; what a killed executor had sent
    carries its time from before the kill, and a frozen one sends nothing until it is woken,
    after the hand-over). The first end, the former measure, comes after it;
  - the scheduler, which owns no partition: the first execution it asks for after the kill (the
    timestamp of its ``created`` record on the ``executions`` topic, the scheduler's own clock,
    so one it fired just before the kill and the executor created just after does not count);
  - a broker restart: the to-end figure. Records produced while the broker is down carry a time
    inside the outage and land after it, so no earlier record says the work was served again.

- **to end** (:attr:`Tally.recoveries`): from the kill to the first end, after it, of an
  execution of that partition; for the scheduler, the first end of an execution created after
  the kill. For a worker kill it includes the task's own run again from its start (a Sleep of
  8 s killed half-way ends about 8 s after its takeover): how long the users of that partition
  waited for a result, not how long the service was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from kestream.client import Client
from kestream.executor import codec
from kestream.executor.events import WorkerResult
from kestream.runtime.embedded_broker import die_with_parent
from kestream.runtime.executor_service import COMMIT_EVERY_S
from kestream.runtime.kafka import make_consumer
from kestream.runtime.records import decode_event
from kestream.runtime.supervisor import role_command
from kestream.runtime.tansu_compat import fetch_highwaters
from kestream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MODULES = Path(__file__).resolve().parent / "plugin_modules"

#: How long a role may take to join its group and own partitions.
READY_TIMEOUT_S = 120.0
#: A role's claim of partitions, as it logs it (executor and worker).
_CLAIMS = {
    "executor": re.compile(r"executor owns partitions \[([\d, ]*)\]"),
    "worker": re.compile(r"worker: partitions assigned: \[([\d, ]*)\]"),
}
_HEALTH = re.compile(r"/metrics and /health on (http://[\w.:\[\]]+)")
_STARTED = re.compile(r"(executor|worker|scheduler) started \(broker")


#: An execution that has not ended this long after its submission (or creation) is stuck, by
#: broker kind. A killed member's partitions wait for its session timeout (10 s) and a
#: rebalance; with a kill every 10 s, two kills in a row can take both executors' (or the
#: survivor's) partitions while the first replacement still starts (about 10 s of Python start
#: and group join on a busy 2-core machine), so one execution may wait two session timeouts
#: plus a start. Tansu hands a killed member's partitions on after about 30 s, not 10 (seen in
#: these runs' logs), so there the same two kills take up to about 70 s.
STUCK_BOUND_S = {"kafka": 60.0, "tansu": 90.0}
#: After the load, how long executions still running get to end before they count as lost.
DRAIN_S = 90.0
#: The long runs: only with ``-m chaos``, and past the suite's 300 s test timeout (start, load,
#: kills and the drain of a run that went wrong).
LONG = (pytest.mark.chaos, pytest.mark.timeout(900))

W1_FLOW = """
id: chaos_w1
namespace: chaos
inputs:
  - id: name
    type: STRING
    defaults: World
tasks:
  - id: concatenate
    type: io.kestra.plugin.core.output.OutputValues
    values:
      message: Hello {{{{ inputs.name }}}}
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ outputs.concatenate.values.message }}}}"
  - id: effect
    type: chaos.tasks.Effect
    path: {path}
"""


@dataclass
class Role:
    """One role process; ``generation`` counts its restarts (each has its own log file)."""

    name: str
    index: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    generation: int = 0

    @property
    def label(self) -> str:
        return f"{self.name}-{self.index}"

    def claimed(self) -> set[int] | None:
        """The partitions this process last said it owns (None: no claim yet)."""
        pattern = _CLAIMS.get(self.name)
        text = self.log_path.read_text(errors="replace")
        if pattern is None:
            return set() if _STARTED.search(text) else None
        claims = pattern.findall(text)
        if not claims:
            return None
        return {int(p) for p in claims[-1].split(",") if p.strip()}

    def health(self) -> dict[str, Any]:
        """This process's ``/health/live`` details (its address is in its start line)."""
        found = _HEALTH.search(self.log_path.read_text(errors="replace"))
        assert found is not None, f"{self.label} logged no health address"
        try:
            with urllib.request.urlopen(found.group(1) + "/health/live", timeout=10) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:  # 503: not live, the details still say why
            body = exc.read()
        details: dict[str, Any] = json.loads(body)
        return details

    def claims(self) -> int:
        """How many claims of partitions this process logged so far."""
        pattern = _CLAIMS[self.name]
        return len(pattern.findall(self.log_path.read_text(errors="replace")))


@dataclass
class Kill:
    """One SIGKILL: when, which process, and the partitions it owned then. ``kind``: the role
    killed (``executor``, ``worker``, ``scheduler``) or ``broker``, which says what its takeover
    is (the module docs)."""

    at: float
    role: str
    pid: int
    partitions: set[int]
    kind: str


class Cluster:
    """The role processes of one chaos test: start, kill -9, restart, stop."""

    def __init__(
        self, bootstrap: str, prefix: str, workdir: Path, effects: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.extra_env = dict(extra_env or {})
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.workdir = workdir
        self.effects = effects
        self.settings = Settings(broker=bootstrap, topic_prefix=prefix)
        self.roles: list[Role] = []
        self.kills: list[Kill] = []
        self.client: Client | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
        env.update(
            KESTREAM_BROKER=self.bootstrap,
            KESTREAM_TOPIC_PREFIX=self.prefix,
            KESTREAM_DATA_DIR=str(self.workdir / "data"),
            KESTREAM_LOG_LEVEL="INFO",
            KESTREAM_SCHEDULER_TICK_MS="200",
            KESTREAM_PLUGINS="chaos_tasks",
            PYTHONPATH=os.pathsep.join([str(MODULES), str(ROOT)]),
        )
        env.update(self.extra_env)
        return env

    async def __aenter__(self) -> Cluster:
        sys.path.insert(0, str(MODULES))  # the client validates the flows' task types too
        import chaos_tasks  # noqa: F401

        self.client = await Client.connect(self.settings)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        await asyncio.to_thread(self.stop)

    def require_client(self) -> Client:
        assert self.client is not None, "the cluster is not entered"
        return self.client

    # -- processes -------------------------------------------------------------------------

    def spawn(self, name: str, index: int, generation: int = 0) -> Role:
        log_path = self.workdir / f"{name}-{index}.{generation}.log"
        # One instance id per slot, as standalone's supervisor gives its children: a process
        # restarted in a slot takes its predecessor's place in the group (Apache Kafka).
        env = {**self.env(), "KESTREAM_GROUP_INSTANCE_ID": f"{name}-{index}"}
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                role_command(name),
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),
            )
        return Role(name, index, proc, log_path, generation)

    async def start(self, **counts: int) -> None:
        """Start ``executor=2, worker=1, ...`` processes; return once each is ready."""
        for name, count in counts.items():
            for index in range(count):
                self.roles.append(self.spawn(name, index))
        await self.ready(self.roles)

    async def ready(self, roles: Iterable[Role]) -> None:
        """Until every role claimed partitions (the scheduler: started), and together the
        executors and the workers each own every partition."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = list(roles)
        while True:
            for role in self.roles:
                code = role.proc.poll()
                if code is not None and role in waiting:
                    tail = role.log_path.read_text(errors="replace")[-3000:]
                    raise AssertionError(f"{role.label} exited with {code}:\n{tail}")
            if all(role.claimed() is not None for role in waiting) and self._covered():
                return
            if time.monotonic() > deadline:
                states = {r.label: r.claimed() for r in waiting}
                raise AssertionError(f"roles not ready in {READY_TIMEOUT_S:.0f} s: {states}")
            await asyncio.sleep(0.2)

    def _covered(self) -> bool:
        for name in _CLAIMS:
            live = [r for r in self.roles if r.name == name and r.proc.poll() is None]
            if live:
                owned = [r.claimed() or set() for r in live]
                if set().union(*owned) != set(range(self.settings.partitions)):
                    return False
        return True

    def live(self, name: str) -> list[Role]:
        return [r for r in self.roles if r.name == name and r.proc.poll() is None]

    def kill(self, role: Role) -> Kill:
        """SIGKILL ``role`` now; the kill, with the partitions the role owned, is recorded."""
        partitions = role.claimed() or set()
        at = time.time()
        role.proc.send_signal(signal.SIGKILL)
        role.proc.wait()
        kill = Kill(at, role.label, role.proc.pid, partitions, role.name)
        self.kills.append(kill)
        return kill

    def freeze(self, role: Role) -> Kill:
        """SIGSTOP ``role`` now (a zombie: alive, but neither heartbeating nor writing until
        :meth:`thaw`); recorded as a kill, with the partitions it owned then."""
        partitions = role.claimed() or set()
        at = time.time()
        role.proc.send_signal(signal.SIGSTOP)
        kill = Kill(at, f"{role.label} (SIGSTOP)", role.proc.pid, partitions, role.name)
        self.kills.append(kill)
        return kill

    def thaw(self, role: Role) -> None:
        """SIGCONT a role :meth:`freeze` stopped."""
        role.proc.send_signal(signal.SIGCONT)

    async def taken_over(self, frozen: Role) -> None:
        """Until the other processes of ``frozen``'s role claim every partition between them:
        the group has expelled the frozen one and handed its partitions on."""
        every = set(range(self.settings.partitions))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            others = [r for r in self.live(frozen.name) if r is not frozen]
            if set().union(*(r.claimed() or set() for r in others)) == every:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{frozen.label}'s partitions never handed on")
            await asyncio.sleep(0.2)

    async def reclaimed(self, role: Role, claims_before: int) -> None:
        """Until ``role`` logged a claim of partitions after its ``claims_before`` first ones
        (it rejoined its group), and the live processes of its role cover every partition."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while role.claims() <= claims_before or not self._covered():
            code = role.proc.poll()
            if code is not None:
                tail = role.log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"{role.label} exited with {code}:\n{tail}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{role.label} never rejoined its group")
            await asyncio.sleep(0.2)

    def kill_random(self, name: str, rng: random.Random) -> Role:
        role = rng.choice(self.live(name))
        self.kill(role)
        return role

    def restart(self, role: Role) -> Role:
        """A new process in ``role``'s place (what a supervisor does after a crash)."""
        fresh = self.spawn(role.name, role.index, role.generation + 1)
        self.roles[self.roles.index(role)] = fresh
        return fresh

    def stop(self) -> None:
        for role in self.roles:
            if role.proc.poll() is None:
                role.proc.send_signal(signal.SIGTERM)
        for role in self.roles:
            try:
                role.proc.wait(20)
            except subprocess.TimeoutExpired:
                role.proc.kill()
                role.proc.wait()

    async def dump_records(self, execution_ids: Iterable[str], path: Path) -> None:
        """Every record of the executions' own topics keyed by one of ``execution_ids``, in
        topic and offset order, to ``path``: what to read when the tally names a lost one."""
        wanted = {execution_id.encode() for execution_id in execution_ids}
        if not wanted:
            return
        settings = self.settings
        kind = self.require_client().ctx.kind
        consumer = make_consumer(settings, self.bootstrap, kind, group_id=None)
        await consumer.start()
        lines: list[str] = []
        try:
            for name in ("executions", "worker-tasks", "worker-results", "execution-updates"):
                topic = settings.topic(name)
                parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
                consumer.assign(parts)
                await consumer.seek_to_beginning(*parts)
                ends = await consumer.end_offsets(parts)
                while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
                    batch = await consumer.getmany(timeout_ms=500)
                    found = [r for recs in batch.values() for r in recs if r.key in wanted]
                    lines += [
                        f"{name}[{r.partition}]@{r.offset} {r.timestamp} {r.value!r}" for r in found
                    ]
                    if not batch:
                        break
        finally:
            await consumer.stop()
        path.write_text("\n".join(lines) + "\n")

    async def _read_whole(self, name: str) -> list[Any]:
        """Every record of the topic ``name`` (a kestream topic of this cluster), in offset
        order per partition."""
        settings = self.settings
        kind = self.require_client().ctx.kind
        consumer = make_consumer(settings, self.bootstrap, kind, group_id=None)
        await consumer.start()
        found: list[Any] = []
        try:
            topic = settings.topic(name)
            parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await fetch_highwaters(consumer, parts)
            while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=500)
                if not batch:
                    break
                found += [r for recs in batch.values() for r in recs]
        finally:
            await consumer.stop()
        return found

    async def stale_states(
        self, execution_ids: Iterable[str], settle_s: float = 3 * COMMIT_EVERY_S + 2
    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """The executions of ``execution_ids`` (all ended) whose state the changelog still
        holds: keys whose latest record is not a tombstone, their ended marker aside. An
        ended execution's keys are all tombstoned by its end; a key alive after that was
        written by a member that stepped it from an older state (a zombie).

        Two dicts: the executions a recovery would load as in flight (their ended marker is
        gone), and those whose live keys the ended marker outranks (recovery keeps them ended
        and clears the keys): records of a flush already handed to the producer when the member
        froze, which land when it wakes (documented; exactly-once fences them).

        The changelog trails an executor's memory by up to a commit interval: a cycle's records
        are carried to the next write or offset commit (:mod:`kestream.runtime.executor_writer`),
        so the executions that ended last may have no end records yet when their update is
        read. The read is repeated until no execution is stale, for at most ``settle_s``."""
        wanted = set(execution_ids)
        deadline = time.monotonic() + settle_s
        while True:
            stale, outranked = await self._stale_once(wanted)
            if not stale or time.monotonic() >= deadline:
                return stale, outranked
            await asyncio.sleep(0.5)

    async def _stale_once(
        self, wanted: set[str]
    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        latest: dict[str, bytes | None] = {}
        for rec in await self._read_whole("executor-state-changelog"):
            latest[rec.key.decode()] = rec.value
        alive: dict[str, list[str]] = defaultdict(list)
        for key, value in latest.items():
            execution_id = codec.execution_of(key)
            if execution_id in wanted and value is not None and key != execution_id + codec.ENDED:
                alive[execution_id].append(key)
        stale = {e: keys for e, keys in alive.items() if latest.get(e + codec.ENDED) is None}
        outranked = {e: keys for e, keys in alive.items() if e not in stale}
        return stale, outranked

    async def changelog_history(self, execution_ids: Iterable[str]) -> dict[str, list[str]]:
        """Every changelog record of each of ``execution_ids``, in offset order, one line each
        (partition, offset, timestamp, key, value size or ``tombstone``): what to read when a
        tally names a stale state."""
        wanted = set(execution_ids)
        history: dict[str, list[str]] = defaultdict(list)
        for rec in await self._read_whole("executor-state-changelog"):
            key = rec.key.decode()
            if (execution_id := codec.execution_of(key)) in wanted:
                size = "tombstone" if rec.value is None else f"{len(rec.value)} B"
                history[execution_id].append(
                    f"[{rec.partition}]@{rec.offset} t={rec.timestamp} {key!r} {size}"
                )
        return history

    async def conflicting_results(self) -> dict[tuple[str, str], int]:
        """Task runs answered by worker-results records that differ, with how many different
        answers. The same answer twice is by design (a worker answers a job it finished and
        reads again, after a rebalance, with the record it produced, byte for byte, and the
        executor applies one result per attempt); two different ones are two outcomes."""
        answers: dict[tuple[str, str], set[bytes]] = defaultdict(set)
        for rec in await self._read_whole("worker-results"):
            event = decode_event(rec.value)
            if isinstance(event, WorkerResult):
                answers[(event.execution_id, event.task_run_id)].add(rec.value)
        return {run: len(values) for run, values in answers.items() if len(values) > 1}

    def errors(self, limit: int = 8) -> list[str]:
        """ERROR lines of every role log (a reason to read when a count is off)."""
        found: list[str] = []
        for path in sorted(self.workdir.glob("*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if "[ERROR]" in line and len(found) < limit:
                    found.append(f"{path.name}: {line[-300:]}")
        return found


class UpdatesWatch:
    """Reads ``execution-updates`` and ``executions`` from the beginning in the background: the
    end states of each (execution, attempt), when each execution was updated and asked for,
    with the timestamps of the records that said so."""

    def __init__(self, settings: Settings, kind: str) -> None:
        self.settings = settings
        self.kind = kind
        #: (execution id, attempt) -> [(state, record timestamp in seconds)]
        self.ends: dict[tuple[str, int], list[tuple[str, float]]] = defaultdict(list)
        #: execution id -> the timestamp of its first update (created, by whichever role)
        self.created: dict[str, float] = {}
        #: execution id -> the timestamps of all its updates (its executor's steps)
        self.updated: dict[str, list[float]] = defaultdict(list)
        #: execution id -> the timestamp of its first ``created`` record on ``executions`` (by
        #: its asker's clock: the client's, the scheduler's)
        self.asked: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> UpdatesWatch:
        settings = self.settings
        consumer = make_consumer(settings, settings.broker or "", self.kind, group_id=None)
        await consumer.start()
        topics = [settings.topic("execution-updates"), settings.topic("executions")]
        parts = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._read(consumer, topics[1]))
        return self

    async def _read(self, consumer: Any, asks: str) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                for tp, recs in batch.items():
                    note = self._note_asked if tp.topic == asks else self._note
                    for record in recs:
                        note(record.value, record.timestamp / 1000)
        finally:
            await consumer.stop()

    def _note(self, value: bytes, at: float) -> None:
        body = orjson.loads(value)
        execution = body["execution"]
        self.created.setdefault(execution["id"], at)
        self.updated[execution["id"]].append(at)
        if not body.get("terminal"):
            return
        attempt = int((execution.get("metadata") or {}).get("attemptNumber") or 1)
        self.ends[(execution["id"], attempt)].append((execution["state"]["current"], at))

    def _note_asked(self, value: bytes | None, at: float) -> None:
        """A ``created`` event's record (the topic's other events are left alone)."""
        body = orjson.loads(value) if value else None
        if isinstance(body, dict) and body.get("type") == "created":
            self.asked.setdefault(str(body["id"]), at)

    def ended(self, execution_id: str) -> bool:
        return any(eid == execution_id for eid, _ in self.ends)

    def first_end(self, execution_id: str) -> float | None:
        times = [
            at for (eid, _), seen in self.ends.items() if eid == execution_id for _, at in seen
        ]
        return min(times) if times else None

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def read_effects(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_starts(effects: Path) -> list[dict[str, Any]]:
    """The start lines of the Effect tasks whose effects go to ``effects`` (a worker kill's
    takeover; ``chaos_tasks`` is importable once a :class:`Cluster` was entered)."""
    from chaos_tasks import starts_path

    return read_effects(Path(starts_path(str(effects))))


def partition_of(execution_id: str, partitions: int) -> int:
    """The partition of an execution's records (keyed by its id; the default partitioner)."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(execution_id.encode(), every, every))


#: The takeover a kill should stay within (the issue's target, on Kafka): printed, never asserted.
TAKEOVER_TARGET_S = 15.0


@dataclass
class Tally:
    """The counts of one chaos test (see the module docs)."""

    test: str
    broker: str
    executions: int = 0
    lost: int = 0
    doubled: int = 0
    stuck: int = 0
    failed: int = 0
    kills: int = 0
    kill_list: list[Kill] = field(default_factory=list)
    #: Each kill's takeover, in seconds (a kill with none left out).
    takeovers: list[float] = field(default_factory=list)
    #: Each kill's time to end, in seconds (a kill with none left out).
    recoveries: list[float] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    #: The executions counted as lost (the records they left are worth reading).
    lost_ids: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "broker": self.broker,
            "executions": self.executions,
            "kills": self.kills,
            "lost": self.lost,
            "doubled": self.doubled,
            "stuck": self.stuck,
            "failed": self.failed,
            "worst_takeover_s": _worst(self.takeovers),
            "worst_to_end_s": _worst(self.recoveries),
        }

    def table(self) -> str:
        return render_table([self.row()])

    def assert_clean(self) -> None:
        assert (self.lost, self.doubled, self.stuck, self.failed) == (0, 0, 0, 0), (
            f"{self.table()}\n" + "\n".join(self.details[:20])
        )


def _worst(times: list[float]) -> float | None:
    return round(max(times), 2) if times else None


#: The table's columns, keys of :meth:`Tally.row`; the last two are the worst takeover and the
#: worst time to end of the test's kills, in seconds (headers in ``_TIME_HEADERS``).
COLUMNS = (
    "test", "broker", "executions", "kills", "lost", "doubled", "stuck", "failed",
    "worst_takeover_s", "worst_to_end_s",
)  # fmt: skip
_TIME_HEADERS = {
    "worst_takeover_s": f"worst takeover (target {TAKEOVER_TARGET_S:g} s)",
    "worst_to_end_s": "worst to end",
}


def render_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table (the chaos summary at the end of a run prints it too). A
    takeover past the target says so in its cell."""
    head = [_TIME_HEADERS.get(column, column) for column in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, column) for column in COLUMNS) + " |")
    return "\n".join(lines)


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if column not in _TIME_HEADERS:
        return str(value)
    if value is None:
        return "-"
    over = column == "worst_takeover_s" and value > TAKEOVER_TARGET_S
    return f"{value:.2f} s" + (" (over)" if over else "")


def tally_executions(
    test: str,
    broker: str,
    submitted: dict[str, float],
    watch: UpdatesWatch,
    effects: list[dict[str, Any]],
    kills: list[Kill],
    *,
    partitions: int,
    bound_s: float,
    starts: list[dict[str, Any]] | None = None,
) -> Tally:
    """Count lost, doubled, stuck and failed executions of ``submitted`` (id -> submit time),
    and each kill's takeover and time to end. ``starts``: the Effect tasks' start lines
    (:func:`read_starts`), which a worker kill's takeover is read from (none: no takeover)."""
    tally = Tally(test, broker, executions=len(submitted), kills=len(kills), kill_list=kills)
    per_task: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for e in effects:
        per_task[(e["execution"], e.get("task", ""))].append((e["taskRun"], e["attempt"]))
    with_effect = {e["execution"] for e in effects}
    for key, runs in per_task.items():
        if len(runs) > 1:
            tally.doubled += 1
            tally.details.append(f"doubled effect {key}: {len(runs)} lines {sorted(runs)}")
    for execution_id, sent_at in submitted.items():
        ends = [(a, seen) for (eid, a), seen in watch.ends.items() if eid == execution_id]
        if not ends:
            tally.lost += 1
            tally.lost_ids.append(execution_id)
            tally.details.append(f"lost {execution_id} (never ended)")
            continue
        for attempt, seen in ends:
            states = {state for state, _ in seen}
            if len(states) > 1:
                tally.doubled += 1
                tally.details.append(f"doubled end {execution_id}/{attempt}: {sorted(states)}")
            if states != {"SUCCESS"}:
                tally.failed += 1
                tally.details.append(f"{execution_id}/{attempt} ended {sorted(states)}")
        first = watch.first_end(execution_id)
        assert first is not None
        if execution_id not in with_effect:
            tally.lost += 1
            tally.details.append(f"lost effect of {execution_id} (ended, no effect line)")
        if first - sent_at > bound_s:
            tally.stuck += 1
            tally.details.append(f"stuck {execution_id}: ended {first - sent_at:.1f} s after")
    for kill in kills:
        to_end = _worst_lane(kill, submitted, partitions, _ends(watch))
        if to_end is not None:
            tally.recoveries.append(to_end)
        takeover = _worst_lane(kill, submitted, partitions, _work_signs(kill, watch, starts))
        if takeover is not None:
            tally.takeovers.append(takeover)
    return tally


#: When an execution did something: record times, in seconds, in no particular order.
Signs = Callable[[str], Iterable[float]]


def _once(at: float | None) -> tuple[float, ...]:
    return () if at is None else (at,)


def _ends(watch: UpdatesWatch) -> Signs:
    """An execution's first end (its to-end sign)."""
    return lambda execution_id: _once(watch.first_end(execution_id))


def _work_signs(kill: Kill, watch: UpdatesWatch, starts: list[dict[str, Any]] | None) -> Signs:
    """The signs that work of an execution started again after ``kill``, by the role killed
    (why each: the module docs)."""
    if kill.kind == "worker":
        begun: dict[str, list[float]] = defaultdict(list)
        for line in starts or ():
            if line["pid"] != kill.pid:
                begun[line["execution"]].append(line["at"])
        return lambda execution_id: begun.get(execution_id, ())
    if kill.kind == "executor":
        return lambda execution_id: watch.updated.get(execution_id, ())
    if kill.kind == "scheduler":
        return lambda execution_id: _once(watch.asked.get(execution_id))
    return _ends(watch)


def _worst_lane(
    kill: Kill, submitted: dict[str, float], partitions: int, signs: Signs
) -> float | None:
    """How long after ``kill`` the last of its partitions showed a sign again: per partition
    the killed process owned, the first of ``signs`` after the kill among its executions; the
    worst of them. For a process without partitions (the scheduler): the first sign of an
    execution created after the kill. None: nothing it stood in the way of showed one."""
    first: dict[int, float] = {}
    for execution_id, sent_at in submitted.items():
        if kill.partitions:
            lane = partition_of(execution_id, partitions)
            if lane not in kill.partitions:
                continue
        elif sent_at <= kill.at:
            continue
        else:
            lane = -1
        after = [at for at in signs(execution_id) if at > kill.at]
        if after:
            at = min(after)
            first[lane] = min(at, first.get(lane, at))
    return max(first.values()) - kill.at if first else None


def report(tally: Tally, record: Callable[[str, object], None]) -> None:
    """Print the test's row (and what each broker restart cost the broker itself, which its
    takeover includes), and record it for the run's summary table."""
    print(f"\n{tally.table()}")
    restarts = [kill.role for kill in tally.kill_list if kill.kind == "broker"]
    if restarts:
        print("broker restarts: " + "; ".join(restarts))
    record("chaos", tally.row())


async def drain(
    watch: UpdatesWatch, ids: Callable[[], list[str]], timeout: float = DRAIN_S
) -> None:
    """Until every execution of ``ids()`` ended, or ``timeout`` (the rest then count as lost:
    the tally says which)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(watch.ended(execution_id) for execution_id in ids()):
            return
        await asyncio.sleep(0.25)
