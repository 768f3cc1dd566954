"""PurgeExecutions and PurgeLogs through the driver (its in-memory purger): what they take,
what they leave, and the counts in their outputs."""

from __future__ import annotations

import pytest

from kestream.models.state import StateType
from kestream.testing import Driver

S = StateType

TARGET = """id: target
namespace: company.team
inputs:
  - id: fail
    type: BOOLEAN
    defaults: false
tasks:
  - id: info
    type: io.kestra.plugin.core.log.Log
    message: hello
  - id: warn
    type: io.kestra.plugin.core.log.Log
    message: careful
    level: WARN
  - id: maybe
    type: io.kestra.plugin.core.execution.Fail
    runIf: "{{ inputs.fail }}"
"""

NEIGHBOUR = """id: neighbour
namespace: company.team.sub
tasks:
  - id: info
    type: io.kestra.plugin.core.log.Log
    message: next door
"""

WAITING = """id: waiting
namespace: company.team
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


def purging(body: str) -> str:
    return "id: purge\nnamespace: system\ntasks:\n  - id: purge\n" + body


def _outputs(driver: Driver, flow: str) -> dict[str, object]:
    deployed = driver.deploy(flow)
    execution = driver.start(deployed.namespace, deployed.id)
    assert execution.state.current is S.SUCCESS, driver.logs(execution.id)
    return dict(execution.taskRunList[0].outputs or {})


@pytest.fixture
def driver() -> Driver:
    with Driver() as driver:
        for flow in (TARGET, NEIGHBOUR, WAITING):
            driver.deploy(flow)
        yield driver  # type: ignore[misc]


def test_purge_executions_of_one_flow_with_their_logs(driver: Driver) -> None:
    ok = driver.start("company.team", "target")
    failed = driver.start("company.team", "target", {"fail": True})
    other = driver.start("company.team.sub", "neighbour")
    paused = driver.start("company.team", "waiting")
    assert (ok.state.current, failed.state.current, paused.state.current) == (
        S.SUCCESS,
        S.FAILED,
        S.PAUSED,
    )
    lines = len(driver.logs(ok.id)) + len(driver.logs(failed.id))
    outputs = _outputs(
        driver,
        purging(
            """    type: io.kestra.plugin.core.execution.PurgeExecutions
    namespace: company.team
    flowId: target
    endDate: "{{ now() }}"
"""
        ),
    )
    assert outputs == {
        "executionsCount": 2,
        "logsCount": lines,
        "metricsCount": 0,
        "storagesCount": 0,
    }
    remaining = {e.id for e in driver.executions()}
    assert ok.id not in remaining and failed.id not in remaining
    assert {other.id, paused.id} <= remaining  # another flow; and not ended


def test_states_namespace_prefix_and_a_start_after_everything(driver: Driver) -> None:
    ok = driver.start("company.team", "target")
    failed = driver.start("company.team", "target", {"fail": True})
    other = driver.start("company.team.sub", "neighbour")
    none = _outputs(
        driver,
        purging(
            """    type: io.kestra.plugin.core.execution.PurgeExecutions
    startDate: "{{ now() | dateAdd(1, 'HOURS') }}"
    endDate: "{{ now() | dateAdd(2, 'HOURS') }}"
"""
        ),
    )
    assert none["executionsCount"] == 0
    only_failed = _outputs(
        driver,
        purging(
            """    type: io.kestra.plugin.core.execution.PurgeExecutions
    namespace: company.team
    states: [FAILED]
    purgeLog: false
    endDate: "{{ now() }}"
"""
        ),
    )
    assert (only_failed["executionsCount"], only_failed["logsCount"]) == (1, 0)
    remaining = {e.id for e in driver.executions()}
    assert failed.id not in remaining and {ok.id, other.id} <= remaining
    prefix = _outputs(
        driver,
        purging(
            """    type: io.kestra.plugin.core.execution.PurgeExecutions
    namespace: company.team
    endDate: "{{ now() }}"
    purgeExecution: false
