"""The HTTP API, the triggers and the follow streams, end to end on a running standalone.

One ``kestream standalone`` (executor, worker, scheduler and API processes) per broker serves
every test of the module; each test uses a namespace of its own. The API requires credentials
(``api_stack``); requests send them unless a test says otherwise.
"""

from __future__ import annotations

import re
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_stack import PASSWORD, TOKEN, USERNAME, Stack, basic_auth, start_stack

pytestmark = pytest.mark.integration

DONE = {"SUCCESS", "FAILED", "KILLED", "WARNING"}


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"it.api.{uuid.uuid4().hex[:10]}."
    yield from start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("api"))


@pytest.fixture
def ns() -> str:
    return f"it.api.n{uuid.uuid4().hex[:8]}"


def hello(ns: str, flow_id: str = "hello", message: str = "Hello") -> str:
    return f"""
id: {flow_id}
namespace: {ns}
labels:
  team: data
inputs:
  - id: name
    type: STRING
    defaults: world
  - id: count
    type: INT
    defaults: 1
tasks:
  - id: greet
    type: io.kestra.plugin.core.log.Log
    message: "{message} {{{{ inputs.name }}}}"
  - id: out
    type: io.kestra.plugin.core.output.OutputValues
    values:
      greeting: "{message} {{{{ inputs.name }}}} x{{{{ inputs.count }}}}"
"""


def deploy(stack: Stack, source: str) -> dict[str, Any]:
    reply = stack.post_yaml("/flows", source)
    assert reply.status == 200, reply.body
    return reply.json()


def run(
    stack: Stack, ns: str, flow_id: str, fields: dict[str, str] | None = None
) -> dict[str, Any]:
    reply = stack.post_form(f"/executions/{ns}/{flow_id}?wait=true", fields or {})
    assert reply.status == 200, reply.body
    return reply.json()


# -- flows -------------------------------------------------------------------------------------


def test_flow_routes_create_update_get_list_search_validate_delete(stack: Stack, ns: str) -> None:
    created = deploy(stack, hello(ns))
    assert (created["id"], created["namespace"], created["revision"]) == ("hello", ns, 1)
    assert created["source"].strip().startswith("id: hello")

    again = stack.post_yaml("/flows", hello(ns))
    assert again.status == 422 and "already exists" in again.json()["message"]

    updated = stack.request(
        "PUT", f"/flows/{ns}/hello", hello(ns, message="Hi"), content_type="application/x-yaml"
    )
    assert updated.status == 200 and updated.json()["revision"] == 2

    got = stack.get(f"/flows/{ns}/hello?source=true").json()
    assert got["revision"] == 2 and "Hi" in got["source"]
    assert "source" not in stack.get(f"/flows/{ns}/hello").json()
    assert stack.get(f"/flows/{ns}/hello?revision=1").json()["revision"] == 1

    deploy(stack, hello(ns, "other"))
    listed = stack.get(f"/flows/{ns}").json()
    assert [f["id"] for f in listed] == ["hello", "other"]
    page = stack.get(f"/flows/search?namespace={ns}&size=1").json()
    assert page["total"] == 2 and len(page["results"]) == 1

    bad = "id: broken\nnamespace: " + ns + "\ntasks:\n  - id: t\n    type: io.kestra.nope\n"
    rejected = stack.post_yaml("/flows", bad)
    assert rejected.status == 422
    errors = rejected.json()["_embedded"]["errors"]
    assert any("line 5" in e["message"] and "io.kestra.nope" in e["message"] for e in errors)

    checked = stack.post_yaml("/flows/validate", hello(ns) + "\n---\n" + bad).json()
    assert [c["index"] for c in checked] == [0, 1]
    assert "constraints" not in checked[0] and checked[1]["flow"] == "broken"
    assert "io.kestra.nope" in checked[1]["constraints"]

    assert stack.request("DELETE", f"/flows/{ns}/other").status == 204
    assert stack.get(f"/flows/{ns}/other").status == 404
    assert stack.request("DELETE", f"/flows/{ns}/other").status == 404


