"""The executor's side of a purge: delete an ended execution only if it is still the attempt the
API saw ended, and fence that attempt off so that no restart runs it again.

The API chooses what to purge (PurgeExecutions, ``DELETE .../executions/{id}``) from its index,
which may lag behind the executor: an execution the index still shows FAILED may have been
restarted already, or have a restart on its way. Deleting it then would tombstone an execution
that runs again (the index keeps a tombstone against every later update) and delete the files it
runs with. The API therefore sends the purge as an event on the executions topic, keyed like
every other event of the execution, so the executor sees it in order with any restart:

- the execution is in the state table (running, paused, restarted): the purge is refused;
- a later attempt than the purge's ended since: refused (the API's view was stale);
- otherwise the ended marker moves to the next attempt (a restart from a snapshot of the purged
  attempt is then stale and ignored, :func:`kestream.runtime.executor_service._stale_restart`)
  and the purge record goes to the logs topic, where every index applies it.

A refused purge sends the refusal to the logs topic instead (a purge record that deletes
nothing, ``{"purge": {"execution": false, "logs": null, "refused": true}}``, the shape of
:class:`kestream.api.index.purges.PurgeRecord`), so the API that waits learns either answer from
its feed, in the execution's partition. An execution whose ``afterExecution`` tasks still run is
refused too (it is still in the state table): the purge is tried again by the next one. The
fence lasts as long as the ended marker (its retention), far longer than an index lags; past it,
the index shows the execution deleted and the API refuses its restart.
"""

from __future__ import annotations

import logging
from datetime import datetime

from kestream.executor import events as ev
from kestream.executor.state import ExecutionState
from kestream.runtime import records
from kestream.runtime.ended_executions import EndedExecutions
from kestream.runtime.executor_outbox import Outbox

__all__ = ["PURGED", "REFUSAL", "apply_purge_event"]

log = logging.getLogger("kestream.executor")

#: The state the ended marker of a purged execution records.
PURGED = "PURGED"
#: What the executor answers to a purge it refuses (module docs).
REFUSAL = {"purge": {"execution": False, "logs": None, "refused": True}}


def apply_purge_event(
    event: ev.Purge,
    state: ExecutionState | None,
    ended: EndedExecutions,
    partition: int,
    now: datetime,
    logs_topic: str,
    out: Outbox,
) -> bool:
    """Stage the purge's records in ``out`` (module docs); False when it is refused."""
    execution_id = event.execution_id
    marker = ended.get(execution_id)
    why = None
    if state is not None:
        why = "it runs"
    elif marker is not None and marker.attempt > event.attempt:
        why = f"attempt {marker.attempt} ended since"
    if why is not None:
        log.info("refusing a purge of %s (attempt %d): %s", execution_id, event.attempt, why)
        out.send(logs_topic, execution_id, records.dumps(REFUSAL))
        return False
    key, value = ended.mark(execution_id, partition, PURGED, event.attempt + 1, now)
    out.log(key, value, partition)
    out.send(logs_topic, execution_id, records.dumps(event.record))
    return True
