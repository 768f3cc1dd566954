"""The render budget: CPU time and size bombs fail their render with "render exceeded ...".

Each bomb would run for minutes (or exhaust memory) without the budget; the tests assert the
message and print the CPU time the failing render took (no timed assertion: the machine may be
busy). Quadratic filters now run in linear time.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from kestream.expressions import (
    RenderError,
    RenderLimitError,
    render,
    render_timeout_ms,
    render_value,
    set_render_timeout_ms,
    set_step_render_budget_ms,
    step_render_budget_ms,
)
from kestream.expressions.budget import RenderBudget, current_budget, step_budget
from kestream.expressions.patterns import expanded_units
from kestream.models.inputs import InputValueError, StringInput, input_model_for
from kestream.models.state import StateType
from kestream.testing import Driver

BUDGET_MS = 250
CTX: dict[str, Any] = {"task": {"id": "bomb", "type": "io.kestra.plugin.core.log.Log"}}
A40_B = "a" * 40 + "b"


@pytest.fixture
def small_budget() -> Iterator[None]:
    """A quarter-second budget keeps the bomb tests short."""
    before = render_timeout_ms()
    set_render_timeout_ms(BUDGET_MS)
    try:
        yield
    finally:
        set_render_timeout_ms(before)


STEP_BUDGET_MS = 100


@pytest.fixture
def small_step_budget() -> Iterator[None]:
    """A tenth of a second for the renders of one step, less than one render's budget."""
    before = step_render_budget_ms()
    set_step_render_budget_ms(STEP_BUDGET_MS)
    try:
        yield
    finally:
        set_step_render_budget_ms(before)


def _fails(template: str, ctx: dict[str, Any] | None = None) -> tuple[str, float]:
    """The error message of a render that must fail, and the CPU seconds it took."""
    started = time.thread_time()
    with pytest.raises(RenderLimitError) as info:
        render(template, CTX if ctx is None else ctx)
    return str(info.value), time.thread_time() - started


TIME_BOMBS = {
    "nested loops": "{% for a in range(1,1000000) %}{% for b in range(1,1000000) %}"
    "{% endfor %}{% endfor %}",
    "regex replace": "{{ '" + A40_B + "' | replace('(a|aa)+$', 'x', regexp=true) }}",
    "regex split": "{{ '" + A40_B + "' | split('(a|aa)+$') }}",
    "jq test": "{{ '\"" + A40_B + "\"' | jq('test(\"(a|aa)+$\")') }}",
    "jq gsub": "{{ '\"" + A40_B + '"\' | jq(\'gsub("(a|aa)+$"; "x")\') }}',
    "jq huge range": "{{ 1 | jq('[range(1000000) | range(1000000)] | length') }}",
    "jq sort": "{{ 1 | jq('[range(1000000) | tostring] | sort | length') }}",
    "string building": "{% set s = '' %}{% for i in range(1, 1000000) %}"
    "{% set s = s ~ 'xxxxxxxxxx' %}{% endfor %}",
    "list building": "{% set l = [] %}{% for i in range(1, 1000000) %}{% set l = l + [i] %}"
    "{% endfor %}",
    "filter in a loop": "{% set s = range(1, 1000000) | join(',') %}"
    "{% for i in range(1, 100000) %}{% set t = s | upper %}{% endfor %}",
    "list equality in a loop": "{% set l = range(1, 1000000) %}"
    "{% for i in range(1, 100000) %}{% if l == l %}{% endif %}{% endfor %}",
    "yaml dump": "{{ range(1, 1000000) | toYaml | length }}",
    "yaml parse": "{% set y = range(1, 1000000) | join('\n- ') %}{{ yaml('- ' ~ y) | length }}",
    "mixed sort": "{% set l = ['a'] %}{% for i in range(1, 1000000) %}{% set l = l | sort %}"
    "{% endfor %}",
    # Keys of values that repeat one big list by reference: cheap to build, costly to walk.
    "distinct of repeated lists": "{% set big = range(0, 999999) %}"
    "{{ [" + ",".join(["big"] * 40) + "] | distinct | length }}",
    "contains of repeated lists": "{% set big = range(0, 999999) %}"
    "{% set l = [" + ",".join(["big"] * 30) + "] %}{{ l contains big }}",
    "list minus repeated lists": "{% set big = range(0, 999999) %}"
    "{% set l = [" + ",".join(["big"] * 30) + "] %}{{ (l - [big]) | length }}",
    "in of nested references": "{% set big = range(0, 999999) %}{% set a = [big,big,big,big,big] %}"
    "{% set b = [a,a,a,a,a] %}{{ b in [b, 1] }}",
    "distinct of nested references": "{% set big = range(0, 999999) %}"
    "{% set a = [big,big,big,big,big] %}{% set b = [a,a,a,a,a] %}{{ [b, b] | distinct }}",
    "jq minus of repeated lists": "{% set big = range(0, 999999) %}"
    "{{ [" + ",".join(["big"] * 30) + "] | jq('. - [.[0]] | length') }}",
}


