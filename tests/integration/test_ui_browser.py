"""The web UI in a real browser against a real ``kestream standalone``.

Headless Chromium (:mod:`browser`) logs in through the page's form with the API's credentials,
watches an execution go from RUNNING to SUCCESS in the executions list without a reload (the
flow's shell task waits for a file the test creates), opens it and reads its task runs and its
logs, kills another one from its page, and types a flow with an unknown task type into the
editor, sees the error marked on its line, fixes it and deploys it. It starts an execution from
a flow's Execute form (an input error from the API shown beside its field first), reads a
Gantt timeline with a retried task and a loop's values, resumes a Pause through the form of its
``onResume`` inputs, and opens the cluster page. Each page is checked for console errors
(failed loads and exceptions included).

Then what acts on many or looks across: executions selected in the list (filtered by a label)
and killed, restarted and deleted in bulk, each effect read back from the API; an execution
replayed from a chosen task run, its logs searched, and its stored files (a ``kestra://`` URI
and an output too large to travel inline, stored as a reference) downloaded through their
links; a flow's diagram, triggers with their next fire time, a diff between its revisions and
the highlighted editor; and the logs page searching the lines of every execution.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from api_stack import PASSWORD, USERNAME, Stack, start_stack
from browser import chromium, console_errors
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.integration

WAIT_S = 60.0
PARTITIONS = 4


def gated(ns: str, gate: Path) -> str:
    return f"""\
id: gated
namespace: {ns}
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hello from the browser test
  - id: gate
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - while [ ! -f {gate} ]; do sleep 0.05; done
"""


def sleepy(ns: str) -> str:
    return f"""\
id: sleepy
namespace: {ns}
tasks:
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT10M
"""


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"it.ui.{uuid.uuid4().hex[:10]}."
    env = {
        # Outputs past 4 KiB leave the record as a stored reference: the execution page links them.
        "KESTREAM_OUTPUT_INLINE_MAX_BYTES": "4096",
        # Few partitions: the cluster test loads every one until each reports its lag.
        "KESTREAM_PARTITIONS": str(PARTITIONS),
    }
    yield from start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("ui"), env)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path / "profile") as browser:
        yield browser


def wait(driver: webdriver.Chrome) -> WebDriverWait[webdriver.Chrome]:
    """Waits that read redrawn elements (a refreshed list, the cluster's tables) try again
    when an element they found was replaced meanwhile."""
    return WebDriverWait(driver, WAIT_S, ignored_exceptions=[StaleElementReferenceException])


def text_of(driver: webdriver.Chrome, selector: str, text: str) -> None:
    try:
        wait(driver).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, selector), text))
    except TimeoutException:
        page = driver.find_element(By.TAG_NAME, "main").text
        raise AssertionError(f"{selector} never showed {text!r}; the page:\n{page}") from None


def no_console_errors(driver: webdriver.Chrome, page: str) -> None:
    assert console_errors(driver) == [], f"console errors on {page}"


def only_the_refusal(driver: webdriver.Chrome, route: str, status: int = 422) -> None:
    """The console's only errors are the browser's own notes of the API's ``status`` on
    ``route`` (refusals the page asked for and showed): anything else fails."""
    errors = console_errors(driver)
    assert errors, "the browser noted no refusal"
    for entry in errors:
        assert entry["source"] == "network", errors
        assert route in entry["message"] and str(status) in entry["message"], errors


def log_in(driver: webdriver.Chrome, stack: Stack) -> None:
    driver.get(f"{stack.base}/ui/")
    wait(driver).until(ec.visibility_of_element_located((By.ID, "username")))
    driver.find_element(By.ID, "username").send_keys(USERNAME)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    text_of(driver, "main h1", "Executions")
    no_console_errors(driver, "the login page")


def filter_executions(driver: webdriver.Chrome, **fields: str) -> None:
    """Set the list's filter form (selects by value, texts typed) and submit it."""
    for name, value in fields.items():
        control = driver.find_element(By.ID, f"f-{name}")
        if control.tag_name == "select":
            Select(control).select_by_value(value)
        else:
            control.clear()
            control.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()


def test_an_execution_runs_live_then_its_page_shows_runs_and_logs(
    stack: Stack, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    gate = tmp_path / "gate"
    assert stack.post_yaml("/flows", gated(ns, gate)).status == 200
    log_in(driver, stack)

    started = stack.request("POST", f"/executions/{ns}/gated")
    assert started.status == 200, started.body
    execution_id = started.json()["id"]
    driver.get(f"{stack.base}/ui/#/executions?namespace={ns}")
    row = f'#executions tr[data-id="{execution_id}"] [data-state]'
    text_of(driver, row, "RUNNING")
    text_of(driver, "#total", "1 execution")
    gate.touch()
    text_of(driver, row, "SUCCESS")  # the same page, redrawn by its refresh: no reload
    screenshot(driver, "executions", tmp_path)
    filter_executions(driver, state="FAILED")
    text_of(driver, "#total", "0 executions")
    filter_executions(driver, state="SUCCESS", range="PT1H", q=execution_id[:8])
    text_of(driver, "#total", "1 execution")
    assert f"state=SUCCESS&range=PT1H&q={execution_id[:8]}" in driver.current_url
    no_console_errors(driver, "the executions list")

    driver.find_element(By.CSS_SELECTOR, f'#executions tr[data-id="{execution_id}"] a').click()
    text_of(driver, "#execution-id", execution_id)
    text_of(driver, "#execution-state", "SUCCESS")
    text_of(driver, '#task-runs [data-task="gate"]', "SUCCESS")
    driver.find_element(By.CSS_SELECTOR, '#task-runs [data-task="gate"] summary').click()
    text_of(driver, '#task-runs [data-task="gate"] pre.json', '"exitCode": 0')
    text_of(driver, ".facts .labels", f"system.correlationId: {execution_id}")
    text_of(driver, "#logs", "hello from the browser test")
    screenshot(driver, "execution", tmp_path)
    Select(driver.find_element(By.ID, "log-level")).select_by_value("ERROR")
    wait(driver).until(
        lambda d: "hello from the browser test" not in d.find_element(By.ID, "logs").text
    )
    no_console_errors(driver, "the execution page")


def test_kill_then_restart_then_kill_from_the_execution_page(
    stack: Stack, driver: webdriver.Chrome
) -> None:
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", sleepy(ns)).status == 200
    execution_id = stack.request("POST", f"/executions/{ns}/sleepy").json()["id"]
    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/executions/{execution_id}")
    text_of(driver, "#execution-state", "RUNNING")
    driver.find_element(By.ID, "kill").click()
    text_of(driver, "#execution-state", "KILLED")
    assert stack.wait_state(execution_id, {"KILLED"})["state"]["current"] == "KILLED"
    wait(driver).until(ec.element_to_be_clickable((By.ID, "restart"))).click()
    text_of(driver, "#execution-state", "RUNNING")  # the Sleep's new attempt, followed live
    text_of(driver, '#task-runs [data-task="nap"]', "2 attempt(s)")
    wait(driver).until(ec.element_to_be_clickable((By.ID, "kill"))).click()
    text_of(driver, "#execution-state", "KILLED")
    no_console_errors(driver, "the execution page")


def fails_once(ns: str, marker: Path) -> str:
    return f"""\
id: fails_once
namespace: {ns}
tasks:
  - id: before
    type: io.kestra.plugin.core.log.Log
    message: before the failure
  - id: flaky
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - test -f {marker} || (touch {marker}; exit 1)
"""


def test_a_failed_execution_restarted_from_its_page_ends_in_success(
    stack: Stack, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", fails_once(ns, tmp_path / "failed")).status == 200
    execution_id = stack.request("POST", f"/executions/{ns}/fails_once").json()["id"]
    stack.wait_state(execution_id, {"FAILED"})
    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/executions/{execution_id}")
    text_of(driver, "#execution-state", "FAILED")
    text_of(driver, '#task-runs [data-task="flaky"]', "FAILED")
    assert not driver.find_elements(By.ID, "kill")  # ended: nothing to kill
    restart = wait(driver).until(ec.element_to_be_clickable((By.ID, "restart")))
    restart.send_keys(Keys.ENTER)  # by keyboard
    text_of(driver, "#execution-state", "SUCCESS")  # the failed task run again, followed live
    text_of(driver, '#task-runs [data-task="flaky"]', "2 attempt(s)")
    ended = stack.wait_state(execution_id, {"SUCCESS"})
    assert "RESTARTED" in [h["state"] for h in ended["state"]["histories"]]
    before = next(run for run in ended["taskRunList"] if run["taskId"] == "before")
    assert len(before["attempts"]) == 1  # the task that succeeded was not run again
    no_console_errors(driver, "the restarted execution's page")


def test_the_editor_marks_an_error_on_its_line_then_deploys_the_fix(
    stack: Stack, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/flows/new")
    source = wait(driver).until(ec.element_to_be_clickable((By.ID, "source")))
    source.clear()
    broken = (
        f"id: typed\nnamespace: {ns}\ntasks:\n  - id: oops\n"
        "    type: io.kestra.plugin.core.log.Logg\n    message: hi\n"
    )
    source.send_keys(broken)
    wait(driver).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, '.gutter .marked[data-line="5"]'))
    )
    text_of(driver, "#problems", "unknown task type 'io.kestra.plugin.core.log.Logg'")
    screenshot(driver, "flow-editor-error", tmp_path)

    source.send_keys("\b" * len("g\n    message: hi\n"), "\n    message: hi\n")
    wait(driver).until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".gutter .marked"))
    driver.find_element(By.ID, "save").click()
    text_of(driver, "main h1", f"{ns}.typed")
    assert stack.get(f"/flows/{ns}/typed").status == 200

    driver.get(f"{stack.base}/ui/#/flows?namespace={ns}")
    text_of(driver, "#flows", "typed")
    text_of(driver, "#total", "1 flow")
    screenshot(driver, "flows", tmp_path)
    no_console_errors(driver, "the flow pages")


