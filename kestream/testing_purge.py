"""The purger of :class:`kestream.testing.Driver`: PurgeExecutions and PurgeLogs in memory.

Broker-free, the driver itself keeps every execution and its log lines; the purge tasks it runs
delete from there, with the same filters the API's index applies (:mod:`kestream.tasks.purge`).
A purged execution leaves the driver and its executor, as an ended execution leaves the
executor's state on a broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kestream.storage.current import remove_execution_files
from kestream.tasks.purge import ExecutionPurge, ExecutionPurgeCounts, LogPurge

if TYPE_CHECKING:
    from kestream.testing import Driver


class DriverPurger:
    """Deletes from a driver's executions and lines (module docs)."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    async def purge_executions(self, query: ExecutionPurge) -> ExecutionPurgeCounts:
        driver = self.driver
        counts = ExecutionPurgeCounts()
        for st in list(driver.states.values()):
            history = st.state.history
            end = history[-1][1] if st.terminal else None
            if not query.matches(st.namespace, st.flow_id, st.state.current, st.state.start, end):
                continue
            if query.purgeLog:
                counts.logsCount += len(driver._logs.pop(st.id, []))
            if query.purgeStorage:
                counts.storagesCount += remove_execution_files(st.namespace, st.flow_id, st.id)
            if query.purgeExecution:
                counts.executionsCount += 1
                del driver.states[st.id]
                driver.executor.forget(st.id)
        return counts

    async def purge_logs(self, query: LogPurge) -> int:
        driver = self.driver
        count = 0
        for execution_id, lines in list(driver._logs.items()):
            st = driver.states.get(execution_id)
            if st is None or not query.execution_matches(execution_id, st.namespace, st.flow_id):
                continue
            kept = [line for line in lines if not query.line_matches(line.level, line.timestamp)]
            count += len(lines) - len(kept)
            driver._logs[execution_id] = kept
        return count
