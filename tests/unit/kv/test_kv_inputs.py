"""Input templates see ``flow``, ``envs``, ``globals`` and ``kv()`` besides the inputs before
them, as in Kestra: its "dynamic inputs" how-to fills a MULTISELECT from a KV entry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from kestream.executor.instance_variables import InstanceVariables, set_instance_variables
from kestream.kv.values import KVEntry, KVType
from kestream.models.inputs import InputValidationError
from kestream.models.state import StateType
from kestream.testing import Driver

# Kestra's how-to (kestra.io/docs/how-to-guides/dynamic-inputs), unchanged.
HOW_TO = """
id: dynamic_inputs
namespace: company.team

inputs:
  - id: department
    type: MULTISELECT
    expression: "{{ kv('department_key') }}"

tasks:
  - id: display_selection
    type: io.kestra.plugin.core.log.Log
    message: "You selected {{ inputs.department }}"
"""

FIRST = """
id: first
namespace: company.team
inputs:
  - id: department
    type: SELECT
    expression: "{{ kv('department_key') }}"
    autoSelectFirst: true
  - id: where
    type: STRING
    defaults: "{{ flow.namespace }}/{{ flow.id }} in {{ envs.region }} for {{ globals.team }}"
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{ inputs.department }} {{ inputs.where }}"
"""


@pytest.fixture
def driver() -> Iterator[Driver]:
    previous = set_instance_variables(InstanceVariables({"region": "eu"}, {"team": "data"}))
    try:
        with Driver() as instance:
            now = datetime.now(UTC)
            entry = KVEntry(
                namespace="company.team", key="department_key", type=KVType.JSON,
                value=["Marketing", "Sales"], creationDate=now, updateDate=now,
            )  # fmt: skip
            asyncio.run(instance.kv.aput(entry))
            yield instance
    finally:
        set_instance_variables(previous)


def test_kestras_dynamic_dropdown_reads_its_choices_from_kv(driver: Driver) -> None:
    driver.deploy(HOW_TO)
    execution = driver.start("company.team", "dynamic_inputs", {"department": ["Sales"]})
    assert execution.state.current is StateType.SUCCESS
    assert execution.inputs["department"] == ["Sales"]
    with pytest.raises(InputValidationError, match="Marketing"):
        driver.start("company.team", "dynamic_inputs", {"department": ["Legal"]})


def test_the_executor_fills_inputs_with_flow_envs_globals_and_kv(driver: Driver) -> None:
    """Inputs taken as given (a trigger's, a subflow's) are filled in the executor's step."""
    driver.deploy(FIRST)
    execution = driver.start("company.team", "first", {}, validate_inputs=False)
    assert execution.state.current is StateType.SUCCESS
    assert execution.inputs == {
        "department": "Marketing",
        "where": "company.team/first in eu for data",
    }
