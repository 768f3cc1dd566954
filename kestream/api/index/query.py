"""What a listing of executions asks for, parsed from Kestra's query parameters.

Two URL shapes reach the same :class:`SearchQuery`:

- Kestra 1.x ``GET /api/v1/{tenant}/executions/search?filters[field][OPERATION]=value``, with
  ``filters[labels][EQUALS][key]=value`` for labels and ``page``, ``size``, ``sort``;
- the legacy ``GET /api/v1/{tenant}/executions?namespace=&flowId=&state=&labels=k:v&...``
  (Kestra 0.x's flat parameters, which older clients and scripts still send).

Field and operation names are Kestra's ``QueryFilter`` (``Field`` by its URL value, ``Op`` by
name), and each field accepts the operations Kestra accepts for it. A few of those kestream does
not evaluate (``REGEX`` everywhere; ``IN``, ``NOT_IN`` and ``CONTAINS`` on labels; the 2.x
``filters[or][N]`` groups): they are refused with a :class:`QueryError`, never ignored, because a
filter that is silently dropped widens a listing (or, later, a bulk kill) to everything.
Plain parameters that are not filters (``page``, ``size``, ``sort``, or unknown ones such as a
cache-busting ``_``) are read or ignored.

The parsed query is a frozen pydantic model that the stores turn into SQL; every value in it
is already checked (states are :class:`StateType`, dates are aware UTC datetimes), so the stores
never see raw text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kestream.models import instants
from kestream.models.durations import DurationError, parse_duration
from kestream.models.state import StateType

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "SYSTEM_NAMESPACE",
    "ChildFilter",
    "DateField",
    "DateFilter",
    "LabelFilter",
    "Op",
    "QueryError",
    "SearchQuery",
    "SortField",
    "SortKey",
    "StateFilter",
    "TextField",
    "TextFilter",
    "label_pair",
    "page_number",
    "param_items",
    "parse_filter_key",
    "parse_instant",
    "parse_search_params",
    "time_range_start",
]

DEFAULT_PAGE_SIZE = 25
#: A page larger than this is refused: the API answers a page from one query, in memory.
MAX_PAGE_SIZE = 1000
#: Beyond any listing, and small enough that an offset fits a database integer.
MAX_PAGE = 1_000_000
#: Kestra's default ``kestra.system-flows.namespace``; ``filters[scope]`` splits on it.
SYSTEM_NAMESPACE = "system"


class QueryError(ValueError):
    """A query parameter that cannot be understood; the API answers it with a 4xx.

    ``parameter`` is the offending parameter as the client wrote it (``filters[state][IN]``,
    ``size``); the message names it too.
    """

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


class Op(StrEnum):
    """Kestra's ``QueryFilter.Op``."""

    EQUALS = "EQUALS"
    NOT_EQUALS = "NOT_EQUALS"
    GREATER_THAN = "GREATER_THAN"
    LESS_THAN = "LESS_THAN"
    GREATER_THAN_OR_EQUAL_TO = "GREATER_THAN_OR_EQUAL_TO"
    LESS_THAN_OR_EQUAL_TO = "LESS_THAN_OR_EQUAL_TO"
    IN = "IN"
    NOT_IN = "NOT_IN"
    STARTS_WITH = "STARTS_WITH"
    ENDS_WITH = "ENDS_WITH"
    CONTAINS = "CONTAINS"
    REGEX = "REGEX"
    PREFIX = "PREFIX"


class TextField(StrEnum):
    """Text columns a :class:`TextFilter` applies to (the URL names)."""

    NAMESPACE = "namespace"
    FLOW_ID = "flowId"
    TRIGGER_EXECUTION_ID = "triggerExecutionId"


class DateField(StrEnum):
    START_DATE = "startDate"
    END_DATE = "endDate"


class ChildFilter(StrEnum):
    """Kestra's ``childFilter``: only executions started by another one, or only the others."""

    CHILD = "CHILD"
    MAIN = "MAIN"


