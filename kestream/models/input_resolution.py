"""Resolving a flow's inputs for one execution: ``dependsOn``, templated defaults, SELECT choices.

Kestra resolves inputs one after the other, each seeing the ones resolved before it:

- an input with ``dependsOn`` is **enabled** only when every input it names is enabled and its
  ``condition`` (a template) renders true. A condition that cannot be rendered (it names an
  input that is absent, say) disables the input rather than failing the execution. A disabled
  input is not required, not validated, and left out of the execution's inputs even when a value
  was sent for it;
- a ``defaults`` that is a template is rendered then (``"{{ inputs.start }}"``);
- a SELECT or MULTISELECT ``expression`` is rendered then into the list of choices; the value
  must be one of them (unless ``allowCustomValue``), and ``autoSelectFirst`` takes the first
  when there is neither a value nor a default.

Templates also see the variables the caller gives (``flow``, ``envs``, ``globals`` and
``kv()``: :func:`kestream.executor.context.input_variables`), as Kestra's dynamic dropdowns need.

The inputs named in ``dependsOn`` are resolved first, whatever their place in the list; the flow
check refuses names that are not inputs and cycles (:func:`dependency_problems`), and a cycle met
here anyway disables the inputs on it. Every template runs in the template engine's sandbox and
within its render budget: a value sent by anyone is data there, never a template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kestream.models.inputs import (
    Input,
    InputValueError,
    MultiselectInput,
    SecretInput,
    SelectInput,
    input_model_for,
    is_dynamic_default,
    nest_inputs,
)
from kestream.models.values import UnportableValue, check_portable, loads_json

_Select = SelectInput | MultiselectInput


@dataclass(frozen=True, slots=True)
class ResolvedInput:
    """One declared input after resolution.

    ``enabled`` is False when its ``dependsOn`` does not hold; ``value`` is meaningful only when
    ``has_value``; ``problem`` says why the value was refused (or is missing); ``choices`` are
    the SELECT/MULTISELECT choices, rendered when the input has an ``expression``.
    """

    model: Input
    enabled: bool
    value: Any = None
    has_value: bool = False
    problem: str | None = None
    choices: list[str] | None = None


class _CycleError(Exception):
    """An input met again while its own dependencies are being resolved."""


def resolve_inputs(
    flow_inputs: Sequence[Input | Mapping[str, Any]],
    given: Mapping[str, Any],
    *,
    typed: bool = False,
    scope: str | None = None,
    variables: Mapping[str, Any] | None = None,
) -> list[ResolvedInput]:
    """Resolve every declared input, in declaration order.

    ``given`` maps input ids to values (a dotted id may also be given nested, as executions
    carry them). With ``typed``, given values are taken as they are (already parsed); only the
    missing ones get their defaults. ``scope``: the flow SECRET inputs are encrypted for
    (``kestream.secrets.encryption.scope_of``). ``variables``: what templates see besides
    ``inputs`` (``kestream.executor.context.input_variables``: ``flow``, ``envs``, ``globals``,
    ``kv()``).
    """
    return _Resolver(flow_inputs, given, typed, scope, variables).run()


def fill_defaults(
    flow_inputs: Sequence[Input],
    given: dict[str, Any] | None,
    *,
    scope: str | None = None,
    variables: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Inputs taken as given (already typed, or not to be validated) with the defaults of the
    enabled inputs left out added, as Kestra fills them; nothing is refused. ``given`` comes
    back as it is when no default is missing."""
    values = given or {}
    if all(_given_value(values, m.id) is not None for m in flow_inputs if _fills(m)):
        return given  # nothing to fill in (the common case: inputs the API already resolved)
    resolved = resolve_inputs(flow_inputs, values, typed=True, scope=scope, variables=variables)
    added = {
        r.model.id: r.value
        for r in resolved
        if r.has_value and _given_value(values, r.model.id) is None
    }
    if not added:
        return given
    return _merged(values, nest_inputs(added))


