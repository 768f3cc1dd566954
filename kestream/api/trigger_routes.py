"""The triggers API (Kestra 1.x paths and shapes), on the trigger records of the triggers topic.

Reads list every trigger of every deployed flow, whatever its kind. A Schedule trigger answers
with its record from the :class:`~kestream.runtime.triggers_table.TriggersTable` (``date``: the
last slot fired, ``nextExecutionDate``, its backfill); the other kinds (Flow, Webhook) keep no
record in kestream (they fire on events, never on time), so their context carries only who they
are and ``disabled`` as the flow declares it, while ``abstractTrigger`` shows their definition:
a Flow trigger's ``conditions``, ``preconditions`` and ``states``, a Webhook's ``key`` masked for
a caller without credentials as the flow routes mask it. Changes apply to Schedule triggers only
(a bulk action skips the others; a single one answers 409 naming why). They go to the scheduler
as commands (:mod:`kestream.scheduler.commands`), which alone writes trigger records; the answer
is the record as it will be once applied, computed by the same function the scheduler applies,
and a later read shows it once the scheduler has written it.

- ``GET .../triggers/search``: ``{results: [{abstractTrigger, triggerContext}], total}``,
  filtered by ``namespace`` (and its children), ``flowId``, ``triggerId`` or ``q``, as
  ``filters[field][OPERATION]=`` or the older plain parameters; ``GET
  .../triggers/export/by-query/csv``: the same rows as CSV;
- ``GET .../triggers/{namespace}/{flowId}``: the flow's ``{results: [Trigger], total}``;
  ``GET .../triggers/{namespace}/{flowId}/{triggerId}``: one ``Trigger``;
- ``POST .../triggers/{namespace}/{flowId}/{triggerId}/restart``: clears the execution the
  trigger holds, locked or not (Kestra restarts a trigger stuck or failed that way);
  ``DELETE .../triggers/{namespace}/{flowId}/{triggerId}``: drops the record's state (last fire,
  backfill, disabled, lock); the scheduler recreates it from the flow, next slot from now (204);
- ``PUT .../triggers``: a ``Trigger`` body; with ``backfill`` it sets a backfill (``end``
  defaults to now), without it sets ``disabled`` (absent: false, as Kestra);
- ``PUT .../triggers/set-disabled``: one trigger (``{namespace, flowId, triggerId,
  disabled, recoverMissedSchedules}``), answered with the ``Trigger`` as it will be; enabled,
  it starts at its next slot, or with ``recoverMissedSchedules: true`` also fires the slots
  missed since its last fire, as its own ``recoverMissedSchedules`` says;
- ``POST .../triggers/set-disabled`` and ``/set-disabled/by-triggers`` (``{triggers,
  disabled}``), ``/set-disabled/by-query`` (``?disabled=``): ``{count}``;
- ``DELETE .../triggers/delete/by-triggers`` (a list of triggers) and ``/delete/by-query``
  (the search's filters in the query, or ``{"filters": [{field, operation, value}]}`` as the
  body): each trigger's state deleted as ``DELETE .../{triggerId}`` does; ``{count}``;
- ``POST .../triggers/{namespace}/{flowId}/{triggerId}/unlock``, ``/unlock/by-triggers``,
  ``/unlock/by-query``: kestream never holds a trigger while its execution runs, so unlocking
  clears the recorded ``executionId`` and nothing else; 409 "Trigger is not locked" without one;
- ``PUT .../triggers/backfill/pause`` and ``/unpause``, ``POST .../triggers/backfill/delete``
  (400 "No backfill found" without one), each also ``/by-triggers`` (a list) and ``/by-query``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from kestream.api.guard import authenticated
from kestream.api.handle import ApiHandle
from kestream.api.http import (
    ApiError,
    bad_request,
    json_response,
    not_found,
    query_flag,
    query_int,
    read_body,
)
from kestream.api.webhook_keys import MASK
from kestream.models.clock import utc_now
from kestream.models.flow import Flow, ScheduleTrigger, Trigger, WebhookTrigger
from kestream.models.ids import new_id
from kestream.models.values import UnportableValue, loads_json
from kestream.runtime.triggers_table import TriggersTable
from kestream.scheduler.backfill import Backfill, BackfillError
from kestream.scheduler.commands import Action, CommandError, TriggerCommand, apply_to_state
from kestream.scheduler.trigger_state import TriggerState, split_trigger_key, trigger_key

PREFIX = "/api/v1/{tenant}/triggers"

_FILTER = re.compile(r"filters\[(\w+)\]\[(\w+)\]")


class TriggerRoutes:
    def __init__(self, api: ApiHandle) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        backfill = PREFIX + "/backfill"
        return [
            web.get(PREFIX + "/search", self.search),
            web.get(PREFIX + "/export/by-query/csv", self.export_csv),
            web.put(PREFIX, self.update),
            web.put(PREFIX + "/set-disabled", self.set_disabled),
            web.post(PREFIX + "/set-disabled", self.disable_by_triggers),
            web.post(PREFIX + "/set-disabled/by-triggers", self.disable_by_triggers),
            web.post(PREFIX + "/set-disabled/by-query", self.disable_by_query),
            web.delete(PREFIX + "/delete/by-triggers", self.delete_triggers_by_ids),
            web.delete(PREFIX + "/delete/by-query", self.delete_triggers_by_query),
            web.post(PREFIX + "/unlock/by-triggers", self.unlock_by_triggers),
            web.post(PREFIX + "/unlock/by-query", self.unlock_by_query),
            web.put(backfill + "/pause", self.pause_backfill),
            web.put(backfill + "/unpause", self.unpause_backfill),
            web.post(backfill + "/delete", self.delete_backfill),
            web.post(backfill + "/pause/by-triggers", self.pause_by_triggers),
            web.post(backfill + "/pause/by-query", self.pause_by_query),
            web.post(backfill + "/unpause/by-triggers", self.unpause_by_triggers),
            web.post(backfill + "/unpause/by-query", self.unpause_by_query),
            web.post(backfill + "/delete/by-triggers", self.delete_by_triggers),
            web.post(backfill + "/delete/by-query", self.delete_by_query),
            web.get(PREFIX + "/{namespace}/{flowId}", self.list_flow),
            web.get(PREFIX + "/{namespace}/{flowId}/{triggerId}", self.get),
            web.delete(PREFIX + "/{namespace}/{flowId}/{triggerId}", self.delete),
            web.post(PREFIX + "/{namespace}/{flowId}/{triggerId}/unlock", self.unlock),
            web.post(PREFIX + "/{namespace}/{flowId}/{triggerId}/restart", self.restart),
        ]

    # -- reading ------------------------------------------------------------------------------

    async def search(self, request: web.Request) -> web.Response:
        """Search for triggers of every kind: each with its definition and its context."""
        rows = self._rows(request, self._matching(request))
        page = query_int(request, "page", 1, low=1, high=1_000_000)
        size = query_int(request, "size", 10, low=1, high=1000)
        start = (page - 1) * size
        show_keys = authenticated(request)
        results = [
            {
                "abstractTrigger": _definition_json(trigger, show_keys=show_keys),
                "triggerContext": self._json(state, trigger),
            }
            for state, trigger in rows[start : start + size]
        ]
        return json_response({"results": results, "total": len(rows)})

    async def export_csv(self, request: web.Request) -> web.Response:
        """The triggers a query finds, one CSV row each (every page), for a spreadsheet."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for state, trigger in self._rows(request, self._matching(request)):
            body = self._json(state, trigger)
            row = {**body, "type": trigger.type, "backfill": state.backfill is not None}
            writer.writerow(_csv_cell(row[column]) for column in CSV_COLUMNS)
        return web.Response(
            text=out.getvalue(),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="triggers.csv"'},
        )

    async def list_flow(self, request: web.Request) -> web.Response:
        """Get all triggers for a flow, of every kind."""
        namespace, flow_id = request.match_info["namespace"], request.match_info["flowId"]
        rows = self._rows(request, lambda _: True, (namespace, flow_id))
        page = query_int(request, "page", 1, low=1, high=1_000_000)
        size = query_int(request, "size", 100, low=1, high=1000)
        start = (page - 1) * size
        results = [self._json(s, t) for s, t in rows[start : start + size]]
        return json_response({"results": results, "total": len(rows)})

    async def get(self, request: web.Request) -> web.Response:
        """Get a trigger, of any kind."""
        key = _path_key(request)
        info = request.match_info
        rows = self._rows(request, lambda s: s.key == key, (info["namespace"], info["flowId"]))
        if not rows:
            raise not_found(f"Trigger '{key}'")
        return json_response(self._json(*rows[0]))

    # -- changing -----------------------------------------------------------------------------

    async def update(self, request: web.Request) -> web.Response:
        """Update a trigger: set a backfill, or enable or disable it."""
        table = self._table(request)
        body = await self._body(request)
        key = _body_key(body)
        state = self._state(table, key)
        if body.get("backfill") is not None:
            try:
                backfill = Backfill.requested(
                    body["backfill"], backfill_id=new_id(), now=utc_now(),
                    next_execution_date=state.next_execution_date,
                )  # fmt: skip
            except BackfillError as exc:
                raise bad_request(str(exc)) from None
            command = TriggerCommand(key, "set-backfill", backfill)
        else:
            command = TriggerCommand(key, "disable" if body.get("disabled") else "enable")
        return json_response(self._json(await self._send(table, state, command)))

    async def set_disabled(self, request: web.Request) -> web.Response:
        """Disable or enable one trigger."""
        table = self._table(request)
        body = await self._body(request)
        key = _body_key(body)
        disabled = body.get("disabled")
        if not isinstance(disabled, bool):
            raise bad_request(
                'expected {"namespace", "flowId", "triggerId", "disabled": true|false}'
            )
        recover = body.get("recoverMissedSchedules")
        if recover is not None and not isinstance(recover, bool):
            raise bad_request("'recoverMissedSchedules' must be true or false")
        state = self._state(table, key)
        command = (
            TriggerCommand(key, "disable")
            if disabled
            else TriggerCommand(key, "enable", recover=bool(recover))
        )
        return json_response(self._json(await self._send(table, state, command)))

    async def disable_by_triggers(self, request: web.Request) -> web.Response:
        """Disable or enable the given triggers."""
        table = self._table(request)
        body = await self._body(request)
        triggers, disabled = body.get("triggers"), body.get("disabled")
        if not isinstance(triggers, list) or not triggers or not isinstance(disabled, bool):
            raise bad_request('expected {"triggers": [Trigger, ...], "disabled": true|false}')
        action: Action = "disable" if disabled else "enable"
        keys = [_body_key(item) for item in triggers]
        return await self._bulk(table, keys, action)

    async def disable_by_query(self, request: web.Request) -> web.Response:
        """Disable or enable the triggers a query finds (``disabled``, default true)."""
        action: Action = "disable" if query_flag(request, "disabled", True) else "enable"
        return await self._bulk_by_query(request, action)

    async def unlock(self, request: web.Request) -> web.Response:
        """Unlock a trigger (clears the execution it recorded)."""
        table = self._table(request)
        key = _path_key(request)
        state = self._state(table, key)
        return json_response(
            self._json(await self._send(table, state, TriggerCommand(key, "unlock")))
        )

    async def restart(self, request: web.Request) -> web.Response:
        """Restart a trigger: clear the execution it holds, whether it holds one or not."""
        table = self._table(request)
        key = _path_key(request)
        state = self._state(table, key)
        return json_response(
            self._json(await self._send(table, state, TriggerCommand(key, "restart")))
        )

    async def delete(self, request: web.Request) -> web.Response:
        """Delete a trigger's state; the scheduler recreates it from the flow (204)."""
        table = self._table(request)
        key = _path_key(request)
        state = self._state(table, key)
        await self._send(table, state, TriggerCommand(key, "delete"))
        return web.Response(status=204)

    async def delete_triggers_by_ids(self, request: web.Request) -> web.Response:
        """Delete the state of the given triggers (the scheduler recreates each from its flow)."""
        return await self._bulk_by_triggers(request, "delete")

    async def delete_triggers_by_query(self, request: web.Request) -> web.Response:
        """Delete the state of the triggers a query finds: the search's filters in the query
        string, in the body (``{"filters": [{field, operation, value}]}``), or both."""
        return await self._bulk_by_query(request, "delete", await self._body_filter(request))

    async def unlock_by_triggers(self, request: web.Request) -> web.Response:
        """Unlock the given triggers (those not locked are not counted)."""
        return await self._bulk_by_triggers(request, "unlock")

    async def unlock_by_query(self, request: web.Request) -> web.Response:
        """Unlock the triggers a query finds."""
        return await self._bulk_by_query(request, "unlock")

    async def pause_backfill(self, request: web.Request) -> web.Response:
        """Pause a backfill."""
        return await self._one_backfill(request, "pause-backfill")

    async def unpause_backfill(self, request: web.Request) -> web.Response:
        """Unpause a backfill."""
        return await self._one_backfill(request, "unpause-backfill")

    async def delete_backfill(self, request: web.Request) -> web.Response:
        """Delete a backfill."""
        return await self._one_backfill(request, "delete-backfill")

    async def pause_by_triggers(self, request: web.Request) -> web.Response:
        """Pause the backfills of the given triggers."""
        return await self._bulk_by_triggers(request, "pause-backfill")

    async def pause_by_query(self, request: web.Request) -> web.Response:
        """Pause the backfills of the triggers a query finds."""
        return await self._bulk_by_query(request, "pause-backfill")

    async def unpause_by_triggers(self, request: web.Request) -> web.Response:
        """Unpause the backfills of the given triggers."""
        return await self._bulk_by_triggers(request, "unpause-backfill")

    async def unpause_by_query(self, request: web.Request) -> web.Response:
        """Unpause the backfills of the triggers a query finds."""
        return await self._bulk_by_query(request, "unpause-backfill")

    async def delete_by_triggers(self, request: web.Request) -> web.Response:
        """Delete the backfills of the given triggers."""
        return await self._bulk_by_triggers(request, "delete-backfill")

    async def delete_by_query(self, request: web.Request) -> web.Response:
        """Delete the backfills of the triggers a query finds."""
        return await self._bulk_by_query(request, "delete-backfill")

    # -- helpers ------------------------------------------------------------------------------

    def _table(self, request: web.Request) -> TriggersTable:
        self.api.service_for(request)  # the tenant, and a service that is ready
        table = self.api.triggers
        if table is None:
            raise ApiError(503, "The triggers table is starting; try again shortly")
        return table

    def _state(self, table: TriggersTable, key: str) -> TriggerState:
        """The record a change applies to: a deployed Schedule trigger's (404 for an unknown
        trigger, 409 for a kind kestream keeps no record of)."""
        trigger = self._trigger(*split_trigger_key(key))
        if trigger is not None and not isinstance(trigger, ScheduleTrigger):
            kind = trigger.type.rsplit(".", 1)[-1]
            raise ApiError(
                409,
                f"Illegal state: trigger '{key}' is a {kind} trigger, which keeps no state in "
                "kestream (only Schedule triggers do); enable or disable it in the flow "
                "('disabled: true')",
            )
        state = table.get(key)
        if state is None and trigger is not None and self._declared_off(_blank(key)):
            raise ApiError(
                409,
                f"Illegal state: trigger '{key}' is disabled in its flow ('disabled: true' on "
                "the trigger or the flow), so the scheduler keeps no state for it; enable it "
                "in the flow",
            )
        if state is None or trigger is None:
            raise not_found(f"Trigger '{key}'")
        return state

    def _declared_off(self, state: TriggerState) -> bool:
        """Whether the deployed flow disables the trigger (or itself): then the trigger fires
        nothing, whatever its record says."""
        flow = self.api.get().flow(state.namespace, state.flow_id)
        trigger = None if flow is None else _find(flow, state.trigger_id)
        return flow is not None and trigger is not None and (flow.disabled or trigger.disabled)

    def _trigger(self, namespace: str, flow_id: str, trigger_id: str) -> Trigger | None:
        """The trigger in its deployed flow (None: the flow or the trigger is gone)."""
        flow = self.api.get().flow(namespace, flow_id)
        return None if flow is None else _find(flow, trigger_id)

    def _schedule(self, state: TriggerState) -> ScheduleTrigger | None:
        trigger = self._trigger(state.namespace, state.flow_id, state.trigger_id)
        return trigger if isinstance(trigger, ScheduleTrigger) else None

    def _matching(self, request: web.Request) -> Callable[[TriggerState], bool]:
        return _trigger_filter(request)

    def _rows(
        self,
        request: web.Request,
        match: Callable[[TriggerState], bool],
        flow: tuple[str, str] | None = None,
    ) -> list[tuple[TriggerState, Trigger]]:
        """Every trigger of the deployed flows (or of the one ``flow`` names) ``match`` keeps,
        with its context: a Schedule trigger's record (left out until the scheduler has
        written it, so a change is never answered 404 for a trigger just listed), otherwise a
        blank context; sorted by namespace, flow and trigger. A trigger its flow disables (on
        the trigger or the whole flow) is listed ``disabled``, without a next date: the
        scheduler plans nothing for it (and writes no record for one it never planned)."""
        table = self._table(request)
        service = self.api.get()
        flows = service.flows() if flow is None else [service.flow(*flow)]
        rows: list[tuple[TriggerState, Trigger]] = []
        for flow_ in flows:
            if flow_ is None or flow_.deleted:
                continue
            for trigger in flow_.triggers:
                off = flow_.disabled or trigger.disabled
                blank = TriggerState(
                    flow_.namespace, flow_.id, trigger.id,
                    flow_revision=flow_.revision, disabled=off,
                )  # fmt: skip
                state: TriggerState | None = blank
                if isinstance(trigger, ScheduleTrigger):
                    state = table.get(blank.key)
                    if off:
                        state = _switched_off(state or blank)
                if state is not None and match(state):
                    rows.append((state, trigger))
        rows.sort(key=lambda row: (row[0].namespace, row[0].flow_id, row[0].trigger_id))
        return rows

    async def _send(
        self, table: TriggersTable, state: TriggerState, command: TriggerCommand
    ) -> TriggerState:
        """Send ``command``; the record as it will be (409/400 when it does not apply)."""
        try:
            changed = apply_to_state(state, command)
        except CommandError as exc:
            if command.action == "unlock":  # Kestra's IllegalStateException
                raise ApiError(409, f"Illegal state: {exc}") from None
            raise bad_request(str(exc)) from None
        await table.send(command, changed)
        return changed

    async def _bulk_by_triggers(self, request: web.Request, action: Action) -> web.Response:
        table = self._table(request)
        return await self._bulk(table, await self._body_keys(request), action)

    async def _bulk_by_query(
        self,
        request: web.Request,
        action: Action,
        also: Callable[[TriggerState], bool] | None = None,
    ) -> web.Response:
        """``action`` on the triggers the query's filters find (and ``also`` keeps)."""
        table = self._table(request)
        match = self._matching(request)
        rows = self._rows(request, match if also is None else lambda s: match(s) and also(s))
        keys = [state.key for state, trigger in rows if isinstance(trigger, ScheduleTrigger)]
        return await self._bulk(table, keys, action)

    async def _bulk(self, table: TriggersTable, keys: list[str], action: Action) -> web.Response:
        """Apply ``action`` to each trigger it applies to; ``{count}`` of those. A trigger
        named twice in a list is sent one command and counted once."""
        count = 0
        for key in dict.fromkeys(keys):
            state = table.get(key)
            if state is None or self._schedule(state) is None:
                continue  # unknown, or a kind kestream keeps no record of
            command = TriggerCommand(key, action)
            try:
                changed = apply_to_state(state, command)
            except CommandError:
                continue  # a bulk action skips what it does not apply to, as Kestra's
            await table.send(command, changed)
            count += 1
        return json_response({"count": count})

    async def _one_backfill(self, request: web.Request, action: Action) -> web.Response:
        table = self._table(request)
        key = _body_key(await self._body(request))
        state = self._state(table, key)
        return json_response(
            self._json(await self._send(table, state, TriggerCommand(key, action)))
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        value = await self._json_body(request)
        if not isinstance(value, dict):
            raise bad_request("expected a JSON object (a Trigger)")
        return value

    async def _body_filter(self, request: web.Request) -> Callable[[TriggerState], bool]:
        """The filters a request body gives (``{"filters": [{field, operation, value}]}``, the
        JSON form of the query's ``filters[field][OPERATION]=value``); no body, no filter."""
        if not request.body_exists:
            return lambda _: True
        value = await self._json_body(request)
        filters = value.get("filters") if isinstance(value, dict) else None
        if not isinstance(value, dict) or not isinstance(filters, list | None):
            raise bad_request('expected {"filters": [{"field", "operation", "value"}, ...]}')
        tests = []
        for item in filters or []:
            parts = [item.get(k) if isinstance(item, dict) else None
                     for k in ("field", "operation", "value")]  # fmt: skip
            if not all(isinstance(part, str) for part in parts):
                raise bad_request(f"a filter needs text 'field', 'operation' and 'value': {item}")
            field, op, text = (str(part) for part in parts)
            tests.append(_trigger_test(f"filters[{field}][{op}]", field, op, text))
        return lambda state: all(test(state) for test in tests)

    async def _body_keys(self, request: web.Request) -> list[str]:
        value = await self._json_body(request)
        if not isinstance(value, list):
            raise bad_request("expected a JSON list of triggers")
        return [_body_key(item) for item in value]

    async def _json_body(self, request: web.Request) -> Any:
        raw = await read_body(request, self.api.max_body)
        try:
            return loads_json(raw, "trigger")
        except UnportableValue as exc:
            raise ApiError(422, f"Invalid entity: {exc}") from None
        except ValueError as exc:
            raise ApiError(422, f"Invalid json: {exc}") from None

    def _json(self, state: TriggerState, trigger: Trigger | None = None) -> dict[str, Any]:
        """Kestra's ``Trigger``: the trigger context with what the scheduler recorded."""
        if trigger is None:
            trigger = self._trigger(state.namespace, state.flow_id, state.trigger_id)
        if not state.disabled and self._declared_off(state):
            state = _switched_off(state)  # an answer to a change, as a read would list it
        return {
            "tenantId": self.api.settings.tenant,
            "namespace": state.namespace,
            "flowId": state.flow_id,
            "triggerId": state.trigger_id,
            "flowRevision": state.flow_revision,
            "date": _iso(state.date),
            "nextExecutionDate": _iso(state.next_execution_date),
            "backfill": None if state.backfill is None else state.backfill.to_dict(with_id=False),
            "stopAfter": None if trigger is None else trigger.stopAfter,
            "disabled": state.disabled,
            "executionId": state.execution_id,
            "evaluateRunningDate": None,
            "workerId": None,
        }


def _switched_off(state: TriggerState) -> TriggerState:
    """``state`` as shown for a trigger its flow disables: nothing is owed."""
    return state.evolve(disabled=True, next_execution_date=None)


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


#: The CSV export's columns, in order: the ``Trigger`` fields a spreadsheet reader sorts on.
CSV_COLUMNS = (
    "namespace", "flowId", "triggerId", "type", "date", "nextExecutionDate", "disabled",
    "executionId", "backfill",
)  # fmt: skip


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _definition_json(trigger: Trigger, *, show_keys: bool) -> dict[str, Any]:
    """The trigger as the flow declares it (``abstractTrigger``); a Webhook's key masked unless
    the caller is authenticated, as the flow routes answer it."""
    body = trigger.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(trigger, WebhookTrigger) and not show_keys:
        body["key"] = MASK
    return body


def _blank(key: str) -> TriggerState:
    return TriggerState(*split_trigger_key(key))


def _find(flow: Flow, trigger_id: str) -> Trigger | None:
    return next((t for t in flow.triggers if t.id == trigger_id), None)


def _path_key(request: web.Request) -> str:
    info = request.match_info
    return trigger_key(info["namespace"], info["flowId"], info["triggerId"])


def _body_key(body: Any) -> str:
    """The trigger a ``Trigger`` body names (``namespace``, ``flowId``, ``triggerId``)."""
    if not isinstance(body, dict):
        raise bad_request("expected a Trigger object")
    parts = [body.get(name) for name in ("namespace", "flowId", "triggerId")]
    if not all(isinstance(part, str) and part and "/" not in part for part in parts):
        raise bad_request("a Trigger needs 'namespace', 'flowId' and 'triggerId'")
    namespace, flow_id, trigger_id = (str(part) for part in parts)
    return trigger_key(namespace, flow_id, trigger_id)


def _trigger_filter(request: web.Request) -> Callable[[TriggerState], bool]:
    """The search's filters as one predicate; a filter it cannot apply is refused (400) rather
    than ignored, which would widen what a bulk action changes."""
    tests: list[Callable[[TriggerState], bool]] = []
    for name, value in request.query.items():
        found = _FILTER.fullmatch(name)
        field, op = found.groups() if found else (name, "LEGACY")
        if found is None and name not in ("namespace", "flowId", "q"):
            continue  # page, size, sort, disabled and the like
        tests.append(_trigger_test(name, field, op, value))
    return lambda state: all(test(state) for test in tests)


def _trigger_test(name: str, field: str, op: str, value: str) -> Callable[[TriggerState], bool]:
    text = value.lower()
    if field == "namespace" and op in ("PREFIX", "STARTS_WITH", "LEGACY"):
        return lambda s: s.namespace == value or s.namespace.startswith(value + ".")
    if field == "namespace" and op == "EQUALS":
        return lambda s: s.namespace == value
    if field == "flowId" and op in ("EQUALS", "LEGACY"):
        return lambda s: s.flow_id == value
    if field == "triggerId" and op == "EQUALS":
        return lambda s: s.trigger_id == value
    if field == "q" and op in ("EQUALS", "LEGACY"):
        return lambda s: any(
            text in part.lower() for part in (s.namespace, s.flow_id, s.trigger_id)
        )
    raise bad_request(f"Invalid query filters: '{name}' is not supported by the trigger search")