# -- executions --------------------------------------------------------------------------------


def test_create_with_inputs_and_labels_then_get_search_and_logs(stack: Stack, ns: str) -> None:
    deploy(stack, hello(ns))
    reply = stack.post_form(
        f"/executions/{ns}/hello?wait=true&labels=env:test&labels=owner:me",
        {"name": "Ada", "count": "3"},
    )
    assert reply.status == 200, reply.body
    done = reply.json()
    assert done["state"]["current"] == "SUCCESS"
    assert done["inputs"] == {"name": "Ada", "count": 3}
    labels = {label["key"]: label["value"] for label in done["labels"]}
    assert labels["env"] == "test" and labels["owner"] == "me" and labels["team"] == "data"
    outputs = next(r for r in done["taskRunList"] if r["taskId"] == "out")["outputs"]
    assert outputs == {"values": {"greeting": "Hello Ada x3"}}
    assert done["url"].endswith(f"/ui/#/executions/{done['id']}")  # its page in the web UI

    got = stack.wait_state(done["id"], {"SUCCESS"})
    assert got["flowRevision"] == 1 and len(got["taskRunList"]) == 2

    run(stack, ns, "hello")
    failing = deploy(
        stack,
        f"id: boom\nnamespace: {ns}\ntasks:\n  - id: f\n"
        "    type: io.kestra.plugin.core.execution.Fail\n",
    )
    assert failing["revision"] == 1
    assert run(stack, ns, "boom")["state"]["current"] == "FAILED"

    def search(query: str, total: int) -> dict[str, Any]:
        """The page once the index has every execution it should count (it follows a topic)."""
        deadline = time.monotonic() + 15
        while True:
            page = stack.get("/executions/search?" + query).json()
            if page["total"] >= total or time.monotonic() > deadline:
                return page
            time.sleep(0.1)

    quoted = urllib.parse.quote
    everything = search(f"filters[namespace][EQUALS]={ns}&size=10", 3)
    assert everything["total"] == 3
    only_hello = search(
        f"filters[namespace][EQUALS]={ns}&filters[flowId][EQUALS]=hello&filters[state][IN]=SUCCESS",
        2,
    )
    assert only_hello["total"] == 2
    assert {e["flowId"] for e in only_hello["results"]} == {"hello"}
    by_label = search(
        f"filters[namespace][EQUALS]={ns}&{quoted('filters[labels][EQUALS][env]')}=test", 1
    )
    assert by_label["total"] == 1 and by_label["results"][0]["id"] == done["id"]
    paged = search(f"filters[namespace][PREFIX]={ns}&size=1&page=2&sort=state.startDate:asc", 3)
    assert paged["total"] == 3 and len(paged["results"]) == 1
    legacy = stack.get(f"/executions?namespace={ns}&flowId=boom").json()
    assert legacy["total"] == 1 and legacy["results"][0]["state"]["current"] == "FAILED"
    assert stack.get("/executions/search?filters[nope][EQUALS]=x").status == 400

    logs = stack.get(f"/logs/{done['id']}").json()
    assert [line["message"] for line in logs] == ["Hello Ada"]
    assert logs[0]["taskId"] == "greet" and logs[0]["level"] == "INFO"
    assert stack.get(f"/logs/{done['id']}?minLevel=ERROR").json() == []


def test_errors_name_what_is_wrong(stack: Stack, ns: str) -> None:
    deploy(stack, hello(ns))
    bad_input = stack.post_form(f"/executions/{ns}/hello", {"count": "many"})
    assert bad_input.status == 422
    assert any(e["path"] == "inputs.count" for e in bad_input.json()["_embedded"]["errors"])
    assert stack.post_form(f"/executions/{ns}/missing", {}).status == 404
    assert stack.get("/executions/doesnotexist").status == 404
    assert stack.get("/executions/doesnotexist").json()["message"]
    other_tenant = stack.get(stack.base + "/api/v1/elsewhere/executions/search")
    assert other_tenant.status == 404 and "elsewhere" in other_tenant.json()["message"]
    huge = stack.request(
        "POST", "/flows", "x" * (11 * 1024 * 1024), content_type="application/x-yaml"
    )
    assert huge.status == 413
    reserved = stack.post_form(f"/executions/{ns}/hello?labels=system.x:y", {})
    assert reserved.status == 422
    assert stack.post_form(f"/executions/{ns}/hello?wait=maybe", {}).status == 400
    time.sleep(1)
    page = stack.get(f"/executions/search?filters[namespace][EQUALS]={ns}").json()
    assert page["total"] == 0  # nothing refused was started


