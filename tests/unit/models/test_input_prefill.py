"""Input ``prefill`` (Kestra 1.1): checked like a default, shown in the flow JSON, never used."""

from __future__ import annotations

import pytest

from kestream.api.flow_routes import flow_json
from kestream.models.flow import check_flow, parse_flow
from kestream.models.inputs import InputValidationError, parse_inputs

HEAD = (
    "id: f\nnamespace: company.team\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n"
)
HEAD += "    message: hi\ninputs:\n"


def test_prefill_is_kept_and_shown_but_not_used_as_a_value() -> None:
    flow = parse_flow(
        HEAD
        + "  - id: note\n    type: STRING\n    required: false\n    prefill: you may clear me\n"
        + "  - id: count\n    type: INT\n    required: false\n    prefill: 3\n"
    )
    shown = flow_json(flow, with_source=False, show_keys=False)["inputs"]
    assert [i.get("prefill") for i in shown] == ["you may clear me", 3]
    assert parse_inputs(flow.inputs, {}) == {}  # nothing given: nothing taken from prefill
    assert parse_inputs(flow.inputs, {"count": "7"}) == {"count": 7}


def test_a_required_input_with_a_prefill_still_needs_a_value() -> None:
    flow = parse_flow(HEAD + "  - id: name\n    type: STRING\n    prefill: Ada\n")
    with pytest.raises(InputValidationError, match="name"):
        parse_inputs(flow.inputs, {})


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        (
            "  - id: a\n    type: STRING\n    defaults: x\n    prefill: y\n",
            "prefill and defaults cannot be used on the same input",
        ),
        ("  - id: a\n    type: INT\n    required: false\n    prefill: many\n", "invalid prefill"),
        (
            "  - id: a\n    type: SELECT\n    values: [A, B]\n    required: false\n"
            "    prefill: C\n",
            "invalid prefill",
        ),
    ],
)
def test_bad_prefills_are_refused_at_deploy(block: str, needle: str) -> None:
    problems = check_flow(HEAD + block)
    assert problems and needle in problems[0].message
