"""The triggers API's routes over an in-memory table and flow set, without a broker.

The table below keeps what the routes send as the record the scheduler would write (the same
:func:`~kestream.scheduler.commands.apply_to_state` the scheduler applies), so these tests check
what each route lists, refuses, counts and sends; the trip through the trigger-commands topic and
the scheduler is checked on a broker (tests/integration/test_triggers_api.py).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kestream.api.app import install_api
from kestream.api.handle import ApiHandle
from kestream.api.service import ApiService
from kestream.api.trigger_routes import CSV_COLUMNS, _definition_json
from kestream.api.webhook_keys import MASK
from kestream.models.flow import Flow, parse_flow
from kestream.runtime.context import BrokerContext
from kestream.runtime.triggers_table import TriggersTable
from kestream.scheduler.commands import TriggerCommand
from kestream.scheduler.trigger_state import TriggerState, trigger_key
from kestream.settings import Settings

SETTINGS = Settings(broker="127.0.0.1:1", tenant="main", api_max_body_bytes=4096)
T = "/api/v1/main/triggers"

ORDERS = """\
id: orders
namespace: company.team
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
triggers:
  - id: nightly
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 2 * * *"
    stopAfter: [FAILED]
  - id: hook
    type: io.kestra.plugin.core.trigger.Webhook
    key: secret-key-0001
  - id: upstream
    type: io.kestra.plugin.core.trigger.Flow
    states: [SUCCESS]
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionFlow
        namespace: company.team
        flowId: billing
