"""Located flow problems, and the bottom-up task checker that finds them.

A flow author wants every problem of a flow at once, each with the line to fix: so nothing here
stops at the first error. Tasks are checked bottom-up: the children of a flowable task are built
first and replaced by task instances (or a placeholder when they are invalid), so a parent's own
errors and its children's errors are all reported, each once, at its own path.

Problems have a severity. Errors make :func:`kestream.models.flow.parse_flow` refuse the flow.
Expression syntax problems are errors by default, so a typo in a template is caught at deploy
time. ``strict_expressions=False`` makes them warnings instead, which is Kestra 0.21's own
behaviour: it accepts such a flow and fails the task run that renders the expression (the
executor must therefore still turn a syntax error met at render time into a failed task run).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from kestream.models.yaml_source import Path, PathKey, SourceMap
from kestream.tasks.base import Task
from kestream.tasks.registry import (
    TASK_CLASSES,
    all_task_classes,
    known_types,
    plugin_modules,
    task_class,
)

Severity = Literal["error", "warning"]

_TEMPLATE_START = re.compile(r"\{\{|\{%|\{#")
_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
#: Task properties that are never rendered, so never checked as templates.
_NOT_RENDERED = frozenset({"id", "type", "description"})


@dataclass(frozen=True, slots=True)
class FlowProblem:
    """One thing wrong with a flow, where it is, and what to do about it.

    ``flow`` is ``namespace.id`` when the YAML gives both (else the source name), ``task_id`` the
    id of the nearest enclosing task, ``path`` a readable path (``tasks[0].tasks[2].format``),
    ``line`` the 1-based YAML line, ``loc`` the same path as a tuple for programs.
    """

    flow: str
    task_id: str | None
    path: str
    line: int | None
    message: str
    severity: Severity = "error"
    loc: Path = ()

    def __str__(self) -> str:
        where = ", ".join(part for part in (self.line and f"line {self.line}", self.path) if part)
        who = f"flow {self.flow}" + (f", task '{self.task_id}'" if self.task_id else "")
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{prefix}{who}{f' ({where})' if where else ''}: {self.message}"


class FlowValidationError(ValueError):
    """A flow that cannot be used, with every error found (``problems``) and the ``warnings``."""

    def __init__(
        self, problems: Sequence[FlowProblem], *, flow: str, warnings: Sequence[FlowProblem] = ()
    ) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings)
        self.flow = flow
        count = len(self.problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"flow {flow} is invalid ({count} problem{'s' * (count != 1)}):\n{lines}")


def format_path(loc: Sequence[PathKey]) -> str:
    """``("tasks", 0, "cases", "a b", 1)`` -> ``tasks[0].cases['a b'][1]``."""
    text = ""
    for key in loc:
        if isinstance(key, int):
            text += f"[{key}]"
        elif _SIMPLE_KEY.match(key):
            text += f".{key}" if text else key
        else:
            text += f"[{key!r}]"
    return text


def suggest(name: str, candidates: Sequence[str], *, limit: int = 3) -> list[str]:
    """The candidates closest to ``name`` (typos), best first.

    Dotted names (task and trigger types) are compared on their last segment first, since a
    shared ``io.kestra.plugin.core`` prefix makes every type look alike.
    """
    if "." not in name:
        return difflib.get_close_matches(name, candidates, n=limit, cutoff=0.7)
    by_tail: dict[str, list[str]] = {}
    for candidate in candidates:
        by_tail.setdefault(candidate.rsplit(".", 1)[-1].lower(), []).append(candidate)
    tail = name.rsplit(".", 1)[-1].lower()
    tails = difflib.get_close_matches(tail, list(by_tail), n=limit, cutoff=0.75)
    found = [candidate for close in tails for candidate in by_tail[close]]
    found += difflib.get_close_matches(name, candidates, n=limit, cutoff=0.9)

    def similarity(candidate: str) -> float:
        return difflib.SequenceMatcher(None, name, candidate).ratio()

    return sorted(dict.fromkeys(found), key=similarity, reverse=True)[:limit]


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` or an empty string when nothing is close."""
    found = suggest(name, candidates)
    if not found:
        return ""
    return "; did you mean " + " or ".join(f"'{c}'" for c in found) + "?"