def screenshot(driver: webdriver.Chrome, name: str, tmp_path: Path) -> None:
    """Keep what the page looked like: in ``KESTREAM_UI_SCREENSHOTS`` when set (the README's
    images come from there: ``docs/ui``), else next to the test's other files."""
    folder = Path(os.environ.get("KESTREAM_UI_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(folder / f"{name}.png"))


def test_the_shell_by_keyboard_in_both_themes_at_desktop_and_phone_widths(
    stack: Stack, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", sleepy(ns)).status == 200
    execution_id = stack.request("POST", f"/executions/{ns}/sleepy").json()["id"]
    driver.get(f"{stack.base}/ui/")
    wait(driver).until(ec.visibility_of_element_located((By.ID, "username")))
    active = driver.switch_to.active_element
    assert active.get_attribute("id") == "username"  # the form has the focus
    active.send_keys(USERNAME, Keys.TAB)
    driver.switch_to.active_element.send_keys(PASSWORD, Keys.ENTER)
    text_of(driver, "main h1", "Executions")
    screenshot(driver, "login-then-executions", tmp_path)

    reached: list[str] = []
    driver.refresh()  # the focus starts at the top of the page, as after a load
    text_of(driver, "main h1", "Executions")  # still logged in: the tab keeps the credentials
    for _ in range(8):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        reached.append(driver.switch_to.active_element.text)
        if reached[-1] == "Flows":
            break
    assert reached[0] == "Skip to content" and reached[-1] == "Flows", reached
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    text_of(driver, "main h1", "Flows")
    assert driver.find_element(By.CSS_SELECTOR, '[data-nav="flows"]').get_attribute("aria-current")

    def background() -> str:
        return str(driver.execute_script("return getComputedStyle(document.body).backgroundColor"))

    theme = driver.execute_script("return document.documentElement.dataset.theme")
    light_or_dark = background()
    driver.find_element(By.ID, "theme").send_keys(Keys.ENTER)
    switched = driver.execute_script("return document.documentElement.dataset.theme")
    assert {theme, switched} == {"light", "dark"}
    assert background() != light_or_dark

    driver.get(f"{stack.base}/ui/#/executions/{execution_id}")
    text_of(driver, "#execution-state", "RUNNING")
    screenshot(driver, f"execution-{switched}-1280", tmp_path)
    assert stack.post_yaml("/flows", flow_with_branches(ns, "words")).status == 200
    pages = (
        f"#/executions/{execution_id}",
        f"#/executions?namespace={ns}",
        "#/flows",
        f"#/flows/{ns}/branches",
        "#/flows/new",
        "#/logs",
        "#/cluster",
    )
    # Every page in both themes: no page wider than the screen; at 1280 px no table scrolls
    # either (on a phone a table may scroll inside its frame).
    for width, height in ((1280, 900), (390, 844)):
        driver.set_window_size(width, height)
        for _ in range(2):
            shown = driver.execute_script("return document.documentElement.dataset.theme")
            for page in pages:
                driver.get(f"{stack.base}/ui/{page}")
                wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, "main h1")))
                if page == "#/cluster":
                    wait(driver).until(
                        ec.presence_of_element_located((By.CSS_SELECTOR, "#members tbody tr"))
                    )
                overflow = driver.execute_script(
                    "return document.documentElement.scrollWidth"
                    " - document.documentElement.clientWidth"
                )
                assert overflow <= 0, f"{page} is wider than {width} px by {overflow} px"
                if width == 1280:
                    scrolling = driver.execute_script(
                        "return [...document.querySelectorAll('.table-wrap')]"
                        ".filter((e) => e.scrollWidth > e.clientWidth)"
                        ".map((e) => `${e.querySelector('table')?.id}: ${e.scrollWidth} px`)"
                    )
                    assert scrolling == [], f"{page}: tables wider than 1280 px: {scrolling}"
                if (width, page, shown) == (390, "#/flows", switched):
                    text_of(driver, "#flows", "branches")
                    screenshot(driver, f"flows-{switched}-phone", tmp_path)
            driver.find_element(By.ID, "theme").send_keys(Keys.ENTER)  # the other theme
            assert driver.execute_script("return document.documentElement.dataset.theme") != shown
    assert stack.request("DELETE", f"/executions/{execution_id}/kill").status == 202
    no_console_errors(driver, "the shell")


def typed_inputs(ns: str) -> str:
    return f"""\
id: typed
namespace: {ns}
inputs:
  - id: name
    type: STRING
  - id: count
    type: INT
    defaults: 3
  - id: loud
    type: BOOLEAN
    defaults: true
  - id: color
    type: ENUM
    values: [red, blue]
    defaults: blue
  - id: tags
    type: MULTISELECT
    values: [a, b, c]
  - id: at
    type: DATETIME
    required: false
  - id: payload
    type: JSON
    defaults: '{{"k": 1}}'
  - id: upload
    type: FILE
    required: false
  - id: cloud
    type: SELECT
    values: [AWS, GCP]
    defaults: AWS
  - id: region
    type: STRING
    dependsOn:
      inputs: [cloud]
      condition: "{{{{ inputs.cloud == 'AWS' }}}}"
  - id: service
    type: SELECT
    expression: "{{{{ {{'AWS': ['ec2', 's3'], 'GCP': ['gce']}}[inputs.cloud] }}}}"
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "hi {{{{ inputs.name }}}} x{{{{ inputs.count }}}} {{{{ inputs.color }}}}"
"""


def retried_loop_paused(ns: str, marker: Path) -> str:
    return f"""\
id: approvals
namespace: {ns}
tasks:
  - id: flaky
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - test -f {marker} || (touch {marker}; exit 1)
    retry:
      type: constant
      interval: PT0.1S
      maxAttempt: 2
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: ["x", "y"]
    tasks:
      - id: item
        type: io.kestra.plugin.core.log.Log
        message: "{{{{ taskrun.value }}}}"
  - id: approve
    type: io.kestra.plugin.core.flow.Pause
    onResume:
      - id: reason
        type: STRING
      - id: approved
        type: BOOLEAN
        defaults: true
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ outputs.approve.onResume.reason }}}}"
"""