@pytest.mark.usefixtures("small_budget")
@pytest.mark.parametrize("template", list(TIME_BOMBS.values()), ids=list(TIME_BOMBS))
def test_time_bombs_fail_past_the_budget(template: str) -> None:
    message, cpu = _fails(template)
    print(f"failed after {cpu * 1000:.0f} ms of CPU (budget {BUDGET_MS} ms)")
    assert message.startswith(
        f"render exceeded its CPU-time budget of {BUDGET_MS} ms (KESTREAM_RENDER_TIMEOUT_MS) "
        "in task 'bomb' (expression `"
    ), message


SIZE_BOMBS = {
    "string doubling": "{% set s = 'xx' %}{% for i in range(1, 64) %}{% set s = s ~ s %}"
    "{% endfor %}",
    "outputs of a long text": "{% set s = range(1, 1000000) | join(',') %}{{ s }}{{ s }}",
    "json of repeated text": "{% set l = [range(1, 1000000) | join(',')] %}"
    "{% for i in range(1, 10) %}{% set l = l + l %}{% endfor %}{{ l }}",
    "java text of repeated text": "{% set l = [range(1, 1000000) | join(',')] %}"
    "{% for i in range(1, 10) %}{% set l = l + l %}{% endfor %}{{ 'x' ~ l }}",
    "join of repeated text": "{% set l = [range(1, 1000000) | join(',')] %}"
    "{% for i in range(1, 10) %}{% set l = l + l %}{% endfor %}{{ l | join }}",
    "loop output": "{% set s = range(1, 100000) | join(',') %}"
    "{% for i in range(1, 1000) %}{{ s }}{% endfor %}",
    "indent": "{{ range(1, 100000) | join('\n') | indent(1000) }}",
}


@pytest.fixture
def ample_budget() -> Iterator[None]:
    """Ten seconds of CPU for the tests of the size limits: a size bomb meets its limit well
    before (0.7 s of CPU at most here), and a busy machine (the suite on two workers) does not
    spend the default second first."""
    before = render_timeout_ms()
    set_render_timeout_ms(10_000)
    try:
        yield
    finally:
        set_render_timeout_ms(before)


@pytest.mark.parametrize("template", list(SIZE_BOMBS.values()), ids=list(SIZE_BOMBS))
@pytest.mark.usefixtures("ample_budget")
def test_size_bombs_fail_at_the_size_limit(template: str) -> None:
    message, cpu = _fails(template)
    print(f"failed after {cpu * 1000:.0f} ms of CPU")
    assert message.startswith("render exceeded its size limit of 10000000 characters"), message
    assert "in task 'bomb'" in message


@pytest.mark.usefixtures("ample_budget")
def test_list_size_limit() -> None:
    message, _ = _fails(
        "{% set l = [1] %}{% for i in range(1, 40) %}{% set l = l + l %}{% endfor %}"
    )
    assert message.startswith("render exceeded its size limit of 1000000 list items in task 'bomb'")


