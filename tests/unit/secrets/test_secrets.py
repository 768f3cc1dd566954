"""secret(): resolved from SECRET_<NAME> (base64) and KESTREAM_SECRETS_FILE on the worker only;
the job the executor sends never holds a value; every value is masked in what comes back."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from kestream.executor.commands import RunTask
from kestream.models.execution import Execution
from kestream.models.state import StateType
from kestream.secrets.deferred import SECRETS_KEY
from kestream.secrets.masking import MASK, Masker
from kestream.secrets.resolver import SecretError, SecretResolver
from kestream.settings import get_settings
from kestream.testing import Driver

VALUE = "p4ss:w/rd+é"
DOC = '{"user": "admin", "password": "hunter22"}'


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_API_TOKEN", _b64(VALUE))
    monkeypatch.setenv("SECRET_DB", _b64(DOC))


@pytest.fixture
def driver(secrets: None) -> Iterator[Driver]:
    with Driver() as instance:
        yield instance


def _jobs(driver: Driver) -> list[RunTask]:
    """Record every job the driver's executor sends to its runner."""
    jobs: list[RunTask] = []
    run = driver.runner.run

    async def recording(job: RunTask, *args: Any, **kw: Any) -> Any:
        jobs.append(job)
        return await run(job, *args, **kw)

    driver.runner.run = recording  # type: ignore[method-assign]
    return jobs


def _everything(driver: Driver, execution: Execution) -> str:
    lines = [line.message for line in driver.logs(execution.id)]
    return json.dumps([execution.model_dump(mode="json"), lines], default=str)


def test_resolver_reads_base64_variables_upper_cased_and_the_file_first(tmp_path: Path) -> None:
    environ = {"SECRET_MY_SECRET": "c2Vj\ncmV0\n", "SECRET_BAD": "!!not base64!!"}
    path = tmp_path / "secrets.yaml"
    path.write_text("my_secret: from-the-file\nother: 12345\n")
    assert SecretResolver.of(environ, None).resolve("my_secret") == "secret"
    assert SecretResolver.of(environ, str(path)).resolve("MY_SECRET") == "from-the-file"
    assert SecretResolver.of(environ, str(path)).resolve("other") == "12345"
    with pytest.raises(SecretError, match=r"Cannot find secret for key 'nope'\."):
        SecretResolver.of(environ, None).resolve("nope")
    with pytest.raises(SecretError, match="SECRET_BAD") as bad:
        SecretResolver.of(environ, None).resolve("bad")
    assert "!!not" not in str(bad.value)


def test_the_masker_masks_the_value_its_encodings_and_json_texts() -> None:
    masker = Masker()
    masker.add(VALUE)
    masker.add(DOC)
    for form in (VALUE, _b64(VALUE), quote(VALUE, safe=""), "hunter22", "admin", DOC):
        assert masker.text(f"<{form}>") == f"<{MASK}>"
    assert masker.value({"k": [f"x{VALUE}y", 3]}) == {"k": [f"x{MASK}y", 3]}
    assert masker.text("nothing secret") == "nothing secret"


PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    + "MIIEabcdefSECRETLINE" * 5
    + "\nQUJD\n-----END PRIVATE KEY-----\n"
)


def test_a_multi_line_value_is_masked_line_by_line_and_wrapped_base64_too() -> None:
    masker = Masker()
    masker.add(PEM)
    for line in PEM.splitlines():
        if len(line) >= 8:
            assert masker.text(line) == MASK
    assert masker.text("QUJD") == "QUJD"  # a short line would mask ordinary text: left alone
    encoded = _b64(PEM)
    for width in (64, 76):  # as `base64` and PEM print it, one line at a time
        chunks = [encoded[at : at + width] for at in range(0, len(encoded), width)]
        assert all(masker.text(chunk) == MASK for chunk in chunks if len(chunk) >= 8)


def test_a_script_printing_a_multi_line_secret_shows_none_of_its_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECRET_PEM", _b64(PEM))
    flow = """
id: pem
namespace: company.team
tasks:
  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    env:
      K: "{{ secret('pem') }}"
    commands:
      - printf '%s\\n' "$K"
      - printf '%s' "$K" | base64
"""
    with Driver() as driver:
        driver.deploy(flow)
        execution = driver.start("company.team", "pem", {})
        lines = [line.message for line in driver.logs(execution.id)]
    assert execution.state.current is StateType.SUCCESS
    assert lines.count(MASK) >= 3 + len(_b64(PEM)) // 76
    text = "\n".join(lines)
    assert "SECRETLINE" not in text and "PRIVATE KEY" not in text
    encoded = _b64(PEM)
    wrapped = [encoded[at : at + 76] for at in range(0, len(encoded), 76)]  # as base64 prints it
    assert not any(chunk in text for chunk in wrapped if len(chunk) >= 8)


