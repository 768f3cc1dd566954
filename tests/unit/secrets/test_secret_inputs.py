"""SECRET inputs: encrypted where they enter, refused without a key, decrypted on the worker
only, masked in what comes back; the executor and its records only ever hold the sealed text."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kestream.models.inputs import InputValidationError, parse_inputs
from kestream.models.state import StateType
from kestream.secrets.encryption import (
    EncryptionError,
    is_sealed,
    mask_sealed,
    reseal,
    scope_of,
    seal,
    unseal,
)
from kestream.secrets.masking import MASK
from kestream.settings import get_settings
from kestream.testing import Driver

KEY = "k" * 32
VALUE = "s3cr3t-input-value"

FLOW = """
id: secret_input
namespace: company.team
inputs:
  - id: password
    type: SECRET
    validator: "s3cr3t-.*"
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "got {{ inputs.password }}"
  - id: ret
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.password }}"
"""


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KESTREAM_ENCRYPTION_KEY", KEY)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


OWNER = scope_of("team.a", "owner")
THIEF = scope_of("team.b", "thief")


def test_seal_and_unseal() -> None:
    sealed = seal(VALUE, OWNER, KEY)
    assert is_sealed(sealed) and VALUE not in sealed
    assert unseal(sealed, OWNER, KEY) == VALUE
    with pytest.raises(EncryptionError, match="cannot be decrypted"):
        unseal(sealed, OWNER, "another key of at least thirty-two chars")
    with pytest.raises(EncryptionError, match="at least 32"):
        seal(VALUE, OWNER, "short")
    body = json.dumps({"inputs": {"password": sealed}, "other": "x"}).encode()
    assert json.loads(mask_sealed(body)) == {"inputs": {"password": MASK}, "other": "x"}


def test_a_sealed_text_decrypts_for_its_own_flow_only() -> None:
    sealed = seal(VALUE, OWNER, KEY)
    with pytest.raises(EncryptionError, match="another flow"):
        unseal(sealed, THIEF, KEY)
    with pytest.raises(EncryptionError):  # a namespace and flow id cut elsewhere
        unseal(sealed, scope_of("team", "a/owner"), KEY)


def test_a_sealed_text_inside_a_longer_text_is_masked_too() -> None:
    sealed = seal(VALUE, OWNER, KEY)
    token = sealed[len("kestream:enc:v1:") :]
    body = json.dumps(
        {
            "labels": [{"key": "pw", "value": f"pw={sealed}"}],
            "error": f"Unable to render '{sealed}': boom",
            "nested": json.dumps({"inner": sealed}),
        }
    ).encode()
    masked = mask_sealed(body)
    assert token not in masked.decode() and b"kestream:enc" not in masked
    data = json.loads(masked)  # still a valid document
    assert data["labels"][0]["value"] == f"pw={MASK}"
    assert json.loads(data["nested"]) == {"inner": MASK}


def test_reseal_hands_a_value_to_another_flow(key: None) -> None:
    sealed = seal(VALUE, OWNER)
    foreign = seal("not mine", scope_of("team.c", "other"))
    moved = reseal({"pw": sealed, "note": f"x {foreign}"}, OWNER, THIEF)
    assert unseal(moved["pw"], THIEF) == VALUE
    assert moved["note"] == f"x {foreign}"  # sealed for neither: left as it is


def test_a_secret_input_is_refused_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KESTREAM_ENCRYPTION_KEY", raising=False)
    get_settings.cache_clear()
    with Driver() as driver:
        flow = driver.deploy(FLOW)
        with pytest.raises(InputValidationError, match="KESTREAM_ENCRYPTION_KEY"):
            parse_inputs(flow.inputs, {"password": VALUE}, scope=OWNER)


def test_a_secret_input_is_sealed_checked_as_text_and_used_on_the_worker(key: None) -> None:
    with Driver() as driver:
        flow = driver.deploy(FLOW)
        with pytest.raises(InputValidationError, match="must match the pattern"):
            parse_inputs(flow.inputs, {"password": "wrong"}, scope=OWNER)
        execution = driver.start("company.team", "secret_input", {"password": VALUE})
        assert execution.state.current is StateType.SUCCESS
        sealed = execution.inputs["password"]
        assert is_sealed(sealed)
        assert unseal(sealed, scope_of("company.team", "secret_input")) == VALUE
        everything = json.dumps(
            [
                execution.model_dump(mode="json"),
                [line.message for line in driver.logs(execution.id)],
            ]
        )
        assert VALUE not in everything
        assert f"got {MASK}" in [line.message for line in driver.logs(execution.id)]
        assert execution.taskRunList[1].outputs == {"value": MASK}


OWNER_FLOW = """
id: owner
namespace: team.a
inputs:
  - id: password
    type: SECRET
tasks:
  - id: child
    type: io.kestra.plugin.core.flow.Subflow
    namespace: team.b
    flowId: thief
    inputs:
      password: "{{ inputs.password }}"
      text: "{{ inputs.password }}"
"""

THIEF_FLOW = """
id: thief
namespace: team.b
inputs:
  - id: password
    type: SECRET
    required: false
  - id: text
    type: STRING
tasks:
  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    env:
      X: "{{ inputs.text }}"
    commands:
      - printf %s "$X" | rev
"""


def _reversed_in_logs(driver: Driver, execution_id: str) -> bool:
    return any(VALUE[::-1] in line.message for line in driver.logs(execution_id))


def test_a_sealed_input_pasted_into_another_flow_decrypts_nowhere(key: None) -> None:
    with Driver() as driver:
        owner = driver.deploy(OWNER_FLOW)
        thief = driver.deploy(THIEF_FLOW)
        sealed = parse_inputs(owner.inputs, {"password": VALUE}, scope=OWNER)["password"]
        with pytest.raises(InputValidationError, match="another flow"):
            parse_inputs(thief.inputs, {"password": sealed, "text": "x"}, scope=THIEF)
        stolen = driver.start("team.b", "thief", {"text": sealed})
        assert stolen.state.current is StateType.FAILED
        assert not _reversed_in_logs(driver, stolen.id)
        assert any("another flow" in line.message for line in driver.logs(stolen.id))


def test_a_subflow_gets_the_values_its_parent_hands_it(key: None) -> None:
    """A parent's SECRET input passed to a child is sealed again for the child: the child's
    tasks decrypt it (its SECRET input and, as text, its STRING input alike)."""
    with Driver() as driver:
        driver.deploy(THIEF_FLOW)
        driver.deploy(OWNER_FLOW)
        parent = driver.start("team.a", "owner", {"password": VALUE})
        assert parent.state.current is StateType.SUCCESS
        (child,) = [e for e in driver.executions() if e.flowId == "thief"]
        assert child.state.current is StateType.SUCCESS
        assert unseal(child.inputs["password"], THIEF) == VALUE
        assert _reversed_in_logs(driver, child.id)  # masking cannot see a reversed value
