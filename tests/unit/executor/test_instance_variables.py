"""``envs`` and ``globals``: what every flow of the process sees, and what it must never see."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from kestream.executor.instance_variables import (
    InstanceVariables,
    check_env_prefix,
    instance_variables,
    set_instance_variables,
)
from kestream.models.state import StateType
from kestream.settings import Settings
from kestream.testing import Driver

ENVIRON = {
    "ENV_GREETING": "hello",
    "ENV_Mixed_Case": "kept",
    "ENV_": "no name",
    "KESTREAM_API_PASSWORD": "s3cret",
    "HOME": "/root",
}


def test_envs_are_the_prefixed_variables_without_prefix_in_lower_case() -> None:
    variables = InstanceVariables.from_environ(ENVIRON, "ENV_", {"team": "data"})
    assert variables.envs == {"greeting": "hello", "mixed_case": "kept"}
    assert variables.globals == {"team": "data"}


@pytest.mark.parametrize("prefix", ["", "KESTREAM_", "KESTREAM_API_", "KEST", "kestream_", "K"])
def test_a_prefix_reaching_kestreams_own_settings_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="environment prefix"):
        check_env_prefix(prefix)


@pytest.mark.parametrize("prefix", ["SECRET_", "S", "SE", "secret", "SECRET_DB_", "secret_"])
def test_a_prefix_reaching_the_secrets_is_refused(prefix: str) -> None:
    """envs are rendered by the executor and travel in Kafka records: no secret may be one."""
    with pytest.raises(ValueError, match="the secrets"):
        check_env_prefix(prefix)
    assert check_env_prefix("SECRETS_OF_ENV_") == "SECRETS_OF_ENV_"  # not one of SECRET_*


def test_settings_read_the_prefix_and_the_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KESTREAM_GLOBALS", '{"region": "eu", "limits": {"max": 3}}')
    monkeypatch.setenv("KESTREAM_ENV_VARS_PREFIX", "FLOW_")
    settings = Settings()
    assert settings.globals == {"region": "eu", "limits": {"max": 3}}
    assert settings.env_vars_prefix == "FLOW_"
    monkeypatch.setenv("KESTREAM_ENV_VARS_PREFIX", "KESTREAM_")
    with pytest.raises(ValidationError, match="KESTREAM_ENV_VARS_PREFIX"):
        Settings()


@pytest.fixture
def instance() -> Iterator[None]:
    previous = set_instance_variables(
        InstanceVariables.from_environ(ENVIRON, "ENV_", {"team": "data", "nested": {"n": 2}})
    )
    yield
    set_instance_variables(previous)


FLOW = """
id: instance
namespace: company.team
variables:
  composed: "{{ envs.greeting }} from {{ globals.team }}"
tasks:
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{ render(vars.composed) }} {{ globals.nested.n }}"
  - id: secret
    type: io.kestra.plugin.core.debug.Return
    format: "{{ envs.kestream_api_password ?? 'hidden' }} {{ envs.home ?? 'hidden' }}"
"""


@pytest.mark.usefixtures("instance")
def test_flows_see_envs_and_globals_and_nothing_unprefixed() -> None:
    with Driver() as driver:
        flow = driver.deploy(FLOW)
        done = driver.get(driver.start(flow.namespace, flow.id).id)
    assert done.state.current is StateType.SUCCESS
    outputs = {run.taskId: run.outputs for run in done.taskRunList}
    assert outputs == {
        "show": {"value": "hello from data 2"},
        "secret": {"value": "hidden hidden"},
    }


def test_without_settings_envs_and_globals_are_empty() -> None:
    assert instance_variables() == InstanceVariables()
    with Driver() as driver:
        flow = driver.deploy(FLOW)
        done = driver.get(driver.start(flow.namespace, flow.id).id)
    assert done.state.current is StateType.FAILED
    assert done.taskRunList[0].state.current is StateType.FAILED
