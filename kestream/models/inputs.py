"""Kestra's typed flow inputs (and the types of flow outputs).

Inputs arrive as text from forms, the CLI or the API, or as JSON values from a parent flow. Each
input type turns such a value into a typed Python value, then checks its constraints:

=============  ==============================================================================
type           accepted value -> result
=============  ==============================================================================
STRING         text -> str (a number or boolean becomes its text); ``validator`` regex must
               match the whole text
SECRET         text -> str, encrypted with ``KESTREAM_ENCRYPTION_KEY`` before any record holds
               it (refused without a key; :mod:`kestream.secrets.encryption`)
INT            integer, or text of one (``-12``) -> int; ``min``/``max``
FLOAT          number, or text of one (``1.5``, ``1e3``) -> float; ``min``/``max``
BOOLEAN, BOOL  boolean, or ``true``/``false`` in any case -> bool
DATETIME       ISO-8601 date-time with a zone (``2024-01-31T10:00:00Z``) -> aware datetime in
               UTC; ``after``/``before``
DATE           ``2024-01-31`` -> date; TIME ``10:15:30`` -> time; both with ``after``/``before``
DURATION       ISO-8601 duration (``PT1M30S``) -> timedelta; ``min``/``max``
JSON           JSON text -> the parsed value; an already parsed value is kept
YAML           YAML text -> the parsed value; an already parsed value is kept
ARRAY          a list, or JSON array text -> list whose items are parsed as ``itemType``
ENUM           text that is one of ``values``
SELECT         text that is one of ``values`` (any text with ``allowCustomValue``)
MULTISELECT    a list or JSON array text, each item one of ``values`` (or ``options``)
URI            text of an absolute URI with a scheme and a host (``https://kestra.io/x``)
EMAIL          text of an e-mail address
FILE           text naming the file (``kestra:///ns/flow/file.csv``, ``file:///tmp/x``), kept
               as text: kestream has no internal storage and does not upload files
=============  ==============================================================================

Inputs are required unless ``required: false`` (Kestra 0.21). A missing value takes ``defaults``
(a literal, parsed like a given value; templates in defaults are not rendered). Undeclared
inputs are dropped, as Kestra ignores them; an optional input with no value and no default is
absent from the result. Input ids with dots nest (``user.name`` -> ``inputs.user.name``).
``prefill`` (Kestra 1.1) is what a form starts with: checked like a default, refused together
with ``defaults``, shown in the flow JSON, and never used as a value.

Not implemented: ``dependsOn`` conditions (every input is enabled) and the ``expression`` that
computes SELECT/MULTISELECT values at run time (with it, any value is accepted).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar

import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from kestream.models.durations import DurationError, format_duration, parse_duration
from kestream.models.instants import instant_text, parse_instant
from kestream.models.values import MAX_DEPTH, UnportableValue, loads_json

#: Unknown properties are errors, as in Kestra; numbers given for text properties become text, as
#: Jackson makes them for Kestra (``id: 123``, ``values: [1, 2]``).
_STRICT_FROZEN = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

INPUT_ID_PATTERN = r"^[a-zA-Z0-9][.a-zA-Z0-9_-]*$"
OUTPUT_ID_PATTERN = INPUT_ID_PATTERN

_INT_TEXT = re.compile(r"^[+-]?[0-9]+$")
#: The characters of a FLOAT text; which arrangements of them are numbers, ``float()`` decides.
#: The FLOAT, URI and EMAIL checks are plain scans, not regexes: the patterns they replace
#: backtracked quadratically on a long value that almost matches (an input anyone may send).
_FLOAT_CHARS = frozenset("0123456789+-.eE")
_URI_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")


class InputType(StrEnum):
    """Kestra's input (and output) types."""

    STRING = "STRING"
    ENUM = "ENUM"
    SELECT = "SELECT"
    MULTISELECT = "MULTISELECT"
    INT = "INT"
    FLOAT = "FLOAT"
    BOOLEAN = "BOOLEAN"
    BOOL = "BOOL"
    DATETIME = "DATETIME"
    DATE = "DATE"
    TIME = "TIME"
    DURATION = "DURATION"
    FILE = "FILE"
    JSON = "JSON"
    YAML = "YAML"
    URI = "URI"
    EMAIL = "EMAIL"
    SECRET = "SECRET"
    ARRAY = "ARRAY"