def test_the_execute_form_from_typed_inputs_shows_an_error_then_starts_one(
    stack: Stack, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", typed_inputs(ns)).status == 200
    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/flows/{ns}/typed")
    wait(driver).until(ec.presence_of_element_located((By.ID, "input-name")))
    loud = driver.find_element(By.ID, "input-loud")
    assert (loud.get_attribute("type"), loud.get_attribute("role")) == ("checkbox", "switch")
    assert loud.is_selected()  # its default
    assert driver.find_element(By.ID, "input-count").get_attribute("value") == "3"
    assert Select(driver.find_element(By.ID, "input-color")).first_selected_option.text == "blue"
    assert driver.find_element(By.ID, "input-at").get_attribute("type") == "datetime-local"
    assert driver.find_element(By.ID, "input-upload").get_attribute("type") == "file"
    assert '"k": 1' in (driver.find_element(By.ID, "input-payload").get_attribute("value") or "")
    assert "(required)" in driver.find_element(By.CSS_SELECTOR, 'label[for="input-name"]').text

    no_console_errors(driver, "the flow page")
    driver.find_element(By.ID, "execute-submit").click()  # no name: the API refuses it
    text_of(driver, '[data-input="name"] .field-error', "Invalid input 'name'")
    only_the_refusal(driver, f"/executions/{ns}/typed")
    assert driver.find_element(By.ID, "input-name").get_attribute("aria-invalid") == "true"
    screenshot(driver, "flow-execute-error", tmp_path)

    def choices(input_id: str) -> list[str]:
        options = driver.find_elements(By.CSS_SELECTOR, f"#input-{input_id} option")
        return [o.get_attribute("value") or "" for o in options if o.get_attribute("value")]

    # The validate route's answer: the choices the expression renders, dependsOn applied.
    wait(driver).until(lambda _: choices("service") == ["ec2", "s3"])
    assert driver.find_element(By.ID, "input-region").is_displayed()
    Select(driver.find_element(By.ID, "input-cloud")).select_by_value("GCP")
    wait(driver).until(lambda _: choices("service") == ["gce"])
    assert not driver.find_element(By.ID, "input-region").is_displayed()
    Select(driver.find_element(By.ID, "input-service")).select_by_value("gce")

    driver.find_element(By.ID, "input-name").send_keys("Ada")
    tags = Select(driver.find_element(By.ID, "input-tags"))
    tags.select_by_value("a")
    tags.select_by_value("c")
    loud.send_keys(Keys.SPACE)  # the switch, by keyboard
    driver.find_element(By.ID, "execute-submit").click()
    text_of(driver, "#execution-state", "SUCCESS")  # the new execution's page
    execution_id = driver.find_element(By.ID, "execution-id").text
    inputs = stack.get(f"/executions/{execution_id}").json()["inputs"]
    assert inputs["name"] == "Ada" and inputs["count"] == 3 and inputs["loud"] is False
    assert inputs["tags"] == ["a", "c"] and inputs["color"] == "blue"
    assert inputs["payload"] == {"k": 1}
    assert inputs["cloud"] == "GCP" and inputs["service"] == "gce" and "region" not in inputs
    text_of(driver, "#logs", "hi Ada x3 blue")
    no_console_errors(driver, "the execute form")


def test_the_gantt_shows_retries_and_loop_values_then_the_pause_resumes_from_its_form(
    stack: Stack, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", retried_loop_paused(ns, tmp_path / "tried")).status == 200
    execution_id = stack.request("POST", f"/executions/{ns}/approvals").json()["id"]
    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/executions/{execution_id}")
    text_of(driver, "#execution-state", "PAUSED")
    flaky = driver.find_element(By.CSS_SELECTOR, '#gantt [data-task="flaky"]')
    assert flaky.get_attribute("data-attempts") == "2"
    attempts = flaky.find_elements(By.CSS_SELECTOR, ".gantt-attempt")
    assert [a.get_attribute("data-state") for a in attempts] == ["FAILED", "SUCCESS"]
    first_try, retry = (a.rect for a in attempts)
    assert retry["x"] >= first_try["x"] + first_try["width"] - 1  # the retry comes after
    track = flaky.find_element(By.CSS_SELECTOR, ".gantt-track").rect
    assert 0 < first_try["width"] < track["width"]
    labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, '#gantt [data-task="item"]')]
    assert labels == ["item [x]", "item [y]"], labels
    text_of(driver, '#gantt [data-task="approve"]', "approve")
    assert (
        driver.find_element(By.CSS_SELECTOR, '#gantt [data-task="approve"]').get_attribute(
            "data-state"
        )
        == "PAUSED"
    )

    tab_stops = driver.find_elements(By.CSS_SELECTOR, '#gantt [tabindex="0"]')
    assert [row.get_attribute("data-task") for row in tab_stops] == ["flaky"]  # one Tab stop
    driver.execute_script("arguments[0].focus()", flaky)
    ActionChains(driver).send_keys(Keys.ARROW_DOWN).perform()
    assert driver.switch_to.active_element.get_attribute("data-task") == "each"
    assert "attempt(s)" in (driver.switch_to.active_element.get_attribute("aria-label") or "")

    wait(driver).until(ec.element_to_be_clickable((By.ID, "resume"))).click()
    reason = wait(driver).until(ec.element_to_be_clickable((By.ID, "resume-reason")))
    assert driver.switch_to.active_element == reason  # the form takes the focus
    assert driver.find_element(By.ID, "resume-approved").get_attribute("role") == "switch"
    screenshot(driver, "execution-gantt-resume", tmp_path)
    no_console_errors(driver, "the paused execution's page")
    driver.find_element(By.ID, "resume-submit").click()  # no reason: refused, beside it
    text_of(driver, '[data-input="reason"] .field-error', "Invalid input 'reason'")
    only_the_refusal(driver, f"/executions/{execution_id}/resume")
    reason.send_keys("looks good")
    driver.find_element(By.ID, "resume-submit").click()
    text_of(driver, "#execution-state", "SUCCESS")  # followed live
    text_of(driver, '#gantt [data-task="after"]', "after")
    outputs = stack.get(f"/executions/{execution_id}").json()["taskRunList"]
    approve = next(run for run in outputs if run["taskId"] == "approve")
    assert approve["outputs"]["onResume"] == {"reason": "looks good", "approved": True}
    no_console_errors(driver, "the execution page's Gantt and Resume")


def lag_reported(stack: Stack, role: str) -> set[int]:
    """The partitions whose lag the processes of ``role`` report (each from its own reads)."""
    members = stack.get("/cluster").json()["members"]
    return {int(p) for m in members if m["role"] == role for p in m["partitionLag"]}


