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


def test_seal_and_unseal() -> None:
    sealed = seal(VALUE, KEY)
    assert is_sealed(sealed) and VALUE not in sealed
    assert seal(sealed, KEY) == sealed  # sealing twice changes nothing
    assert unseal(sealed, KEY) == VALUE
    with pytest.raises(EncryptionError, match="cannot be decrypted"):
        unseal(sealed, "another key of at least thirty-two chars")
    with pytest.raises(EncryptionError, match="at least 32"):
        seal(VALUE, "short")
    body = json.dumps({"inputs": {"password": sealed}, "other": "x"}).encode()
    assert json.loads(mask_sealed(body)) == {"inputs": {"password": MASK}, "other": "x"}


def test_a_secret_input_is_refused_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KESTREAM_ENCRYPTION_KEY", raising=False)
    get_settings.cache_clear()
    with Driver() as driver:
        flow = driver.deploy(FLOW)
        with pytest.raises(InputValidationError, match="KESTREAM_ENCRYPTION_KEY"):
            parse_inputs(flow.inputs, {"password": VALUE})


def test_a_secret_input_is_sealed_checked_as_text_and_used_on_the_worker(key: None) -> None:
    with Driver() as driver:
        flow = driver.deploy(FLOW)
        with pytest.raises(InputValidationError, match="must match the pattern"):
            parse_inputs(flow.inputs, {"password": "wrong"})
        execution = driver.start("company.team", "secret_input", {"password": VALUE})
        assert execution.state.current is StateType.SUCCESS
        sealed = execution.inputs["password"]
        assert is_sealed(sealed) and unseal(sealed) == VALUE
        everything = json.dumps(
            [
                execution.model_dump(mode="json"),
                [line.message for line in driver.logs(execution.id)],
            ]
        )
        assert VALUE not in everything
        assert f"got {MASK}" in [line.message for line in driver.logs(execution.id)]
        assert execution.taskRunList[1].outputs == {"value": MASK}
