"""Webhook keys are masked in a flow's JSON and source for callers without credentials."""

from __future__ import annotations

import yaml

from kestream.api.flow_routes import flow_json
from kestream.api.webhook_keys import MASK
from kestream.models.flow import parse_flow

SOURCE = """\
id: hook
namespace: company.team # the team's flows
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "hello"
triggers:
  - id: plain
    type: io.kestra.plugin.core.trigger.Webhook
    key: plain-key-0001
  - id: quoted
    type: io.kestra.core.models.triggers.types.Webhook
    key: 'quoted-key-0002' # comment kept
  - id: block
    type: io.kestra.plugin.core.trigger.Webhook
    key: |
      block-key-0003
  - {id: inline, type: io.kestra.plugin.core.trigger.Webhook, key: inline-key-0004}
  - id: daily
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 9 * * *"
"""
KEYS = ("plain-key-0001", "quoted-key-0002", "block-key-0003", "inline-key-0004")


def test_keys_are_masked_in_the_json_and_the_source_and_the_rest_is_kept() -> None:
    flow = parse_flow(SOURCE)
    body = flow_json(flow, with_source=True, show_keys=False)
    triggers = {t["id"]: t for t in body["triggers"]}
    assert [triggers[i]["key"] for i in ("plain", "quoted", "block", "inline")] == [MASK] * 4
    assert triggers["daily"]["cron"] == "0 9 * * *" and "key" not in triggers["daily"]
    source = body["source"]
    assert not any(key in source for key in KEYS)
    assert "# comment kept" in source and "# the team's flows" in source
    reparsed = yaml.safe_load(source)  # still the same flow, keys aside
    assert [t.get("key") for t in reparsed["triggers"]] == [MASK] * 4 + [None]
    assert {k: v for k, v in reparsed.items() if k != "triggers"} == {
        k: v for k, v in yaml.safe_load(SOURCE).items() if k != "triggers"
    }
    listed = flow_json(flow, with_source=False, show_keys=False)
    assert "source" not in listed and all(t.get("key") in (MASK, None) for t in listed["triggers"])


def test_callers_with_credentials_get_the_flow_as_deployed() -> None:
    flow = parse_flow(SOURCE)
    body = flow_json(flow, with_source=True, show_keys=True)
    assert body["source"] == SOURCE
    assert [t.get("key") for t in body["triggers"]] == [*KEYS[:2], KEYS[2] + "\n", KEYS[3], None]


def test_a_key_anchored_and_quoted_elsewhere_never_leaves() -> None:
    source = """\
id: anchored
namespace: company.team
description: "call /executions/webhook/company.team/anchored/anchored-key-9"
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
triggers:
  - id: first
    type: io.kestra.plugin.core.trigger.Webhook
    key: &k anchored-key-9
  - id: second
    type: io.kestra.plugin.core.trigger.Webhook
    key: *k
"""
    flow = parse_flow(source)
    masked = flow_json(flow, with_source=True, show_keys=False)["source"]
    assert "anchored-key-9" not in masked
    reparsed = yaml.safe_load(masked)
    assert [t["key"] for t in reparsed["triggers"]] == [MASK, MASK]


def test_flows_without_webhooks_are_untouched() -> None:
    source = SOURCE.split("triggers:")[0]
    flow = parse_flow(source)
    assert flow_json(flow, with_source=True, show_keys=False)["source"] == source