@pytest.mark.usefixtures("ample_budget")
def test_the_limit_passes_through_filters_unchanged() -> None:
    """A filter's failure is prefixed with its name; a spent budget is not, wherever it is met."""
    with pytest.raises(RenderError) as info:
        render("{{ 'x' | slice(0, 5) }}", CTX)
    assert str(info.value).startswith("Filter [slice]:")
    message, _ = _fails("{% set s = range(1, 1000000) | join(',') %}{{ [s, s] | join }}")
    assert message.startswith("render exceeded its size limit"), message


#: Replacing into a value anyone may send: with 4 000 characters the result would be 16 million
#: characters, with a 100 kB webhook field 10^10 (memory, not time, runs out). The result's length
#: is computed before it is built.
REPLACE_BOMBS = {
    "replace method": "{{ inputs.a.replace('', inputs.a) }}",
    "replace method of a repeated text": "{{ inputs.a.replace('x', inputs.a) }}",
    "replace filter": "{{ inputs.a | replace('', inputs.a) }}",
    "replace filter with pairs": "{{ inputs.a | replace({'x': inputs.a}) }}",
    "replace filter with a regex": "{{ inputs.a | replace('', inputs.a, regexp=true) }}",
    "replace filter with a regex group": "{{ inputs.a | replace('(x)', '$1' ~ inputs.a, "
    "regexp=true) }}",
}


@pytest.mark.usefixtures("ample_budget")
@pytest.mark.parametrize("template", list(REPLACE_BOMBS.values()), ids=list(REPLACE_BOMBS))
def test_replace_past_the_size_limit_is_refused_before_it_is_built(template: str) -> None:
    ctx = {**CTX, "inputs": {"a": "x" * 4000}}
    tracemalloc.start()
    try:
        message, _ = _fails(template, ctx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak allocation {peak / 1e6:.2f} MB")
    assert message.startswith("render exceeded its size limit of 10000000 characters"), message
    # Never the 16-million-character result: at most pieces up to the limit (a regex with a
    # group reference expands its pieces one by one before they are joined).
    assert peak < 11_000_000


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ 'abc'.replace('', '-') }}", "-a-b-c-"),
        ("{{ 'abc' | replace('', '-') }}", "-a-b-c-"),
        ("{{ 'aXbX'.replace('X', 'yy') }}", "ayybyy"),
        ("{{ 'aXXb' | replace({'XX': '', 'a': 'c'}) }}", "cb"),
        ("{{ 'abc' | replace('', '-', regexp=true) }}", "-a-b-c-"),
        ("{{ 'a1b22' | replace('(\\\\d+)', '<$1>', regexp=true) }}", "a<1>b<22>"),
    ],
)
def test_replace_within_the_limit_is_unchanged(template: str, expected: str) -> None:
    assert render(template, CTX) == expected


def test_a_regex_replace_that_could_pass_the_limit_but_does_not_is_built() -> None:
    """One match in a long text, replaced by a long text: the bound says it might not fit, the
    length counted match by match says it does."""
    ctx = {**CTX, "inputs": {"a": "a" * 100_000 + "x", "b": "y" * 200}}
    result = render("{{ inputs.a | replace('x', inputs.b, regexp=true) }}", ctx)
    assert result == "a" * 100_000 + "y" * 200


@pytest.mark.usefixtures("ample_budget")
def test_replace_up_to_the_size_limit_is_allowed() -> None:
    """The computed length is exact: a result of exactly the limit is built, one more is not."""
    ctx = {**CTX, "inputs": {"a": "x" * 1_000_000, "b": "y" * 9}}
    assert len(render("{{ inputs.a.replace('x', inputs.b) }}", ctx)) == 9_000_000
    ctx["inputs"]["b"] = "y" * 10
    assert len(render("{{ inputs.a.replace('x', inputs.b) }}", ctx)) == 10_000_000
    ctx["inputs"]["a"] += "x"
    message, _ = _fails("{{ inputs.a.replace('x', inputs.b) }}", ctx)
    assert message.startswith("render exceeded its size limit"), message