def test_a_secret_never_travels_in_the_job_and_is_masked_in_what_comes_back(
    driver: Driver,
) -> None:
    flow = """
id: uses
namespace: company.team
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "token {{ secret('api_token') }} for {{ flow.id }}"
  - id: ret
    type: io.kestra.plugin.core.debug.Return
    format: "{{ json(secret('db')).password }}"
  - id: shell
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    env:
      TOKEN: "{{ secret('api_token') }}"
    commands:
      - echo "env says $TOKEN"
      - echo "b64 $(printf %s "$TOKEN" | base64)"
"""
    jobs = _jobs(driver)
    driver.deploy(flow)
    execution = driver.start("company.team", "uses")
    assert execution.state.current is StateType.SUCCESS, _everything(driver, execution)
    sent = json.dumps([job.props for job in jobs], default=str)
    assert VALUE not in sent and "hunter22" not in sent
    log_job = next(job for job in jobs if job.task.id == "log")
    assert log_job.props["message"] is None  # rendered on the worker
    # only the variables the text names travel with it (not the execution's outputs)
    assert set(log_job.props[SECRETS_KEY][0]["vars"]) == {"flow", "@each_path"}
    seen = _everything(driver, execution)
    for form in (VALUE, _b64(VALUE), "hunter22"):
        assert form not in seen
    messages = [line.message for line in driver.logs(execution.id)]
    assert f"token {MASK} for uses" in messages
    assert f"env says {MASK}" in messages and f"b64 {MASK}" in messages
    ret = next(run for run in execution.taskRunList if run.taskId == "ret")
    assert ret.outputs == {"value": MASK}


NARROW = """
id: narrow
namespace: company.team
tasks:
  - id: big
    type: io.kestra.plugin.core.debug.Return
    format: "{{ range(0, 1500) | join(',') }}"
  - id: big_too
    type: io.kestra.plugin.core.debug.Return
    format: "{{ range(0, 1500) | join(',') }}"
  - id: small
    type: io.kestra.plugin.core.debug.Return
    format: "tiny"
  - id: call
    type: io.kestra.plugin.core.log.Log
    message: "{{ secret('api_token') }} {{ outputs.small.value }} {{ outputs['small'] }}"
"""


def test_a_deferred_text_carries_only_the_outputs_it_reads(driver: Driver) -> None:
    jobs = _jobs(driver)
    driver.deploy(NARROW)
    execution = driver.start("company.team", "narrow", {})
    assert execution.state.current is StateType.SUCCESS
    call = next(job for job in jobs if job.task.id == "call")
    (deferred,) = call.props[SECRETS_KEY]
    assert deferred["vars"]["outputs"] == {"small": {"value": "tiny"}}  # not the big one


def test_deferred_variables_too_large_for_a_record_fail_the_task_naming_it(
    driver: Driver,
) -> None:
    flow = NARROW.replace("{{ outputs.small.value }} {{ outputs['small'] }}", "{{ outputs }}")
    driver.executor.max_output_bytes = 8 * 1024  # each big output fits, both together do not
    driver.deploy(flow)
    execution = driver.start("company.team", "narrow", {})
    assert execution.state.current is StateType.FAILED
    messages = [line.message for line in driver.logs(execution.id)]
    assert any(
        "the variables task 'call' sends with its texts calling secret()" in m for m in messages
    )


def test_a_failure_message_never_shows_the_value(driver: Driver) -> None:
    flow = """
id: fails
namespace: company.team
tasks:
  - id: bad
    type: io.kestra.plugin.core.debug.Return
    format: "{{ secret('api_token') | number }}"
"""
    driver.deploy(flow)
    execution = driver.start("company.team", "fails")
    assert execution.state.current is StateType.FAILED
    seen = _everything(driver, execution)
    assert VALUE not in seen
    assert MASK in seen


def test_a_missing_secret_fails_the_task_naming_it(driver: Driver) -> None:
    flow = """
id: missing
namespace: company.team
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{ secret('absent') }}"
"""
    driver.deploy(flow)
    execution = driver.start("company.team", "missing")
    assert execution.state.current is StateType.FAILED
    messages = [line.message for line in driver.logs(execution.id)]
    assert any("Cannot find secret for key 'absent'." in m for m in messages)


@pytest.mark.parametrize(
    "task",
    [
        # a flowable's property: rendered by the executor, so secret() fails there
        """
  - id: if
    type: io.kestra.plugin.core.flow.If
    condition: "{{ secret('api_token') == 'x' }}"
    then:
      - id: never
        type: io.kestra.plugin.core.log.Log
        message: no
""",
        # a task that runs inside the executor
        """
  - id: labels
    type: io.kestra.plugin.core.execution.Labels
    labels:
      token: "{{ secret('api_token') }}"
""",
    ],
)
def test_secret_where_the_executor_renders_fails_without_the_value(
    driver: Driver, task: str
) -> None:
    driver.deploy("id: executor_side\nnamespace: company.team\ntasks:" + task)
    execution = driver.start("company.team", "executor_side")
    assert execution.state.current is StateType.FAILED
    seen = _everything(driver, execution)
    assert VALUE not in seen and "only resolved on a worker" in seen


def test_the_secrets_file_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"FROM_FILE": "filed-value"}))
    monkeypatch.setenv("KESTREAM_SECRETS_FILE", str(path))
    get_settings.cache_clear()
    try:
        with Driver() as driver:
            driver.deploy(
                "id: f\nnamespace: n\ntasks:\n  - id: r\n"
                "    type: io.kestra.plugin.core.debug.Return\n"
                "    format: \"{{ secret('from_file') | length }}\"\n"
            )
            execution = driver.start("n", "f")
            assert execution.taskRunList[0].outputs == {"value": "11"}
    finally:
        get_settings.cache_clear()