class SortField(StrEnum):
    """The fields a listing may be sorted on (an allow-list: each has an index or is cheap)."""

    ID = "id"
    NAMESPACE = "namespace"
    FLOW_ID = "flowId"
    STATE = "state.current"
    START_DATE = "state.startDate"
    END_DATE = "state.endDate"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: The operations a :class:`TextFilter` evaluates.
TEXT_OPS = frozenset(
    {
        Op.EQUALS,
        Op.NOT_EQUALS,
        Op.IN,
        Op.NOT_IN,
        Op.STARTS_WITH,
        Op.PREFIX,
        Op.ENDS_WITH,
        Op.CONTAINS,
    }
)
#: The comparisons a :class:`DateFilter` evaluates.
DATE_OPS = frozenset(
    {
        Op.EQUALS,
        Op.NOT_EQUALS,
        Op.GREATER_THAN,
        Op.GREATER_THAN_OR_EQUAL_TO,
        Op.LESS_THAN,
        Op.LESS_THAN_OR_EQUAL_TO,
    }
)


class TextFilter(_Frozen):
    """``field`` compared with ``values`` (several only for ``IN``/``NOT_IN``).

    ``PREFIX`` is Kestra's namespace prefix: the value itself or anything under ``value.``;
    ``STARTS_WITH`` is a plain string prefix. Comparisons are case-sensitive, as in Kestra.
    """

    field: TextField
    op: Op
    values: tuple[str, ...] = Field(min_length=1)


class StateFilter(_Frozen):
    """The current state is one of ``states`` (or, ``negate``, none of them)."""

    states: frozenset[StateType] = Field(min_length=1)
    negate: bool = False


class DateFilter(_Frozen):
    """``field`` compared with an instant (aware, UTC)."""

    field: DateField
    op: Op
    value: datetime


class LabelFilter(_Frozen):
    """The execution has the label ``key=value`` (or, ``negate``, does not have it)."""

    key: str
    value: str
    negate: bool = False


class SortKey(_Frozen):
    field: SortField
    descending: bool = True


class SearchQuery(_Frozen):
    """One listing: every filter must hold (AND), then a page in ``sort`` order.

    Deleted executions never match. ``nothing`` is set when a filter can match no kestream
    execution at all (``filters[kind][EQUALS]=TEST``: every kestream execution is NORMAL);
    the stores answer it without touching the database.
    """

    texts: tuple[TextFilter, ...] = ()
    states: tuple[StateFilter, ...] = ()
    dates: tuple[DateFilter, ...] = ()
    labels: tuple[LabelFilter, ...] = ()
    #: Case-insensitive substring of the id, namespace or flow id (Kestra's ``q``); not indexed.
    q: str | None = None
    child: ChildFilter | None = None
    nothing: bool = False
    #: 1-based, as Kestra's API.
    page: int = Field(default=1, ge=1)
    size: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    sort: tuple[SortKey, ...] = (SortKey(field=SortField.START_DATE, descending=True),)

    @property
    def offset(self) -> int:
        """Rows before this page."""
        return (self.page - 1) * self.size


# -- parsing --------------------------------------------------------------------------------------

_FILTER_KEY = re.compile(r"^filters\[([^\]]*)\]\[([^\]]*)\](?:\[(.+)\])?$")

