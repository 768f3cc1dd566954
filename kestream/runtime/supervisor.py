"""``kestream standalone``: one machine, every role, kept running.

Starts the embedded broker when ``KESTREAM_BROKER`` is unset, deploys the flows of a directory,
then runs the roles (their processes are started first and import what they run meanwhile; they
are given the broker's address on their stdin once it holds its state and the flows are
deployed): by default one process hosts the worker, the scheduler, the API and the
first executor (``kestream roles executor,worker,scheduler,api``), and each further executor of
``KESTREAM_EXECUTOR_STREAM_THREADS`` is a process of its own; with
``KESTREAM_STANDALONE_PROCESS_PER_ROLE`` one process per role instance, each a faust worker as
``kestream executor`` (``worker``, ``scheduler``, ``api``) would start it. One process saves the
memory and start-up time of three interpreters (imports, clients, web server) at the cost of
crash isolation: a crash of one of its roles restarts all of them, which is what a crash of the
machine's single worker or scheduler costs anyway. The role that failed is named in the log
and counted alone (the child writes it to a file the supervisor reads after the exit,
:func:`~kestream.runtime.restarts.record_failed_role`); each role has its own restart budget,
and a restart counts for every role the process hosts.

It supervises them: a role process that exits is started again after a delay that doubles with
its recent crashes (:class:`~kestream.runtime.restarts.CrashPolicy`), and each crash is logged
with its cause and counted in the API's ``/metrics``
(:class:`~kestream.runtime.restarts.CrashLedger`). It stops on Ctrl-C or SIGTERM, or when one
role keeps crashing, which it names. The embedded broker keeps its state in
``KESTREAM_DATA_DIR`` (:mod:`~kestream.runtime.broker_store`): a new start on the same
directory writes it back before any role starts, and if the broker process itself dies, the
roles are stopped, the broker is started and restored, and the roles start again. Without that
durability (``KESTREAM_STANDALONE_DURABLE=false``) a dead broker has lost everything, and
standalone stops, saying so.

Children are started so that they die with the supervisor, even if it is killed outright; on
Ctrl-C (or SIGTERM) it stops the children, then the broker it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from kestream.parent_death import die_with_parent
from kestream.runtime.embedded_broker import EmbeddedBroker
from kestream.runtime.fetch_pacing import mark_embedded
from kestream.runtime.instance_id_guard import DUPLICATE_INSTANCE_ID
from kestream.runtime.kafka_connection import embedded_refusal
from kestream.runtime.mirror_ack import MIRROR_ACK_FD_ENV, MirrorAckServer
from kestream.runtime.process import (
    BROKER_ON_STDIN_ENV,
    EXECUTOR_SHARE_ENV,
    IMPORTED_FD_ENV,
    ONLY_SCHEDULER_ENV,
    ONLY_WORKER_ENV,
)
from kestream.runtime.restarts import (
    CRASHES_FILE_ENV,
    FAILED_ROLE_FILE_ENV,
    CrashLedger,
    CrashPolicy,
    describe_exit,
    record_failed_role,
    take_failed_role,
)
from kestream.runtime.static_assignment import Share
from kestream.runtime.static_membership import child_instance_id
from kestream.runtime.supervision import (
    HUNG,
    SUPERVISION_FILE_ENV,
    HangWatch,
    SupervisionReport,
)
from kestream.settings import Settings

if TYPE_CHECKING:  # imported once the role processes are started: they need not wait for it
    from kestream.runtime.broker_store import BrokerStore
    from kestream.runtime.members import MemberBoard

log = logging.getLogger("kestream.standalone")

#: How long a child has to stop on SIGTERM before it is killed. A shared process stops its
#: roles side by side: the worker's drain (10 s for its running tasks, 1 s for those killed),
#: its bounded commits (3 s for the periodic one, 3 s for its own) and closing its clients;
#: the executor's last cycle, flush and commit meanwhile (test_role_processes checks the sum).
_STOP_GRACE_S = 20.0
#: The longest the role processes are held back for the slowest of them to import what it runs.
_IMPORTED_WAIT_S = 60.0
#: How long the watch rests when nothing wakes it. A child's exit (SIGCHLD, the broker's too)
#: and a stop wake it at once, and a restart's due time shortens the rest; what is left to
#: notice is the broker mirror's failure, which can wait this long. It looked every 0.2 s.
_WATCH_IDLE_S = 2.0
#: The children's report for the API's /health, in the data dir's ``standalone`` folder.
CHILDREN = "children.json"
#: The same where no SIGCHLD handler can be installed (a loop outside the main thread).
_POLL_FALLBACK_S = 0.2


def role_command(role: str) -> list[str]:
    """The command line of a role process (``role``: one role, or several comma-separated)."""
    if "," in role:
        return [sys.executable, "-m", "kestream.cli", "roles", role]
    return [sys.executable, "-m", "kestream.cli", role]


@dataclass
class RoleProcess:
    """One role process the supervisor keeps running (``executor-2``: the second executor;
    ``role`` names its roles, comma-separated when it hosts several), with a crash policy
    per role."""

    name: str
    role: str
    policies: dict[str, CrashPolicy]
    process: subprocess.Popen[bytes] | None = None
    start_at: float = 0.0  # monotonic time of the next start, while ``process`` is None
    #: When ``process`` was started (Unix time: member records carry it).
    started_at: float = 0.0
    #: Where the process writes the role that failed (FAILED_ROLE_FILE_ENV), once spawned.
    failed_file: Path | None = None
    #: The read end of the pipe the process closes once it has imported what it runs
    #: (:data:`~kestream.runtime.process.IMPORTED_FD_ENV`), while it waits for the broker.
    imported: int | None = None

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles it hosts: a restart of the process counts for each of them."""
        return tuple(self.role.split(","))

    def failed_roles(self) -> tuple[str, ...]:
        """The roles the exit is counted for: the one the process named, else all it hosts
        (killed, or failed outside its roles: which one is unknown)."""
        return self.failure()[0]

    def failure(self) -> tuple[tuple[str, ...], str | None]:
        """:meth:`failed_roles`, and the cause the failed role gave (a scheduler that stepped
        down for good), if it gave one."""
        named = take_failed_role(self.failed_file) if self.failed_file is not None else None
        if named is None or named.role not in self.roles:
            return self.roles, None
        return (named.role,), named.cause

    def which_failed(self, failed: tuple[str, ...]) -> str:
        """What a log line adds about the roles of a process hosting several."""
        if len(self.roles) == 1:
            return ""
        if len(failed) == 1:
            return f" (its {failed[0]} role failed)"
        return " (which of its roles failed is not known)"

    def describe(self, roles: tuple[str, ...]) -> str:
        """``the worker role of executor-1+worker+scheduler+api`` or ``executor-2``."""
        if len(self.roles) > 1 and len(roles) == 1:
            return f"the {roles[0]} role of {self.name}"
        return self.name


