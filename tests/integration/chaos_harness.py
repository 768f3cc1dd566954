"""Chaos tests' harness: kestream's roles as separate OS processes on the broker under test,
killed with SIGKILL while executions run, and a tally of what that did to each execution.

The roles run as ``kestream standalone`` runs them (``python -m kestream.cli executor``,
``worker``, ``scheduler``, :func:`kestream.runtime.supervisor.role_command`), each configured
only through ``KESTREAM_*`` variables, with a topic prefix of the test's own. The test process
holds a :class:`~kestream.client.Client` (deploys, submits) and an :class:`UpdatesWatch` that
reads ``execution-updates`` from the beginning and notes when each (execution, attempt) ended,
with the record's own timestamp (its producer's clock: this machine's).

What is counted, per (execution, attempt) (:class:`Tally`):

- **lost**: submitted (acknowledged by the broker), never ended, or ended without the effect its
  task must leave;
- **doubled**: two different end states, or two effects of one task of one execution (the
  ``chaos.tasks.Effect`` task appends one line per attempt, naming its task; no chaos flow
  retries, so a second line is a second effect, whether under the same attempt, a new attempt
  number or a task-run id derived again);
- **stuck**: ended, but later than a bound after its submission;
- **recovery** of a kill: for each partition the killed process owned (as its last "owns
  partitions" / "partitions assigned" log line said), from the kill to the first end, after it,
  of an execution of that partition; the kill's recovery is the worst of those partitions, how
  long the last of them went unserved (a partition none of whose executions ended after the
  kill is left out). For the scheduler, which owns no partition: to the first end of an
  execution created after the kill. The 15 s target is printed in the table, never asserted (a
  timed assertion would fail on a busy machine for reasons that are not kestream's).
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
    """One SIGKILL: when, which process, and the partitions it owned then."""

    at: float
    role: str
    pid: int
    partitions: set[int]


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
        kill = Kill(at, role.label, role.proc.pid, partitions)
        self.kills.append(kill)
        return kill

    def freeze(self, role: Role) -> Kill:
        """SIGSTOP ``role`` now (a zombie: alive, but neither heartbeating nor writing until
        :meth:`thaw`); recorded as a kill, with the partitions it owned then."""
        partitions = role.claimed() or set()
        at = time.time()
        role.proc.send_signal(signal.SIGSTOP)
        kill = Kill(at, f"{role.label} (SIGSTOP)", role.proc.pid, partitions)
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
    """Reads ``execution-updates`` from the beginning in the background: the end states of
    each (execution, attempt), with the timestamps of the records that said so."""

    def __init__(self, settings: Settings, kind: str) -> None:
        self.settings = settings
        self.kind = kind
        #: (execution id, attempt) -> [(state, record timestamp in seconds)]
        self.ends: dict[tuple[str, int], list[tuple[str, float]]] = defaultdict(list)
        #: execution id -> the timestamp of its first update (created, by whichever role)
        self.created: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> UpdatesWatch:
        settings = self.settings
        consumer = make_consumer(settings, settings.broker or "", self.kind, group_id=None)
        await consumer.start()
        topic = settings.topic("execution-updates")
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._read(consumer))
        return self

    async def _read(self, consumer: Any) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                for recs in batch.values():
                    for record in recs:
                        self._note(record.value, record.timestamp / 1000)
        finally:
            await consumer.stop()

    def _note(self, value: bytes, at: float) -> None:
        body = orjson.loads(value)
        execution = body["execution"]
        self.created.setdefault(execution["id"], at)
        if not body.get("terminal"):
            return
        attempt = int((execution.get("metadata") or {}).get("attemptNumber") or 1)
        self.ends[(execution["id"], attempt)].append((execution["state"]["current"], at))

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


def partition_of(execution_id: str, partitions: int) -> int:
    """The partition of an execution's records (keyed by its id; the default partitioner)."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(execution_id.encode(), every, every))


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
    recoveries: list[float] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    #: The executions counted as lost (the records they left are worth reading).
    lost_ids: list[str] = field(default_factory=list)

    @property
    def worst_recovery(self) -> float | None:
        return max(self.recoveries) if self.recoveries else None

    def row(self) -> dict[str, Any]:
        worst = self.worst_recovery
        return {
            "test": self.test,
            "broker": self.broker,
            "executions": self.executions,
            "kills": self.kills,
            "lost": self.lost,
            "doubled": self.doubled,
            "stuck": self.stuck,
            "failed": self.failed,
            "worst_recovery_s": None if worst is None else round(worst, 2),
        }

    def table(self) -> str:
        return render_table([self.row()])

    def assert_clean(self) -> None:
        assert (self.lost, self.doubled, self.stuck, self.failed) == (0, 0, 0, 0), (
            f"{self.table()}\n" + "\n".join(self.details[:20])
        )


COLUMNS = ("test", "broker", "executions", "kills", "lost", "doubled", "stuck", "failed")


def render_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table (the chaos summary at the end of a run prints it too)."""
    head = [*COLUMNS, "worst recovery"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        worst = row.get("worst_recovery_s")
        cells = [str(row[c]) for c in COLUMNS] + ["-" if worst is None else f"{worst:.2f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
) -> Tally:
    """Count lost, doubled, stuck and failed executions of ``submitted`` (id -> submit time),
    and each kill's recovery."""
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
        recovery = _recovery(kill, submitted, watch, partitions)
        if recovery is not None:
            tally.recoveries.append(recovery)
    return tally


def _recovery(
    kill: Kill, submitted: dict[str, float], watch: UpdatesWatch, partitions: int
) -> float | None:
    """How long after ``kill`` the last of its partitions was served again: per partition the
    killed process owned, the first end after the kill; the worst of them. For a process
    without partitions (the scheduler): the first end of an execution created after the kill.
    None: nothing it stood in the way of ended after it."""
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
        at = watch.first_end(execution_id)
        if at is not None and at > kill.at:
            first[lane] = min(at, first.get(lane, at))
    return max(first.values()) - kill.at if first else None


def report(tally: Tally, record: Callable[[str, object], None]) -> None:
    """Print the test's row, and record it for the run's summary table."""
    print(f"\n{tally.table()}")
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
