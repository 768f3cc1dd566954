"""The triggers API and Schedule backfills through a real ``kestream standalone`` over HTTP.

Backfills are paced at one slot per tick here (``KESTREAM_SCHEDULER_BACKFILL_SLOTS=1``, a tick
of 200 ms), so a pause sent right after a backfill can land while it runs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import quote

import pytest
from api_stack import Stack, start_stack

pytestmark = pytest.mark.integration

WAIT_S = 90.0


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"it.triggers.{uuid.uuid4().hex[:10]}."
    env = {"KESTREAM_SCHEDULER_BACKFILL_SLOTS": "1"}
    yield from start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("triggers"), env)


def _flow(ns: str, flow_id: str, cron: str, *, seconds: bool = False) -> str:
    return f"""
id: {flow_id}
namespace: {ns}
inputs:
  - id: day
    type: STRING
    defaults: regular
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ inputs.day }}}} {{{{ trigger.date }}}}"
triggers:
  - id: schedule
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "{cron}"
    withSeconds: {"true" if seconds else "false"}
"""


def _until(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not seen in {timeout:.0f} s (last: {last!r})")


def _trigger(stack: Stack, ns: str, flow_id: str) -> dict[str, Any] | None:
    reply = stack.get(f"/triggers/{ns}/{flow_id}/schedule")
    return reply.json() if reply.status == 200 else None


def _key(ns: str, flow_id: str) -> dict[str, str]:
    return {"namespace": ns, "flowId": flow_id, "triggerId": "schedule"}


def _executions(stack: Stack, ns: str, flow_id: str, label: str) -> list[dict[str, Any]]:
    key, value = label.split(":")
    query = (
        f"filters[namespace][EQUALS]={ns}&filters[flowId][EQUALS]={flow_id}"
        f"&{quote(f'filters[labels][EQUALS][{key}]')}={value}&size=500"
    )
    return list(stack.get("/executions/search?" + query).json()["results"])


def _slot_dates(executions: list[dict[str, Any]]) -> Counter[datetime]:
    return Counter(datetime.fromisoformat(e["trigger"]["variables"]["date"]) for e in executions)


def _minutes(start: datetime, count: int) -> list[datetime]:
    return [start + timedelta(minutes=n) for n in range(count)]


def _put(stack: Stack, body: dict[str, Any], path: str = "/triggers") -> Any:
    return stack.request("PUT", path, json.dumps(body), content_type="application/json")


def _post(stack: Stack, path: str, body: Any) -> Any:
    return stack.request("POST", path, json.dumps(body), content_type="application/json")


def _wait_done(stack: Stack, ns: str, flow_id: str, label: str, slots: list[datetime]) -> None:
    """Until the backfill is over (the record says so) and each of its executions is indexed."""
    _until("backfill over", lambda: (_trigger(stack, ns, flow_id) or {}).get("backfill") is None)
    found = _until(
        f"{len(slots)} executions labelled {label}",
        lambda: (e := _executions(stack, ns, flow_id, label)) and len(e) >= len(slots) and e,
    )
    assert _slot_dates(found) == Counter(slots)  # every slot once, none other

    def ended() -> bool:
        found = _executions(stack, ns, flow_id, label)
        return all(x["state"]["current"] == "SUCCESS" for x in found)

    _until("every execution SUCCESS", ended)


def test_backfill_through_the_api_fires_each_slot_once_with_its_inputs_and_labels(
    stack: Stack,
) -> None:
    ns = f"it.triggers.b{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", _flow(ns, "hourly_report", "* * * * *")).status == 200
    record = _until("the trigger's record", lambda: _trigger(stack, ns, "hourly_report"))
    assert record["nextExecutionDate"] is not None and record["backfill"] is None

    page = stack.get(f"/triggers/search?filters[namespace][EQUALS]={ns}").json()
    assert page["total"] == 1
    (row,) = page["results"]
    assert row["abstractTrigger"]["cron"] == "* * * * *"
    assert row["triggerContext"]["triggerId"] == "schedule"

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=30)
    backfill = {
        "start": start.isoformat().replace("+00:00", "Z"),
        "end": (start + timedelta(minutes=9)).isoformat().replace("+00:00", "Z"),
        "inputs": {"day": "backfilled"},
        "labels": [{"key": "reason", "value": "outage"}],
    }
    reply = _put(stack, {**_key(ns, "hourly_report"), "backfill": backfill})
    assert reply.status == 200, reply.body
    answered = reply.json()["backfill"]
    assert answered["paused"] is False
    assert datetime.fromisoformat(answered["currentDate"]) == start
    assert "id" not in answered  # kestream's own field stays in the topic

    _wait_done(stack, ns, "hourly_report", "reason:outage", _minutes(start, 10))
    one = _executions(stack, ns, "hourly_report", "reason:outage")[0]
    assert one["inputs"]["day"] == "backfilled"

    # A second backfill over the same range runs every slot again, as Kestra's does.
    again = {**backfill, "labels": {"reason": "again"}}
    assert _put(stack, {**_key(ns, "hourly_report"), "backfill": again}).status == 200
    _wait_done(stack, ns, "hourly_report", "reason:again", _minutes(start, 10))

    # Pause right away, then unpause: it goes on where it stopped, each slot once.
    start = now - timedelta(minutes=120)
    long = {
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=19)).isoformat(),
        "labels": {"reason": "paused"},
    }
    assert _put(stack, {**_key(ns, "hourly_report"), "backfill": long}).status == 200
    paused = _put(stack, _key(ns, "hourly_report"), "/triggers/backfill/pause")
    assert paused.status == 200 and paused.json()["backfill"]["paused"] is True
    _until(
        "the pause applied",
        lambda: ((_trigger(stack, ns, "hourly_report") or {}).get("backfill") or {}).get("paused"),
    )
    assert _put(stack, _key(ns, "hourly_report"), "/triggers/backfill/unpause").status == 200
    _wait_done(stack, ns, "hourly_report", "reason:paused", _minutes(start, 20))

    # What does not apply is refused as Kestra refuses it.
    no_backfill = _post(stack, "/triggers/backfill/delete", _key(ns, "hourly_report"))
    assert no_backfill.status == 400 and b"No backfill found" in no_backfill.body
    bad = _put(
        stack,
        {
            **_key(ns, "hourly_report"),
            "backfill": {"start": backfill["end"], "end": backfill["start"]},
        },
    )
    assert bad.status == 400 and b"before its start" in bad.body
    assert _put(stack, {**_key(ns, "nope"), "disabled": True}).status == 404
    assert stack.get(f"/triggers/{ns}/hourly_report/nope").status == 404
    assert stack.get("/triggers/search?filters[state][EQUALS]=x").status == 400


def test_a_disabled_trigger_fires_nothing_until_enabled(stack: Stack) -> None:
    ns = f"it.triggers.d{uuid.uuid4().hex[:8]}"
    for flow_id in ("held", "barrier"):
        assert stack.post_yaml("/flows", _flow(ns, flow_id, "* * * * *")).status == 200
    _until("both records", lambda: _trigger(stack, ns, "held") and _trigger(stack, ns, "barrier"))

    disabled = _put(stack, {**_key(ns, "held"), "disabled": True})
    assert disabled.status == 200 and disabled.json()["disabled"] is True
    _until("disabled", lambda: (_trigger(stack, ns, "held") or {}).get("disabled"))

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=60)
    held = {"start": start.isoformat(), "end": (start + timedelta(minutes=4)).isoformat(),
            "labels": {"round": "held"}}  # fmt: skip
    assert _put(stack, {**_key(ns, "held"), "backfill": held}).status == 200
    _until("held's backfill recorded", lambda: (_trigger(stack, ns, "held") or {}).get("backfill"))
    # The barrier: commands are applied in order and both backfills are fired by the same
    # ticks, so once the barrier's backfill is over, the disabled one would have fired too.
    barrier = {**held, "labels": {"round": "barrier"}}
    assert _put(stack, {**_key(ns, "barrier"), "backfill": barrier}).status == 200
    _wait_done(stack, ns, "barrier", "round:barrier", _minutes(start, 5))
    assert _executions(stack, ns, "held", "round:held") == []
    record = _trigger(stack, ns, "held")
    assert record is not None and record["disabled"] is True and record["nextExecutionDate"] is None
    assert datetime.fromisoformat(record["backfill"]["currentDate"]) == start

    enabled = _post(
        stack, "/triggers/set-disabled/by-triggers",
        {"triggers": [_key(ns, "held")], "disabled": False},
    )  # fmt: skip
    assert enabled.status == 200 and enabled.json() == {"count": 1}
    _wait_done(stack, ns, "held", "round:held", _minutes(start, 5))
    record = _trigger(stack, ns, "held")
    assert record is not None and record["disabled"] is False
    assert record["nextExecutionDate"] is not None  # the schedule goes on from now

    # Bulk actions count only what they apply to: no backfill is left to pause.
    paused = _post(stack, f"/triggers/backfill/pause/by-query?filters[namespace][EQUALS]={ns}", {})
    assert paused.json() == {"count": 0}


def test_unlock_clears_the_recorded_execution(stack: Stack) -> None:
    ns = f"it.triggers.u{uuid.uuid4().hex[:8]}"
    assert (
        stack.post_yaml("/flows", _flow(ns, "often", "*/2 * * * * *", seconds=True)).status == 200
    )
    fired = _until("a fire", lambda: (t := _trigger(stack, ns, "often")) and t["executionId"] and t)
    reply = stack.request("POST", f"/triggers/{ns}/often/schedule/unlock")
    assert reply.status == 200 and reply.json()["executionId"] is None
    _until(
        "the unlock applied",
        lambda: (_trigger(stack, ns, "often") or {}).get("executionId") != fired["executionId"],
    )
    assert _put(stack, {**_key(ns, "often"), "disabled": True}).status == 200
    _until("disabled", lambda: (_trigger(stack, ns, "often") or {}).get("disabled"))
    unlock = f"/triggers/{ns}/often/schedule/unlock"
    if (_trigger(stack, ns, "often") or {}).get("executionId") is not None:  # fired meanwhile
        assert stack.request("POST", unlock).status == 200
        _until("unlocked", lambda: (_trigger(stack, ns, "often") or {}).get("executionId") is None)
    # Disabled, nothing fires any more: the trigger holds no execution to clear.
    refused = stack.request("POST", unlock)
    assert refused.status == 409 and b"Trigger is not locked" in refused.body


def test_every_kind_is_listed_and_restart_delete_and_set_disabled_reach_the_scheduler(
    stack: Stack,
) -> None:
    ns = f"it.triggers.k{uuid.uuid4().hex[:8]}"
    hook = "  - id: hook\n    type: io.kestra.plugin.core.trigger.Webhook\n    key: k-0123456789\n"
    source = _flow(ns, "kinds", "*/2 * * * * *", seconds=True) + hook
    assert stack.post_yaml("/flows", source).status == 200
    fired = _until("a fire", lambda: (t := _trigger(stack, ns, "kinds")) and t["executionId"] and t)

    found = stack.get(f"/triggers/search?filters[namespace][EQUALS]={ns}").json()
    assert [r["triggerContext"]["triggerId"] for r in found["results"]] == ["hook", "schedule"]
    webhook, schedule = found["results"]
    assert webhook["abstractTrigger"]["key"] == "k-0123456789"  # an authenticated caller
    assert webhook["triggerContext"]["nextExecutionDate"] is None
    assert schedule["triggerContext"]["nextExecutionDate"] is not None
    exported = stack.get(f"/triggers/export/by-query/csv?filters[namespace][EQUALS]={ns}")
    assert exported.status == 200 and exported.body.decode().count(f"\n{ns},kinds,") == 2

    assert stack.request("DELETE", f"/triggers/{ns}/kinds/schedule", auth=None).status == 401
    restarted = stack.request("POST", f"/triggers/{ns}/kinds/schedule/restart")
    assert restarted.status == 200 and restarted.json()["executionId"] is None
    _until(
        "the restart applied",
        lambda: (_trigger(stack, ns, "kinds") or {}).get("executionId") != fired["executionId"],
    )

    both = [_key(ns, "kinds"), {**_key(ns, "kinds"), "triggerId": "hook"}]
    disabled = _post(stack, "/triggers/set-disabled", {"triggers": both, "disabled": True})
    assert disabled.status == 200 and disabled.json() == {"count": 1}  # the Webhook has no state
    _until("disabled", lambda: (_trigger(stack, ns, "kinds") or {}).get("disabled"))
    record = _trigger(stack, ns, "kinds")
    assert record is not None
    unlock = _post(stack, f"/triggers/unlock/by-query?filters[namespace][EQUALS]={ns}", {})
    assert unlock.json() == {"count": 1 if record["executionId"] else 0}
    _until("unlocked", lambda: (_trigger(stack, ns, "kinds") or {}).get("executionId") is None)

    # Deleted, the state is recreated from the flow: enabled again, its next slot from now.
    assert stack.request("DELETE", f"/triggers/{ns}/kinds/schedule").status == 204
    _until(
        "recreated and firing",
        lambda: (t := _trigger(stack, ns, "kinds")) and not t["disabled"] and t["executionId"],
    )
    refused = stack.request("DELETE", f"/triggers/{ns}/kinds/hook")
    assert refused.status == 409 and b"only Schedule triggers" in refused.body


def test_one_trigger_set_disabled_and_bulk_deletes_reach_the_scheduler(stack: Stack) -> None:
    ns = f"it.triggers.d{uuid.uuid4().hex[:8]}"
    for flow_id, cron in (("early", "0 3 * * *"), ("late", "0 4 * * *")):
        assert stack.post_yaml("/flows", _flow(ns, flow_id, cron)).status == 200
        _until(f"{flow_id} recorded", partial(_trigger, stack, ns, flow_id))

    def disabled(flow_id: str) -> bool:
        return bool((_trigger(stack, ns, flow_id) or {}).get("disabled"))

    def planned(flow_id: str) -> bool:
        record = _trigger(stack, ns, flow_id) or {}
        return record.get("disabled") is False and record.get("nextExecutionDate") is not None

    one = "/triggers/set-disabled"
    reply = _put(stack, {**_key(ns, "early"), "disabled": True}, one)
    assert reply.status == 200, reply.body
    assert reply.json()["disabled"] is True and reply.json()["nextExecutionDate"] is None
    _until("early disabled", lambda: disabled("early"))

    # Deleted, a state is recreated from the flow: enabled, its next slot planned from now.
    by_ids = stack.request(
        "DELETE", "/triggers/delete/by-triggers", json.dumps([_key(ns, "early")]),
        content_type="application/json",
    )  # fmt: skip
    assert by_ids.status == 200 and by_ids.json() == {"count": 1}
    _until("early recreated", lambda: planned("early"))

    assert _put(stack, {**_key(ns, "late"), "disabled": True}, one).status == 200
    _until("late disabled", lambda: disabled("late"))
    body = {"filters": [{"field": "flowId", "operation": "EQUALS", "value": "late"}]}
    by_query = stack.request(
        "DELETE", f"/triggers/delete/by-query?filters[namespace][EQUALS]={ns}",
        json.dumps(body), content_type="application/json",
    )  # fmt: skip
    assert by_query.status == 200 and by_query.json() == {"count": 1}
    _until("late recreated", lambda: planned("late"))
    assert planned("early")

    # A trigger its flow disables is listed disabled, with nothing planned (it has no record).
    off = _flow(ns, "off", "0 5 * * *") + "    disabled: true\n"
    assert stack.post_yaml("/flows", off).status == 200
    listed = _until("off listed", partial(_trigger, stack, ns, "off"))
    assert listed["disabled"] is True and listed["nextExecutionDate"] is None
    refused = stack.request("POST", f"/triggers/{ns}/off/schedule/restart")
    assert refused.status == 409 and b"disabled in its flow" in refused.body


def test_enabled_again_with_recovery_the_slots_missed_while_disabled_fire(stack: Stack) -> None:
    ns = f"it.triggers.r{uuid.uuid4().hex[:8]}"
    assert (
        stack.post_yaml("/flows", _flow(ns, "often", "*/2 * * * * *", seconds=True)).status == 200
    )
    _until("a fire", lambda: (_trigger(stack, ns, "often") or {}).get("date"))
    off = _put(stack, {**_key(ns, "often"), "disabled": True}, "/triggers/set-disabled")
    assert off.status == 200, off.body
    record = _until("disabled", lambda: (t := _trigger(stack, ns, "often")) and t["disabled"] and t)
    last = datetime.fromisoformat(record["date"])
    _until("three slots missed", lambda: datetime.now(UTC) > last + timedelta(seconds=7))

    body = {**_key(ns, "often"), "disabled": False, "recoverMissedSchedules": True}
    on = _put(stack, body, "/triggers/set-disabled")
    assert on.status == 200 and on.json()["disabled"] is False
    missed = {last + timedelta(seconds=2 * n) for n in (1, 2, 3)}

    def dates() -> set[datetime]:
        query = f"filters[namespace][EQUALS]={ns}&filters[flowId][EQUALS]=often&size=500"
        found = stack.get("/executions/search?" + query).json()["results"]
        return {datetime.fromisoformat(e["trigger"]["variables"]["date"]) for e in found}

    _until("the missed slots run", lambda: missed <= dates())