class _BrokerDied(Exception):
    """The embedded broker process exited while the roles ran (``cause``: how)."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class Supervisor:
    def __init__(self, settings: Settings, flows_dir: Path | None) -> None:
        self.settings = settings
        self.flows_dir = flows_dir
        self.slots: list[RoleProcess] = []
        self.broker: EmbeddedBroker | None = None
        self.store: BrokerStore | None = None
        self.ledger: CrashLedger | None = None
        #: Each child's state, for the API's /health (:mod:`~kestream.runtime.supervision`).
        self.report: SupervisionReport | None = None
        #: The role that kept crashing, when that is why it stopped.
        self.gave_up: str | None = None
        self._mirror_policy = self._policy()
        #: Children that stopped being live, on the embedded broker without groups, where no
        #: group moves their partitions (:class:`~kestream.runtime.supervision.HangWatch`).
        self._hangs = (
            HangWatch() if not settings.broker and not settings.standalone_groups else None
        )
        self._members: MemberBoard | None = None
        #: The data dir's lock (:func:`_lock_data_dir`), while :meth:`run` holds it.
        self._data_lock: IO[str] | None = None
        #: Where the API's creations wait for the mirror (the embedded broker, durable only).
        self._mirror_acks = (
            MirrorAckServer(lambda: self.store)
            if not settings.broker and settings.standalone_durable
            else None
        )

    def _policy(self) -> CrashPolicy:
        s = self.settings
        return CrashPolicy(
            s.standalone_crash_limit, s.standalone_crash_window_s, s.standalone_restart_max_delay_s
        )

    async def run(self) -> int:
        """Run until Ctrl-C, SIGTERM or a role that keeps crashing; 2 without starting anything
        when the settings would open the API to the network
        (:func:`~kestream.api.auth.bind_refusal`), ask the embedded broker for security it lacks
        (:func:`embedded_refusal`), or the data dir is another standalone's."""
        from kestream.api.auth import bind_refusal
        from kestream.runtime.secrecy import make_non_dumpable

        make_non_dumpable()  # its environment holds the children's secrets too
        refusal = bind_refusal(self.settings) or embedded_refusal(self.settings)
        if refusal is not None:
            log.error("%s", refusal)
            return 2
        data = self.settings.data_path
        lock = _lock_data_dir(data)
        if isinstance(lock, str):
            log.error("%s", lock)
            return 2
        self._data_lock = lock
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        self.ledger = CrashLedger(data / "standalone" / "crashes.json")
        self.report = SupervisionReport(data / "standalone" / CHILDREN)
        broker_policy = self._policy()
        try:
            first = True
            while True:
                self._spawn_all()  # they import while the broker starts, then wait for it
                bootstrap = await self._broker(data, first)
                if first:
                    await self._deploy(bootstrap)
                await self._all_imported()
                for slot in self.slots:
                    _release(slot, bootstrap)
                if first:
                    log.info(
                        "standalone running: %d executor(s), a worker, the scheduler "
                        "and the API in %d process(es) (http://%s:%d/api/v1/%s/), broker %s, "
                        "data in %s. Ctrl-C stops.",
                        self.settings.stream_threads,
                        len(self.slots),
                        self.settings.web_host,
                        self.settings.web_port,
                        self.settings.tenant,
                        bootstrap,
                        data,
                    )
                first = False
                try:
                    return await self._watch(stop, bootstrap)
                except _BrokerDied as died:
                    if not await self._after_broker_death(died, broker_policy):
                        return 1
        finally:
            await self._stop_children(graceful=True)
            await self._stop_mirror()
            if self.broker is not None:
                await self.broker.astop()
            lock.close()
            self._data_lock = None

    async def _stop_mirror(self) -> None:
        """After the roles: the API's waits for the mirror end, then the mirror catches up."""
        if self._mirror_acks is not None:
            await self._mirror_acks.close()
        if self.store is not None:
            await self.store.stop_mirror()

    async def _broker(self, data: Path, first: bool) -> str:
        if self.settings.broker:
            return self.settings.broker
        self.broker = EmbeddedBroker()
        await self.broker.astart()
        # The broker mirror reads it from this process, not through connect(): mark it here so
        # the mirror's consumer is paced and rests while nothing is written (fetch_pacing).
        mark_embedded(self.broker.bootstrap)
        if not self.settings.standalone_durable:
            if (data / "broker" / "topics.json").exists():
                log.warning("the broker state in %s is left as it is", data / "broker")
            log.warning(
                "embedded broker at %s is memory-only (KESTREAM_STANDALONE_DURABLE=false): "
                "executions do not survive stopping it",
                self.broker.bootstrap,
            )
            return self.broker.bootstrap
        if self.store is None:
            from kestream.runtime.broker_store import BrokerStore

            self.store = BrokerStore(self.settings, data / "broker")
        if first:
            log.info("embedded broker state in %s (KESTREAM_DATA_DIR)", self.store.directory)
        report = await self.store.restore(self.broker.bootstrap)
        if report.records or report.topics:
            log.info(
                "restored %d records of %d topics and the offsets of %d consumer groups "
                "from %s in %.2f s",
                report.records,
                report.topics,
                report.groups,
                self.store.directory,
                report.seconds,
            )
        await self.store.start_mirror(self.broker.bootstrap)
        return self.broker.bootstrap

    async def _after_broker_death(self, died: _BrokerDied, policy: CrashPolicy) -> bool:
        """The broker died: True when it may be started again from the data dir."""
        assert self.ledger is not None
        self.ledger.crashed("broker", died.cause)
        why = str(died)
        if self.store is None:
            log.error(
                "%s; it kept everything in memory (KESTREAM_STANDALONE_DURABLE=false), so every "
                "flow, execution and trigger state is gone: standalone stops",
                why,
            )
            return False
        delay = policy.crashed(time.monotonic())
        if delay is None:
            log.error("the embedded broker keeps dying (%s); standalone stops", why)
            self.gave_up = "broker"
            self._report().give_up("the embedded broker", f"it keeps dying ({died.cause})")
            return False
        log.error(
            "%s; stopping the roles, then starting the broker again from %s",
            why,
            self.store.directory,
        )
        await self._stop_children(graceful=False)  # nothing to flush to a dead broker
        await self.store.stop_mirror(catch_up=False)
        if self.broker is not None:
            await self.broker.astop()
            self.broker = None
        await asyncio.sleep(delay)
        self.ledger.restarted("broker")
        return True

    async def _deploy(self, bootstrap: str) -> None:
        if self.flows_dir is None:
            return
        from kestream.client import Client

        settings = self.settings.model_copy(update={"broker": bootstrap})
        async with await Client.connect(settings) as client:
            for path in sorted(flow_files(self.flows_dir)):
                flow = await client.deploy(path.read_text())
                log.info("deployed %s.%s revision %s", flow.namespace, flow.id, flow.revision)

    def _spawn_all(self) -> None:
        """Start every role process, to wait for the broker's address (:func:`_release`)."""
        if not self.slots:
            self.slots = [
                RoleProcess(n, r, {role: self._policy() for role in r.split(",")})
                for n, r in role_slots(self.settings)
            ]
        for slot in self.slots:
            if slot.process is None:
                self._spawn(slot, None)

    def _spawn(self, slot: RoleProcess, bootstrap: str | None) -> int:
        """Start ``slot``'s process; its pid. It reads the broker's address on its stdin
        (:data:`~kestream.runtime.process.BROKER_ON_STDIN_ENV`): given now when ``bootstrap``
        is, else by :func:`_release` once the broker is ready. Until then the process imports
        what its roles run: a start overlaps the broker's start, the write-back of its state
        and the flows' deployment, rather than following them."""
        assert self.ledger is not None
        slot.failed_file = self.ledger.path.parent / f"{slot.name}.failed"
        take_failed_role(slot.failed_file)  # a stale one from a run that did not read it
        env = {
            **os.environ,
            BROKER_ON_STDIN_ENV: "1",
            CRASHES_FILE_ENV: str(self.ledger.path),
            SUPERVISION_FILE_ENV: str(self._report().path),
            FAILED_ROLE_FILE_ENV: str(slot.failed_file),
            # Static membership on Kafka: a restarted child takes its predecessor's partitions.
            "KESTREAM_GROUP_INSTANCE_ID": child_instance_id(self.settings, slot.name),
        }
        env.pop("KESTREAM_BROKER", None)  # on stdin, once the broker holds its state
        env.pop(MIRROR_ACK_FD_ENV, None)
        for name in LONE_ROLE_ENVS:
            env.pop(name, None)
        if not self.settings.broker and not self.settings.standalone_groups:
            env.update(lone_roles_env([(s.name, s.role) for s in self.slots], slot.name))
        passed: list[int] = []
        imported: tuple[int, int] | None = None
        if bootstrap is None:
            imported = os.pipe()
            env[IMPORTED_FD_ENV] = str(imported[1])
            passed.append(imported[1])
        if self._mirror_acks is not None and "api" in slot.roles:
            # The API's creations are acknowledged once the mirror has them (mirror_ack).
            acks = self._mirror_acks.pair()
            env[MIRROR_ACK_FD_ENV] = str(acks)
            passed.append(acks)
        # Each child holds the data dir's lock too: a supervisor killed outright releases its
        # own at once, its children (killed by the kernel as it dies) a moment later, and a
        # new standalone on the same data dir must not start beside them.
        held = [self._data_lock.fileno()] if self._data_lock is not None else []
        try:
            process = subprocess.Popen(
                role_command(slot.role),
                env=env,
                stdin=subprocess.PIPE,
                pass_fds=[*passed, *held],
                preexec_fn=die_with_parent(),
            )
        except BaseException:
            if imported is not None:
                os.close(imported[0])
            raise
        finally:
            for fd in passed:
                os.close(fd)
        slot.process = process
        slot.started_at = time.time()
        self._report().started(slot.name, slot.roles, process.pid)
        slot.imported = imported[0] if imported is not None else None
        if bootstrap is not None:
            _release(slot, bootstrap)
        return process.pid

    async def _all_imported(self) -> None:
        """Wait until every waiting role process has imported what it runs (or exited), at most
        :data:`_IMPORTED_WAIT_S`: given the broker together, the executors join their group
        together, where one joining a moment after the others' join was answered would make
        the group assign the partitions a second time (about 2 s more on the embedded broker).
        The process hosting the API imports the most, and the installation is ready with it
        only, so the wait costs the start nothing."""
        waits = [_closed(slot.imported) for slot in self.slots if slot.imported is not None]
        for slot in self.slots:
            slot.imported = None  # each wait closes its end
        if not waits:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*waits), _IMPORTED_WAIT_S)
        except TimeoutError:
            log.warning(
                "a role process has not started within %.0f s; the others go on", _IMPORTED_WAIT_S
            )

    async def _watch(self, stop: asyncio.Event, bootstrap: str) -> int:
        """Restart what exits; 0 on a stop, 1 when a role keeps crashing.

        Raises :class:`_BrokerDied` when the embedded broker's process exits."""
        assert self.ledger is not None
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        try:
            loop.add_signal_handler(signal.SIGCHLD, exited.set)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread: look often
            return await self._watch_loop(stop, exited, _POLL_FALLBACK_S, bootstrap)
        await self._follow_members(bootstrap)
        try:
            return await self._watch_loop(stop, exited, _WATCH_IDLE_S, bootstrap)
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)
            await self._stop_members()

    async def _stop_members(self) -> None:
        """Stop following the members topic, whatever its consumer's stop raises: aiokafka's
        stop of a group-less consumer re-raises its fetch task's CancelledError once the
        broker is gone (as in ``BrokerStore._stop_clients``), which must not end a watch that
        is about to start the broker again. Only a cancellation of this task goes on."""
        board, self._members = self._members, None
        if board is None:
            return
        try:
            await board.stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except Exception as exc:
            log.warning("following the members topic stopped with %r", exc)

    async def _follow_members(self, bootstrap: str) -> None:
        """Read the members topic, to kill the children that hung (:meth:`_kill_hung`); only
        where there is no group to move their partitions."""
        if self._hangs is None:
            return
        from kestream.runtime.context import reach
        from kestream.runtime.members import MemberBoard

        try:
            board = MemberBoard(await reach(self.settings, bootstrap))
            await board.start()
        except Exception as exc:  # the broker went away meanwhile: the watch will see it
            log.warning("cannot follow the members topic (%r): no child is judged hung", exc)
            return
        self._members = board

    def _kill_hung(self, now: float) -> None:
        """SIGKILL each executor or worker process one of whose roles has not been live for
        :data:`~kestream.runtime.supervision.HUNG_AFTER_S`; the watch then starts it again as
        any child that crashed, the role named and ``hung`` its cause."""
        if self._hangs is None or self._members is None:
            return
        judged = {
            slot.process.pid: slot
            for slot in self.slots
            if slot.process is not None
            and slot.process.returncode is None
            and {"executor", "worker"} & set(slot.roles)
        }
        children = {pid: (slot.roles, slot.started_at) for pid, slot in judged.items()}
        for pid, (role, silent) in self._hangs.hung(
            children, self._members.roster.members(now), now
        ).items():
            slot = judged[pid]
            assert slot.process is not None
            log.error(
                "%s (pid %d) has not been live for %.0f s (its %s role: a blocked loop?), and "
                "no group moves its partitions: killing it, to start it again",
                slot.name,
                pid,
                silent,
                role,
            )
            if slot.failed_file is not None:
                record_failed_role(role, HUNG, path=slot.failed_file)
            slot.process.kill()

    async def _watch_loop(
        self, stop: asyncio.Event, exited: asyncio.Event, rest: float, bootstrap: str
    ) -> int:
        assert self.ledger is not None
        while not stop.is_set():
            exited.clear()  # before looking: an exit from now on ends the rest below at once
            broker = self.broker
            if broker is not None and not broker.running:
                code = broker.returncode
                cause = describe_exit(code) if code is not None else "an unknown cause"
                raise _BrokerDied(
                    f"the embedded broker (pid {broker.pid}) exited with {cause}", cause
                )
            now = time.monotonic()
            if not await self._mirror_kept(now, bootstrap):
                return 1
            self._kill_hung(time.time())  # member records carry wall-clock times
            for slot in self.slots:
                if slot.process is None:
                    if now >= slot.start_at:
                        pid = self._spawn(slot, bootstrap)
                        for role in slot.roles:
                            self.ledger.restarted(role)
                        log.info("%s started again (pid %d)", slot.name, pid)
                    continue
                code = slot.process.poll()
                if code is None:
                    continue
                status = describe_exit(code)
                failed, said = slot.failure()
                if said == DUPLICATE_INSTANCE_ID:
                    return self._duplicate(slot, failed)
                cause = said or status  # a role's own reason counts its exit, when it gave one
                delays: list[float] = []
                for role in failed:
                    self.ledger.crashed(role, cause)
                    delay = slot.policies[role].crashed(now)
                    if delay is None:
                        policy = slot.policies[role]
                        who = slot.describe(failed)
                        self.gave_up = role if who != slot.name else slot.name
                        self._report().give_up(who, f"it keeps crashing ({cause})")
                        log.error(
                            "%s keeps crashing: %d crashes within %.0f s, the last with %s "
                            "(its log is above); standalone stops",
                            who,
                            policy.recent,
                            policy.window_s,
                            cause,
                        )
                        return 1
                    delays.append(delay)
                delay = max(delays)
                log.error(
                    "%s process %d exited with %s%s; starting it again in %.1f s%s",
                    slot.name,
                    slot.process.pid,
                    status,
                    "" if said is None else f" ({said})",
                    delay,
                    slot.which_failed(failed),
                )
                slot.process = None
                slot.start_at = now + delay
                self._report().exited(slot.name, slot.roles, cause, delay)
            due = [slot.start_at - now for slot in self.slots if slot.process is None]
            await _first_of(stop, exited, min([rest, *due]))
        return 0

    def _report(self) -> SupervisionReport:
        """The children's report (made by :meth:`run` before any child starts)."""
        if self.report is None:
            self.report = SupervisionReport(self.settings.data_path / "standalone" / CHILDREN)
        return self.report

    def _duplicate(self, slot: RoleProcess, failed: tuple[str, ...]) -> int:
        """``slot``'s process stopped because another live process joined its consumer group
        with its instance id (:mod:`~kestream.runtime.instance_id_guard`): started again, it
        would take the id back from that process, which would stop in turn. Standalone stops,
        naming the id; 1."""
        assert self.ledger is not None
        for role in failed:
            self.ledger.crashed(role, DUPLICATE_INSTANCE_ID)
        self.gave_up = slot.name
        self._report().give_up(slot.name, DUPLICATE_INSTANCE_ID)
        log.error(
            "%s stopped: another live process uses its group instance id %r on this broker "
            "(KESTREAM_GROUP_INSTANCE_ID is shared with another installation). Starting it "
            "again would take the id back from that process; standalone stops. Give each "
            "installation its own KESTREAM_GROUP_INSTANCE_ID",
            slot.name,
            child_instance_id(self.settings, slot.name),
        )
        slot.process = None
        return 1

    async def _mirror_kept(self, now: float, bootstrap: str) -> bool:
        """Start the broker mirror again if it failed (logged, counted as role ``mirror``);
        False when it keeps failing."""
        assert self.ledger is not None
        store = self.store
        error = store.mirror_error if store is not None else None
        if store is None or error is None:
            return True
        cause = type(error).__name__
        self.ledger.crashed("mirror", cause)
        if self._mirror_policy.crashed(now) is None:
            self.gave_up = "mirror"
            self._report().give_up("the broker mirror", f"it keeps failing ({cause})")
            log.error("the broker mirror keeps failing (%r); standalone stops", error)
            return False
        log.error("the broker mirror failed (%r); starting it again", error)
        await store.restart_mirror(bootstrap)
        self.ledger.restarted("mirror")
        return True

    async def _stop_children(self, *, graceful: bool) -> None:
        """Stop every child (SIGTERM, SIGKILL past :data:`_STOP_GRACE_S`; SIGKILL at once when
        not ``graceful``) and reap it. The waits run in threads: this loop runs the broker
        mirror and the API's durable acknowledgements (:mod:`.mirror_ack`), so a creation the
        API sent while it stops is still answered rather than left to its timeout."""
        running = [s for s in self.slots if s.process is not None and s.process.poll() is None]
        for slot in running:
            assert slot.process is not None
            slot.process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        await asyncio.gather(
            *(_reaped(slot.name, slot.process) for slot in running if slot.process)
        )
        for slot in self.slots:
            slot.process = None