def test_inputs_that_leave_updates_no_room_are_refused_with_the_size(stack: Stack, ns: str) -> None:
    """A webhook's body just under the 1 MiB record limit: the creation record would fit, but
    no update of the execution could (each repeats it with a task run). The same input through
    the API is stored instead."""
    deploy(stack, hello(ns))
    hook = f"""
id: hook
namespace: {ns}
tasks:
  - id: echo
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ trigger.body.name | length }}}}"
triggers:
  - id: web
    type: io.kestra.plugin.core.trigger.Webhook
    key: big-hook-key
"""
    deploy(stack, hook)
    name = "n" * 1_040_000  # the record: about 1.04 MB of the 1,047,552 bytes a value may have
    # Through the API, an input past KESTREAM_OUTPUT_INLINE_MAX_BYTES is stored and referenced,
    # so the record stays small and the execution runs (docs/storage.md).
    stored = stack.post_form(f"/executions/{ns}/hello", {"name": name})
    assert stored.status == 200, stored.body
    done = stack.wait_state(stored.json()["id"], DONE)
    assert done["state"]["current"] == "SUCCESS"
    assert done["inputs"]["name"]["@ref"].startswith("kestra:///")  # what the execution holds
    # A webhook's body is validated by the executor, so it travels in the record: refused.
    reply = stack.request(
        "POST", f"/executions/webhook/{ns}/hook/big-hook-key", f'{{"name": "{name}"}}',
        content_type="application/json", auth=None,
    )  # fmt: skip
    assert reply.status == 413, reply.body
    message = reply.json()["message"]
    print(message)
    assert message.startswith("Request Entity Too Large: the execution's record (inputs,")
    found = re.search(
        r"is ([\d,]+) bytes, over the 1,031,168 bytes record limit for a new execution$",
        message,
    )  # the limit less 16 KiB of room for task runs
    assert found is not None, message
    assert 1_040_000 < int(found[1].replace(",", "")) <= 1_047_552
    time.sleep(1)
    page = stack.get(f"/executions/search?filters[namespace][EQUALS]={ns}").json()
    assert page["total"] == 1  # the webhook's execution was not started


def test_schedule_date_starts_the_execution_later(stack: Stack, ns: str) -> None:
    deploy(stack, hello(ns))
    when = datetime.now(UTC) + timedelta(seconds=3)
    stamp = urllib.parse.quote(when.isoformat())
    created = stack.post_form(f"/executions/{ns}/hello?scheduleDate={stamp}", {}).json()
    assert created["state"]["current"] == "CREATED"
    time.sleep(1.5)
    assert stack.wait_state(created["id"], {"CREATED"})["state"]["current"] == "CREATED"
    done = stack.wait_state(created["id"], DONE)
    assert done["state"]["current"] == "SUCCESS"
    started = datetime.fromisoformat(done["state"]["histories"][1]["date"].replace("Z", "+00:00"))
    assert started >= when - timedelta(milliseconds=50)


