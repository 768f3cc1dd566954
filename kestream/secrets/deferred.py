"""Secrets resolved on the worker, at the last moment: the executor never renders ``secret()``.

The executor renders a runnable task's properties before it sends the job (Kafka). A property
text that calls ``secret(...)`` is not rendered there: :func:`render_properties` leaves ``None``
in its place and lists it under the job's reserved top-level key :data:`SECRETS_KEY`, with the
template text and the variables it names (only those, and of a map only the entries the text
reads by name: ``outputs.fetch.body`` sends ``outputs`` with ``fetch`` alone). The executor
refuses a job whose deferred variables do not fit a record, naming the task. The worker's
runner calls :func:`reveal` right before the task runs: it renders each listed text with those
variables and a resolver, puts the result in its place, and adds every value it resolved to
the attempt's :class:`~kestream.secrets.masking.Masker`, which masks them in the result's lines,
error and outputs. The value exists only in the worker's memory and in what the task itself
does with it (an HTTP header, a script's environment).

Only the executor writes top-level keys of a job's properties (one per dynamic property), so no
rendered value can forge :data:`SECRETS_KEY`. Everywhere else the executor renders (flowable
properties, ``runIf``, labels, flow outputs, tasks that run inside the executor such as
``Labels``), ``secret()`` fails the render, saying it is only resolved on a worker.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

from kestream.expressions import RenderError, render, render_value
from kestream.kv.store import calls_kv
from kestream.secrets.masking import Masker
from kestream.secrets.resolver import SecretError, SecretResolver
from kestream.storage.offload import as_data

__all__ = ["SECRETS_KEY", "render_properties", "reveal", "uses_secrets"]

#: The job property that lists the texts the worker renders (never a task property name).
SECRETS_KEY = "@secrets"
_CALL = re.compile(r"\bsecret\s*\(")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: One entry read by a fixed name after a variable: ``.entry`` or ``['entry']`` / ``["entry"]``.
_ENTRY = r"\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(['\"])([^'\"\]]*)\2\s*\])"
#: Reserved variables a deferred text may need besides the ones it names.
_ALWAYS = ("@each_path",)

Path = list[str | int]


def uses_secrets(value: Any) -> bool:
    """Whether a text inside ``value`` calls ``secret()`` (a cheap scan, before rendering)."""
    if isinstance(value, str):
        return "secret" in value and _CALL.search(value) is not None
    if isinstance(value, dict):
        return any(uses_secrets(k) or uses_secrets(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(uses_secrets(item) for item in value)
    return False


def render_properties(values: Mapping[str, Any], ctx: Mapping[str, Any]) -> dict[str, Any]:
    """Render a job's properties, deferring the texts that call ``secret()`` (module docs)."""
    props: dict[str, Any] = {}
    deferred: list[dict[str, Any]] = []
    for name, value in values.items():
        if uses_secrets(value):
            props[name] = _defer(value, ctx, [name], deferred)
        else:
            props[name] = render_value(value, ctx)
    if deferred:
        props[SECRETS_KEY] = deferred
    return props


def _defer(value: Any, ctx: Mapping[str, Any], path: Path, out: list[dict[str, Any]]) -> Any:
    if isinstance(value, str):
        if not uses_secrets(value):
            return render_value(value, ctx)
        out.append({"path": path, "template": value, "vars": _variables(value, ctx)})
        return None
    if isinstance(value, dict):
        rendered: dict[Any, Any] = {}
        for key, item in value.items():
            if uses_secrets(key):
                raise RenderError("secret() cannot be used in a map key")
            name = render_value(key, ctx)
            rendered[name] = _defer(item, ctx, [*path, name], out)
        return rendered
    if isinstance(value, list | tuple):
        return [_defer(item, ctx, [*path, i], out) for i, item in enumerate(value)]
    return value


def _variables(template: str, ctx: Mapping[str, Any]) -> dict[str, Any]:
    """The variables of ``ctx`` that ``template`` names (a superset is harmless), narrowed to
    the entries it reads (:func:`_narrowed`); ``flow`` too when it calls ``kv()``, which reads
    the flow's namespace by default."""
    names = set(_NAME.findall(template))
    if calls_kv(template):
        names.add("flow")
    picked = {
        key: _narrowed(template, key, as_data(value))  # references travel as references
        for key, value in ctx.items()
        if key in names and key[:1] != "@"
    }
    for key in _ALWAYS:
        if key in ctx:
            picked[key] = ctx[key]
    return picked


def _narrowed(template: str, name: str, value: Any) -> Any:
    """``value`` (a map) cut to the entries ``template`` reads from ``name`` by a fixed name
    (``name.entry``, ``name['entry']``); whole when the text uses ``name`` in any other way
    (``name[i]``, ``name | keys``), which only a render could follow."""
    if not isinstance(value, Mapping):
        return value
    mentions = len(re.findall(rf"\b{re.escape(name)}\b", template))
    entries = [
        dotted or quoted
        for dotted, _, quoted in re.findall(rf"\b{re.escape(name)}{_ENTRY}", template)
    ]
    if not mentions or len(entries) != mentions:  # not named (``flow`` for kv()), or not only so
        return value
    return {entry: value[entry] for entry in entries if entry in value}


def reveal(
    props: dict[str, Any],
    resolver: Callable[[], SecretResolver],
    masker: Masker,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``props`` with every deferred text rendered, its secrets resolved and added to
    ``masker``; raises RenderError (a missing secret, a failing text) naming no value.

    ``resolver`` is called only when there is something to resolve; ``extra``: reserved
    variables the worker offers (``@kv``, ``@now``).
    """
    deferred = props.get(SECRETS_KEY)
    if not deferred:
        return props
    secrets = resolver()

    def resolve(name: str) -> str:
        try:
            value = secrets.resolve(name)
        except SecretError as exc:
            raise RenderError(str(exc)) from None
        masker.add(value)
        return value

    revealed = copy.deepcopy({k: v for k, v in props.items() if k != SECRETS_KEY})
    for item in deferred:
        ctx = {**item["vars"], **(extra or {}), "@secret": resolve}
        _put(revealed, item["path"], render(item["template"], ctx))
    return revealed


def _put(props: dict[str, Any], path: Path, value: Any) -> None:
    node: Any = props
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
