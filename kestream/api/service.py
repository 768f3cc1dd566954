"""The API role's state: a client of the installation, the execution index and its feed.

Routes are thin; what they do to the installation is here. Writes go to Kafka through a
:class:`~kestream.client.Client` (flows to the flows topic, executions, kills, resumes and
restarts to the executions topic). Reads of executions and logs come from the execution index,
which the :class:`~kestream.api.index.feed.IndexFeed` fills from the execution-updates and logs
topics; live follows come from the client's updates follower, seeded from the index.

An execution this API created is answered from a small cache until the index has it, so a
``GET`` straight after the ``POST`` that created it never says 404.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from kestream.api.execution_end import is_over
from kestream.api.index import Store, open_index
from kestream.api.index.feed import IndexFeed
from kestream.api.index.query import SearchQuery
from kestream.api.index.store import Listing, LogPage, LogSearch
from kestream.api.sse import FollowLimit
from kestream.client import Client
from kestream.executor import events as ev
from kestream.executor.context import input_variables
from kestream.executor.replay import replay_event, replay_state
from kestream.executor.restore import RestoreError, snapshot_attempt
from kestream.executor.snapshot import execution_model
from kestream.kv.store import calls_kv, sync_current_store
from kestream.models.clock import utc_now
from kestream.models.execution import Execution, format_instant
from kestream.models.flow import Flow
from kestream.models.ids import new_id
from kestream.models.inputs import parse_inputs
from kestream.models.state import StateType
from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.context import BrokerContext
from kestream.runtime.mirror_ack import MirrorAck, NotDurable
from kestream.secrets.encryption import scope_of
from kestream.tasks.pause import Pause

log = logging.getLogger("kestream.api")

#: Executions this API created, answered from memory until the index has them.
CREATED_CACHE_MAX = 10_000
CREATED_CACHE_TTL_S = 60.0
#: Longest a log follow waits on this API's client for the executor to call an execution over
#: (its ``afterExecution`` tasks ended) before it reads the index again
#: (:meth:`ApiService.logs_end`).
AFTER_EXECUTION_WAIT_S = 30.0


class ApiService:
    """Everything the routes act on. Build with :meth:`start`; :meth:`stop` closes it."""

    def __init__(
        self,
        ctx: BrokerContext,
        client: Client,
        feed: IndexFeed,
        mirror_ack: MirrorAck | None = None,
    ) -> None:
        self.ctx = ctx
        #: In standalone on its mirrored embedded broker: what a creation waits for before it is
        #: answered (:meth:`_send_durably`); None elsewhere, where the broker's ack suffices.
        self.mirror_ack = mirror_ack
        self.settings = ctx.settings
        self.client = client
        self.feed = feed
        self.index = feed.store
        #: The live follows this process serves at once (``KESTREAM_API_MAX_FOLLOWS``).
        self.follows = FollowLimit(self.settings.api_max_follows)
        self._created: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        #: Ended executions whose afterExecution tasks a log follow waits for: the client's
        #: wait for the executor's word that they are over, one per execution, however many
        #: follows poll it.
        self._after_execution: dict[str, asyncio.Task[Any]] = {}
        #: The logs searches' own thread: a search reads up to LOG_SEARCH_SCAN_MAX lines, and
        #: searches wait for each other here rather than take the threads every other index
        #: read (pages, follows, the feed's answers) shares.
        self._log_searches = ThreadPoolExecutor(1, thread_name_prefix="kestream-log-search")

    @classmethod
    async def start(cls, ctx: BrokerContext) -> ApiService:
        client = Client(ctx)
        store: Store | None = None
        try:
            await client.start()
            store = await asyncio.to_thread(open_index, ctx.settings)
            feed = IndexFeed(ctx, store)
            await feed.start()
        except BaseException:
            await client.close()
            if store is not None:
                store.close()
            raise
        mirror_ack = MirrorAck.from_environment(ctx.settings.standalone_ack_timeout_s)
        return cls(ctx, client, feed, mirror_ack)

    async def stop(self) -> None:
        for waiting in list(self._after_execution.values()):
            await cancel_and_wait(waiting)
        await self.feed.stop()
        await self.client.close()
        if self.mirror_ack is not None:
            await self.mirror_ack.close()
        await asyncio.to_thread(self._log_searches.shutdown, cancel_futures=True)
        await asyncio.to_thread(self.index.close)

    @property
    def ready(self) -> bool:
        """The index has caught up with the updates that existed when the API started (until
        then it would answer 404 for executions it has not read yet)."""
        return self.feed.caught_up.is_set()

    @property
    def live(self) -> bool:
        """The index feed still runs (a dead feed would leave the index behind for good)."""
        return self.feed.running

    @property
    def index_ready(self) -> bool:
        """Ready, and the feed is not stuck retrying a batch the database cannot take now
        (down, full): the health says so instead of staying green while the index falls
        behind."""
        return self.ready and not self.feed.retrying

    def health_detail(self) -> dict[str, Any]:
        """The index feed's counters (records refused, retries) and the live follows."""
        return {
            **self.feed.health_detail(),
            "follows": self.follows.active,
            "follows_max": self.follows.limit,
        }

    # -- flows --------------------------------------------------------------------------------

    def flow(self, namespace: str, flow_id: str, revision: int | None = None) -> Flow | None:
        table = self.client.flows
        if revision is None:
            return table.latest(namespace, flow_id)
        return table.get(namespace, flow_id, revision)

    def flows(self) -> list[Flow]:
        return self.client.flows.flows()

    def over(self, execution: Mapping[str, Any]) -> bool:
        """The execution has ended and so have its ``afterExecution`` tasks
        (:mod:`kestream.api.execution_end`)."""
        flow = self.flow(execution["namespace"], execution["flowId"], execution.get("flowRevision"))
        return is_over(execution, flow)

    async def deploy(self, source: str) -> Flow:
        return await self.client.deploy(source)

    async def delete_flow(self, namespace: str, flow_id: str) -> bool:
        return await self.client.flows.delete(namespace, flow_id)

    # -- executions ---------------------------------------------------------------------------

    async def create_execution(
        self,
        flow: Flow,
        inputs: dict[str, Any],
        labels: dict[str, str],
        *,
        trigger: dict[str, Any] | None = None,
        schedule_date: datetime | None = None,
        validate: bool = True,
        execution_id: str | None = None,
    ) -> dict[str, Any]:
        """Start an execution of ``flow``; returns its JSON as created (state CREATED).

        Inputs are checked here (an :class:`~kestream.models.inputs.InputValidationError` names
        every bad one) unless ``validate`` is false, when the executor checks them.
        ``execution_id``: an id chosen before (uploaded files were stored under it).
        """
        if validate and calls_kv(flow.source):
            await sync_current_store()  # kv() in input templates then reads without waiting
        scope, variables = scope_of(flow.namespace, flow.id), input_variables(flow)
        typed = (
            parse_inputs(flow.inputs, inputs, scope=scope, variables=variables)
            if validate
            else inputs
        )
        execution_id = execution_id or new_id()
        event = ev.ExecutionCreated(
            execution_id=execution_id,
            namespace=flow.namespace,
            flow_id=flow.id,
            revision=flow.revision,
            inputs=typed,
            validate_inputs=not validate,
            labels=labels,
            trigger=trigger,
            schedule_date=schedule_date,
        )
        return await self.submit_event(event, flow)

    async def submit_event(self, event: ev.ExecutionCreated, flow: Flow) -> dict[str, Any]:
        """Send a prepared creation event (a webhook's); returns the execution as created."""
        await self._send_durably(event)
        body = created_execution(event, flow)
        self._remember(event.execution_id, body)
        return body

    async def wait(self, execution_id: str, timeout: float) -> dict[str, Any] | None:
        """The execution at its first stop (end or pause), or, after ``timeout`` seconds, as it
        stands (:meth:`execution`); ``None`` only if it is not known at all by then."""
        try:
            return dump(await self.client.wait(execution_id, timeout))
        except TimeoutError:
            return await self.execution(execution_id)

    async def execution(self, execution_id: str) -> dict[str, Any] | None:
        """The execution as the index has it, or fresher: the index follows the updates topic a
        little behind this API's own client, which may already have its end (or its pause)."""
        if "\x00" in execution_id:  # ids are generated and never hold NUL (PostgreSQL refuses it)
            return None
        found = await asyncio.to_thread(self.index.get, execution_id, include_deleted=True)
        if found is not None:
            self._created.pop(execution_id, None)
            if found.get("deleted"):
                return found  # the routes answer 404
        stop = self.client.last_stop(execution_id)
        if stop is not None and (found is None or _progress(stop) > _progress(found)):
            return stop
        if found is not None:
            return found
        cached = self._created.get(execution_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return None

    async def logs_end(self, execution_id: str) -> Mapping[TopicPartition, int] | None:
        """Where the index holds all of an ended execution's lines: the logs topic's high
        watermarks, taken once the index's own state column says it has ended and its
        ``afterExecution`` tasks have ended too (None before: they log as well).

        An execution's lines are produced before its last update (a worker produces a task's
        lines before its result; the executor sends its own with the update), so once the
        index has the end, the lines are below these marks, and once the feed has
        :meth:`~IndexFeed.reached` them, they are in the index. The client's view of the end
        (:meth:`Client.last_stop`) would not do: the index may be far behind it. An execution
        the index does not have and this API does not know at all has nothing to wait for.
        """
        state = await asyncio.to_thread(self.index.state, execution_id)
        if state is None:
            if await self.execution(execution_id) is not None:
                return None  # created here, not indexed yet
        elif not StateType(state).is_terminal:
            return None
        elif not await self._after_execution_ended(execution_id):
            return None  # they may still log
        try:
            return await self.feed.logs_end()
        except KafkaError as exc:  # asked again at the next poll
            log.warning("log follow: the logs topic's end is unknown for now: %s", exc)
            return None

    async def _after_execution_ended(self, execution_id: str) -> bool:
        """Whether the ``afterExecution`` tasks of an ended execution have ended, as the index
        has it (its own view decides: the log follow reads its lines).

        Asking means reading the whole execution (every task run: 10 000 of a ForEach). So once
        the index says they still run, the execution is handed to this API's client, which
        follows the updates topic: until the executor's update that calls it over arrives (or
        :data:`AFTER_EXECUTION_WAIT_S` passes), a poll answers False without reading anything.
        """
        if execution_id in self._after_execution:
            return False  # the executor has not called it over yet
        indexed = await asyncio.to_thread(self.index.get, execution_id)
        if indexed is None or self.over(indexed):
            return True
        self.client.seed(execution_id, indexed, terminal=False)
        waiting = asyncio.create_task(
            self.client.wait(execution_id, AFTER_EXECUTION_WAIT_S, until_paused=False)
        )
        self._after_execution[execution_id] = waiting
        waiting.add_done_callback(functools.partial(self._after_execution_waited, execution_id))
        return False

    def _after_execution_waited(self, execution_id: str, waiting: asyncio.Task[Any]) -> None:
        """The client's wait has ended (over, or timed out): the next poll reads the index."""
        if self._after_execution.get(execution_id) is waiting:
            del self._after_execution[execution_id]
        if not waiting.cancelled():
            waiting.exception()  # a TimeoutError: read again, not an error

    async def kill(self, execution: dict[str, Any]) -> None:
        """Kill the attempt of ``execution`` the caller saw (a replay cannot kill a restart)."""
        await self.client.kill(execution["id"], attempt=_attempt_of(execution))

    async def resume(self, execution: dict[str, Any], inputs: dict[str, Any]) -> None:
        """Resume the task runs that are paused in ``execution`` (as the caller saw it), each
        by id: a double submit, or a lagging view, can never resume a later Pause. Inputs that
        do not fit a Pause's ``onResume`` raise :class:`InputValidationError`."""
        runs = [
            run
            for run in execution.get("taskRunList") or []
            if run["state"]["current"] == StateType.PAUSED.value
        ]
        flow = self.flow(execution["namespace"], execution["flowId"], execution["flowRevision"])
        tasks = flow.task_index() if flow is not None else {}
        for run in runs:  # refused here, as in Kestra, before anything is sent
            task = tasks.get(run["taskId"])
            if isinstance(task, Pause) and task.onResume:
                scope = scope_of(execution["namespace"], execution["flowId"])
                parse_inputs(task.onResume, inputs, scope=scope)
        paused = [run["id"] for run in runs]
        for run_id in paused or [None]:
            await self.client.resume(
                execution["id"], inputs or None, task_run_id=run_id, attempt=_attempt_of(execution)
            )

    async def replay(
        self,
        execution: dict[str, Any],
        flow: Flow,
        *,
        task_run_id: str | None,
        inputs: dict[str, Any] | None,
        execution_id: str | None = None,
    ) -> dict[str, Any]:
        """Replay an ended execution as a new one (:mod:`kestream.executor.replay`); returns
        the new execution as the executor will start it. Raises ``ReplayError``,
        ``RestoreError`` or ``InputValidationError`` before anything is sent."""
        event = replay_event(
            execution,
            flow,
            execution_id=execution_id or new_id(),
            task_run_id=task_run_id,
            inputs=inputs,
        )
        if event.replay is None:
            return await self.submit_event(event, flow)
        ran = event.replay.revision
        original = self.flow(flow.namespace, flow.id, ran) if ran else None
        # what the executor builds, checked here first (before the stored values are copied)
        state, _ = replay_state(event, flow, original=original, copied=False)
        body = dump(execution_model(state))
        await self._send_durably(event)
        self._remember(event.execution_id, body)
        return body

    async def restart(self, snapshot: dict[str, Any]) -> None:
        """Restart an ended execution: its last snapshot goes back to the executor with the
        restart, since an ended execution has left the executor's state (DESIGN.md section 3)."""
        await self._send_durably(ev.Restart(snapshot["id"], snapshot=snapshot))

    async def _send_durably(self, event: ev.ExecutionCreated | ev.Restart) -> RecordMetadata:
        """Send an event the caller is told exists once this returns (a creation, a restart):
        in standalone on its embedded broker, only once the broker mirror's file holds it, as
        a kill -9 of the memory-only broker would otherwise lose it
        (:mod:`kestream.runtime.mirror_ack`; raises its ``NotDurable``, naming the execution,
        the route's 503). Elsewhere the broker's acknowledgement (``acks=all``) is the
        guarantee."""
        sent = await self.client.send(event)
        if self.mirror_ack is not None:
            try:
                await self.mirror_ack.wait(sent.topic, sent.partition, sent.offset)
            except NotDurable as exc:
                raise NotDurable(str(exc), execution_id=event.execution_id) from None
        return sent

    async def search(self, query: SearchQuery) -> Listing:
        return await asyncio.to_thread(self.index.search, query)

    async def logs(
        self,
        execution_id: str,
        min_level: str | None,
        task_run_id: str | None,
        *,
        limit: int,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """One page of the execution's lines, oldest first (:meth:`Store.logs`)."""
        return await asyncio.to_thread(
            functools.partial(
                self.index.logs, execution_id, min_level, task_run_id, limit=limit, offset=offset
            )
        )

    async def search_logs(self, query: LogSearch) -> Listing:
        """A page of every execution's lines that ``query`` picks (:meth:`Store.search_logs`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._log_searches, self.index.search_logs, query)

    async def logs_after(
        self,
        execution_id: str,
        cursor: int,
        min_level: str | None,
        task_run_id: str | None,
        limit: int,
    ) -> LogPage:
        """The lines indexed after ``cursor`` (:meth:`Store.logs_after`): a follow's next read."""
        return await asyncio.to_thread(
            functools.partial(
                self.index.logs_after,
                execution_id,
                cursor,
                min_level=min_level,
                task_run_id=task_run_id,
                limit=limit,
            )
        )

    async def follow(self, execution_id: str, known: dict[str, Any]) -> AsyncIterator[Execution]:
        """Each change of the execution, merged, from what the index knows of it to its end."""
        self.client.seed(execution_id, known, terminal=self.over(known))
        async for execution in self.client.follow(execution_id):
            yield execution

    def _remember(self, execution_id: str, body: dict[str, Any]) -> None:
        now = time.monotonic()
        self._created[execution_id] = (body, now + CREATED_CACHE_TTL_S)
        while self._created and (
            len(self._created) > CREATED_CACHE_MAX or next(iter(self._created.values()))[1] <= now
        ):
            self._created.popitem(last=False)


def _attempt_of(execution: dict[str, Any]) -> int | None:
    """The execution attempt an execution's JSON shows (``metadata.attemptNumber``), None if it
    shows none that can be read (the kill or resume then applies to any attempt)."""
    try:
        return snapshot_attempt(execution)
    except RestoreError:
        return None


def _progress(execution: dict[str, Any]) -> int:
    """How far an execution has come: its state history only grows (restarts included)."""
    return len(execution["state"].get("histories") or ())


def dump(execution: Execution) -> dict[str, Any]:
    return execution.model_dump(mode="json", by_alias=True)


def created_execution(event: ev.ExecutionCreated, flow: Flow) -> dict[str, Any]:
    """The JSON of an execution as it is created, before the executor has seen it (labels as
    the executor will set them: the flow's, the request's, and the correlation id)."""
    labels = {**flow.labels, **event.labels}
    labels.setdefault("system.correlationId", event.execution_id)
    now = utc_now()
    stamp = format_instant(now)
    body = Execution.model_validate(
        {
            "id": event.execution_id,
            "namespace": event.namespace,
            "flowId": event.flow_id,
            "flowRevision": event.revision or 1,
            "originalId": event.original_id or event.execution_id,
            "parentId": event.parent_id,
            "labels": [{"key": k, "value": v} for k, v in labels.items()],
            "inputs": event.inputs or None,
            "trigger": event.trigger,
            "scheduleDate": event.schedule_date,
            "metadata": {
                "attemptNumber": event.attempt_number,
                "originalCreatedDate": event.original_created or now,
            },
            "state": {"current": "CREATED", "histories": [{"state": "CREATED", "date": now}]},
        }
    )
    out = dump(body)
    out["state"]["startDate"] = stamp
    return out