@pytest.mark.usefixtures("ample_budget")
def test_without_a_task_the_message_names_the_expression_only() -> None:
    message, _ = _fails("{% set s = range(1, 1000000) | join(',') %}{{ s }}{{ s }}", {})
    assert message.startswith("render exceeded its size limit of 10000000 characters of text (")
    assert "in task" not in message


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ range(1, 100000) | distinct | length }}", "100000"),
        ("{{ range(1, 1000000) | unique | length }}", "1000000"),
        ("{{ (range(1, 100000) - range(2, 100000)) }}", "[1]"),
        ("{{ range(1, 100000) contains range(1, 100000) }}", "true"),
        ("{{ range(1, 100000) contains range(1, 100001) }}", "false"),
        ("{{ range(1, 1000000) | rsort | first }}", "1000000"),
        ("{{ 1 | jq('[range(100000)] - [range(1; 100000)]') }}", "[[0]]"),
    ],
)
@pytest.mark.usefixtures("ample_budget")
def test_former_quadratic_filters_finish_in_linear_time(template: str, expected: str) -> None:
    """Ten seconds of CPU is far more than the linear filters need (well under one here) and far
    less than the quadratic ones took (10^10 steps and more), so this fails only if one turns
    quadratic again; the default second is not used, since the suite on a busy machine can
    spend it on a million items."""
    started = time.thread_time()
    assert render(template, CTX) == expected
    print(f"{(time.thread_time() - started) * 1000:.0f} ms of CPU")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # Pebble's ==: numbers by value, booleans apart from numbers, lists item by item.
        (
            "{{ [1, 1.0, true, '1', [1], [1.0], {'a': 1}, {'a': 1.0}, null, null, false]"
            " | distinct }}",
            '[1,true,"1",[1],{"a":1},null,false]',
        ),
        ("{{ [1, 2.0, true, [1], [2]] - [1.0, [1.0]] }}", "[2.0,true,[2]]"),
        ("{{ [1, [2], 'a'] contains [1.0, [2.0]] }}", "true"),
        ("{{ [true] contains [1] }}", "false"),
        ("{{ [1] contains [true] }}", "false"),
        ("{{ [] contains [] }}", "true"),
        ("{{ [{'a': [1, 2]}] contains [{'a': [1, 2]}] }}", "true"),
    ],
)
def test_linear_filters_keep_pebble_equality(template: str, expected: str) -> None:
    assert render(template, CTX) == expected


def test_values_without_a_hash_key_are_compared_one_by_one() -> None:
    ctx = {"items": [{"s": {1, 2}}, {"s": {2, 1}}, {"s": {3}}], "nan": float("nan")}
    assert render("{{ items | distinct | length }}", ctx) == "2"
    assert render("{{ (items - [{'x': 1}]) | length }}", ctx) == "3"
    assert render("{{ [nan, nan] | distinct | length }}", ctx) == "2"  # NaN equals nothing


def test_jq_subtraction_keeps_booleans_apart_from_numbers() -> None:
    program = '[1, true, {"a": true}, {"a": 1}, [1.0]] - [1.0, {"a": 1}, [1]]'
    assert render("{{ 1 | jq(program) }}", {"program": program}) == '[[true,{"a":true}]]'


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            r"{{ '2024-05' | replace('(?<y>\\d{4})-(?<m>\\d+)', '${m}/${y}', regexp=true) }}",
            "05/2024",
        ),
        ("{{ 'aaab' | replace('a++b', 'x', regexp=true) }}", "x"),  # possessive (Java)
        ("{{ 'aab' | replace('(?>a+)b', 'x', regexp=true) }}", "x"),  # atomic group (Java)
        (r"{{ 'a1b22c' | split('\\d+') }}", '["a","b","c"]'),
        ("{{ 'a' | replace('(a+)+$', 'b', regexp=true) }}", "b"),  # once refused by a guard
        (r"{{ 'x$y' | replace('\\$', '\\$\\$', regexp=true) }}", "x$$y"),
    ],
)
def test_regexes_keep_java_syntax(template: str, expected: str) -> None:
    assert render(template, CTX) == expected