def test_the_cluster_page_shows_each_role_with_its_partitions(
    stack: Stack, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    cluster = stack.get("/cluster").json()
    assert {m["role"] for m in cluster["members"]} >= {"api", "executor", "worker", "scheduler"}
    assert cluster["partitions"] == PARTITIONS
    # A partition's lag is measured from the records its owner reads there: executions (each
    # with a task the worker runs) are started until every partition of both roles has one.
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", shell_steps(ns)).status == 200
    every = set(range(PARTITIONS))
    deadline = time.monotonic() + 3 * WAIT_S
    while not all(lag_reported(stack, role) == every for role in ("executor", "worker")):
        reported = {role: lag_reported(stack, role) for role in ("executor", "worker")}
        assert time.monotonic() < deadline, f"partitions without a lag reported: {reported}"
        load = [stack.request("POST", f"/executions/{ns}/shell").json()["id"] for _ in range(4)]
        for execution_id in load:
            stack.wait_state(execution_id, {"SUCCESS"})
        time.sleep(0.5)  # the processes publish their figures with their heartbeats

    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/cluster")
    text_of(driver, "#cluster-status", "UP")
    text_of(driver, '#members tr[data-role="executor"]', "UP")
    worker = driver.find_element(By.CSS_SELECTOR, '#members tr[data-role="worker"]')
    assert " / " in worker.find_element(By.CSS_SELECTOR, "[data-slots]").text  # in use / slots
    assert worker.find_element(By.CSS_SELECTOR, "[data-dead-letters]").text.isdigit()
    assert worker.find_elements(By.CSS_SELECTOR, "svg.spark polyline")  # lag, jobs running

    def lags(role: str) -> list[str]:
        rows = driver.find_elements(By.CSS_SELECTOR, f"#partitions-{role} tbody tr")
        return [row.find_element(By.CSS_SELECTOR, "[data-lag]").text for row in rows]

    for role in ("executor", "worker"):
        assert "unassigned" not in driver.find_element(By.ID, f"partitions-{role}").text
        # Every partition with the lag its owner measured: a number, never the "—" of none.
        try:
            wait(driver).until(
                lambda _, role=role: (
                    len(lags(role)) == PARTITIONS and all(lag.isdigit() for lag in lags(role))
                )
            )
        except TimeoutException:
            raise AssertionError(f"{role} partitions without a lag: {lags(role)}") from None
    for member in stack.get("/cluster").json()["members"]:
        if member["role"] in ("executor", "worker"):
            checks = member["checks"].values()
            owned = {str(p) for check in checks for p in check.get("partitions", [])}
            assert member["partitionLag"] and set(member["partitionLag"]) <= owned, member
    assert not driver.find_elements(By.ID, "memory-only")  # durable by default

    # Work done while the page is open shows in the processes' throughput and latency.
    started = [stack.request("POST", f"/executions/{ns}/shell").json()["id"] for _ in range(4)]
    for execution_id in started:
        stack.wait_state(execution_id, {"SUCCESS"})

    def shown(role: str, cell: str) -> list[str]:
        rows = driver.find_elements(By.CSS_SELECTOR, f'#activity tr[data-role="{role}"]')
        return [row.find_element(By.CSS_SELECTOR, cell).text for row in rows]

    def moved(role: str, rate: str, latency: str) -> bool:
        rates = shown(role, "[data-throughput]")
        latencies = shown(role, f'[data-latency-of="{latency}"]')
        return any(
            re.search(rf"(?<![\d.])(?!0/s)[\d.]+/s (?:{rate})", text) for text in rates
        ) and any(re.search(r"\d (µs|ms|s) / [\d.]+ (µs|ms|s)", text) for text in latencies)

    wait(driver).until(lambda _: moved("executor", "task runs done|executions ended", "step"))
    wait(driver).until(lambda _: moved("worker", "task runs done", "taskRun"))
    worker = driver.find_element(By.CSS_SELECTOR, '#activity tr[data-role="worker"]')
    assert worker.find_elements(By.CSS_SELECTOR, "[data-latency] svg.spark polyline")

    def samples_drawn(_: Any) -> bool:  # one point per record read: the work, then its end
        line = driver.find_element(
            By.CSS_SELECTOR, '#activity tr[data-role="worker"] [data-throughput] polyline'
        )
        return len((line.get_attribute("points") or "").split()) >= 3

    more = [stack.request("POST", f"/executions/{ns}/shell").json()["id"] for _ in range(4)]
    wait(driver).until(samples_drawn)
    driver.set_window_size(1280, 1000)  # the processes and their throughput in one image
    screenshot(driver, "cluster", tmp_path)
    for execution_id in more:
        stack.wait_state(execution_id, {"SUCCESS"})
    no_console_errors(driver, "the cluster page")


def test_the_cluster_page_warns_when_the_embedded_broker_is_memory_only(
    driver: webdriver.Chrome, tmp_path: Path
) -> None:
    """A second ``kestream standalone`` of its own, on its embedded broker without durability:
    the module's stack runs on the broker under test, which has nothing to warn of, so this
    test runs once, whatever ``--kafka-backend`` says."""
    env = {"KESTREAM_STANDALONE_DURABLE": "false"}
    with contextmanager(start_stack)(None, "kestream.", tmp_path, env) as stack:
        broker = stack.get("/cluster").json()["broker"]
        assert broker == {"kind": "tansu", "standalone": True, "memoryOnly": True}
        log_in(driver, stack)
        driver.find_element(By.CSS_SELECTOR, '[data-nav="cluster"]').click()
        text_of(driver, "#broker", "tansu (kestream standalone)")
        warning = wait(driver).until(ec.visibility_of_element_located((By.ID, "memory-only")))
        assert warning.get_attribute("role") == "alert"  # announced, not only drawn
        assert "memory-only" in warning.text
        assert "KESTREAM_STANDALONE_DURABLE=false" in warning.text  # and what to change
        screenshot(driver, "cluster-memory-only", tmp_path)
        no_console_errors(driver, "the cluster page of a memory-only standalone")


def shell_steps(ns: str) -> str:
    return f"""\
id: shell
namespace: {ns}
tasks:
  - id: first
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ["true"]
  - id: second
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ["true"]
"""


def labelled_sleep(stack: Stack, ns: str, label: str | None) -> str:
    query = f"?labels={label}" if label else ""
    started = stack.request("POST", f"/executions/{ns}/sleepy{query}")
    assert started.status == 200, started.body
    execution_id = str(started.json()["id"])
    stack.wait_state(execution_id, {"RUNNING"})
    return execution_id


def bulk(driver: webdriver.Chrome, action: str, expected: str) -> None:
    """Press a bulk action's button, confirm it by keyboard, and read its summary."""
    driver.find_element(By.ID, f"bulk-{action}").click()
    confirm = wait(driver).until(ec.element_to_be_clickable((By.ID, "bulk-confirm-yes")))
    assert driver.switch_to.active_element == confirm  # the confirmation takes the focus
    confirm.send_keys(Keys.ENTER)
    text_of(driver, "#bulk-result", expected)


def test_bulk_kill_restart_and_delete_of_executions_selected_under_a_label_filter(
    stack: Stack, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", sleepy(ns)).status == 200
    tagged = [labelled_sleep(stack, ns, "team:ui") for _ in range(3)]
    other = labelled_sleep(stack, ns, None)
    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/executions?namespace={ns}")
    text_of(driver, "#total", "4 executions")
    filter_executions(driver, labels="team:ui")
    text_of(driver, "#total", "3 executions")
    assert "labels=team%3Aui" in driver.current_url
    assert not driver.find_elements(By.CSS_SELECTOR, f'#executions tr[data-id="{other}"]')

    select_all = driver.find_element(By.ID, "select-all")
    select_all.send_keys(Keys.SPACE)  # by keyboard
    text_of(driver, "#selected-count", "3 selected")
    # The list redraws its rows every 1.5 s: a row's control that has the focus gets it back.
    for control in (f'input[data-select="{tagged[1]}"]', f'tr[data-id="{tagged[1]}"] a'):
        focused = driver.find_element(By.CSS_SELECTOR, f"#executions {control}")
        driver.execute_script("arguments[0].focus()", focused)
        wait(driver).until(ec.staleness_of(focused))  # its row redrawn by the refresh
        redrawn = driver.find_element(By.CSS_SELECTOR, f"#executions {control}")
        assert driver.switch_to.active_element == redrawn, control
    checked = driver.find_elements(By.CSS_SELECTOR, "#executions input[data-select]:checked")
    assert len(checked) == 3  # the selection stays too
    screenshot(driver, "executions-bulk", tmp_path)
    bulk(driver, "kill", "Kill: 3 kill requested")
    for execution_id in tagged:
        stack.wait_state(execution_id, {"KILLED"})
    assert stack.get(f"/executions/{other}").json()["state"]["current"] == "RUNNING"
    for execution_id in tagged:
        text_of(driver, f'#executions tr[data-id="{execution_id}"] [data-state]', "KILLED")

    for execution_id in tagged[:2]:
        driver.find_element(By.CSS_SELECTOR, f'input[data-select="{execution_id}"]').click()
    text_of(driver, "#selected-count", "2 selected")
    bulk(driver, "restart", "Restart: 2 restarted")
    for execution_id in tagged[:2]:
        restarted = stack.wait_state(execution_id, {"RUNNING"})
        assert "RESTARTED" in [h["state"] for h in restarted["state"]["histories"]]
    assert stack.get(f"/executions/{tagged[2]}").json()["state"]["current"] == "KILLED"

    # A delete of running executions is refused by the API, each counted with its reason.
    driver.find_element(By.ID, "select-all").click()
    text_of(driver, "#selected-count", "3 selected")
    bulk(driver, "delete", "Delete: 1 deleted, 2 refused")
    text_of(driver, "#bulk-confirm", "still running")
    assert stack.get(f"/executions/{tagged[2]}").status == 404
    only_the_refusal(driver, "/executions/", 409)
    text_of(driver, "#selected-count", "2 selected")  # the refused ones stay selected
    bulk(driver, "kill", "Kill: 2 kill requested")
    for execution_id in tagged[:2]:
        stack.wait_state(execution_id, {"KILLED"})
    # Done: no longer selected (the summary and the selection are drawn together).
    assert driver.find_element(By.ID, "selected-count").text == ""
    assert driver.find_element(By.ID, "bulk-delete").get_attribute("disabled") is not None
    driver.find_element(By.ID, "select-all").click()
    text_of(driver, "#selected-count", "2 selected")
    bulk(driver, "delete", "Delete: 2 deleted")
    for execution_id in tagged[:2]:
        assert stack.get(f"/executions/{execution_id}").status == 404
    text_of(driver, "#total", "0 executions")
    no_console_errors(driver, "the executions list's bulk actions")

    # The session ends (the API answers 401) under a bulk action: its summary survives the
    # login screen and shows after logging in again, with what it did not do still selected.
    driver.get(f"{stack.base}/ui/#/executions?namespace={ns}")
    text_of(driver, "#total", "1 execution")
    driver.find_element(By.ID, "select-all").click()
    text_of(driver, "#selected-count", "1 selected")
    driver.find_element(By.ID, "bulk-kill").click()
    wait(driver).until(ec.element_to_be_clickable((By.ID, "bulk-confirm-yes")))
    driver.execute_script(  # credentials the API no longer takes, then the confirmation
        "sessionStorage.setItem('kestream.authorization', 'Bearer revoked');"
        "document.getElementById('bulk-confirm-yes').click();"
    )
    wait(driver).until(ec.visibility_of_element_located((By.ID, "username")))
    assert not driver.find_elements(By.ID, "bulk-result")
    only_the_refusal(driver, "/executions", 401)
    driver.find_element(By.ID, "username").send_keys(USERNAME)
    driver.find_element(By.ID, "password").send_keys(PASSWORD, Keys.ENTER)
    text_of(driver, "#bulk-result", "Kill: 0 kill requested, 1 not sent")
    text_of(driver, "#selected-count", "1 selected")
    assert stack.get(f"/executions/{other}").json()["state"]["current"] == "RUNNING"
    bulk(driver, "kill", "Kill: 1 kill requested")
    stack.wait_state(other, {"KILLED"})
    no_console_errors(driver, "the bulk action sent again after logging in")

    # A kept summary is this user's only: logging out forgets it, another user's is not
    # shown, and a value that does not read as one is dropped (the page still shows).
    def kept_then_opened(value: object) -> None:
        driver.execute_script(
            "sessionStorage.setItem('kestream.bulk-summary', arguments[0]);",
            value if isinstance(value, str) else json.dumps(value),
        )
        driver.get(f"{stack.base}/ui/#/executions?namespace={ns}")
        driver.refresh()
        text_of(driver, "#total", "1 execution")
        assert not driver.find_elements(By.ID, "bulk-result")
        assert driver.find_element(By.ID, "selected-count").text == ""

    mine = {"name": "kill", "done": [], "refused": [], "unsent": [other]}
    kept_then_opened('{"name": "kill", "refused": [')
    kept_then_opened({"name": "kill", "done": [], "refused": [[other]], "unsent": []})
    kept_then_opened({**mine, "owner": "user:someone-else"})
    driver.execute_script(
        "sessionStorage.setItem('kestream.bulk-summary', arguments[0]);",
        json.dumps({**mine, "owner": f"user:{USERNAME}"}),
    )
    driver.find_element(By.ID, "logout").click()
    log_in(driver, stack)  # it lands on the executions page, which shows a kept summary at once
    assert not driver.find_elements(By.ID, "bulk-result")
    driver.get(f"{stack.base}/ui/#/executions?namespace={ns}")
    text_of(driver, "#total", "1 execution")
    assert driver.find_element(By.ID, "selected-count").text == ""
    no_console_errors(driver, "the executions page after a kept summary it did not show")


def steps(ns: str) -> str:
    return f"""\
id: steps
namespace: {ns}
tasks:
  - id: first
    type: io.kestra.plugin.core.log.Log
    message: apple one
  - id: second
    type: io.kestra.plugin.core.log.Log
    message: banana two
  - id: file
    type: io.kestra.plugin.core.storage.Write
    content: written by the flow
    extension: .txt
  - id: big
    type: io.kestra.plugin.core.debug.Return
    format: "{"z" * 6000}"
"""


def downloaded(driver: webdriver.Chrome, folder: Path, name: str) -> bytes:
    """The file Chromium saved in ``folder`` as ``name`` (waited for: it is renamed to its
    name once whole)."""
    path = folder / name
    wait(driver).until(lambda _: path.is_file())
    return path.read_bytes()


def test_replay_from_a_task_run_log_search_and_file_downloads_on_the_execution_page(
    stack: Stack, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", steps(ns)).status == 200
    execution_id = stack.request("POST", f"/executions/{ns}/steps").json()["id"]
    ended = stack.wait_state(execution_id, {"SUCCESS"})
    runs = {run["taskId"]: run for run in ended["taskRunList"]}
    file_uri = runs["file"]["outputs"]["uri"]
    marker = runs["big"]["outputs"]
    ref = marker.get("@ref") or marker["value"]["@ref"]  # the whole map, or its one entry
    assert file_uri.startswith("kestra://") and ref.startswith("kestra://")

    saved = tmp_path / "downloads"
    saved.mkdir()
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(saved)}
    )
    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/executions/{execution_id}")
    text_of(driver, "#logs", "banana two")
    search = driver.find_element(By.ID, "log-search")
    search.send_keys("BANANA")
    text_of(driver, "#log-count", "1 of 2 lines")
    shown = [
        e.text for e in driver.find_elements(By.CSS_SELECTOR, "#logs .log") if e.is_displayed()
    ]
    assert len(shown) == 1 and "banana two" in shown[0], shown
    search.clear()
    search.send_keys(Keys.SPACE, Keys.BACKSPACE)  # an input event with the box empty
    wait(driver).until(
        lambda d: (
            len([e for e in d.find_elements(By.CSS_SELECTOR, "#logs .log") if e.is_displayed()])
            == 2
        )
    )

    link = driver.find_element(
        By.CSS_SELECTOR, f'#task-runs [data-task="file"] a[data-uri="{file_uri}"]'
    )
    assert "/file?path=kestra%3A%2F%2F" in (link.get_attribute("href") or "")
    link.click()
    name = file_uri.rsplit("/", 1)[1]
    assert downloaded(driver, saved, name) == b"written by the flow"
    big = driver.find_element(By.CSS_SELECTOR, f'#task-runs [data-task="big"] a[data-uri="{ref}"]')
    big.click()
    content = downloaded(driver, saved, ref.rsplit("/", 1)[1])
    assert b"z" * 6000 in content, content[:200]
    screenshot(driver, "execution-files-logs", tmp_path)

    driver.find_element(By.ID, "replay").click()
    chosen = wait(driver).until(ec.element_to_be_clickable((By.ID, "replay-from")))
    assert driver.switch_to.active_element == chosen
    Select(chosen).select_by_value(runs["second"]["id"])
    driver.find_element(By.ID, "replay-submit").click()
    wait(driver).until(lambda d: execution_id not in d.current_url)
    replay_id = driver.current_url.rsplit("/", 1)[1]
    text_of(driver, "#execution-id", replay_id)
    text_of(driver, "#execution-state", "SUCCESS")
    replayed = stack.wait_state(replay_id, {"SUCCESS"})
    assert replayed["parentId"] == execution_id
    frames = stack.events(f"/logs/{replay_id}/follow")  # ends once every line is indexed
    lines = [line["message"] for frame_id, line in frames if frame_id == "progress"]
    assert "banana two" in lines and "apple one" not in lines  # first kept, second ran again
    no_console_errors(driver, "the execution page's replay, search and files")


def flow_with_branches(ns: str, message: str) -> str:
    return f"""\
id: branches
namespace: {ns}
# a comment
tasks:
  - id: check
    type: io.kestra.plugin.core.flow.If
    condition: "{{{{ 1 == 1 }}}}"
    then:
      - id: yes
        type: io.kestra.plugin.core.log.Log
        message: {message}
    else:
      - id: no
        type: io.kestra.plugin.core.log.Log
        message: no
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: done
  - id: graph
    type: io.kestra.plugin.core.flow.Dag
    tasks:
      - task:
          id: d1
          type: io.kestra.plugin.core.log.Log
          message: d1
      - task:
          id: d2
          type: io.kestra.plugin.core.log.Log
          message: d2
        dependsOn: [d1]
errors:
  - id: alert
    type: io.kestra.plugin.core.log.Log
    message: failed
finally:
  - id: cleanup
    type: io.kestra.plugin.core.log.Log
    message: cleanup
triggers:
  - id: hourly
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 * * * *"
"""


def test_the_flow_page_draws_its_diagram_triggers_revision_diff_and_highlighting(
    stack: Stack, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", flow_with_branches(ns, "first words")).status == 200
    updated = stack.request(
        "PUT",
        f"/flows/{ns}/branches",
        flow_with_branches(ns, "second words"),
        content_type="application/x-yaml",
    )
    assert updated.status == 200 and updated.json()["revision"] == 2
    deadline = time.monotonic() + WAIT_S
    while not (trigger := stack.get(f"/triggers/{ns}/branches").json()["results"]):
        assert time.monotonic() < deadline, "the scheduler never recorded the trigger"
        time.sleep(0.2)
    next_fire = trigger[0]["nextExecutionDate"]
    assert next_fire

    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/flows/{ns}/branches")
    wait(driver).until(ec.presence_of_element_located((By.ID, "diagram")))
    lanes = driver.find_elements(By.CSS_SELECTOR, "#diagram [data-lane]")
    assert [lane.get_attribute("data-lane") for lane in lanes] == ["tasks", "errors", "finally"]
    check = driver.find_element(By.CSS_SELECTOR, '#diagram [data-lane="tasks"] [data-task="check"]')
    branches = check.find_elements(By.CSS_SELECTOR, ":scope > .branches > [data-branch]")
    assert [b.get_attribute("data-branch") for b in branches] == ["then", "else"]
    assert branches[0].find_element(By.CSS_SELECTOR, '[data-task="yes"]')
    assert branches[1].find_element(By.CSS_SELECTOR, '[data-task="no"]')
    main_line = driver.find_elements(By.CSS_SELECTOR, '#diagram [data-lane="tasks"] > ol > li')
    assert [n.get_attribute("data-task") for n in main_line] == ["check", "after", "graph"]
    graph = driver.find_element(By.CSS_SELECTOR, '#diagram [data-task="graph"]')
    assert "after d1" in graph.find_element(By.CSS_SELECTOR, '[data-task="d2"]').text
    assert driver.find_element(By.CSS_SELECTOR, '#diagram [data-lane="errors"] [data-task="alert"]')

    row = driver.find_element(By.CSS_SELECTOR, '#triggers tr[data-trigger="hourly"]')
    assert row.find_element(By.CSS_SELECTOR, "[data-next]").get_attribute("data-next") == next_fire
    assert "Schedule" in row.text

    text_of(driver, "#diff-summary", "2 lines changed")
    removed = driver.find_elements(By.CSS_SELECTOR, '#revision-diff [data-op="-"]')
    added = driver.find_elements(By.CSS_SELECTOR, '#revision-diff [data-op="+"]')
    assert ["first words" in e.text for e in removed] == [True]
    assert ["second words" in e.text for e in added] == [True]
    Select(driver.find_element(By.ID, "revision-from")).select_by_value("2")
    text_of(driver, "#diff-summary", "The same source")
    Select(driver.find_element(By.ID, "revision-from")).select_by_value("1")
    text_of(driver, "#diff-summary", "2 lines changed")  # what the screenshot shows

    keys = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".highlight .y-key")]
    assert keys[:3] == ["id", "namespace", "tasks"], keys
    assert driver.find_element(By.CSS_SELECTOR, ".highlight .y-comment").text == "# a comment"
    assert driver.find_element(By.CSS_SELECTOR, ".highlight .y-expr").text == "{{ 1 == 1 }}"
    source = driver.find_element(By.ID, "source")
    source.send_keys(Keys.CONTROL, Keys.END)
    source.send_keys("\n# typed")
    wait(driver).until(
        lambda d: (
            "# typed" in [e.text for e in d.find_elements(By.CSS_SELECTOR, ".highlight .y-comment")]
        )
    )
    driver.set_window_size(1280, 1800)  # the diagram, the triggers and the diff in one image
    driver.execute_script("document.getElementById('diagram').scrollIntoView()")
    screenshot(driver, "flow-diagram-revisions", tmp_path)
    no_console_errors(driver, "the flow page's diagram, triggers and revisions")