def test_follow_streams_each_change_to_the_end(stack: Stack, ns: str) -> None:
    deploy(
        stack,
        f"""
id: slow
namespace: {ns}
tasks:
  - id: first
    type: io.kestra.plugin.core.log.Log
    message: one
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1.5S
  - id: last
    type: io.kestra.plugin.core.log.Log
    message: two
""",
    )
    created = stack.post_form(f"/executions/{ns}/slow", {}).json()
    frames = stack.events(f"/executions/{created['id']}/follow")
    kinds = [kind for kind, _ in frames]
    assert kinds[0] == "start" and kinds[-1] == "end" and "progress" in kinds
    assert frames[-1][1]["state"]["current"] == "SUCCESS"
    assert len(frames[-1][1]["taskRunList"]) == 3
    # An ended execution: its last state at once.
    again = stack.events(f"/executions/{created['id']}/follow")
    assert [kind for kind, _ in again] == ["start", "end"]
    log_frames = stack.events(f"/logs/{created['id']}/follow")
    assert [data["message"] for kind, data in log_frames if kind == "progress"] == ["one", "two"]


def test_pause_resume_kill_restart_delete(stack: Stack, ns: str) -> None:
    deploy(
        stack,
        f"""
id: gate
namespace: {ns}
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: resumed
""",
    )
    paused = run(stack, ns, "gate")
    assert paused["state"]["current"] == "PAUSED"
    stack.wait_state(paused["id"], {"PAUSED"})
    assert stack.request("POST", f"/executions/{paused['id']}/resume").status == 204
    assert stack.wait_state(paused["id"], DONE)["state"]["current"] == "SUCCESS"
    assert stack.request("POST", f"/executions/{paused['id']}/resume").status == 409

    victim = run(stack, ns, "gate")
    stack.wait_state(victim["id"], {"PAUSED"})
    assert stack.request("DELETE", f"/executions/{victim['id']}/kill").status == 202
    killed = stack.wait_state(victim["id"], DONE)
    assert killed["state"]["current"] == "KILLED"

    restarted = stack.request("POST", f"/executions/{victim['id']}/restart")
    assert restarted.status == 200 and restarted.json()["state"]["current"] == "RESTARTED"
    back = stack.wait_state(victim["id"], {"PAUSED"})
    assert back["metadata"]["attemptNumber"] == 2
    stack.request("POST", f"/executions/{victim['id']}/resume")
    assert stack.wait_state(victim["id"], DONE)["state"]["current"] == "SUCCESS"
    assert stack.request("POST", f"/executions/{victim['id']}/restart").status == 409

    assert stack.request("DELETE", f"/executions/{victim['id']}").status == 204
    assert stack.get(f"/executions/{victim['id']}").status == 404
    listed = stack.get(f"/executions/search?filters[namespace][EQUALS]={ns}").json()
    assert victim["id"] not in {e["id"] for e in listed["results"]}


# -- triggers ----------------------------------------------------------------------------------


def test_webhook_starts_an_execution_with_the_request(stack: Stack, ns: str) -> None:
    deploy(
        stack,
        f"""
id: hook
namespace: {ns}
tasks:
  - id: echo
    type: io.kestra.plugin.core.output.OutputValues
    values:
      name: "{{{{ trigger.body.name }}}}"
      tag: "{{{{ trigger.parameters.tag[0] }}}}"
triggers:
  - id: web
    type: io.kestra.plugin.core.trigger.Webhook
    key: s3cr3t-key
""",
    )
    path = f"/executions/webhook/{ns}/hook/s3cr3t-key?tag=blue"
    # No credentials: the key is the webhook's credential.
    reply = stack.request(
        "POST", path, '{"name": "Grace"}', content_type="application/json", auth=None
    )
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["flowId"] == "hook" and body["trigger"]["id"] == "web"
    done = stack.wait_state(body["id"], DONE)
    assert done["state"]["current"] == "SUCCESS"
    assert done["taskRunList"][0]["outputs"] == {"values": {"name": "Grace", "tag": "blue"}}
    assert done["trigger"]["variables"]["body"] == {"name": "Grace"}

    wrong = stack.request("POST", f"/executions/webhook/{ns}/hook/wrong", "{}", auth=None)
    assert wrong.status == 404 and wrong.json()["message"] == "Not Found: Webhook not found"
    time.sleep(1)
    page = stack.get(f"/executions/search?filters[namespace][EQUALS]={ns}").json()
    assert page["total"] == 1