def test_patterns_too_large_to_compile_are_refused_before_compiling() -> None:
    assert expanded_units("(?:x{1000}){1000}") > 100_000
    assert expanded_units("a{200000,300000}") > 100_000
    assert expanded_units("a{1,100000}") <= 2  # only the minimum is expanded
    assert expanded_units("[ab]{3}(c|d){2}") <= 20
    assert expanded_units(r"\p{L}{2}\{5}") <= 10
    with pytest.raises(RenderError, match="too large once its counted repetitions are expanded"):
        render("{{ 'x' | replace('(?:x{1000}){1000}', 'y', regexp=true) }}", CTX)


@pytest.mark.usefixtures("small_budget")
def test_budget_is_shared_by_one_property() -> None:
    """render_value renders a property's strings under one budget: two halves do not fit."""
    half = "{% for i in range(1, 1000000) %}{% endfor %}"
    started = time.thread_time()
    with pytest.raises(RenderLimitError):
        render_value({"a": [half, half, half, half], "b": half}, CTX)
    print(f"failed after {(time.thread_time() - started) * 1000:.0f} ms of CPU")


def test_no_budget_outside_a_render() -> None:
    budget = current_budget()
    assert budget.timeout_ms == float("inf")
    assert isinstance(budget, RenderBudget)


def test_the_budget_setting_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        set_render_timeout_ms(0)


@pytest.mark.usefixtures("small_budget")
def test_input_validator_has_the_budget_too() -> None:
    """A value crafted to make a flow's validator backtrack is refused, not matched for minutes."""
    definition = StringInput(id="name", type="STRING", validator="(a|aa)+")
    with pytest.raises(InputValueError, match="render exceeded its CPU-time budget"):
        definition.parse(A40_B)
    assert definition.parse("aaaa") == "aaaa"


def test_input_validators_compile_with_the_matcher_that_checks_values() -> None:
    """Java's named groups are accepted at deploy time; patterns too large to compile are not."""
    named = input_model_for({"id": "y", "type": "STRING", "validator": r"(?<year>\d{4})"})
    assert named.parse("2024") == "2024"
    with pytest.raises(ValueError, match="too large once its counted repetitions are expanded"):
        input_model_for({"id": "x", "type": "STRING", "validator": "(?:x{1000}){1000}"})


@pytest.mark.usefixtures("small_budget")
def test_a_bomb_in_a_log_task_fails_that_task_run_and_names_it() -> None:
    flow = """id: bombs
namespace: test.budget
inputs:
  - id: text
    type: STRING
tasks:
  - id: before
    type: io.kestra.plugin.core.log.Log
    message: "fine {{ range(1, 10) | distinct | length }}"
  - id: bomb
    type: io.kestra.plugin.core.log.Log
    message: "{{ inputs.text | replace('(a|aa)+$', '', regexp=true) }}"
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: never
"""
    normal = """id: normal
namespace: test.budget
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "hello {{ range(1, 1000) | distinct | length }}"
"""
    with Driver() as driver:
        driver.deploy(flow)
        driver.deploy(normal)
        started = time.thread_time()
        execution = driver.start("test.budget", "bombs", {"text": A40_B})
        print(f"bomb execution took {(time.thread_time() - started) * 1000:.0f} ms of CPU")
        runs = {run.taskId: run.state.current for run in execution.taskRunList}
        errors = [line for line in driver.logs(execution.id) if line.level == "ERROR"]
        after = driver.start("test.budget", "normal")
        hello = [line.message for line in driver.logs(after.id) if line.taskId == "hello"]
    assert execution.state.current is StateType.FAILED
    assert runs == {"before": StateType.SUCCESS, "bomb": StateType.FAILED}
    assert [line.taskId for line in errors] == ["bomb"]
    assert errors[0].message.startswith(
        f"render exceeded its CPU-time budget of {BUDGET_MS} ms (KESTREAM_RENDER_TIMEOUT_MS) "
        "in task 'bomb'"
    ), errors[0].message
    assert after.state.current is StateType.SUCCESS
    assert hello == ["hello 1000"]