def logging(ns: str, flow_id: str, token: str) -> str:
    return f"""\
id: {flow_id}
namespace: {ns}
tasks:
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: "{token} from {flow_id}"
  - id: quiet
    type: io.kestra.plugin.core.log.Log
    level: DEBUG
    message: "{token} quietly"
"""


def test_the_logs_page_searches_the_lines_of_every_execution(
    stack: Stack, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    token = f"needle{uuid.uuid4().hex[:6]}"
    ids = []
    for flow_id in ("alpha", "beta"):
        assert stack.post_yaml("/flows", logging(ns, flow_id, token)).status == 200
        ids.append(stack.request("POST", f"/executions/{ns}/{flow_id}").json()["id"])
    for execution_id in ids:
        stack.wait_state(execution_id, {"SUCCESS"})
    # Log lines reach the index from their own topic: an execution's end can be indexed
    # before them, so the search is asked until every line is in (or the wait is over).
    deadline = time.monotonic() + WAIT_S
    while (answer := stack.get(f"/logs/search?q={token.upper()}&namespace={ns}").json())[
        "total"
    ] < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answer["total"] == 4  # the route itself: text in any case, every execution
    kestra_form = (
        f"/logs/search?filters[q][EQUALS]={token}&filters[namespace][PREFIX]={ns}"
        "&filters[level][EQUALS]=INFO&filters[timeRange][EQUALS]=PT1H"
    )
    assert stack.get(kestra_form).json()["total"] == 2  # Kestra's filters[...] form: INFO up
    assert stack.get("/logs/search?timeRange=soon").status == 400
    assert stack.get("/logs/search?minLevel=LOUD").status == 400

    log_in(driver, stack)
    driver.find_element(By.CSS_SELECTOR, '[data-nav="logs"]').click()
    text_of(driver, "main h1", "Logs")
    driver.find_element(By.ID, "f-q").send_keys(token)
    Select(driver.find_element(By.ID, "f-level")).select_by_value("INFO")
    driver.find_element(By.ID, "f-namespace").send_keys(ns, Keys.ENTER)
    text_of(driver, "#total", "2 lines")
    # A total the index stopped counting at (X-Kestream-Total-Capped) reads as a lower bound,
    # with the executions page's words: what the logs page draws from that header.
    capped = driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        import("./list_page.js").then((m) => {
          const pager = document.createElement("nav");
          m.drawPager(pager, "#/logs", new URLSearchParams(), 10000, 50, true);
          const headers = new Headers({"X-Kestream-Total-Capped": "true"});
          done([m.totalText(10000, true, "line"), m.totalCapped(new Response("", {headers})),
                m.totalCapped(new Response("")), pager.textContent]);
        });"""
    )
    assert capped == ["10000+ lines", True, False, "Page 1 of 200+Next"]
    # The executions page says why a short text's total is capped: only the newest were read.
    hints = driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        import("./executions_page.js").then((m) => done(
          ["q=a1", "q=%20é%20", "q=abc", "q=a1&labels=k:v", ""].map(
            (query) => m.shortTextHint(new URLSearchParams(query)) ?? null)));"""
    )
    short = "newest 20 000 executions searched: type 3 characters or more to search them all"
    assert hints == [short, short, None, None, None]
    drawn = driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        import("./list_page.js").then(async (m) => {
          const real = window.fetch;
          const totals = [];
          for (const capped of [true, false]) {
            const headers = capped ? {"X-Kestream-Total-Capped": "true"} : {};
            window.fetch = async () => new Response('{"results": [], "total": 7}', {headers});
            const parts = m.listParts();
            const list = {route: "#/executions", query: new URLSearchParams(), size: 25,
                          noun: "execution", stopped: () => false, cappedHint: "why"};
            await m.drawSearch("/executions/search", parts, list, () => {});
            totals.push(parts.total.textContent);
          }
          window.fetch = real;
          done(totals);
        });"""
    )
    assert drawn == ["7+ executions (why)", "7 executions"]
    shown = driver.find_element(By.ID, "log-results").text
    assert f"{token} from alpha" in shown and f"{token} from beta" in shown
    assert "quietly" not in shown
    assert f"q={token}" in driver.current_url
    screenshot(driver, "logs", tmp_path)
    links = driver.find_elements(By.CSS_SELECTOR, "#log-results a")
    assert sorted(link.text for link in links) == sorted(ids)
    target = links[0].text
    links[0].send_keys(Keys.ENTER)  # by keyboard
    text_of(driver, "#execution-id", target)
    no_console_errors(driver, "the logs page")


def greeting(ns: str) -> str:
    return f"""\