class InputValueError(ValueError):
    """A value that does not fit an input's type or constraints (the message says why)."""


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return str(value)


def _mismatch(type_name: str, value: Any, hint: str = "") -> InputValueError:
    article = "an" if type_name[0] in "AEIO" else "a"  # "a URI", "an INT"
    return InputValueError(f"expected {article} {type_name}{hint}, got {_describe(value)}")


# ---------------------------------------------------------------------------------------------
# one parser per type: given value -> typed value
# ---------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise _mismatch("STRING", value)


def _only_text(type_name: str, hint: str = "") -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise _mismatch(type_name, value, hint)
        return value

    return parse


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_TEXT.match(value):
        return int(value)
    raise _mismatch("INT", value)


def _float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _FLOAT_CHARS.issuperset(_line(value)):
        try:
            return float(value)
        except ValueError:
            pass
    raise _mismatch("FLOAT", value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _mismatch("BOOLEAN", value, " (true or false)")


def _datetime(value: Any) -> datetime:
    hint = " (ISO-8601 with a time zone, such as 2024-01-31T10:00:00Z)"
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    if isinstance(value, str) and "T" in value.upper():
        try:
            return parse_instant(value, assume_utc=False)
        except ValueError:
            pass
    raise _mismatch("DATETIME", value, hint)


def _instant(value: Any) -> str:
    return instant_text(_datetime(value))


def _date(value: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise _mismatch("DATE", value, " (such as 2024-01-31)")


def _time(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, str):
        try:
            return time.fromisoformat(value)
        except ValueError:
            pass
    raise _mismatch("TIME", value, " (such as 10:15:30)")


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except DurationError:
            pass
    raise _mismatch("DURATION", value, " (ISO-8601, such as PT30S)")


def _json(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return loads_json(value)  # exact: a 30-digit integer is refused, not rounded
    except UnportableValue:
        raise  # parse_inputs names the input and the path
    except ValueError as exc:
        raise InputValueError(f"expected a JSON text, got {_describe(value)}: {exc}") from None


def _yaml(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise InputValueError(f"expected a YAML text, got {_describe(value)}: {exc}") from None
    except RecursionError:
        raise InputValueError(f"a YAML text nested deeper than {MAX_DEPTH} levels") from None


def _list(type_name: str, value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return parsed
    raise _mismatch(type_name, value, " (a list or a JSON array)")


def _line(text: str) -> str:
    """``text`` without one final newline: the regexes these checks replaced ended in ``$``, which
    matches before it too, so such texts stay accepted as they were."""
    return text[:-1] if text.endswith("\n") else text


def _is_uri(text: str) -> bool:
    """An absolute URI with a host: ``scheme://`` (scheme: an ASCII letter, then letters, digits,
    ``+.-``), a first host character that is not ``/?#``, and no whitespace anywhere."""
    scheme, sep, rest = _line(text).partition("://")
    return (
        bool(sep)
        and scheme[:1].isascii()
        and scheme[:1].isalpha()
        and _URI_SCHEME_CHARS.issuperset(scheme)
        and rest[:1] not in ("", "/", "?", "#")
        and _no_space(rest)
    )


def _is_email(text: str) -> bool:
    """``local@domain`` with one ``@``, no whitespace, and a dot inside the domain (not at either
    end of it)."""
    local, sep, domain = _line(text).partition("@")
    return (
        bool(sep and local)
        and "@" not in domain
        and "." in domain[1:-1]
        and _no_space(local)
        and _no_space(domain)
    )


def _no_space(text: str) -> bool:
    """Whether ``text`` is not empty and holds no whitespace (what ``\\s`` matches), at C speed."""
    return text.split(maxsplit=1) == [text]


def _uri(value: Any) -> str:
    if isinstance(value, str) and _is_uri(value):
        return value
    raise _mismatch("URI", value, " (such as https://example.com/path)")


def _email(value: Any) -> str:
    if isinstance(value, str) and _is_email(value):
        return value
    raise _mismatch("EMAIL", value)


_PARSERS: dict[InputType, Callable[[Any], Any]] = {
    InputType.STRING: _text,
    InputType.SECRET: _only_text("SECRET"),
    InputType.ENUM: _text,
    InputType.SELECT: _text,
    InputType.MULTISELECT: lambda value: _list("MULTISELECT", value),
    InputType.INT: _int,
    InputType.FLOAT: _float,
    InputType.BOOLEAN: _bool,
    InputType.BOOL: _bool,
    InputType.DATETIME: _instant,
    InputType.DATE: _date,
    InputType.TIME: _time,
    InputType.DURATION: _duration,
    InputType.FILE: _only_text("FILE", " (a file URI such as kestra:///ns/flow/file.csv)"),
    InputType.JSON: _json,
    InputType.YAML: _yaml,
    InputType.URI: _uri,
    InputType.EMAIL: _email,
    InputType.ARRAY: lambda value: _list("ARRAY", value),
}


def parse_typed(type_name: InputType, value: Any) -> Any:
    """Parse ``value`` as ``type_name`` with no constraints; raise :class:`InputValueError`."""
    return _PARSERS[type_name](value)


# ---------------------------------------------------------------------------------------------
# input models
# ---------------------------------------------------------------------------------------------


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _iso_text(value: Any) -> Any:
    """Bounds may come from YAML loaders that build dates; keep them as the ISO text."""
    if isinstance(value, date | time | datetime):
        return value.isoformat()
    return value


class DependsOn(BaseModel):
    """Kestra's ``dependsOn``: the input is enabled only when every input named in ``inputs`` is
    enabled and ``condition`` (a template seeing the inputs resolved before) renders true.
    A disabled input is neither required nor validated, and is left out of the execution's
    inputs even when a value was sent for it (see :mod:`kestream.models.input_resolution`)."""

    model_config = _STRICT_FROZEN

    inputs: list[str] = Field(default_factory=list)
    condition: str | None = None


def is_dynamic_default(value: Any) -> bool:
    """Whether a ``defaults`` is a template, rendered when the execution is created with the
    inputs resolved before it (``"{{ inputs.start | dateAdd(1, 'DAYS') }}"``), as Kestra does."""
    return isinstance(value, str) and "{" in value and ("{{" in value or "{%" in value)


class Input(BaseModel):
    """What every input type declares. Subclasses add their constraints."""

    model_config = _STRICT_FROZEN

    type_names: ClassVar[tuple[InputType, ...]] = ()

    id: str = Field(pattern=INPUT_ID_PATTERN)
    type: InputType
    description: str | None = None
    displayName: str | None = Field(default=None, max_length=64)
    required: bool = True
    defaults: Any = None
    #: Kestra 1.1: a value a form starts with, that the person may clear. Never used as a value
    #: by the engine (a missing input stays missing); kept, checked and shown in the flow JSON.
    prefill: Any = None
    dependsOn: DependsOn | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_is_id(cls, data: Any) -> Any:
        # Kestra 0.x named inputs with `name`; it still reads `name` when `id` is absent.
        if isinstance(data, Mapping) and "name" in data:
            data = dict(data)
            name = data.pop("name")
            data.setdefault("id", name)
        return data

    @field_validator("type", mode="before")
    @classmethod
    def _type_upper(cls, value: Any) -> Any:
        return _upper(value)

    @model_validator(mode="after")
    def _type_matches_class(self) -> Input:
        if self.type_names and self.type not in self.type_names:
            raise ValueError(f"type {self.type} is not a {type(self).__name__}")
        return self

    def parse(self, value: Any) -> Any:
        """The typed value for a given ``value``; raise :class:`InputValueError` naming why."""
        typed = self._convert(value)
        self._check(typed)
        return typed

    def _convert(self, value: Any) -> Any:
        return parse_typed(self.type, value)

    def _check(self, typed: Any) -> None:
        """Constraints beyond the type (ranges, allowed values); raise InputValueError."""

    def _definition_problems(self) -> list[tuple[str, str]]:
        return []

    def definition_problems(self) -> list[tuple[str, str]]:
        """``(property, message)`` for each inconsistency of the definition itself.

        The type-specific checks come first; the default value is then parsed like a given value,
        so a default that could never be used is caught at deploy time (a templated default is
        rendered when the execution is created, and checked then).
        """
        problems = self._definition_problems()
        if self.defaults is not None and self.prefill is not None:
            problems.append(("prefill", "prefill and defaults cannot be used on the same input"))
        for name, value in (("defaults", self.defaults), ("prefill", self.prefill)):
            if value is not None and not problems and not is_dynamic_default(value):
                try:
                    self.parse(value)
                except InputValueError as exc:
                    label = "default" if name == "defaults" else "prefill"
                    problems.append((name, f"invalid {label} value: {exc}"))
        return problems


class StringInput(Input):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.STRING,)

    validator: str | None = None

    def _definition_problems(self) -> list[tuple[str, str]]:
        if self.validator is None:
            return []
        # Compiled by the matcher that checks values (see _check), imported here for the same
        # reason; it reads Java's syntax and refuses patterns too large to compile.
        from kestream.expressions import RenderError
        from kestream.expressions.patterns import compile_pattern

        try:
            compile_pattern(self.validator)
        except RenderError as exc:
            return [("validator", f"invalid regular expression: {exc}")]
        return []

    def _check(self, typed: Any) -> None:
        if self.validator is None:
            return
        # Imported here: the template engine imports the models. Its matcher has a timeout, so a
        # value built to make the validator backtrack cannot hold the API or the executor.
        from kestream.expressions import RenderError
        from kestream.expressions.patterns import fullmatch_within_budget

        try:
            matched = fullmatch_within_budget(self.validator, typed)
        except RenderError as exc:
            raise InputValueError(f"checking the pattern `{self.validator}`: {exc}") from None
        if not matched:
            raise InputValueError(f"it must match the pattern `{self.validator}`")


class SecretInput(StringInput):
    """Checked as text, then encrypted for its flow by the input resolution (:meth:`seal`); a
    value already encrypted for this flow (an execution's own input, resolved again) is kept as
    it is, one encrypted for another flow is refused."""

    type_names: ClassVar[tuple[InputType, ...]] = (InputType.SECRET,)

    def parse(self, value: Any) -> Any:
        from kestream.secrets.encryption import is_sealed

        return value if is_sealed(value) else super().parse(value)

    def seal(self, value: Any, scope: str | None) -> str:
        """``value`` encrypted for the flow ``scope`` (``scope_of(namespace, flowId)``)."""
        from kestream.secrets.encryption import EncryptionError, is_sealed, seal, unseal

        if scope is None:  # a caller that did not say whose input this is
            raise InputValueError("SECRET inputs are encrypted for their flow, which is unknown")
        try:
            if is_sealed(value):
                unseal(value, scope)
                return str(value)
            return seal(str(value), scope)
        except EncryptionError as exc:
            raise InputValueError(str(exc)) from None


class _Bounded(Input):
    """Inputs with ``min``/``max`` or ``after``/``before`` bounds of their own type."""

    lower_name: ClassVar[str] = "min"
    upper_name: ClassVar[str] = "max"

    def _bounds(self) -> tuple[Any, Any]:
        lower = getattr(self, self.lower_name)
        upper = getattr(self, self.upper_name)
        return (
            None if lower is None else self._ordered(self._convert(lower)),
            None if upper is None else self._ordered(self._convert(upper)),
        )

    def _ordered(self, typed: Any) -> Any:
        """``typed`` as a value that compares in the type's order (the typed value itself, but
        for types kept as text)."""
        return typed

    def _definition_problems(self) -> list[tuple[str, str]]:
        try:
            lower, upper = self._bounds()
        except InputValueError as exc:
            return [(self.lower_name, f"invalid bound: {exc}")]
        if lower is not None and upper is not None and lower > upper:
            return [(self.upper_name, f"'{self.upper_name}' is below '{self.lower_name}'")]
        return []

    def _check(self, typed: Any) -> None:
        lower, upper = self._bounds()
        ordered = self._ordered(typed)
        if lower is not None and ordered < lower:
            raise InputValueError(self._too_low())
        if upper is not None and ordered > upper:
            raise InputValueError(self._too_high())

    def _too_low(self) -> str:
        return f"it must be at least {getattr(self, self.lower_name)}"

    def _too_high(self) -> str:
        return f"it must be at most {getattr(self, self.upper_name)}"


class IntInput(_Bounded):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.INT,)

    min: int | None = None
    max: int | None = None


class FloatInput(_Bounded):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.FLOAT,)

    min: float | None = None
    max: float | None = None


class DurationInput(_Bounded):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.DURATION,)

    min: str | None = None
    max: str | None = None


class _Dated(_Bounded):
    lower_name: ClassVar[str] = "after"
    upper_name: ClassVar[str] = "before"

    after: str | None = None
    before: str | None = None

    _bound_text = field_validator("after", "before", mode="before")(_iso_text)

    def _too_low(self) -> str:
        return f"it must be after {self.after}"

    def _too_high(self) -> str:
        return f"it must be before {self.before}"


class DateTimeInput(_Dated):
    """The value is kept as Java's ``Instant`` text (:func:`kestream.models.instants.instant_text`:
    Kestra keeps a DATETIME input as an ``Instant``, so ``{{ inputs.when }}`` prints that)."""

    type_names: ClassVar[tuple[InputType, ...]] = (InputType.DATETIME,)

    def _ordered(self, typed: Any) -> Any:
        return _datetime(typed)


class DateInput(_Dated):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.DATE,)