#: Kestra's fields for the EXECUTION resource, by URL value, with the operations Kestra accepts.
_KESTRA_OPS: dict[str, frozenset[Op]] = {
    "q": frozenset({Op.EQUALS, Op.NOT_EQUALS}),
    "scope": frozenset({Op.EQUALS, Op.NOT_EQUALS}),
    "namespace": frozenset(TEXT_OPS | {Op.REGEX}),
    "kind": frozenset({Op.EQUALS, Op.NOT_EQUALS, Op.IN, Op.NOT_IN}),
    "labels": frozenset({Op.EQUALS, Op.NOT_EQUALS, Op.IN, Op.NOT_IN, Op.CONTAINS}),
    "flowId": frozenset(TEXT_OPS | {Op.REGEX}),
    "startDate": DATE_OPS,
    "endDate": DATE_OPS,
    "state": frozenset({Op.EQUALS, Op.NOT_EQUALS, Op.IN, Op.NOT_IN}),
    "timeRange": frozenset({Op.EQUALS}),
    "triggerExecutionId": frozenset(TEXT_OPS - {Op.PREFIX}),
    "childFilter": frozenset({Op.EQUALS, Op.NOT_EQUALS}),
}
#: What kestream does not evaluate, though Kestra accepts it; refused rather than ignored.
_UNSUPPORTED: dict[str, frozenset[Op]] = {
    "namespace": frozenset({Op.REGEX}),
    "flowId": frozenset({Op.REGEX}),
    "labels": frozenset({Op.IN, Op.NOT_IN, Op.CONTAINS}),
    "q": frozenset({Op.NOT_EQUALS}),
}
_KINDS = frozenset({"NORMAL", "TEST", "PLAYGROUND"})
_SCOPES = frozenset({"USER", "SYSTEM"})


def param_items(params: Any) -> list[tuple[str, list[str]]]:
    """``(name, values)`` pairs from a multidict (``getall``) or a mapping of lists or strings."""
    if hasattr(params, "getall"):
        names = list(dict.fromkeys(params.keys()))
        return [(name, [str(v) for v in params.getall(name)]) for name in names]
    if not isinstance(params, Mapping):
        raise TypeError(f"query parameters must be a mapping or a multidict, not {params!r}")
    items: list[tuple[str, list[str]]] = []
    for name, value in params.items():
        if isinstance(value, str):
            items.append((str(name), [value]))
        else:
            items.append((str(name), [str(v) for v in value]))
    return items


def _split_list(values: Iterable[str]) -> list[str]:
    """Values of ``IN``/``NOT_IN``/``state``: repeated, comma-separated, or ``[A,B]`` as Kestra."""
    out: list[str] = []
    for value in values:
        out.extend(part.strip() for part in value.strip().strip("[]").split(",") if part.strip())
    return out


def parse_instant(parameter: str, text: str) -> datetime:
    """An ISO-8601 instant; no offset means UTC. A ``+`` decoded as a space is put back."""
    try:
        return instants.parse_instant(text.strip().replace(" ", "+"))
    except ValueError:
        raise QueryError(
            parameter, f"'{text}' is not an ISO-8601 date-time (e.g. 2024-01-31T10:00:00Z)"
        ) from None


def _states(parameter: str, values: Iterable[str]) -> frozenset[StateType]:
    names = _split_list(values)
    if not names:
        raise QueryError(parameter, "no state given")
    try:
        return frozenset(StateType(name.upper()) for name in names)
    except ValueError:
        known = ", ".join(s.value for s in StateType)
        raise QueryError(parameter, f"unknown state in {names}; states are {known}") from None


def time_range_start(parameter: str, text: str, now: datetime) -> datetime:
    """The start of Kestra's ``timeRange`` (an ISO-8601 duration back from ``now``): a span
    that is not positive, or reaches before the year 1, is refused."""
    try:
        span = parse_duration(text)
    except DurationError as exc:
        raise QueryError(parameter, str(exc)) from None
    if span <= timedelta(0):
        raise QueryError(parameter, "the time range must be positive")
    try:
        return now - span
    except OverflowError:
        raise QueryError(parameter, f"the time range '{text}' reaches before the year 1") from None


