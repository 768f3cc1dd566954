"""``render()`` and ``renderOnce()``: recursive rendering, bounded, in the same sandbox and budget.

Text handed to ``render()`` may come from anyone (an input, a webhook body): it must reach no more
than a template written in the flow could, and stop within the render's budget and bounds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_sandbox import PAYLOADS, SENTINEL, Secretive

from kestream.expressions import (
    RenderError,
    TemplateSyntaxError,
    render,
    render_timeout_ms,
    set_render_timeout_ms,
)
from kestream.expressions.api import compile_template, compile_uncached, validate_template
from kestream.expressions.errors import RenderLimitError
from kestream.expressions.limits import MAX_RENDER_DEPTH, MAX_RENDER_PASSES, MAX_RENDER_TEXT
from kestream.expressions.render_function import MAX_CACHED_TEXT

VARS = {
    "first": "1",
    "second": "{{ vars.first }} > 2",
    "third": "{{ vars.second }} > 3",
    "int": 42,
    "bool": True,
    "list": ["{{ vars.first }}"],
    "self": "{{ render(vars.self) }}",
    "grows": "x{{ vars.grows }}",
    "ping": "{{ render(vars.pong) }}",
    "pong": "{{ render(vars.ping) }}",
    "doubles": "{{ vars.doubles }}{{ vars.doubles }}",
}


def ctx(**inputs: Any) -> dict[str, Any]:
    return {"vars": VARS, "inputs": inputs, "task": {"id": "t"}, "obj": Secretive()}


@pytest.fixture
def small_budget() -> Iterator[None]:
    before = render_timeout_ms()
    set_render_timeout_ms(200)
    try:
        yield
    finally:
        set_render_timeout_ms(before)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ render(vars.third) }}", "1 > 2 > 3"),
        ("{{ render(vars.third, recursive=false) }}", "{{ vars.first }} > 2 > 3"),
        ("{{ render(vars.third, false) }}", "{{ vars.first }} > 2 > 3"),
        ("{{ renderOnce(vars.third) }}", "{{ vars.first }} > 2 > 3"),
        ("{{ render(vars.first) }}", "1"),
        ("{{ render(vars.int) }}", "42"),
        ("{{ render(vars.bool) }}", "true"),
        ("[{{ render(null) }}]", "[]"),
        ("{{ render(vars.list) }}", '["{{ vars.first }}"]'),  # only text is rendered
        ("{{ render(vars.int) + 1 }}", "43"),  # a value that is not text comes back as it is
        ('{{ render("{{ render(vars.second) }}!") }}', "1 > 2!"),
        ("{{ render(inputs.note) }}", "hello 1"),
    ],
)
def test_render_renders_text_until_it_settles(template: str, expected: str) -> None:
    assert render(template, ctx(note="hello {{ vars.first }}")) == expected


def test_a_missing_variable_is_named_with_the_rendered_text() -> None:
    with pytest.raises(RenderError) as caught:
        render("{{ render(inputs.t) }}", ctx(t="a {{ nowhere.x }}"))
    expected = "Unable to find `nowhere` used in the expression `a {{ nowhere.x }}`"
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("template", "limit"),
    [
        ("{{ render(vars.self) }}", f"limit of {MAX_RENDER_DEPTH} render() calls"),
        ("{{ render(vars.ping) }}", f"limit of {MAX_RENDER_DEPTH} render() calls"),
        ("{{ render(vars.grows) }}", f"limit of {MAX_RENDER_PASSES} passes"),
    ],
)
def test_render_is_bounded(template: str, limit: str) -> None:
    with pytest.raises(RenderLimitError) as caught:
        render(template, ctx())
    message = str(caught.value)
    assert message.startswith("render exceeded") and limit in message
    assert message.count("(expression") == 1  # reported once, not once per nested level


def test_render_once_stops_after_one_pass_of_growing_text() -> None:
    assert render("{{ renderOnce(vars.grows) }}", ctx()) == "xx{{ vars.grows }}"


@pytest.mark.usefixtures("small_budget")
@pytest.mark.parametrize(
    "bomb",
    [
        "{% for a in range(1, 100000) %}{% for b in range(1, 100000) %}{% endfor %}{% endfor %}",
        "{{ 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!' | replace('(a|aa)+$', 'b', regexp=true) }}",
    ],
)
def test_text_sent_to_render_runs_within_the_callers_budget(bomb: str) -> None:
    with pytest.raises(RenderLimitError, match="render exceeded its CPU-time budget"):
        render("{{ render(inputs.body) }}", ctx(body=bomb))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_sent_to_render_fail_cleanly(
    payload: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_budget: None
) -> None:
    sentinel = tmp_path / "sentinel"
    monkeypatch.setenv("SANDBOX_SENTINEL", str(sentinel))
    body = payload.replace(SENTINEL, str(sentinel))
    with pytest.raises((RenderError, TemplateSyntaxError)) as info:
        render("{{ render(inputs.body) }}", {**ctx(body=body), "x": 1, "@now": lambda: None})
    assert type(info.value) in (RenderError, RenderLimitError, TemplateSyntaxError)
    assert not sentinel.exists()


def test_rendered_text_cannot_reach_the_nesting_counter() -> None:
    with pytest.raises(RenderError, match=r"Unexpected character \[@\]"):
        render("{{ render(inputs.body) }}", ctx(body="{{ @render_depth }}"))


def test_long_text_sent_to_render_is_not_kept_in_the_template_cache() -> None:
    long_text = "{{ vars.first }}" + "x" * MAX_CACHED_TEXT
    compile_template.cache_clear()
    assert render("{{ render(inputs.t) }}", ctx(t=long_text)) == "1" + "x" * MAX_CACHED_TEXT
    assert compile_template.cache_info().currsize == 1  # the calling template only
    assert render("{{ render(inputs.t) }}", ctx(t="{{ vars.first }} short")) == "1 short"
    assert compile_template.cache_info().currsize == 2  # short text is kept


@pytest.fixture
def tiny_budget() -> Iterator[None]:
    """A budget that any compile of thousands of expressions overruns."""
    before = render_timeout_ms()
    set_render_timeout_ms(1)
    try:
        yield
    finally:
        set_render_timeout_ms(before)


#: 20 000 expressions in 180 000 characters: under MAX_RENDER_TEXT, far over a 1 ms compile.
MANY_EXPRESSIONS = '{{ "a" }}' * 20_000


def test_text_longer_than_the_bound_is_refused_by_its_size() -> None:
    body = "{{ vars.first }}" + "x" * MAX_RENDER_TEXT
    with pytest.raises(RenderLimitError, match=f"size limit of {MAX_RENDER_TEXT} characters"):
        render("{{ render(inputs.body) }}", ctx(body=body))


@pytest.fixture
def roomy_budget() -> Iterator[None]:
    """A budget no busy machine exhausts first, so the size bound is what stops the render."""
    before = render_timeout_ms()
    set_render_timeout_ms(120_000)
    try:
        yield
    finally:
        set_render_timeout_ms(before)


@pytest.mark.usefixtures("roomy_budget")
def test_text_that_doubles_at_every_pass_stops_at_the_size_bound() -> None:
    with pytest.raises(RenderLimitError, match=f"size limit of {MAX_RENDER_TEXT} characters"):
        render("{{ render(vars.doubles) }}", ctx())


@pytest.mark.usefixtures("tiny_budget")
def test_compiling_the_text_spends_the_callers_budget() -> None:
    assert len(MANY_EXPRESSIONS) < MAX_RENDER_TEXT
    with pytest.raises(RenderLimitError, match="CPU-time budget of 1 ms") as caught:
        render("{{ render(inputs.body) }}", ctx(body=MANY_EXPRESSIONS))
    assert "while compiling" in str(caught.value)


@pytest.mark.usefixtures("tiny_budget")
def test_a_compile_outside_any_render_has_a_budget_of_its_own() -> None:
    text = MANY_EXPRESSIONS + "{{ 'outside' }}"
    with pytest.raises(RenderLimitError, match="while compiling a template of"):
        compile_uncached(text)
    problem = validate_template(text)
    assert problem is not None and "render exceeded" in problem.message