def describe_value(value: Any) -> str:
    """A short, YAML-ish rendering of a value for messages (``'abc'``, ``a list``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------
# pydantic errors -> located messages
# ---------------------------------------------------------------------------------------------


def resolve_loc(raw: Any, loc: Sequence[Any], *, missing_last: bool) -> Path:
    """Map a pydantic error location onto the data's own path.

    pydantic inserts union member tags (``message.str``) and validator names into locations; those
    are not keys of the data and are dropped. A missing property keeps its last key.
    """
    path: list[PathKey] = []
    current = raw
    for index, key in enumerate(loc):
        if isinstance(current, Mapping) and str(key) in current:
            path.append(str(key))
            current = current[str(key)]
        elif isinstance(current, list) and isinstance(key, int) and 0 <= key < len(current):
            path.append(key)
            current = current[key]
        elif missing_last and index == len(loc) - 1:
            path.append(key if isinstance(key, int) else str(key))
    return tuple(path)


def _property_name(path: Path) -> str:
    names = [key for key in path if isinstance(key, str)]
    return names[-1] if names else "value"


def _model_keys(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def describe_error(error: Mapping[str, Any], path: Path, model: type[BaseModel] | None) -> str:
    """One pydantic error as a sentence a flow author can act on."""
    name = _property_name(path)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"missing required property '{name}'"
    if kind == "extra_forbidden":
        allowed = _model_keys(model) if len(path) and path[-1] == name else []
        return f"unknown property '{name}'{did_you_mean(name, allowed)}"
    if kind == "string_pattern_mismatch":
        return f"invalid {name} {describe_value(error['input'])}: it must match {ctx['pattern']}"
    if kind == "too_short" and ctx.get("min_length") == 1:
        return f"'{name}' must not be empty"
    message = str(error["msg"])
    if kind == "value_error" or kind.startswith("value_error"):
        return f"'{name}': {message.removeprefix('Value error, ')}"
    message = message.replace("Input should", "should", 1)
    return f"'{name}' {message}, got {describe_value(error.get('input'))}"


def validation_messages(
    exc: ValidationError, raw: Any, model: type[BaseModel] | None = None
) -> list[tuple[Path, str]]:
    """Every error of ``exc`` as ``(path in raw, message)``; union alternatives become one line."""
    grouped: dict[Path, list[str]] = {}
    for error in exc.errors(include_url=False):
        path = resolve_loc(raw, error["loc"], missing_last=error["type"] == "missing")
        message = describe_error(error, path, model if len(path) <= 1 else None)
        if message not in grouped.setdefault(path, []):
            grouped[path].append(message)
    return [(path, _join_alternatives(messages)) for path, messages in grouped.items()]


_SHOULD_BE = re.compile(r"^('[^']*') should be (.*), got (.*)$")


def _join_alternatives(messages: list[str]) -> str:
    """Union members fail one by one; ``'x' should be A, got 5`` + ``... B ...`` -> ``A or B``."""
    matches = [_SHOULD_BE.match(message) for message in messages]
    if len(messages) > 1 and all(matches):
        found = [m for m in matches if m is not None]
        if len({(m.group(1), m.group(3)) for m in found}) == 1:
            options = " or ".join(m.group(2) for m in found)
            return f"{found[0].group(1)} should be {options}, got {found[0].group(3)}"
    return "; ".join(messages)


# ---------------------------------------------------------------------------------------------
# collecting problems
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ProblemSink:
    """Collects the problems of one flow, locating every path in the YAML text."""

    flow: str
    source_map: SourceMap
    strict_expressions: bool = True
    problems: list[FlowProblem] = field(default_factory=list)

    def add(
        self,
        loc: Path,
        message: str,
        *,
        task_id: str | None = None,
        severity: Severity = "error",
        line: int | None = None,
    ) -> None:
        """Record one problem at ``loc`` (its line is looked up unless given)."""
        found = line if line is not None else self.source_map.line(loc)
        problem = FlowProblem(self.flow, task_id, format_path(loc), found, message, severity, loc)
        self.problems.append(problem)

    def add_validation_error(
        self,
        exc: ValidationError,
        base: Path,
        raw: Any,
        *,
        model: type[BaseModel] | None = None,
        task_id: str | None = None,
    ) -> None:
        """Record each error of a pydantic validation of ``raw`` (which sits at ``base``)."""
        for path, message in validation_messages(exc, raw, model):
            self.add((*base, *path), message, task_id=task_id)

    @property
    def errors(self) -> list[FlowProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[FlowProblem]:
        return [p for p in self.problems if p.severity == "warning"]

    def check_templates(self, value: Any, loc: Path, *, task_id: str | None = None) -> None:
        """Check the syntax of every template string inside ``value`` (recursively)."""
        for path, text in _strings(value, loc):
            if _TEMPLATE_START.search(text):
                self._check_template(text, path, task_id)

    def _check_template(self, text: str, loc: Path, task_id: str | None) -> None:
        from kestream.expressions import validate_template

        error = validate_template(text)
        if error is None:
            return
        start = self.source_map.content_line(loc)
        line = None if start is None else start + max(int(error.line or 1), 1) - 1
        severity: Severity = "error" if self.strict_expressions else "warning"
        message = f"invalid expression: {error.message}"
        self.add(loc, message, task_id=task_id, severity=severity, line=line)


def _strings(value: Any, loc: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, (*loc, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*loc, index))


# ---------------------------------------------------------------------------------------------
# where tasks nest
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskSlot:
    """A property of a task class that holds tasks: a list, a map of lists (Switch cases), or
    a list of nodes each holding one task under ``task`` (a Dag's ``{task, dependsOn}``)."""

    field_name: str
    key: str
    kind: Literal["list", "map", "nodes"]


def _holds_task(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, Task):
        return True
    return any(_holds_task(arg) for arg in get_args(annotation) if not isinstance(arg, str))


def _is_node(annotation: Any) -> bool:
    """A model (not a task) whose ``task`` field holds one task."""
    if not isinstance(annotation, type) or not issubclass(annotation, BaseModel):
        return False
    if issubclass(annotation, Task):
        return False
    field = annotation.model_fields.get("task")
    return field is not None and _holds_task(field.annotation)


def _slot_kind(annotation: Any) -> Literal["list", "map", "nodes"] | None:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _slot_kind(get_args(annotation)[0])
    if origin is list and any(_is_node(arg) for arg in get_args(annotation)):
        return "nodes"
    if origin is list and _holds_task(annotation):
        return "list"
    if origin is dict and _holds_task(annotation):
        return "map"
    for arg in get_args(annotation):  # X | None
        kind = _slot_kind(arg)
        if kind is not None:
            return kind
    return None


@cache
def task_slots(cls: type[Task]) -> tuple[TaskSlot, ...]:
    """The properties of ``cls`` that hold nested tasks (``tasks``, ``then``, ``cases``...)."""
    slots = []
    for name, info in cls.model_fields.items():
        kind = _slot_kind(info.annotation)
        if kind is not None:
            slots.append(TaskSlot(name, info.alias or name, kind))
    return tuple(slots)


def _looks_like_tasks(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, Mapping) and "type" in item for item in value)
    )