def page_number(parameter: str, text: str) -> int:
    """``page`` (from 1 to :data:`MAX_PAGE`) or ``size`` (1 to :data:`MAX_PAGE_SIZE`)."""
    text = text.strip()
    try:
        number = int(text)
    except ValueError:
        raise QueryError(parameter, f"'{text}' is not a whole number") from None
    if parameter == "page" and not 1 <= number <= MAX_PAGE:
        raise QueryError(parameter, f"pages are numbered from 1 to {MAX_PAGE}")
    if parameter == "size" and not 1 <= number <= MAX_PAGE_SIZE:
        raise QueryError(parameter, f"the page size must be between 1 and {MAX_PAGE_SIZE}")
    return number


def label_pair(parameter: str, text: str) -> tuple[str, str]:
    key, sep, value = text.partition(":")
    if not sep or not key:
        raise QueryError(parameter, f"'{text}' is not a label as key:value")
    return key, value


def parse_filter_key(
    name: str, ops: Mapping[str, frozenset[Op]], resource: str
) -> tuple[str, Op, str | None]:
    """``(field, op, nested key)`` of a ``filters[field][OP]`` (or ``filters[labels][OP][key]``)
    parameter, whose field and operation ``ops`` allows; a :class:`QueryError` otherwise."""
    match = _FILTER_KEY.match(name)
    if match is None:
        raise QueryError(name, "expected filters[field][OPERATION] or filters[labels][OP][key]")
    field, op_name, nested = match.groups()
    if field.lower() in ("and", "or"):
        raise QueryError(name, "and/or filter groups are not supported; filters are ANDed")
    if field not in ops:
        raise QueryError(name, f"unknown field '{field}' for {resource}; fields: {', '.join(ops)}")
    try:
        op = Op(op_name)
    except ValueError:
        raise QueryError(name, f"unknown operation '{op_name}'") from None
    if op not in ops[field]:
        allowed = ", ".join(sorted(o.value for o in ops[field]))
        raise QueryError(name, f"operation {op} is not supported for {field}; use {allowed}")
    return field, op, nested