id: greet
namespace: {ns}
inputs:
  - id: name
    type: STRING
  - id: times
    type: INT
    defaults: 1
  - id: polite
    type: BOOLEAN
    defaults: false
  - id: doc
    type: FILE
tasks:
  - id: first
    type: io.kestra.plugin.core.log.Log
    message: "first for {{{{ inputs.name }}}}"
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: >-
      hello {{{{ inputs.name }}}} x{{{{ inputs.times }}}} {{{{ inputs.polite }}}}:
      {{{{ read(inputs.doc) }}}}
"""


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of text ``fields`` and uploaded ``files`` (name, bytes)."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    for key, (filename, content) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; '
            f'filename="{filename}"\r\nContent-Type: text/plain\r\n\r\n'
        )
        parts.append(head.encode() + content + b"\r\n")
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_replay_with_changed_inputs_from_a_form_of_the_flows_inputs(
    stack: Stack, driver: webdriver.Chrome
) -> None:
    ns = f"it.ui.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", greeting(ns)).status == 200
    body, content_type = multipart(
        {"name": "Ada", "times": "2"}, {"doc": ("doc.txt", b"the uploaded text")}
    )
    started = stack.request("POST", f"/executions/{ns}/greet", body, content_type=content_type)
    assert started.status == 200, started.body
    execution_id = started.json()["id"]
    doc = started.json()["inputs"]["doc"]
    assert doc.startswith("kestra://")
    ended = stack.wait_state(execution_id, {"SUCCESS"})
    hello = next(run for run in ended["taskRunList"] if run["taskId"] == "hello")

    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/executions/{execution_id}")
    text_of(driver, "#logs", "hello Ada x2 false: the uploaded text")
    wait(driver).until(ec.element_to_be_clickable((By.ID, "replay"))).click()
    Select(wait(driver).until(ec.element_to_be_clickable((By.ID, "replay-from")))).select_by_value(
        hello["id"]
    )
    change = driver.find_element(By.ID, "replay-change-inputs")
    change.send_keys(Keys.SPACE)  # the switch, by keyboard
    name = wait(driver).until(ec.element_to_be_clickable((By.ID, "replay-input-name")))
    # Filled with the execution's own values, not the flow's defaults.
    assert name.get_attribute("value") == "Ada"
    assert driver.find_element(By.ID, "replay-input-times").get_attribute("value") == "2"
    polite = driver.find_element(By.ID, "replay-input-polite")
    assert polite.get_attribute("role") == "switch" and not polite.is_selected()
    # The stored file is kept unless another is chosen: the picker is not required.
    assert driver.find_element(By.ID, "replay-input-doc").get_attribute("required") is None
    no_console_errors(driver, "the replay form")

    name.clear()  # a required input left empty: the API refuses it, beside the field
    driver.find_element(By.ID, "replay-submit").click()
    text_of(driver, '#replay-form [data-input="name"] .field-error', "Invalid input 'name'")
    assert name.get_attribute("aria-invalid") == "true"
    only_the_refusal(driver, f"/executions/{execution_id}/replay-with-inputs")
    assert execution_id in driver.current_url  # nothing was replayed

    name.send_keys("Grace")
    polite.send_keys(Keys.SPACE)
    driver.find_element(By.ID, "replay-submit").click()
    wait(driver).until(lambda d: execution_id not in d.current_url)
    replay_id = driver.current_url.rsplit("/", 1)[1]
    text_of(driver, "#execution-id", replay_id)
    text_of(driver, "#execution-state", "SUCCESS")
    text_of(driver, "#logs", "hello Grace x2 true: the uploaded text")
    replayed = stack.wait_state(replay_id, {"SUCCESS"})
    assert replayed["parentId"] == execution_id
    # The kept file was uploaded again: the replay reads a copy in its own folder.
    copy = replayed["inputs"].pop("doc")
    assert replayed["inputs"] == {"name": "Grace", "times": 2, "polite": True}
    assert f"/executions/{replay_id}/inputs/doc/" in copy and copy != doc
    frames = stack.events(f"/logs/{replay_id}/follow")
    lines = [line["message"] for frame_id, line in frames if frame_id == "progress"]
    # Replayed from `hello`: `first` kept from the original (its line not written again).
    assert "hello Grace x2 true: the uploaded text" in lines
    assert not any(m.startswith("first") for m in lines)
    assert stack.get(f"/executions/{execution_id}").json()["inputs"]["name"] == "Ada"
    no_console_errors(driver, "the replayed execution's page")


def many_runs(ns: str) -> str:
    return f"""\