class TimeInput(_Dated):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.TIME,)


class BooleanInput(Input):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.BOOLEAN, InputType.BOOL)


class JsonInput(Input):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.JSON,)


class YamlInput(Input):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.YAML,)


class UriInput(Input):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.URI,)


class EmailInput(Input):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.EMAIL,)


class FileInput(Input):
    """The value is kept as the file's URI text; nothing is uploaded (see the module doc)."""

    type_names: ClassVar[tuple[InputType, ...]] = (InputType.FILE,)

    extension: str | None = None


class EnumInput(Input):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.ENUM,)

    values: list[str] = Field(min_length=1)

    def _check(self, typed: Any) -> None:
        if typed not in self.values:
            raise InputValueError(f"it must be one of {self.values}, got {_describe(typed)}")


class SelectInput(Input):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.SELECT,)

    values: list[str] | None = None
    #: Rendered when the execution is created (seeing the inputs resolved before): the choices.
    expression: str | None = None
    allowCustomValue: bool = False
    isRadio: bool = False
    #: Without a value or a default, take the first choice.
    autoSelectFirst: bool = False

    def _definition_problems(self) -> list[tuple[str, str]]:
        if self.values is None and self.expression is None:
            return [("values", "a SELECT input needs 'values' (or an 'expression')")]
        return []

    def _check(self, typed: Any) -> None:
        if self.values is not None:
            self.check_choices(typed, self.values)

    def check_choices(self, typed: Any, choices: Sequence[str]) -> None:
        """Refuse a value that is not one of ``choices`` (unless ``allowCustomValue``)."""
        if not self.allowCustomValue and typed not in choices:
            raise InputValueError(f"it must be one of {list(choices)}, got {_describe(typed)}")

    def first_choice(self, choices: Sequence[str]) -> Any:
        """The value ``autoSelectFirst`` picks."""
        return choices[0]

    def static_choices(self) -> list[str] | None:
        """The choices written in the flow (None when only an ``expression`` gives them)."""
        return self.values