class _Builder:
    """Collects filters parameter by parameter; :meth:`build` validates the whole."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.fields: dict[str, Any] = {
            "texts": [],
            "states": [],
            "dates": [],
            "labels": [],
            "sort": [],
        }

    # -- Kestra 1.x filters --------------------------------------------------------------------

    def bracket(self, name: str, values: list[str]) -> None:
        field, op, nested = parse_filter_key(name, _KESTRA_OPS, "executions")
        if op in _UNSUPPORTED.get(field, frozenset()):
            raise QueryError(name, f"operation {op} on {field} is not supported by kestream")
        if nested is not None and field != "labels":
            raise QueryError(name, f"{field} takes no [key]")
        if not values:
            raise QueryError(name, "no value given")
        self._FIELD_HANDLERS[field](self, name, op, values, nested)

    def _text(self, name: str, op: Op, values: list[str], field: TextField) -> None:
        listed = _split_list(values) if op in (Op.IN, Op.NOT_IN) else values
        if not listed or any(not v for v in listed):
            raise QueryError(name, "empty value")
        if op in (Op.IN, Op.NOT_IN):
            self.fields["texts"].append(TextFilter(field=field, op=op, values=tuple(listed)))
            return
        for value in listed:  # a repeated parameter: every one must hold
            self.fields["texts"].append(TextFilter(field=field, op=op, values=(value,)))

    def _namespace(self, name: str, op: Op, values: list[str], _nested: str | None) -> None:
        self._text(name, op, values, TextField.NAMESPACE)

    def _flow_id(self, name: str, op: Op, values: list[str], _nested: str | None) -> None:
        self._text(name, op, values, TextField.FLOW_ID)

    def _trigger(self, name: str, op: Op, values: list[str], _nested: str | None) -> None:
        self._text(name, op, values, TextField.TRIGGER_EXECUTION_ID)

    def _state(self, name: str, op: Op, values: list[str], _nested: str | None) -> None:
        negate = op in (Op.NOT_EQUALS, Op.NOT_IN)
        self.fields["states"].append(StateFilter(states=_states(name, values), negate=negate))

    def _date(self, name: str, op: Op, values: list[str], field: DateField) -> None:
        for value in values:
            self.fields["dates"].append(
                DateFilter(field=field, op=op, value=parse_instant(name, value))
            )

    def _start(self, name: str, op: Op, values: list[str], _nested: str | None) -> None:
        self._date(name, op, values, DateField.START_DATE)

    def _end(self, name: str, op: Op, values: list[str], _nested: str | None) -> None:
        self._date(name, op, values, DateField.END_DATE)

    def _labels(self, name: str, op: Op, values: list[str], nested: str | None) -> None:
        negate = op is Op.NOT_EQUALS
        pairs = [(nested, values[0])] if nested else [label_pair(name, v) for v in values]
        for key, value in pairs:
            self.fields["labels"].append(LabelFilter(key=key, value=value, negate=negate))

    def _q(self, name: str, _op: Op, values: list[str], _nested: str | None) -> None:
        text = " ".join(v.strip() for v in values if v.strip())
        self.fields["q"] = text or None

    def _time_range(self, name: str, _op: Op, values: list[str], _nested: str | None) -> None:
        start = time_range_start(name, values[-1], self.now)
        self.fields["dates"].append(
            DateFilter(field=DateField.START_DATE, op=Op.GREATER_THAN_OR_EQUAL_TO, value=start)
        )

    def _scope(self, name: str, op: Op, values: list[str], _nested: str | None) -> None:
        # Kestra: SYSTEM is the system namespace itself, USER everything else.
        scopes = {v.upper() for v in _split_list(values)}
        if not scopes or not scopes <= _SCOPES:
            raise QueryError(name, f"scope must be USER or SYSTEM, not {values}")
        if op is Op.NOT_EQUALS:
            scopes = set(_SCOPES - scopes)
        if not scopes:
            self.fields["nothing"] = True
        elif scopes != _SCOPES:
            system = scopes == {"SYSTEM"}
            self.fields["texts"].append(
                TextFilter(
                    field=TextField.NAMESPACE,
                    op=Op.EQUALS if system else Op.NOT_EQUALS,
                    values=(SYSTEM_NAMESPACE,),
                )
            )

    def _kind(self, name: str, op: Op, values: list[str], _nested: str | None) -> None:
        kinds = {v.upper() for v in _split_list(values)}
        if not kinds <= _KINDS:
            raise QueryError(name, f"kind must be NORMAL, TEST or PLAYGROUND, not {values}")
        includes_normal = "NORMAL" in kinds
        if op in (Op.NOT_EQUALS, Op.NOT_IN):
            includes_normal = not includes_normal
        if not includes_normal:  # every kestream execution is NORMAL
            self.fields["nothing"] = True

    def _child(self, name: str, op: Op, values: list[str], _nested: str | None) -> None:
        try:
            child = ChildFilter(values[-1].strip().upper())
        except ValueError:
            raise QueryError(
                name, f"childFilter must be CHILD or MAIN, not '{values[-1]}'"
            ) from None
        if op is Op.NOT_EQUALS:
            child = ChildFilter.MAIN if child is ChildFilter.CHILD else ChildFilter.CHILD
        self.fields["child"] = child

    _FIELD_HANDLERS: dict[str, Callable[[_Builder, str, Op, list[str], str | None], None]] = {
        "q": _q,
        "scope": _scope,
        "namespace": _namespace,
        "kind": _kind,
        "labels": _labels,
        "flowId": _flow_id,
        "startDate": _start,
        "endDate": _end,
        "state": _state,
        "timeRange": _time_range,
        "triggerExecutionId": _trigger,
        "childFilter": _child,
    }

    # -- legacy flat parameters ----------------------------------------------------------------

    def legacy(self, name: str, values: list[str]) -> bool:
        """Apply a Kestra 0.x parameter; ``False`` when ``name`` is not one."""
        handler = _LEGACY.get(name)
        if handler is None:
            return False
        values = [v for v in values if v.strip()]
        if values:
            handler(self, name, values)
        return True

    # -- paging and sorting --------------------------------------------------------------------

    def paging(self, name: str, values: list[str]) -> None:
        self.fields[name] = page_number(name, values[-1])

    def sorting(self, name: str, values: list[str]) -> None:
        for item in _split_list(values):
            field, _, direction = item.partition(":")
            try:
                key = SortField(field.strip())
            except ValueError:
                allowed = ", ".join(f.value for f in SortField)
                raise QueryError(name, f"cannot sort on '{field}'; sort on {allowed}") from None
            direction = direction.strip().lower() or "asc"
            if direction not in ("asc", "desc"):
                raise QueryError(name, f"sort direction must be asc or desc, not '{direction}'")
            self.fields["sort"].append(SortKey(field=key, descending=direction == "desc"))

    def build(self) -> SearchQuery:
        fields = dict(self.fields)
        for name in ("texts", "states", "dates", "labels", "sort"):
            fields[name] = tuple(fields[name])
        if not fields["sort"]:
            del fields["sort"]
        try:
            return SearchQuery(**fields)
        except ValidationError as exc:  # a bug in this module more than a client error
            raise QueryError("query", str(exc)) from None


def _legacy_namespace(b: _Builder, name: str, values: list[str]) -> None:
    # Kestra 0.x's ``namespace`` is a prefix: the namespace and everything under it.
    b._text(name, Op.PREFIX, values, TextField.NAMESPACE)


def _legacy_labels(b: _Builder, name: str, values: list[str]) -> None:
    for value in values:
        key, label = label_pair(name, value)
        b.fields["labels"].append(LabelFilter(key=key, value=label))


_LEGACY: dict[str, Callable[[_Builder, str, list[str]], None]] = {
    "namespace": _legacy_namespace,
    "flowId": lambda b, n, v: b._text(n, Op.EQUALS, v, TextField.FLOW_ID),
    "state": lambda b, n, v: b._state(n, Op.IN, v, None),
    "startDate": lambda b, n, v: b._date(n, Op.GREATER_THAN_OR_EQUAL_TO, v, DateField.START_DATE),
    # Kestra 0.x compares ``endDate`` with the execution's end date (end_date <= endDate).
    "endDate": lambda b, n, v: b._date(n, Op.LESS_THAN_OR_EQUAL_TO, v, DateField.END_DATE),
    "timeRange": lambda b, n, v: b._time_range(n, Op.EQUALS, v, None),
    "labels": _legacy_labels,
    "q": lambda b, n, v: b._q(n, Op.EQUALS, v, None),
    "triggerExecutionId": lambda b, n, v: b._text(n, Op.EQUALS, v, TextField.TRIGGER_EXECUTION_ID),
    "childFilter": lambda b, n, v: b._child(n, Op.EQUALS, v, None),
    "scope": lambda b, n, v: b._scope(n, Op.IN, v, None),
}


def parse_search_params(params: Any, *, now: datetime | None = None) -> SearchQuery:
    """Parse a listing's query parameters (both URL shapes, see the module docs).

    ``params`` is a ``Mapping[str, list[str]]`` (``urllib.parse.parse_qs``), a mapping of single
    strings, or a multidict (aiohttp's ``request.query``). ``now`` anchors ``timeRange``
    (default: the current time). Raises :class:`QueryError` naming the bad parameter.
    """
    builder = _Builder(now or datetime.now(UTC))
    for name, values in param_items(params):
        if name.startswith("filters["):
            builder.bracket(name, values)
        elif name in ("page", "size"):
            if values:
                builder.paging(name, values)
        elif name == "sort":
            builder.sorting(name, values)
        else:
            builder.legacy(name, values)  # anything else (``_``, ``tenant``...) is not a filter
    return builder.build()
