"""What the executor step consumes. Every event is keyed by execution id.

Each event carries what makes it idempotent: a worker result names its task run and attempt, a
timer names its timer id, a subflow result names the parent task run and attempt. The step applies
an event only when the state shows it has not been applied yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kestream.models.state import StateType


@dataclass(slots=True)
class SubflowLink:
    """Ties a child execution to the Subflow task run that started it."""

    execution_id: str
    task_run_id: str
    attempt: int
    outputs: dict[str, Any] | None = None  # the deprecated task-level outputs template
    wait: bool = True


@dataclass(slots=True)
class ReplayFrom:
    """What a replay goes on from: the replayed execution's last JSON (Kestra 1.x shape, with
    ``taskRunList``) and the task run it runs again (see :mod:`kestream.executor.replay`)."""

    snapshot: dict[str, Any]
    task_run_id: str

    @property
    def revision(self) -> int | None:
        """The flow revision the replayed execution ran (None if the snapshot lacks it)."""
        revision = self.snapshot.get("flowRevision")
        return revision if isinstance(revision, int) else None


@dataclass(slots=True)
class ExecutionCreated:
    """A new execution (CLI, API, trigger, Subflow, a retry that creates a new execution, or a
    replay: ``replay`` set when it goes on from a task run of the execution ``parent_id``)."""

    execution_id: str
    namespace: str
    flow_id: str
    revision: int | None = None
    inputs: dict[str, Any] | None = None
    validate_inputs: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    trigger: dict[str, Any] | None = None
    schedule_date: datetime | None = None
    original_id: str | None = None
    attempt_number: int = 1
    original_created: datetime | None = None
    parent: SubflowLink | None = None
    #: The execution this one replays (Kestra's ``parentId``).
    parent_id: str | None = None
    replay: ReplayFrom | None = None
    #: The execution a CREATE_NEW_EXECUTION retry replaces: its stored values (references in
    #: ``inputs``) are copied into this one's folder when it is created.
    retry_of: str | None = None


@dataclass(slots=True)
class WorkerResult:
    """The outcome of one attempt of a task run, from a worker."""

    execution_id: str
    task_run_id: str
    attempt: int
    state: StateType
    outputs: dict[str, Any] | None = None
    error: str | None = None
    #: ERROR-level lines the task logged, kept for ``errorLogs()``.
    error_logs: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Kill:
    """Kill the execution. ``attempt`` is the execution attempt (its restart counter) the
    sender saw: a kill of an older attempt, replayed after a restart, changes nothing. None
    (a subflow's parent, an older record) kills whatever attempt runs."""

    execution_id: str
    attempt: int | None = None


@dataclass(slots=True)
class Resume:
    """Resume paused task runs (all of them, or the one named) with ``onResume`` inputs.
    ``attempt``: as :class:`Kill`'s, so a replayed resume cannot resume a later attempt."""

    execution_id: str
    inputs: dict[str, Any] | None = None
    task_run_id: str | None = None
    attempt: int | None = None


@dataclass(slots=True)
class Restart:
    """Restart an ended execution in place: failed task runs get a new attempt.

    ``snapshot`` is the execution's last JSON (Kestra 1.x shape, with ``taskRunList``: what the
    execution-updates topic and the index hold). The executor rebuilds the state from it when it
    no longer has one (an ended execution left the state table); with the state at hand, a
    snapshot of another attempt than the state's marks a stale restart (already applied, or
    overtaken by another one), which changes nothing.
    """

    execution_id: str
    snapshot: dict[str, Any] | None = None


@dataclass(slots=True)
class Purge:
    """Delete what the installation keeps of an ended execution (a purge, ``DELETE``), if it is
    still the attempt that ended when the sender chose it.

    The sender (the API) chooses from its index, which may lag: the execution may have been
    restarted since. Going through the executor orders the purge with any restart of the same
    execution (one key, one partition): the executor refuses it while the execution runs or once
    a later attempt ended, and otherwise fences the attempt off (a restart from a snapshot of it
    is then ignored) and sends ``record``, the purge record every index applies
    (:mod:`kestream.api.index.purges`), to the logs topic.
    """

    execution_id: str
    attempt: int
    record: dict[str, Any]


@dataclass(slots=True)
class SubflowFinished:
    """A child execution started by a Subflow task ended (sent to the parent's key)."""

    execution_id: str
    task_run_id: str
    attempt: int
    child_id: str
    child_state: StateType
    outputs: dict[str, Any] | None = None
    error: str | None = None


@dataclass(slots=True)
class TimerFired:
    execution_id: str
    timer_id: str


@dataclass(slots=True)
class Admission:
    """The answer of the admission stream to an execution's request for a slot (flow
    concurrency, :mod:`kestream.executor.admission`): ``decision`` RUNNING (the slot is its
    own), QUEUED, CANCELLED or FAILED; ``at``, when the admission decided (the date the
    execution's state takes, so the histories show the order of the decisions)."""

    execution_id: str
    namespace: str
    flow_id: str
    attempt: int
    decision: StateType
    at: datetime


Event = (
    ExecutionCreated
    | WorkerResult
    | Kill
    | Resume
    | Restart
    | Purge
    | SubflowFinished
    | TimerFired
    | Admission
)