"""
BILLING = """\
id: billing
namespace: company.other
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
triggers:
  - id: hourly
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 * * * *"
"""

NIGHTLY = trigger_key("company.team", "orders", "nightly")
HOURLY = trigger_key("company.other", "billing", "hourly")
LAST = datetime(2025, 1, 1, 2, tzinfo=UTC)
NEXT = datetime(2025, 1, 2, 2, tzinfo=UTC)


class Flows:
    """The deployed flows, as the API service answers them."""

    ready = True

    def __init__(self, *sources: str) -> None:
        self._flows = {(f.namespace, f.id): f for f in map(parse_flow, sources)}

    def flow(self, namespace: str, flow_id: str, revision: int | None = None) -> Flow | None:
        return self._flows.get((namespace, flow_id))

    def flows(self) -> list[Flow]:
        return list(self._flows.values())


class Table(TriggersTable):
    """The records, and each command sent, kept as the scheduler will record it."""

    def __init__(self, *states: TriggerState) -> None:
        super().__init__(cast(BrokerContext, None))
        self._states = {s.key: s for s in states}
        self.sent: list[TriggerCommand] = []

    async def send(self, command: TriggerCommand, predicted: TriggerState) -> None:
        self.sent.append(command)
        self._states[command.key] = predicted


def _records() -> Table:
    return Table(
        TriggerState(
            "company.team", "orders", "nightly", date=LAST, next_execution_date=NEXT,
            flow_revision=1, execution_id="exec-1",
        ),
        TriggerState("company.other", "billing", "hourly", next_execution_date=NEXT),
    )  # fmt: skip


@pytest.fixture
def table() -> Table:
    return _records()


@pytest.fixture
async def client(table: Table) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    handle = ApiHandle(SETTINGS, service=cast(ApiService, Flows(ORDERS, BILLING)), triggers=table)
    app = web.Application()
    install_api(app, handle)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


Client = TestClient[web.Request, web.Application]


async def _json(client: Client, method: str, path: str, **kwargs: Any) -> Any:
    reply = await client.request(method, path, **kwargs)
    assert reply.status == 200, (path, reply.status, await reply.text())
    return await reply.json()


# -- listing -----------------------------------------------------------------------------------


async def test_search_lists_every_kind_with_what_applies_to_it(client: Client) -> None:
    body = await _json(client, "GET", T + "/search?size=50")
    assert body["total"] == 4
    rows = {r["triggerContext"]["triggerId"]: r for r in body["results"]}
    assert list(rows) == ["hourly", "hook", "nightly", "upstream"]  # namespace, flow, trigger
    nightly = rows["nightly"]
    assert nightly["triggerContext"]["date"] == "2025-01-01T02:00:00Z"
    assert nightly["triggerContext"]["nextExecutionDate"] == "2025-01-02T02:00:00Z"
    assert nightly["triggerContext"]["stopAfter"] == ["FAILED"]
    assert nightly["abstractTrigger"]["cron"] == "0 2 * * *"
    hook = rows["hook"]
    assert hook["abstractTrigger"]["type"] == "io.kestra.plugin.core.trigger.Webhook"
    assert hook["abstractTrigger"]["key"] == MASK  # no credentials on this server
    assert hook["triggerContext"]["date"] is None
    assert hook["triggerContext"]["nextExecutionDate"] is None
    upstream = rows["upstream"]["abstractTrigger"]
    assert upstream["states"] == ["SUCCESS"]
    assert upstream["conditions"] == [
        {
            "type": "io.kestra.plugin.core.condition.ExecutionFlow",
            "namespace": "company.team",
            "flowId": "billing",
        }
    ]


async def test_search_filters_and_pages_every_kind(client: Client) -> None:
    team = await _json(client, "GET", T + "/search?filters[namespace][PREFIX]=company.team")
    assert {r["triggerContext"]["triggerId"] for r in team["results"]} == {
        "nightly", "hook", "upstream",
    }  # fmt: skip
    found = await _json(client, "GET", T + "/search?q=HOO")
    assert [r["triggerContext"]["triggerId"] for r in found["results"]] == ["hook"]
    second = await _json(client, "GET", T + "/search?size=3&page=2")
    assert second["total"] == 4
    assert [r["triggerContext"]["triggerId"] for r in second["results"]] == ["upstream"]
    refused = await client.get(T + "/search?filters[workerId][EQUALS]=w")
    assert refused.status == 400


async def test_a_flow_lists_and_gets_each_of_its_triggers(client: Client) -> None:
    body = await _json(client, "GET", T + "/company.team/orders")
    assert [r["triggerId"] for r in body["results"]] == ["hook", "nightly", "upstream"]
    hook = await _json(client, "GET", T + "/company.team/orders/hook")
    assert hook["disabled"] is False and hook["executionId"] is None
    assert (await client.get(T + "/company.team/orders/nope")).status == 404


async def test_csv_export_has_one_row_per_trigger_found(client: Client) -> None:
    reply = await client.get(T + "/export/by-query/csv?filters[flowId][EQUALS]=orders")
    assert reply.status == 200
    assert reply.content_type == "text/csv"
    assert "attachment" in reply.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(await reply.text())))
    assert tuple(rows[0]) == CSV_COLUMNS
    by_id = {row[2]: dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]}
    assert sorted(by_id) == ["hook", "nightly", "upstream"]
    assert by_id["nightly"]["nextExecutionDate"] == "2025-01-02T02:00:00Z"
    assert by_id["nightly"]["executionId"] == "exec-1"
    assert by_id["nightly"]["backfill"] == "false"
    assert by_id["hook"]["type"] == "io.kestra.plugin.core.trigger.Webhook"
    assert by_id["hook"]["date"] == ""


# -- changing ----------------------------------------------------------------------------------


async def test_restart_clears_the_lock_whether_held_or_not(client: Client, table: Table) -> None:
    body = await _json(client, "POST", T + "/company.team/orders/nightly/restart")
    assert body["executionId"] is None and body["nextExecutionDate"] == "2025-01-02T02:00:00Z"
    again = await _json(client, "POST", T + "/company.team/orders/nightly/restart")
    assert again["executionId"] is None  # never "not locked", unlike unlock
    assert [c.action for c in table.sent] == ["restart", "restart"]
    unlock = await client.post(T + "/company.team/orders/nightly/unlock")
    assert unlock.status == 409


async def test_delete_resets_the_record_for_the_scheduler_to_recreate(
    client: Client, table: Table
) -> None:
    reply = await client.delete(T + "/company.team/orders/nightly")
    assert reply.status == 204
    assert [(c.key, c.action) for c in table.sent] == [(NIGHTLY, "delete")]
    state = table.get(NIGHTLY)
    assert state is not None
    assert (state.date, state.execution_id, state.next_execution_date) == (None, None, None)
    assert (await client.delete(T + "/company.team/orders/gone")).status == 404


async def test_changes_to_a_trigger_without_state_are_refused_by_name(
    client: Client, table: Table
) -> None:
    for method, path in (
        ("DELETE", "/company.team/orders/hook"),
        ("POST", "/company.team/orders/upstream/restart"),
        ("POST", "/company.team/orders/hook/unlock"),
    ):
        reply = await client.request(method, T + path)
        assert reply.status == 409, path
        assert "only Schedule triggers" in (await reply.json())["message"]
    assert table.sent == []


async def test_set_disabled_by_ids_counts_the_schedules_it_changed(
    client: Client, table: Table
) -> None:
    triggers = [
        {"namespace": "company.team", "flowId": "orders", "triggerId": "nightly"},
        {"namespace": "company.team", "flowId": "orders", "triggerId": "hook"},
        {"namespace": "company.team", "flowId": "orders", "triggerId": "missing"},
    ]
    body = await _json(
        client, "POST", T + "/set-disabled", json={"triggers": triggers, "disabled": True}
    )
    assert body == {"count": 1}  # the Webhook keeps no state; the missing one is not counted
    state = table.get(NIGHTLY)
    assert state is not None and state.disabled and state.next_execution_date is None
    refused = await client.post(T + "/set-disabled", json={"triggers": [], "disabled": True})
    assert refused.status == 400


async def test_by_query_actions_change_only_what_the_query_finds(
    client: Client, table: Table
) -> None:
    query = "filters[namespace][EQUALS]=company.other"
    body = await _json(client, "POST", T + f"/set-disabled/by-query?disabled=true&{query}")
    assert body == {"count": 1}
    assert [c.key for c in table.sent] == [HOURLY]
    unlocked = await _json(client, "POST", T + "/unlock/by-query?filters[flowId][EQUALS]=orders")
    assert unlocked == {"count": 1}  # nightly held exec-1; the others keep no lock
    state = table.get(NIGHTLY)
    assert state is not None and state.execution_id is None
    none_left = await _json(client, "POST", T + "/unlock/by-query")
    assert none_left == {"count": 0}


async def test_put_set_disabled_changes_one_schedule_and_answers_its_record(
    client: Client, table: Table
) -> None:
    nightly = {"namespace": "company.team", "flowId": "orders", "triggerId": "nightly"}
    body = await _json(client, "PUT", T + "/set-disabled", json={**nightly, "disabled": True})
    assert body["triggerId"] == "nightly" and body["disabled"] is True
    assert body["nextExecutionDate"] is None
    enabled = await _json(client, "PUT", T + "/set-disabled", json={**nightly, "disabled": False})
    assert enabled["disabled"] is False
    recovering = {**nightly, "disabled": False, "recoverMissedSchedules": True}
    assert (await client.put(T + "/set-disabled", json=recovering)).status == 200
    assert [(c.key, c.action, c.recover) for c in table.sent] == [
        (NIGHTLY, "disable", False), (NIGHTLY, "enable", False), (NIGHTLY, "enable", True),
    ]  # fmt: skip

    hook = {**nightly, "triggerId": "hook", "disabled": True}
    for payload, status in (
        (hook, 409),  # a Webhook keeps no state
        ({**nightly, "triggerId": "gone", "disabled": True}, 404),
        (nightly, 400),  # no "disabled"
        ({**nightly, "disabled": "yes"}, 400),
        ({**nightly, "disabled": False, "recoverMissedSchedules": "yes"}, 400),
    ):
        reply = await client.put(T + "/set-disabled", json=payload)
        assert reply.status == status, (payload, await reply.text())
    assert len(table.sent) == 3


async def test_bulk_delete_resets_the_schedules_found_by_ids_or_by_query(
    client: Client, table: Table
) -> None:
    triggers = [
        {"namespace": "company.team", "flowId": "orders", "triggerId": "nightly"},
        {"namespace": "company.team", "flowId": "orders", "triggerId": "hook"},
        {"namespace": "company.team", "flowId": "orders", "triggerId": "missing"},
    ]
    body = await _json(client, "DELETE", T + "/delete/by-triggers", json=triggers)
    assert body == {"count": 1}  # the Webhook keeps no state; the missing one is not counted
    state = table.get(NIGHTLY)
    assert state is not None and (state.date, state.execution_id) == (None, None)
    assert [(c.key, c.action) for c in table.sent] == [(NIGHTLY, "delete")]

    other = {"field": "namespace", "operation": "EQUALS", "value": "company.other"}
    found = await _json(client, "DELETE", T + "/delete/by-query", json={"filters": [other]})
    assert found == {"count": 1}
    none = await _json(
        client, "DELETE", T + "/delete/by-query?filters[flowId][EQUALS]=orders",
        json={"filters": [other]},
    )  # fmt: skip
    assert none == {"count": 0}  # the query's filters and the body's both hold
    assert [c.key for c in table.sent] == [NIGHTLY, HOURLY]
    again = await _json(client, "DELETE", T + "/delete/by-triggers", json=[triggers[0]] * 3)
    assert again == {"count": 1}  # one trigger named three times: one command
    assert [c.key for c in table.sent] == [NIGHTLY, HOURLY, NIGHTLY]
    everything = await _json(client, "DELETE", T + "/delete/by-query")
    assert everything == {"count": 2}  # no filter: every Schedule trigger, as in Kestra
    assert [c.key for c in table.sent] == [NIGHTLY, HOURLY, NIGHTLY, HOURLY, NIGHTLY]

    for payload in (
        {"filters": [{"field": "workerId", "operation": "EQUALS", "value": "w"}]},
        {"filters": [{"field": "namespace"}]},
        {"filters": "company"},
        [other],
    ):
        reply = await client.delete(T + "/delete/by-query", json=payload)
        assert reply.status == 400, payload
    assert len(table.sent) == 5


async def test_a_backfill_whose_label_is_not_a_template_is_refused(
    client: Client, table: Table
) -> None:
    labels = [{"key": "slot", "value": "{{ trigger.date "}]
    body = {
        "namespace": "company.team", "flowId": "orders", "triggerId": "nightly",
        "backfill": {"start": "2025-01-01T00:00:00Z", "labels": labels},
    }  # fmt: skip
    reply = await client.put(T, json=body)
    assert reply.status == 400
    assert "backfill label 'slot' is not a valid template" in (await reply.json())["message"]
    assert table.sent == []


def test_a_webhook_key_is_shown_to_an_authenticated_caller_only() -> None:
    hook = next(t for t in parse_flow(ORDERS).triggers if t.id == "hook")
    assert _definition_json(hook, show_keys=True)["key"] == "secret-key-0001"
    assert _definition_json(hook, show_keys=False)["key"] == MASK


async def test_a_schedule_shows_once_the_scheduler_has_written_its_record() -> None:
    unrecorded = Table(TriggerState("company.other", "billing", "hourly"))  # no nightly yet
    handle = ApiHandle(
        SETTINGS, service=cast(ApiService, Flows(ORDERS, BILLING)), triggers=unrecorded
    )
    app = web.Application()
    install_api(app, handle)
    async with TestClient(TestServer(app)) as client:
        body = await _json(client, "GET", T + "/search")
        ids = [r["triggerContext"]["triggerId"] for r in body["results"]]
        assert ids == ["hourly", "hook", "upstream"]
        assert (await client.get(T + "/company.team/orders/nightly")).status == 404


PAUSED_FLOW = """\
id: paused
namespace: company.off
disabled: true
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
triggers:
  - id: hourly
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 * * * *"
  - id: hook
    type: io.kestra.plugin.core.trigger.Webhook
    key: secret-key-0002
