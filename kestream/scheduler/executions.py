"""The execution a trigger starts: one shape for Schedule, Webhook and Flow triggers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kestream.executor.events import ExecutionCreated
from kestream.models.flow import Flow, FlowTrigger, ScheduleTrigger, WebhookTrigger


def trigger_execution(
    flow: Flow,
    trigger: ScheduleTrigger | WebhookTrigger | FlowTrigger,
    execution_id: str,
    variables: dict[str, Any],
    *,
    labels: dict[str, str] | None = None,
    schedule_date: datetime | None = None,
    inputs: dict[str, Any] | None = None,
) -> ExecutionCreated:
    """An execution of ``flow``'s revision, started by ``trigger`` with its ``variables``.

    The trigger's ``inputs`` (or ``inputs``, a backfill's merged over them) go as written: the
    executor renders them with the variables (``{{ trigger.body.name }}``), then applies the
    flow's input defaults and checks.
    """
    return ExecutionCreated(
        execution_id=execution_id,
        namespace=flow.namespace,
        flow_id=flow.id,
        revision=flow.revision,
        inputs=dict(trigger.inputs) if inputs is None else inputs,
        validate_inputs=True,
        labels=labels or {},
        trigger={"id": trigger.id, "type": trigger.type, "variables": variables},
        schedule_date=schedule_date,
    )