class _ItemTyped(Input):
    """Lists whose items are parsed as ``itemType``."""

    itemType: InputType | None = InputType.STRING

    _item_upper = field_validator("itemType", mode="before")(_upper)

    def _definition_problems(self) -> list[tuple[str, str]]:
        if self.itemType in (InputType.ARRAY, InputType.MULTISELECT):
            return [("itemType", f"'itemType' cannot be {self.itemType}")]
        return []

    def _convert(self, value: Any) -> list[Any]:
        items = parse_typed(self.type, value)
        if self.itemType is None:
            return list(items)
        parsed = []
        for index, item in enumerate(items):
            try:
                parsed.append(parse_typed(self.itemType, item))
            except InputValueError as exc:
                raise InputValueError(f"item {index}: {exc}") from None
        return parsed


class ArrayInput(_ItemTyped):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.ARRAY,)

    itemType: InputType | None = None

    def _definition_problems(self) -> list[tuple[str, str]]:
        if self.itemType is None:
            return [("itemType", "an ARRAY input needs an 'itemType' (STRING, INT, ...)")]
        return super()._definition_problems()


class MultiselectInput(_ItemTyped):
    type_names: ClassVar[tuple[InputType, ...]] = (InputType.MULTISELECT,)

    values: list[str] | None = None
    options: list[str] | None = None
    expression: str | None = None
    allowCustomValue: bool = False
    autoSelectFirst: bool = False

    def _definition_problems(self) -> list[tuple[str, str]]:
        if self.values is not None and self.options is not None:
            return [("options", "give 'values' or the deprecated 'options', not both")]
        if self.values is None and self.options is None and self.expression is None:
            return [("values", "a MULTISELECT input needs 'values' (or an 'expression')")]
        return super()._definition_problems()

    def _check(self, typed: Any) -> None:
        allowed = self.values if self.values is not None else self.options
        if allowed is not None:
            self.check_choices(typed, allowed)

    def check_choices(self, typed: Any, choices: Sequence[str]) -> None:
        """Refuse an item that is not one of ``choices`` (unless ``allowCustomValue``)."""
        if self.allowCustomValue:
            return
        for item in typed:
            if str(item) not in choices:
                raise InputValueError(f"it must be one of {list(choices)}, got {_describe(item)}")

    def first_choice(self, choices: Sequence[str]) -> Any:
        """The value ``autoSelectFirst`` picks: a list of the first choice."""
        return [choices[0]]

    def static_choices(self) -> list[str] | None:
        """The choices written in the flow (None when only an ``expression`` gives them)."""
        return self.values if self.values is not None else self.options