def test_schedule_fires_each_second_once_per_slot(stack: Stack, ns: str) -> None:
    deploy(
        stack,
        f"""
id: tick
namespace: {ns}
tasks:
  - id: when
    type: io.kestra.plugin.core.output.OutputValues
    values:
      date: "{{{{ trigger.date }}}}"
triggers:
  - id: every-second
    type: io.kestra.plugin.core.trigger.Schedule
    withSeconds: true
    cron: "* * * * * *"
""",
    )
    deadline = time.monotonic() + 30
    page: dict[str, Any] = {"total": 0}
    while time.monotonic() < deadline and page["total"] < 3:
        time.sleep(0.5)
        page = stack.get(
            f"/executions/search?filters[namespace][EQUALS]={ns}&filters[state][EQUALS]=SUCCESS"
            "&size=100"
        ).json()
    assert page["total"] >= 3, stack.log_tail()
    dates = [e["trigger"]["variables"]["date"] for e in page["results"]]
    assert len(set(dates)) == len(dates)  # one execution per slot
    assert all(e["trigger"]["id"] == "every-second" for e in page["results"])
    assert all(e["scheduleDate"] for e in page["results"])
    # Stop it: the flow without the trigger.
    stack.request(
        "PUT",
        f"/flows/{ns}/tick",
        f"id: tick\nnamespace: {ns}\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n"
        "    message: off\n",
        content_type="application/x-yaml",
    )


def test_flow_trigger_chains_executions(stack: Stack, ns: str) -> None:
    deploy(stack, hello(ns, "upstream"))
    deploy(
        stack,
        f"""
id: downstream
namespace: {ns}
tasks:
  - id: seen
    type: io.kestra.plugin.core.output.OutputValues
    values:
      from: "{{{{ trigger.executionId }}}}"
      state: "{{{{ trigger.state }}}}"
triggers:
  - id: after-upstream
    type: io.kestra.plugin.core.trigger.Flow
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionFlow
        namespace: {ns}
        flowId: upstream
      - type: io.kestra.plugin.core.condition.ExecutionStatus
        in: [SUCCESS]
""",
    )
    time.sleep(1)  # the scheduler takes the new flow from the flows topic
    upstream = run(stack, ns, "upstream")
    assert upstream["state"]["current"] == "SUCCESS"
    deadline = time.monotonic() + 30
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not found:
        page = stack.get(
            f"/executions/search?filters[namespace][EQUALS]={ns}&filters[flowId][EQUALS]=downstream"
        ).json()
        found = [e for e in page["results"] if e["state"]["current"] == "SUCCESS"]
        time.sleep(0.3)
    assert found, stack.log_tail()
    downstream = stack.get(f"/executions/{found[0]['id']}").json()
    values = downstream["taskRunList"][0]["outputs"]["values"]
    assert values == {"from": upstream["id"], "state": "SUCCESS"}


# -- operations ----------------------------------------------------------------------------------


def test_openapi_health_and_metrics(stack: Stack) -> None:
    document = stack.get(stack.base + "/swagger/kestra.json").json()
    assert "/api/v1/{tenant}/executions/{executionId}/follow" in document["paths"]
    assert stack.get(stack.base + "/swagger/kestra.yml").status == 200
    assert stack.get(stack.base + "/health/live").status == 200
    ready = stack.get(stack.base + "/health/ready").json()
    roles = {member["role"] for member in ready["installation"]["members"]}
    assert {"executor", "worker", "scheduler", "api"} <= roles
    before = _live_requests(stack)
    stack.get(stack.base + "/health/live")
    assert _live_requests(stack) == before + 1  # counted once, not once per server setup
    scheduler = next(m for m in ready["installation"]["members"] if m["role"] == "scheduler")
    scraped = stack.get(f"http://127.0.0.1:{scheduler['port']}/metrics").body.decode()
    assert "kestream_scheduler_evaluation_loop_duration_seconds" in scraped


