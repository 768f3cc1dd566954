"""The executor's side of worker groups: where a job goes, and whether it goes at all.

A task with ``workerGroup.key`` is sent to its group's own jobs topic
(:meth:`~kestream.runtime.topics.Topics.group_tasks`), which only the workers started with that
group read (``kestream worker --group KEY``); every other task goes to ``worker-tasks``. Kills go
where the job went, so they reach the worker running it (same topic, same execution-id key).

Whether a group has a live worker is read from the members topic, which every worker writes its
group into (:class:`~kestream.runtime.members.MemberPublisher`): the router follows that topic
as a global table, like the flows table, so the check at dispatch reads memory only. It is made
only for ``FAIL`` and ``CANCEL`` fallbacks: a ``WAIT`` job is sent whatever the members say, and
waits in its topic until a worker of the group reads it.

``FAIL`` fails the task run with a message naming the group (its retries and ``errors``
branches apply as for any failure). ``CANCEL`` kills the execution, as a kill from the API does:
the task run and the execution end KILLED, and a WARN line on the task run says why.

A group's topic is created the first time a job is routed to it, before the job is produced, so
a ``WAIT`` job for a group no worker has served yet is kept rather than refused by the broker.
"""

from __future__ import annotations

from datetime import datetime

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.models.state import StateType
from kestream.runtime.context import BrokerContext
from kestream.runtime.members import MemberBoard
from kestream.runtime.topics import ensure_group_topics
from kestream.tasks.base import LogLevel
from kestream.tasks.worker_group import WorkerGroup, no_worker_outcome


class WorkerGroupRouter:
    """Routes jobs to their worker group's topic and applies the group's fallback (module doc)."""

    def __init__(
        self, ctx: BrokerContext, board: MemberBoard | None = None, *, routed: bool = True
    ) -> None:
        """``routed=False``: every job goes to the default workers and no fallback applies
        (``kestream run`` on its own broker, whose one worker is the only one there is)."""
        self.ctx = ctx
        self.routed = routed
        self.board = board if board is not None else MemberBoard(ctx)
        self._created: set[str] = set()
        self._to_create: set[str] = set()

    async def start(self) -> None:
        """Follow the members topic; return once it is read up to its end at start, so the
        first fallback decisions already know every worker that is up."""
        if self.routed:
            await self.board.start()
            await self.board.loaded.wait()

    async def stop(self) -> None:
        await self.board.stop()

    def topic_for(self, group: WorkerGroup | None) -> str:
        """The topic of the jobs of ``group`` (noted for :meth:`create_topics` if new)."""
        if not self.routed:
            group = None
        topic = self.ctx.topics.jobs_topic(group.key if group is not None else None)
        if group is not None and topic not in self._created:
            self._to_create.add(topic)
        return topic

    def refusal(self, group: WorkerGroup | None) -> tuple[StateType, str] | None:
        """``None`` to send the job; else the state and error its task run ends with, because
        its group has no live worker and its fallback says not to wait."""
        if group is None or not self.routed:
            return None
        outcome = no_worker_outcome(group)
        if outcome is None or self.board.roster.group_alive(group.key):
            return None
        return outcome

    async def create_topics(self) -> None:
        """Create the group topics routed to since the last call (before producing to them)."""
        if not self._to_create:
            return
        names = sorted(self._to_create)
        ctx = self.ctx
        await ensure_group_topics(ctx.settings, ctx.bootstrap, ctx.kind, names)
        self._created.update(names)
        self._to_create.clear()


def refused_job(
    job: cmd.RunTask, state: StateType, error: str, now: datetime
) -> tuple[cmd.EmitLogs | None, ev.Event]:
    """What the executor does with a job :meth:`WorkerGroupRouter.refusal` refused: the log
    line to write first (if any), then the event to apply as if a worker had answered."""
    if state is not StateType.KILLED:
        return None, ev.WorkerResult(
            job.execution_id, job.task_run_id, job.attempt, state, error=error
        )
    line = cmd.LogLine(
        job.execution_id, job.task_run_id, job.task.id, job.attempt, LogLevel.WARN.value, error, now
    )
    return cmd.EmitLogs(job.namespace, job.flow_id, [line]), ev.Kill(job.execution_id)
