"""What the logs search (``GET /api/v1/{tenant}/logs/search``) asks for, parsed from Kestra's
query parameters with the executions listing's rules (:mod:`kestream.api.index.query`).

Both URL shapes reach the same :class:`~kestream.api.index.store.LogSearch`: the plain
parameters (``q``, ``namespace``, ``flowId``, ``minLevel`` or ``level``, ``startDate``,
``endDate``, ``timeRange``) and Kestra's ``filters[field][OPERATION]=value`` form of the LOG
resource's fields. Each field takes only the operations kestream evaluates; any other is
refused (400), never ignored, since a dropped filter widens the search (``NOT_EQUALS`` read as
``EQUALS`` would search for the very text to leave out).

``filters[level][EQUALS]=WARN`` means WARN and the levels above it, as Kestra's ``minLevel``.
``filters[namespace][EQUALS]`` is that namespace alone, ``PREFIX`` (and the plain
``namespace``) the namespace and the ones under it. Dates and ``timeRange`` all hold together:
the latest start and the earliest end win.

A page must end within the first :data:`~kestream.api.index.store.LOG_SEARCH_COUNT_MAX` lines,
as far as the total is counted: deeper pages would make the database skip that many rows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kestream.api.index.query import (
    DEFAULT_PAGE_SIZE,
    Op,
    QueryError,
    page_number,
    param_items,
    parse_filter_key,
    parse_instant,
    time_range_start,
)
from kestream.api.index.store import (
    LOG_LEVELS,
    LOG_SEARCH_COUNT_MAX,
    LogSearch,
    log_level_rank,
)

__all__ = ["parse_log_search"]

#: The LOG resource's fields that kestream evaluates, with the operations it evaluates.
_LOG_OPS: dict[str, frozenset[Op]] = {
    "q": frozenset({Op.EQUALS}),
    "namespace": frozenset({Op.EQUALS, Op.PREFIX}),
    "flowId": frozenset({Op.EQUALS}),
    "level": frozenset({Op.EQUALS}),
    "minLevel": frozenset({Op.EQUALS}),
    "startDate": frozenset({Op.GREATER_THAN_OR_EQUAL_TO}),
    "endDate": frozenset({Op.LESS_THAN_OR_EQUAL_TO}),
    "timeRange": frozenset({Op.EQUALS}),
}
#: The plain parameters, each the filter of the same name with its one meaning.
_PLAIN_OPS: dict[str, Op] = {
    "q": Op.EQUALS,
    "namespace": Op.PREFIX,
    "flowId": Op.EQUALS,
    "level": Op.EQUALS,
    "minLevel": Op.EQUALS,
    "startDate": Op.GREATER_THAN_OR_EQUAL_TO,
    "endDate": Op.LESS_THAN_OR_EQUAL_TO,
    "timeRange": Op.EQUALS,
}


def parse_log_search(params: Any, *, now: datetime | None = None) -> LogSearch:
    """The search that ``params`` (a multidict or a mapping, as
    :func:`~kestream.api.index.query.parse_search_params` takes) asks for; ``now`` anchors
    ``timeRange``. Raises :class:`QueryError` naming the bad parameter."""
    now = now or datetime.now(UTC)
    wanted: dict[str, Any] = {}
    starts: list[datetime] = []
    ends: list[datetime] = []
    paging = {"page": 1, "size": DEFAULT_PAGE_SIZE}
    for name, values in param_items(params):
        value = next((v.strip() for v in reversed(values) if v.strip()), "")
        if name in paging:
            if value:
                paging[name] = page_number(name, value)
            continue
        found = _filter(name)
        if found is None or not value:
            continue
        field, op = found
        if field == "startDate":
            starts.append(parse_instant(name, value))
        elif field == "endDate":
            ends.append(parse_instant(name, value))
        elif field == "timeRange":
            starts.append(time_range_start(name, value, now))
        else:
            wanted.update(_narrowing(name, field, op, value))
    page, size = paging["page"], paging["size"]
    if page * size > LOG_SEARCH_COUNT_MAX:
        raise QueryError(
            "page",
            f"a page must end within the first {LOG_SEARCH_COUNT_MAX} lines "
            f"(page {page} of {size} ends at {page * size}): narrow the search",
        )
    return LogSearch(
        **wanted,
        start=max(starts, default=None),
        end=min(ends, default=None),
        page=page,
        size=size,
    )


def _filter(name: str) -> tuple[str, Op] | None:
    """``(field, op)`` of a filter parameter, ``None`` for one that is no filter (a
    cache-busting ``_``, ``tenant``...)."""
    if name.startswith("filters["):
        field, op, nested = parse_filter_key(name, _LOG_OPS, "logs")
        if nested is not None:
            raise QueryError(name, f"{field} takes no [key]")
        return field, op
    if name in _PLAIN_OPS:
        return name, _PLAIN_OPS[name]
    return None


def _narrowing(name: str, field: str, op: Op, value: str) -> dict[str, Any]:
    """The :class:`LogSearch` fields of a filter that is not a date."""
    if field in ("level", "minLevel"):
        return {"min_level": _min_level(name, value)}
    if field == "namespace":
        return {"namespace": value, "exact_namespace": op is Op.EQUALS}
    if field == "flowId":
        return {"flow_id": value}
    return {"text": value}


def _min_level(parameter: str, text: str) -> str:
    try:
        return LOG_LEVELS[log_level_rank(text)]
    except ValueError:
        raise QueryError(parameter, f"the level must be one of {', '.join(LOG_LEVELS)}") from None