INPUT_CLASSES: tuple[type[Input], ...] = (
    StringInput, SecretInput, IntInput, FloatInput, BooleanInput, DateTimeInput, DateInput,
    TimeInput, DurationInput, JsonInput, YamlInput, UriInput, EmailInput, FileInput, EnumInput,
    SelectInput, ArrayInput, MultiselectInput,
)  # fmt: skip

_BY_TYPE: dict[InputType, type[Input]] = {
    name: cls for cls in INPUT_CLASSES for name in cls.type_names
}


def input_class_for(type_name: Any) -> type[Input] | None:
    """The model class for an input ``type`` (case-insensitive), or None when unknown."""
    if not isinstance(type_name, str):
        return None
    try:
        return _BY_TYPE[InputType(type_name.upper())]
    except ValueError:
        return None


def unknown_input_type_message(type_name: Any) -> str:
    """Name the bad type and list the good ones."""
    known = ", ".join(t.value for t in InputType)
    return f"unknown input type {_describe(type_name)}; expected one of {known}"


def _short_errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(key) for key in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(parts)


def input_model_for(data: Any) -> Input:
    """Build the input model named by ``data['type']`` (``name:`` accepted for ``id:``).

    Raises ValueError with one readable line when the definition is invalid (so it can be used as
    a pydantic validator, as ``Flow.inputs`` and ``Pause.onResume`` do).
    """
    if isinstance(data, Input):
        return data
    if not isinstance(data, Mapping):
        raise ValueError(f"an input must be a mapping with 'id' and 'type', got {_describe(data)}")
    if data.get("type") is None:
        raise ValueError("an input needs a 'type'")
    cls = input_class_for(data["type"])
    if cls is None:
        raise ValueError(unknown_input_type_message(data["type"]))
    try:
        model = cls.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid input definition: {_short_errors(exc)}") from None
    problems = model.definition_problems()
    if problems:
        detail = "; ".join(f"'{name}': {message}" for name, message in problems)
        raise ValueError(f"invalid input '{model.id}': {detail}")
    return model