async def _reaped(name: str, process: subprocess.Popen[bytes]) -> None:
    """Wait for a signalled child to exit, killing it past :data:`_STOP_GRACE_S`."""
    try:
        await asyncio.to_thread(process.wait, _STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) did not stop in time; killing it", name, process.pid)
        process.kill()
        await asyncio.to_thread(process.wait)


async def _first_of(stop: asyncio.Event, exited: asyncio.Event, timeout: float) -> None:
    """Rest until ``stop`` or ``exited`` is set, at most ``timeout`` seconds."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(exited.wait())]
    try:
        await asyncio.wait(waits, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _closed(fd: int) -> None:
    """Return once the other end of pipe ``fd`` is closed (or written to); close ``fd``."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await readable
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _release(slot: RoleProcess, bootstrap: str) -> None:
    """Give ``slot``'s waiting process the broker's address (once: its stdin is closed after).
    A process that died meanwhile is left to the watch loop, which restarts it."""
    pipe = slot.process.stdin if slot.process is not None else None
    if pipe is None or pipe.closed:
        return
    try:
        pipe.write(f"{bootstrap}\n".encode())
        pipe.close()
    except OSError:  # it exited before reading (BrokenPipeError)
        with contextlib.suppress(OSError):
            pipe.close()


def role_slots(settings: Settings) -> list[tuple[str, str]]:
    """``(name, roles)`` of each role process standalone runs (see the module doc)."""
    executors = settings.stream_threads
    names = [f"executor-{i + 1}" if executors > 1 else "executor" for i in range(executors)]
    if settings.standalone_process_per_role:
        others = [(r, r) for r in ("worker", "scheduler", "api")]
        return [(name, "executor") for name in names] + others
    shared = ("worker", "scheduler", "api")
    first = ("+".join((names[0], *shared)), ",".join(("executor", *shared)))
    return [first, *((name, "executor") for name in names[1:])]


