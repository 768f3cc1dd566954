"""A task's ``workerGroup``: which workers may run it, and what to do when none of them is up.

As in Kestra, ``key`` names the group (a plain string, not rendered) and ``fallback`` says what
happens to a task run dispatched while no worker of that group is alive:

- ``WAIT`` (the default): the job waits for a worker of the group to come;
- ``FAIL``: the task run fails, saying that no worker of the group is alive;
- ``CANCEL``: the task run ends KILLED without running.

A task without ``workerGroup`` runs on the default workers (those started without a group).
The key becomes part of a topic name (each group has its own jobs topic), so it is restricted to
letters, digits, ``_`` and ``-``: a flow with another key is refused when it is deployed.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from kestream.models.state import StateType

#: What a worker group key may be: a part of a Kafka topic name, without ``.`` (Kafka warns
#: that ``.`` and ``_`` collide in its metric names).
WORKER_GROUP_KEY_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"


class WorkerGroupFallback(StrEnum):
    """What happens to a task run dispatched while its worker group has no live worker."""

    WAIT = "WAIT"
    FAIL = "FAIL"
    CANCEL = "CANCEL"


class WorkerGroup(BaseModel):
    """A task's ``workerGroup`` property (see the module doc)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=WORKER_GROUP_KEY_PATTERN)
    fallback: WorkerGroupFallback = WorkerGroupFallback.WAIT


def no_worker_outcome(group: WorkerGroup) -> tuple[StateType, str] | None:
    """How a task run of ``group`` ends when it is dispatched while the group has no live
    worker: ``None`` to send the job anyway (``WAIT``), else its state and error message."""
    if group.fallback is WorkerGroupFallback.WAIT:
        return None
    why = f"no worker of worker group '{group.key}' is alive"
    if group.fallback is WorkerGroupFallback.FAIL:
        return StateType.FAILED, f"{why} (workerGroup.fallback: FAIL)"
    return StateType.KILLED, f"cancelled: {why} (workerGroup.fallback: CANCEL)"