id: many
namespace: {ns}
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{{{range(1, 300)}}}}"
    concurrencyLimit: 0
    tasks:
      - id: item
        type: io.kestra.plugin.core.debug.Return
        format: "{{{{taskrun.value}}}}"
"""


#: The positions (``aria-posinset``) of the task-run rows inside the list's scrolled window.
_ROWS_IN_VIEW = """
const view = document.getElementById("task-runs");
const box = view.getBoundingClientRect();
return [...view.querySelectorAll("[role=treeitem]")]
  .filter((row) => {
    const r = row.getBoundingClientRect();
    return r.bottom > box.top + 1 && r.top < box.bottom - 1;
  })
  .map((row) => Number(row.getAttribute("aria-posinset")))
  .sort((a, b) => a - b);
"""


def test_the_task_run_list_draws_the_rows_in_view_and_moves_by_keyboard(
    stack: Stack, driver: webdriver.Chrome
) -> None:
    """301 task runs: only the rows in the list's window (and a margin) exist, a scroll shows
    the rows of where it went, and the keys move the active row, scrolling it into view."""
    ns = f"it.ui.v{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", many_runs(ns)).status == 200
    started = stack.request("POST", f"/executions/{ns}/many")
    assert started.status == 200, started.body
    execution_id = started.json()["id"]
    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/executions/{execution_id}")
    text_of(driver, "#execution-state", "SUCCESS")
    tree = '#task-runs [role="tree"]'
    wait(driver).until(
        lambda d: d.find_element(By.CSS_SELECTOR, tree).get_attribute("data-runs") == "301"
    )
    drawn = driver.find_elements(By.CSS_SELECTOR, f"{tree} [role=treeitem]")
    assert 10 < len(drawn) < 100  # the window and its margins, not 301 rows

    def row(position: int) -> str:
        return driver.find_element(By.CSS_SELECTOR, f'{tree} [aria-posinset="{position}"]').text

    driver.execute_script(
        "const v = document.getElementById('task-runs');"
        "v.scrollTop = (v.scrollHeight - v.clientHeight) / 2;"
    )
    wait(driver).until(lambda d: min(d.execute_script(_ROWS_IN_VIEW) or [0]) > 100)
    shown: list[int] = driver.execute_script(_ROWS_IN_VIEW)
    assert shown == list(range(shown[0], shown[-1] + 1)) and shown[-1] < 220, shown
    assert f"[{shown[0] - 1}]" in row(shown[0])  # row n is the ForEach's value n - 1

    listing = driver.find_element(By.CSS_SELECTOR, tree)
    assert listing.get_attribute("tabindex") == "0"  # one stop of the Tab key
    driver.execute_script("arguments[0].focus()", listing)
    listing.send_keys(Keys.END)
    wait(driver).until(lambda d: 301 in d.execute_script(_ROWS_IN_VIEW))
    assert listing.get_attribute("aria-activedescendant") == driver.find_element(
        By.CSS_SELECTOR, f'{tree} [aria-posinset="301"]'
    ).get_attribute("id")
    assert "[300]" in row(301)
    listing.send_keys(Keys.HOME)
    wait(driver).until(lambda d: 1 in d.execute_script(_ROWS_IN_VIEW))
    listing.send_keys(Keys.ARROW_DOWN)
    active = driver.find_element(By.CSS_SELECTOR, f"{tree} .active")
    assert active.get_attribute("aria-posinset") == "2" and "[1]" in active.text
    listing.send_keys(Keys.ENTER)  # its outputs, as JSON
    text_of(driver, f'{tree} [aria-posinset="2"] pre.json', '"value": "1"')
    assert driver.switch_to.active_element == listing
    listing.send_keys(Keys.PAGE_DOWN)
    active = driver.find_element(By.CSS_SELECTOR, f"{tree} .active")
    assert active.get_attribute("aria-posinset") == "12" and "[11]" in active.text
    no_console_errors(driver, "the execution page of 301 task runs")

    # The Gantt timeline: the rows of its window only, one Tab stop, moved by the keys.
    gantt = driver.find_element(By.ID, "gantt")
    wait(driver).until(lambda _: gantt.get_attribute("data-runs") == "301")
    assert 10 < len(gantt.find_elements(By.CSS_SELECTOR, ".gantt-row")) < 100
    stops = gantt.find_elements(By.CSS_SELECTOR, '[tabindex="0"]')
    assert [row.get_attribute("aria-posinset") for row in stops] == ["1"]
    driver.execute_script("arguments[0].focus()", stops[0])
    ActionChains(driver).send_keys(Keys.END).perform()
    focused = driver.switch_to.active_element
    assert focused.get_attribute("aria-posinset") == "301"
    assert focused.get_attribute("aria-label").startswith("item [300]: SUCCESS")
    assert driver.execute_script(_IN_VIEW, "gantt", focused)  # scrolled to it
    ActionChains(driver).send_keys(Keys.PAGE_UP).perform()
    focused = driver.switch_to.active_element
    assert focused.get_attribute("aria-posinset") == "291" and focused.text == "item [290]"
    assert gantt.find_elements(By.CSS_SELECTOR, '[tabindex="0"]') == [focused]
    driver.execute_script("document.getElementById('gantt').scrollTop = 0")
    wait(driver).until(lambda _: driver.execute_script(_FIRST_IN_VIEW, "gantt", ".gantt-row") == 1)
    assert focused.get_attribute("aria-posinset") == "291"  # kept drawn, out of view
    assert driver.switch_to.active_element == focused
    ActionChains(driver).send_keys(Keys.ARROW_DOWN).perform()
    assert driver.switch_to.active_element.text == "item [291]"
    no_console_errors(driver, "the Gantt of 301 task runs")


#: Whether an element is inside the scrolled window of the list of this id.
_IN_VIEW = """
const box = document.getElementById(arguments[0]).getBoundingClientRect();
const r = arguments[1].getBoundingClientRect();
return r.top >= box.top - 1 && r.bottom <= box.bottom + 1;
"""

#: The position (from 1) of the first row of a list's scrolled window: its `aria-posinset`, or
#: for log lines the number the test's lines carry.
_FIRST_IN_VIEW = r"""
const [id, rows] = arguments;
const box = document.getElementById(id).getBoundingClientRect();
const shown = [...document.querySelectorAll(`#${id} ${rows}`)]
  .filter((row) => row.getBoundingClientRect().bottom > box.top + 1)
  .sort((a, b) => a.getBoundingClientRect().top - b.getBoundingClientRect().top);
