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
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_stack import PASSWORD, USERNAME, Stack, start_stack
from browser import chromium, console_errors
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.integration

WAIT_S = 60.0


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
    yield from start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("ui"))


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path / "profile") as browser:
        yield browser


def wait(driver: webdriver.Chrome) -> WebDriverWait[webdriver.Chrome]:
    return WebDriverWait(driver, WAIT_S)


def text_of(driver: webdriver.Chrome, selector: str, text: str) -> None:
    try:
        wait(driver).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, selector), text))
    except TimeoutException:
        page = driver.find_element(By.TAG_NAME, "main").text
        raise AssertionError(f"{selector} never showed {text!r}; the page:\n{page}") from None


def no_console_errors(driver: webdriver.Chrome, page: str) -> None:
    assert console_errors(driver) == [], f"console errors on {page}"


def only_the_refusal(driver: webdriver.Chrome, route: str) -> None:
    """The console's only errors are the browser's own note of the API's 422 on ``route`` (a
    refusal the page asked for and showed): anything else fails."""
    errors = console_errors(driver)
    assert errors, "the browser noted no refusal"
    for entry in errors:
        assert entry["source"] == "network", errors
        assert route in entry["message"] and "422" in entry["message"], errors


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
    driver.set_window_size(390, 844)
    pages = (f"#/executions/{execution_id}", f"#/executions?namespace={ns}", "#/flows", "#/cluster")
    for page in pages:
        driver.get(f"{stack.base}/ui/{page}")
        wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, "main h1")))
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{page} is wider than a phone's screen by {overflow} px"
    screenshot(driver, f"flows-{switched}-phone", tmp_path)
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


def test_the_cluster_page_shows_each_role_with_its_partitions(
    stack: Stack, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    cluster = stack.get("/cluster").json()
    assert {m["role"] for m in cluster["members"]} >= {"api", "executor", "worker", "scheduler"}
    log_in(driver, stack)
    driver.get(f"{stack.base}/ui/#/cluster")
    text_of(driver, "#cluster-status", "UP")
    text_of(driver, '#members tr[data-role="executor"]', "UP")
    worker = driver.find_element(By.CSS_SELECTOR, '#members tr[data-role="worker"]')
    assert " / " in worker.find_element(By.CSS_SELECTOR, "[data-slots]").text  # in use / slots
    assert worker.find_element(By.CSS_SELECTOR, "[data-dead-letters]").text.isdigit()
    assert worker.find_elements(By.CSS_SELECTOR, "svg.spark polyline")  # lag, jobs running
    for role in ("executor", "worker"):
        table = driver.find_element(By.ID, f"partitions-{role}")
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert len(rows) == cluster["partitions"]
        assert "unassigned" not in table.text
    assert not driver.find_elements(By.ID, "memory-only")  # durable by default
    screenshot(driver, "cluster", tmp_path)
    no_console_errors(driver, "the cluster page")
