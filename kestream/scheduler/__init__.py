"""The scheduler's pure engine: Schedule, Flow and Webhook triggers, no Kafka.

The runtime (``kestream.runtime``) runs the loop and owns the topics; everything here takes plain
values and returns plain values, so it is tested and benchmarked without a broker (W5).

- :class:`ScheduleBook` (:mod:`.schedules`): the Schedule triggers, their due-time index and
  what each tick fires; :class:`TriggerState` is the record kept per trigger.
- :func:`late_triggers` (:mod:`.monitor`): overdue triggers, for a loop of their own.
- :class:`FlowTriggerBook` (:mod:`.flow_triggers`): executions started by other executions.
- :func:`find_webhook`, :func:`webhook_execution` (:mod:`.webhooks`).
"""

from kestream.scheduler.cron import Cron, compile_cron, cron_for
from kestream.scheduler.due_index import DueIndex
from kestream.scheduler.flow_triggers import (
    DEFAULT_STATES,
    FlowTriggerBook,
    FlowTriggerResult,
    condition_holds,
    flow_trigger_event,
    trigger_accepts,
)
from kestream.scheduler.monitor import LateTrigger, late_triggers
from kestream.scheduler.preconditions import EndedExecution, PreconditionWindow
from kestream.scheduler.schedules import Fire, ScheduleBook, SyncResult
from kestream.scheduler.trigger_state import TriggerState, split_trigger_key, trigger_key
from kestream.scheduler.webhooks import find_webhook, parse_body, webhook_execution

__all__ = [
    "DEFAULT_STATES",
    "Cron",
    "DueIndex",
    "EndedExecution",
    "Fire",
    "FlowTriggerBook",
    "FlowTriggerResult",
    "LateTrigger",
    "PreconditionWindow",
    "ScheduleBook",
    "SyncResult",
    "TriggerState",
    "compile_cron",
    "condition_holds",
    "cron_for",
    "find_webhook",
    "flow_trigger_event",
    "late_triggers",
    "parse_body",
    "split_trigger_key",
    "trigger_accepts",
    "trigger_key",
    "webhook_execution",
]