"""
OFF_TRIGGER = """\
id: quiet
namespace: company.off
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
triggers:
  - id: never
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 * * * *"
    disabled: true
"""


async def test_triggers_their_flow_disables_are_listed_disabled_without_a_next_date() -> None:
    """The scheduler plans nothing for them: one it never planned has no record (listed all
    the same), one planned before the flow disabled it keeps a stale next date (not shown)."""
    planned_before = TriggerState(
        "company.off", "paused", "hourly", next_execution_date=NEXT, date=LAST
    )
    table = Table(planned_before)
    handle = ApiHandle(
        SETTINGS, service=cast(ApiService, Flows(PAUSED_FLOW, OFF_TRIGGER)), triggers=table
    )
    app = web.Application()
    install_api(app, handle)
    async with TestClient(TestServer(app)) as client:
        body = await _json(client, "GET", T + "/search?filters[namespace][EQUALS]=company.off")
        contexts = {r["triggerContext"]["triggerId"]: r["triggerContext"] for r in body["results"]}
        assert sorted(contexts) == ["hook", "hourly", "never"]
        assert all(c["disabled"] is True for c in contexts.values())
        assert all(c["nextExecutionDate"] is None for c in contexts.values())
        assert contexts["hourly"]["date"] == "2025-01-01T02:00:00Z"  # the last fire, kept

        # A change to the record answers it as a read lists it; without a record: 409.
        unlock = await _json(client, "POST", T + "/company.off/paused/hourly/restart")
        assert unlock["disabled"] is True and unlock["nextExecutionDate"] is None
        refused = await client.post(T + "/company.off/quiet/never/restart")
        assert refused.status == 409
        assert "disabled in its flow" in (await refused.json())["message"]
        assert [c.action for c in table.sent] == ["restart"]