#: What :func:`lone_roles_env` may set: each is cleared from a child's environment first.
LONE_ROLE_ENVS = (ONLY_SCHEDULER_ENV, ONLY_WORKER_ENV, EXECUTOR_SHARE_ENV)


def lone_roles_env(slots: list[tuple[str, str]], name: str) -> dict[str, str]:
    """What tells the roles of process ``name`` (one of ``slots``, ``(name, roles)`` as
    :func:`role_slots` gives them) that standalone's own embedded broker sees no other process
    than standalone's: its scheduler holds the lease alone (:mod:`~kestream.runtime.lone_lease`),
    its worker takes every jobs partition and each executor the share its place among the
    executors gives it (:mod:`~kestream.runtime.static_assignment`), all without groups. A
    restart of the process gets the same: it depends on the slot only."""
    executors = [n for n, roles in slots if "executor" in roles.split(",")]
    roles = dict(slots)[name].split(",")
    env: dict[str, str] = {}
    if "scheduler" in roles:
        env[ONLY_SCHEDULER_ENV] = "1"
    if "worker" in roles:
        env[ONLY_WORKER_ENV] = "1"
    if "executor" in roles:
        env[EXECUTOR_SHARE_ENV] = Share(executors.index(name), len(executors)).encode()
    return env


def _lock_data_dir(data: Path) -> IO[str] | str:
    """Hold ``data``'s lock for this process's life (the kernel drops it on any exit), or say
    which process holds it: two standalones mirroring one broker state would corrupt it."""
    data.mkdir(parents=True, exist_ok=True)
    handle = open(data / "standalone.lock", "a+")  # noqa: SIM115 - held until we exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        return f"{data} is in use by another kestream standalone (pid {holder}); stop it first"
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def flow_files(directory: Path) -> list[Path]:
    """The flow files of a directory (``*.yaml`` and ``*.yml``, recursively)."""
    return [p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