if (!shown.length) return 0;
const first = shown[0];
return Number(first.getAttribute("aria-posinset") ?? /line-(\d+)-end/.exec(first.textContent)[1]);
"""


def many_lines(ns: str) -> str:
    return f"""\
id: chatty
namespace: {ns}
tasks:
  - id: hush
    type: io.kestra.plugin.core.log.Log
    level: DEBUG
    message: quiet-first
  - id: talk
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - for i in $(seq 1 500); do echo "line-$i-end"; done
"""


def test_the_log_view_draws_the_lines_in_view_follows_the_end_and_searches(
    stack: Stack, driver: webdriver.Chrome
) -> None:
    """500 lines: only those in the view's window (and a margin) exist; the window shows the
    newest as they come, a scroll shows the lines of where it went, and a search narrows them
    to the ones that match, counted."""
    ns = f"it.ui.v{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", many_lines(ns)).status == 200
    execution_id = stack.request("POST", f"/executions/{ns}/chatty").json()["id"]
    stack.wait_state(execution_id, {"SUCCESS"})
    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/executions/{execution_id}")
    logs = driver.find_element(By.ID, "logs")
    wait(driver).until(lambda _: logs.get_attribute("data-lines") == "500")
    text_of(driver, "#logs", "line-500-end")  # the end followed as the lines came
    assert 10 < len(logs.find_elements(By.CSS_SELECTOR, ".log")) < 100
    assert "line-1-end" not in logs.text

    driver.execute_script(
        "const v = arguments[0]; v.scrollTop = (v.scrollHeight - v.clientHeight) / 2;", logs
    )
    wait(driver).until(lambda _: 200 < driver.execute_script(_FIRST_IN_VIEW, "logs", ".log") < 300)
    assert logs.get_attribute("tabindex") == "0"  # scrolled by the keyboard too
    logs.send_keys(Keys.HOME)
    wait(driver).until(lambda _: driver.execute_script(_FIRST_IN_VIEW, "logs", ".log") == 1)
    text_of(driver, "#logs", "line-1-end")

    driver.find_element(By.ID, "log-search").send_keys("LINE-7")  # 7 and 70-79: 11 lines
    text_of(driver, "#log-count", "11 of 500 lines")
    shown = [e.text for e in logs.find_elements(By.CSS_SELECTOR, ".log")]
    assert len(shown) == 11 and all("line-7" in line for line in shown), shown

    # From DEBUG up: the stream read again from its start, the DEBUG line first.
    search = driver.find_element(By.ID, "log-search")
    search.clear()
    search.send_keys(Keys.SPACE, Keys.BACKSPACE)  # an input event with the box empty
    Select(driver.find_element(By.ID, "log-level")).select_by_value("DEBUG")
    wait(driver).until(lambda _: logs.get_attribute("data-lines") == "501")
    logs.send_keys(Keys.HOME)
    text_of(driver, "#logs", "quiet-first")
    assert driver.execute_script(_FIRST_IN_VIEW, "logs", ".log:not(.log-debug)") == 1
    no_console_errors(driver, "the execution page of 500 log lines")