"""
        ),
    )
    # Lines only: the executions of the namespace and the one under it keep existing.
    assert prefix["executionsCount"] == 0 and prefix["logsCount"] == 3
    assert driver.logs(ok.id) == [] and driver.logs(other.id) == []
    assert {ok.id, other.id} <= {e.id for e in driver.executions()}


def test_purge_logs_by_level_keeps_the_others(driver: Driver) -> None:
    first = driver.start("company.team", "target")
    second = driver.start("company.team", "target")
    outputs = _outputs(
        driver,
        purging(
            f"""    type: io.kestra.plugin.core.log.PurgeLogs
    namespace: company.team
    flowId: target
    executionId: {first.id}
    logLevels: [TRACE, DEBUG, INFO]
    endDate: "{{{{ now() }}}}"
"""
        ),
    )
    assert outputs == {"count": 1}
    assert [line.level for line in driver.logs(first.id)] == ["WARN"]
    assert len(driver.logs(second.id)) == 2
    assert {first.id, second.id} <= {e.id for e in driver.executions()}


def test_a_flow_id_without_its_namespace_fails_the_task(driver: Driver) -> None:
    flow = driver.deploy(
        purging(
            """    type: io.kestra.plugin.core.log.PurgeLogs
    flowId: target
    endDate: "{{ now() }}"
"""
        )
    )
    execution = driver.start(flow.namespace, flow.id)
    assert execution.state.current is S.FAILED
    assert any("needs 'namespace'" in line.message for line in driver.logs(execution.id))


def test_end_date_is_required_at_deploy(driver: Driver) -> None:
    with pytest.raises(Exception, match="endDate"):
        driver.deploy(purging("    type: io.kestra.plugin.core.log.PurgeLogs\n"))


#: The examples of Kestra's PurgeExecutions and PurgeLogs pages, in one flow.
DOCS_EXAMPLES = """id: purge
namespace: system
tasks:
  - id: purge_executions
    type: io.kestra.plugin.core.execution.PurgeExecutions
    endDate: "{{ now() | dateAdd(-1, 'MONTHS') }}"
    states:
      - KILLED
      - FAILED
      - WARNING
      - SUCCESS
  - id: purge_logs
    type: io.kestra.plugin.core.log.PurgeLogs
    endDate: "{{ now() | dateAdd(-1, 'MONTHS') }}"
  - id: purge_logs_but_errors
    type: io.kestra.plugin.core.log.PurgeLogs
    endDate: "{{ now() | dateAdd(-1, 'MONTHS') }}"
    logLevels:
      - TRACE
      - DEBUG
      - INFO
      - WARN
"""


def test_kestras_documentation_examples_leave_what_is_younger_than_a_month(
    driver: Driver,
) -> None:
    recent = driver.start("company.team", "target")
    flow = driver.deploy(DOCS_EXAMPLES)
    execution = driver.start(flow.namespace, flow.id)
    assert execution.state.current is S.SUCCESS
    outputs = {run.taskId: run.outputs for run in execution.taskRunList}
    assert outputs == {
        "purge_executions": {
            "executionsCount": 0,
            "logsCount": 0,
            "metricsCount": 0,
            "storagesCount": 0,
        },
        "purge_logs": {"count": 0},
        "purge_logs_but_errors": {"count": 0},
    }
    assert len(driver.logs(recent.id)) == 2
    # The same example a month later (its endDate moved to now) takes the ended executions.
    later = driver.deploy(
        DOCS_EXAMPLES.replace("id: purge\n", "id: purge-now\n").replace(
            "dateAdd(-1, 'MONTHS')", "dateAdd(1, 'SECONDS')"
        )
    )
    done = driver.start(later.namespace, later.id)
    counts = {run.taskId: run.outputs for run in done.taskRunList}
    assert counts["purge_executions"]["executionsCount"] == 2  # type: ignore[index]
    assert recent.id not in {e.id for e in driver.executions()}