def _merged(given: Mapping[str, Any], added: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` with ``added`` laid over it, nested maps merged at every level (``a.b.c``
    added next to a given ``a.b.d``)."""
    merged = dict(given)
    for key, value in added.items():
        existing = merged.get(key)
        if isinstance(existing, Mapping) and isinstance(value, Mapping):
            value = _merged(existing, value)
        merged[key] = value
    return merged


def _fills(model: Input) -> bool:
    """Whether a missing value for ``model`` may be filled in (a default or a first choice)."""
    return model.defaults is not None or (isinstance(model, _Select) and model.autoSelectFirst)


def dependency_problems(flow_inputs: Sequence[Input]) -> list[tuple[int, str]]:
    """``(index, message)`` for each input whose ``dependsOn`` names itself or an input that is
    not declared, else for the first cycle; checked with the flow."""
    ids = {model.id: index for index, model in enumerate(flow_inputs)}
    problems: list[tuple[int, str]] = []
    for index, model in enumerate(flow_inputs):
        for name in _dependencies(model):
            if name == model.id:
                problems.append((index, f"input '{model.id}' depends on itself"))
            elif name not in ids:
                problems.append((index, f"input '{model.id}' depends on unknown input '{name}'"))
    if problems:
        return problems
    cycle = _first_cycle(flow_inputs, ids)
    if cycle is None:
        return []
    return [(ids[cycle[0]], f"inputs depend on each other in a cycle: {' -> '.join(cycle)}")]


def _first_cycle(flow_inputs: Sequence[Input], ids: Mapping[str, int]) -> list[str] | None:
    """The ids along the first ``dependsOn`` cycle found (first id repeated at the end)."""
    finished: set[str] = set()

    def visit(path: list[str]) -> list[str] | None:
        for dep in _dependencies(flow_inputs[ids[path[-1]]]):
            if dep in path:
                return [*path[path.index(dep) :], dep]
            if dep not in finished:
                cycle = visit([*path, dep])
                if cycle is not None:
                    return cycle
        finished.add(path[-1])
        return None

    for model in flow_inputs:
        if model.id not in finished:
            cycle = visit([model.id])
            if cycle is not None:
                return cycle
    return None


def _dependencies(model: Input) -> list[str]:
    return list(model.dependsOn.inputs) if model.dependsOn is not None else []


def _given_value(given: Mapping[str, Any], input_id: str) -> Any:
    """The value given for ``input_id``: its own key, else the nested path of a dotted id."""
    if input_id in given:
        return given[input_id]
    if "." not in input_id:
        return None
    node: Any = given
    for part in input_id.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class _Resolver:
    """One resolution: the inputs done so far and the values the next templates see."""

    def __init__(
        self,
        flow_inputs: Sequence[Input | Mapping[str, Any]],
        given: Mapping[str, Any],
        typed: bool,
        scope: str | None,
        variables: Mapping[str, Any] | None,
    ) -> None:
        self.models = [input_model_for(declared) for declared in flow_inputs]
        self.by_id = {model.id: model for model in self.models}
        self.given = given
        self.typed = typed
        self.scope = scope
        self.variables = variables or {}
        self.done: dict[str, ResolvedInput] = {}
        self.values: dict[str, Any] = {}  # enabled inputs with a value, in resolution order
        self.active: set[str] = set()

    def run(self) -> list[ResolvedInput]:
        for model in self.models:
            try:
                self.resolve(model)
            except _CycleError:
                self.done.setdefault(model.id, ResolvedInput(model, enabled=False))
        return [self.done[model.id] for model in self.models]

    def resolve(self, model: Input) -> ResolvedInput:
        done = self.done.get(model.id)
        if done is not None:
            return done
        if model.id in self.active:
            raise _CycleError(model.id)
        self.active.add(model.id)
        try:
            result = self._resolve(model)
        finally:
            self.active.discard(model.id)
        self.done[model.id] = result
        if result.enabled and result.has_value and result.problem is None:
            self.values[model.id] = result.value
        return result

    def _resolve(self, model: Input) -> ResolvedInput:
        if not self._enabled(model):
            return ResolvedInput(model, enabled=False)
        choices: list[str] | None = None
        try:
            if isinstance(model, _Select):
                choices = self._choices(model)
            value, from_given = self._raw_value(model, choices)
            if value is None:
                if model.required:
                    raise InputValueError("missing required input")
                return ResolvedInput(model, enabled=True, choices=choices)
            if not (self.typed and from_given):
                value = model.parse(value)
                if choices is not None and isinstance(model, _Select) and model.expression:
                    model.check_choices(value, choices)
            if isinstance(model, SecretInput):  # encrypted before any record holds it
                value = model.seal(value, self.scope)
            check_portable(value)  # what every record downstream must carry
        except InputValueError as exc:
            return self._refused(model, str(exc), choices)
        except UnportableValue as exc:
            return self._refused(model, str(exc.under(model.id)), choices)
        except (ValueError, ArithmeticError) as exc:  # a parser's own limit (5000 digits...)
            return self._refused(model, f"invalid value: {exc}", choices)
        return ResolvedInput(model, enabled=True, value=value, has_value=True, choices=choices)

    def _refused(self, model: Input, message: str, choices: list[str] | None) -> ResolvedInput:
        if self.typed:  # taken as given: a default that does not fit is left out, not refused
            return ResolvedInput(model, enabled=True, choices=choices)
        return ResolvedInput(model, enabled=True, problem=message, choices=choices)

    def _enabled(self, model: Input) -> bool:
        depends = model.dependsOn
        if depends is None:
            return True
        for name in depends.inputs:
            dependency = self.by_id.get(name)
            if dependency is None or not self.resolve(dependency).enabled:
                return False
        if depends.condition is None:
            return True
        from kestream.expressions import RenderError, is_truthy, render

        try:
            return is_truthy(render(depends.condition, self._context()))
        except RenderError:
            return False  # Kestra: a condition that cannot be rendered disables the input

    def _raw_value(self, model: Input, choices: list[str] | None) -> tuple[Any, bool]:
        """The value to parse and whether it was given (else a default or the first choice)."""
        value = _given_value(self.given, model.id)
        if value is not None:
            return value, True
        value = model.defaults
        if is_dynamic_default(value):
            value = self._render(value, "defaults")
        if value is None and isinstance(model, _Select) and model.autoSelectFirst and choices:
            value = model.first_choice(choices)
        return value, False

    def _choices(self, model: _Select) -> list[str] | None:
        """The choices: the rendered ``expression`` (a list, or JSON array text), else the
        ones written in the flow."""
        if model.expression is None:
            return model.static_choices()
        rendered = self._render(model.expression, "expression")
        try:
            items = loads_json(rendered)
        except ValueError:
            items = None
        if not isinstance(items, list):
            raise InputValueError(
                f"its expression must render a list of values, got {rendered[:80]!r}"
            )
        from kestream.expressions import to_text

        return [to_text(item) for item in items]

    def _render(self, template: str, what: str) -> str:
        from kestream.expressions import RenderError, render

        try:
            return render(template, self._context())
        except RenderError as exc:
            raise InputValueError(f"unable to render its {what}: {exc}") from None

    def _context(self) -> dict[str, Any]:
        return {**self.variables, "inputs": nest_inputs(self.values)}