STEP_BUDGET_MESSAGE = (
    f"render exceeded the step budget of {STEP_BUDGET_MS} ms (KESTREAM_STEP_RENDER_BUDGET_MS) "
    "shared by the renders of one executor step"
)


@pytest.mark.usefixtures("small_budget", "small_step_budget")
@pytest.mark.parametrize("name", ["nested loops", "regex replace", "jq huge range"])
def test_inside_a_step_a_render_ends_at_the_step_deadline(name: str) -> None:
    """The step's deadline (earlier than the render's own budget here) stops a bomb, regex
    timeouts included, and the message names the step budget."""
    started = time.monotonic()
    with step_budget():
        message, _ = _fails(TIME_BOMBS[name])
    print(f"failed after {(time.monotonic() - started) * 1000:.0f} ms (step budget 100 ms)")
    assert message.startswith(STEP_BUDGET_MESSAGE + " in task 'bomb'"), message


@pytest.mark.usefixtures("small_step_budget")
def test_outside_a_step_only_the_render_budget_applies() -> None:
    """Renders made by the API or a worker have no step: a render longer than the step budget
    but within its own succeeds."""
    started = time.thread_time()
    assert render("{{ range(1, 1000000) | distinct | length }}", CTX) == "1000000"
    print(f"{(time.thread_time() - started) * 1000:.0f} ms of CPU, step budget 100 ms")


def test_budgets_must_be_positive() -> None:
    with pytest.raises(ValueError, match="the step render budget must be positive"):
        set_step_render_budget_ms(0)
    assert step_render_budget_ms() > 0


WIDE_FLOW = """id: wide
namespace: test.budget
inputs:
  - id: size
    type: INT
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ range(1, inputs.size) }}"
    concurrencyLimit: 0
    tasks:
      - id: log
        type: io.kestra.plugin.core.log.Log
        message: "MESSAGE"
"""


@pytest.mark.usefixtures("small_step_budget")
def test_a_step_of_many_renders_fails_the_task_runs_past_its_deadline() -> None:
    """A ForEach starting every lane in one step: each lane's render stays within its own budget,
    together they pass the step's; the lanes rendered after its deadline fail, saying so."""
    # The values are a literal list, not a template: on a cold or loaded process the step's
    # deadline may pass before the ForEach has rendered its values, which would start no lane.
    flow = WIDE_FLOW.replace("MESSAGE", "{{ range(1, 10000) | distinct | length }}").replace(
        '"{{ range(1, inputs.size) }}"', str(list(range(1, 201)))
    )
    with Driver() as driver:
        driver.deploy(flow)
        execution = driver.start("test.budget", "wide", {"size": 200})
        logs = driver.logs(execution.id)
    runs = [run for run in execution.taskRunList if run.taskId == "log"]
    failed = [run for run in runs if run.state.current is StateType.FAILED]
    errors = [line.message for line in logs if line.level == "ERROR" and line.taskId == "log"]
    print(f"{len(runs) - len(failed)} of {len(runs)} lanes rendered within the step budget")
    assert execution.state.current is StateType.FAILED
    assert len(runs) == 200
    assert failed, "200 renders of a few ms each cannot all end within 100 ms"
    assert errors and all(message.startswith(STEP_BUDGET_MESSAGE) for message in errors)


def test_a_wide_step_of_legitimate_renders_is_within_the_default_step_budget() -> None:
    """10 000 inline Log tasks started by one step: far within the default budget of 5 s."""
    flow = WIDE_FLOW.replace("MESSAGE", "item {{ taskrun.value | upper }}")
    with Driver() as driver:
        driver.deploy(flow)
        started = time.monotonic()
        execution = driver.start("test.budget", "wide", {"size": 10_000})
        print(f"execution of 10 000 lanes took {time.monotonic() - started:.2f} s")
    assert execution.state.current is StateType.SUCCESS
    assert sum(1 for run in execution.taskRunList if run.taskId == "log") == 10_000