#: A flow (or Pause ``onResume``) input of any type, built from its ``type``.
AnyInput = Annotated[SerializeAsAny[Input], PlainValidator(input_model_for)]


# ---------------------------------------------------------------------------------------------
# parsing given values
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputProblem:
    input_id: str
    message: str

    def __str__(self) -> str:
        return f"Invalid input '{self.input_id}': {self.message}"


class InputValidationError(ValueError):
    """Every input that is missing or does not parse, each naming the input and the reason."""

    def __init__(self, problems: Sequence[InputProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def nest_inputs(values: Mapping[str, Any]) -> dict[str, Any]:
    """Kestra exposes ``a.b`` as ``inputs.a.b``: dotted ids become nested maps."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        parts = key.split(".")
        target = nested
        for part in parts[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                target = nested
                parts = [key]
                break
            target = child
        target[parts[-1]] = value
    return nested


def parse_inputs(
    flow_inputs: Sequence[Input | Mapping[str, Any]],
    given: Mapping[str, Any],
    *,
    scope: str | None = None,
    variables: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Typed values for the declared inputs, from ``given`` (text or JSON values) and defaults.

    Inputs disabled by their ``dependsOn`` are left out, whatever was given for them. Templates
    (conditions, templated defaults, SELECT expressions) see the inputs resolved before them.
    Raises :class:`InputValidationError` listing every bad input (``Invalid input 'count':
    expected an INT, got 'abc'``). Undeclared names in ``given`` are ignored; optional inputs
    with neither a value nor a default are left out. ``scope``: the flow SECRET inputs are
    encrypted for (``kestream.secrets.encryption.scope_of``); needed when the flow has one.
    ``variables``: what templates see besides ``inputs`` (see ``resolve_inputs``).
    """
    from kestream.models.input_resolution import resolve_inputs

    resolved = resolve_inputs(flow_inputs, given, scope=scope, variables=variables)
    problems = [InputProblem(r.model.id, r.problem) for r in resolved if r.problem is not None]
    if problems:
        raise InputValidationError(problems)
    return nest_inputs({r.model.id: r.value for r in resolved if r.has_value})


# ---------------------------------------------------------------------------------------------
# flow outputs
# ---------------------------------------------------------------------------------------------


class FlowOutput(BaseModel):
    """One entry of a flow's ``outputs``: ``value`` is rendered when the execution ends."""

    model_config = _STRICT_FROZEN

    id: str = Field(pattern=OUTPUT_ID_PATTERN)
    type: InputType
    value: Any
    description: str | None = None
    displayName: str | None = None
    required: bool = True

    _type_upper = field_validator("type", mode="before")(_upper)

    @field_validator("value")
    @classmethod
    def _value_given(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("an output needs a 'value'")
        return value


class OutputValueError(ValueError):
    """A rendered flow output that does not fit its declared type."""


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


#: Output types whose typed value is not JSON data are kept as their canonical text.
_OUTPUT_TEXT: dict[InputType, Callable[[Any], Any]] = {
    InputType.STRING: _json_text,
    InputType.SECRET: _json_text,
    InputType.DATETIME: _instant,
    InputType.DATE: lambda v: _date(v).isoformat(),
    InputType.TIME: lambda v: _time(v).isoformat(),
    InputType.DURATION: lambda v: format_duration(_duration(v)),
}


def coerce_output(output: FlowOutput, rendered: Any) -> Any:
    """The rendered ``value`` of a flow output as JSON data of the output's type.

    STRING keeps text (anything else becomes its JSON text); INT, FLOAT, BOOLEAN parse text; JSON
    and YAML parse text and keep parsed values; ARRAY keeps a list or parses JSON array text;
    DATETIME, DATE, TIME and DURATION are checked and kept as canonical text, as Kestra stores
    them. Raises :class:`OutputValueError` naming the output.
    """
    if rendered is None:
        if output.required:
            raise OutputValueError(f"Invalid output '{output.id}': the value rendered to null")
        return None
    parser = _OUTPUT_TEXT.get(output.type, _PARSERS[output.type])
    try:
        return parser(rendered)
    except InputValueError as exc:
        raise OutputValueError(f"Invalid output '{output.id}': {exc}") from None