def _live_requests(stack: Stack) -> float:
    text = stack.get(stack.base + "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith("kestream_http_server_requests_seconds_count") and (
            'route="/health/live"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- authentication ------------------------------------------------------------------------------


def test_every_api_route_needs_credentials_and_accepts_basic_or_a_token(stack: Stack) -> None:
    anonymous = stack.get("/flows/search", auth=None)
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="kestream"'
    assert anonymous.json()["message"].startswith("Unauthorized")
    assert stack.get("/flows/search", auth=basic_auth(USERNAME, "wrong")).status == 401
    assert stack.get("/flows/search").status == 200
    assert stack.get("/flows/search", auth=f"Bearer {TOKEN}").status == 200
    assert stack.get(stack.base + "/swagger/kestra.json", auth=None).status == 401
    assert stack.get(stack.base + "/metrics", auth=None).status == 401
    assert stack.get(stack.base + "/health/live", auth=None).status == 200
    ready = stack.get(stack.base + "/health/ready", auth=None).json()
    # Every role's ops server follows KESTREAM_METRICS_AUTH (on by default).
    for member in ready["installation"]["members"]:
        scrape = f"http://127.0.0.1:{member['port']}/metrics"
        assert stack.get(scrape, auth=None).status == 401, member
        assert stack.get(scrape, auth=f"Bearer {TOKEN}").status == 200, member


def test_a_cross_origin_deploy_is_refused_and_a_same_origin_one_passes(
    stack: Stack, ns: str
) -> None:
    source = hello(ns, "from-a-page")
    refused = stack.request(
        "POST",
        "/flows",
        source,
        content_type="application/x-yaml",
        headers={"Origin": "https://evil.example"},
    )
    assert refused.status == 403, refused.body
    assert stack.get(f"/flows/{ns}/from-a-page").status == 404
    same = stack.request(
        "POST",
        "/flows",
        source,
        content_type="application/x-yaml",
        headers={"Origin": stack.base, "Sec-Fetch-Site": "same-origin"},
    )
    assert same.status == 200, same.body
    assert stack.get(f"/flows/{ns}/from-a-page").json()["revision"] == 1


def test_authenticated_callers_get_webhook_keys(stack: Stack, ns: str) -> None:
    deploy(
        stack,
        f"""
id: keyed
namespace: {ns}
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
triggers:
  - id: web
    type: io.kestra.plugin.core.trigger.Webhook
    key: visible-to-callers-with-credentials
""",
    )
    flow = stack.get(f"/flows/{ns}/keyed?source=true").json()
    assert flow["triggers"][0]["key"] == "visible-to-callers-with-credentials"
    assert "key: visible-to-callers-with-credentials" in flow["source"]


def test_kestras_python_client_with_username_and_password(stack: Stack, ns: str) -> None:
    import kestrapy  # the test extra's; imported here so the module loads without it
    from kestrapy.rest import ApiException

    client = kestrapy.KestraClient(host=stack.base, username=USERNAME, password=PASSWORD)
    created = client.flows.create_flow(stack.tenant, hello(ns, "from-kestrapy"))
    assert (created.namespace, created.id, created.revision) == (ns, "from-kestrapy", 1)
    flow = client.flows.flow(ns, "from-kestrapy", stack.tenant, source=True)
    assert flow.source is not None and "from-kestrapy" in flow.source
    started = client.executions.create_execution(
        stack.tenant, ns, "from-kestrapy", wait=True, inputs={"name": "Kestra"}
    )
    execution = client.executions.execution(started.id, stack.tenant)
    assert execution.state is not None and str(execution.state.current.value) == "SUCCESS"
    assert execution.inputs == {"name": "Kestra", "count": 1}
    with_token = kestrapy.KestraClient(host=stack.base, token=TOKEN)
    assert with_token.executions.execution(started.id, stack.tenant).id == started.id
    wrong = kestrapy.KestraClient(host=stack.base, username=USERNAME, password="wrong")
    with pytest.raises(ApiException) as refused:
        wrong.flows.flow(ns, "from-kestrapy", stack.tenant)
    assert refused.value.status == 401
