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

A refused purge sends nothing; the API sees the execution move on in its index and reports it
as not purged. The fence lasts as long as the ended marker (its retention), far longer than an
index lags; past it, the index shows the execution deleted and the API refuses its restart.
"""

from __future__ import annotations

import logging
from datetime import datetime

from kestream.executor import events as ev
from kestream.executor.state import ExecutionState
from kestream.runtime import records
from kestream.runtime.ended_executions import EndedExecutions
from kestream.runtime.executor_outbox import Outbox

__all__ = ["PURGED", "apply_purge_event"]

log = logging.getLogger("kestream.executor")

#: The state the ended marker of a purged execution records.
PURGED = "PURGED"


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
    if state is not None:
        log.info("refusing a purge of %s: it runs again (restarted)", execution_id)
        return False
    marker = ended.get(execution_id)
    if marker is not None and marker.attempt > event.attempt:
        log.info(
            "refusing a purge of %s: attempt %d ended after the purged attempt %d",
            execution_id,
            marker.attempt,
            event.attempt,
        )
        return False
    key, value = ended.mark(execution_id, partition, PURGED, event.attempt + 1, now)
    out.log(key, value, partition)
    out.send(logs_topic, execution_id, records.dumps(event.record))
    return True