def _known_slots() -> tuple[TaskSlot, ...]:
    """Every property name that holds tasks in some known task class (``tasks``, ``then``...)."""
    found: dict[tuple[str, str], TaskSlot] = {}
    for cls in all_task_classes():
        for slot in task_slots(cls):
            found.setdefault((slot.key, slot.kind), slot)
    return tuple(found.values())


def child_task_lists(raw: Mapping[str, Any]) -> Iterator[tuple[Path, Any]]:
    """Each list of nested task definitions in a raw task, with its path inside the task; a
    node's one task (``("tasks", 2, "task")``) comes alone, not in a list.

    Only the properties a task class declares as task lists hold tasks: a mapping with a ``type``
    key anywhere else (an HTTP ``options``, a plugin's ``inputs: [{id, type}]``) is a property
    value. For a type kestream does not know, the property names that hold tasks in the known
    classes are taken for task lists when they look like one, so problems deeper in the flow
    (duplicate ids, their own errors) are still reported.
    """
    cls = task_class(raw["type"]) if isinstance(raw.get("type"), str) else None
    slots = task_slots(cls) if cls is not None else _known_slots()
    for slot in slots:
        value = raw.get(slot.key)
        if cls is None and slot.kind == "list" and not _looks_like_tasks(value):
            continue
        if slot.kind == "list" and isinstance(value, list):
            yield (slot.key,), value
        elif slot.kind == "nodes" and isinstance(value, list):
            for index, node in enumerate(value):
                if isinstance(node, Mapping) and isinstance(node.get("task"), Mapping):
                    yield (slot.key, index, "task"), node["task"]
        elif slot.kind == "map" and isinstance(value, Mapping):
            for case, branch in value.items():
                if isinstance(branch, list) and (cls is not None or _looks_like_tasks(branch)):
                    yield (slot.key, case), branch


def slot_keys(raw: Mapping[str, Any]) -> set[str]:
    """The top-level keys of a raw task that hold nested tasks."""
    return {path[0] for path, _ in child_task_lists(raw) if isinstance(path[0], str)}


def replace_children(raw: Mapping[str, Any], build: Callable[[Path, Any], Any]) -> dict:
    """A copy of ``raw`` whose nested task lists (and nodes' tasks) are replaced by
    ``build(path, items)``."""
    result = dict(raw)
    for path, items in list(child_task_lists(raw)):
        key = str(path[0])
        if len(path) == 1:
            result[key] = build(path, items)
            continue
        if len(path) == 3:  # a node's task: the node is copied, its task replaced
            if result[key] is raw[key]:
                result[key] = list(raw[key])
            index = int(path[1])
            result[key][index] = {**result[key][index], "task": build(path, items)}
            continue
        if result[key] is raw[key]:
            result[key] = dict(raw[key])
        result[key][path[1]] = build(path, items)
    return result


# ---------------------------------------------------------------------------------------------
# building tasks bottom-up
# ---------------------------------------------------------------------------------------------


def placeholder_task(raw: Any) -> Task:
    """A stand-in for an invalid task, so its parent can still be checked for its own errors."""
    task_id = raw.get("id") if isinstance(raw, Mapping) else None
    task_type = raw.get("type") if isinstance(raw, Mapping) else None
    return Task.model_construct(
        id=task_id if isinstance(task_id, str) else "invalid",
        type=task_type if isinstance(task_type, str) else "invalid",
    )


def unknown_type_message(type_name: str) -> str:
    """Name the type, the closest types known, and the plugin modules loaded (or how to load)."""
    hint = did_you_mean(type_name, known_types())
    if not hint:
        current = ", ".join(sorted({cls.type_name.rsplit(".", 1)[-1] for cls in TASK_CLASSES}))
        hint = f"; kestream's own task types are {current}"
    modules = plugin_modules()
    if modules:
        plugins = f"; plugin modules loaded: {', '.join(modules)}"
    else:
        plugins = (
            "; no plugin modules loaded (name them in KESTREAM_PLUGINS or install a package "
            "with a 'kestream.tasks' entry point)"
        )
    return f"unknown task type '{type_name}'{hint}{plugins}"


@dataclass(slots=True)
class _SeenId:
    loc: Path
    line: int | None


class TaskBuilder:
    """Builds every task of a flow, children first, reporting each problem once.

    ``apply_defaults`` fills one raw task from the flow's plugin defaults before it is validated.
    """

    def __init__(
        self, sink: ProblemSink, apply_defaults: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        self.sink = sink
        self.apply_defaults = apply_defaults
        self.seen_ids: dict[str, list[_SeenId]] = {}

    def build_list(self, items: Any, loc: Path) -> Any:
        """Build a task list; invalid tasks become placeholders. Non-lists are returned as is."""
        if not isinstance(items, list):
            return items
        built = []
        for index, raw in enumerate(items):
            task = self.build(raw, (*loc, index))
            built.append(task if task is not None else placeholder_task(raw))
        return built

    def build(self, raw: Any, loc: Path) -> Task | None:
        """One task and its children; None when anything in it is invalid (already reported)."""
        if not isinstance(raw, Mapping):
            message = f"a task must be a mapping with 'id' and 'type', got {describe_value(raw)}"
            self.sink.add(loc, message)
            return None
        raw_id = raw.get("id")
        task_id = raw_id if isinstance(raw_id, str) else None
        if task_id is not None:
            seen = _SeenId(loc, self.sink.source_map.line(loc))
            self.seen_ids.setdefault(task_id, []).append(seen)
        data = self.apply_defaults(dict(raw))
        children_ok = True

        def build_children(path: Path, items: Any) -> Any:
            nonlocal children_ok
            if not isinstance(items, list):  # a node's one task
                task = self.build(items, (*loc, *path))
                children_ok = children_ok and task is not None
                return task if task is not None else placeholder_task(items)
            built = self.build_list(items, (*loc, *path))
            children_ok = children_ok and not any(type(t) is Task for t in built)
            return built

        values = replace_children(data, build_children)
        self.sink.check_templates(
            {k: v for k, v in data.items() if k not in _NOT_RENDERED | slot_keys(data)},
            loc,
            task_id=task_id,
        )
        task = self._validate(values, loc, task_id)
        return task if task is not None and children_ok else None

    def _validate(self, values: dict[str, Any], loc: Path, task_id: str | None) -> Task | None:
        type_name = values.get("type")
        if not isinstance(type_name, str):
            message = "missing required property 'type'"
            if type_name is not None:
                message = f"'type' must be a task type name, got {describe_value(type_name)}"
            self.sink.add((*loc, "type"), message, task_id=task_id)
            return None
        cls = task_class(type_name)
        if cls is None:
            self.sink.add((*loc, "type"), unknown_type_message(type_name), task_id=task_id)
            return None
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            self.sink.add_validation_error(exc, loc, values, model=cls, task_id=task_id)
            return None

    def check_duplicate_ids(self) -> None:
        """Report every task id used more than once, naming the lines of both uses."""
        for task_id, uses in self.seen_ids.items():
            first = uses[0]
            for use in uses[1:]:
                where = f"line {first.line}" if first.line else format_path(first.loc)
                message = f"duplicate task id '{task_id}': already used at {where}"
                if first.line:
                    message += f" ({format_path(first.loc)})"
                self.sink.add(use.loc, message, task_id=task_id)
