"""SQL shared by the SQLite and PostgreSQL stores: the search statements.

Both engines get the same tables, partial indexes (``WHERE NOT deleted``) and statements, written
with ``?`` placeholders; a :class:`Dialect` says what differs. Why the tables look as they do:

- ``executions``: one row per execution, the filterable columns plus its JSON (without task
  runs). Every index serving a listing ends in ``start_date, id`` (the default sort and its
  tie-break), so a page is an index range read backwards and ``LIMIT``-ed, and its count is an
  index-only range count (SQLite's indexes also carry ``deleted`` for that).
- ``task_runs``: one row per task run, so a partial update costs what changed (DESIGN.md
  section 3), not a rewrite of the whole execution; ``seq`` keeps the order of first appearance.
- ``labels`` repeats each execution's start date: "label = value, newest first" is one range of
  ``(key, value, start_date, execution_id)``, its count another, and "has this label" is one
  seek of the same key. Rows exist only for executions that are not deleted.

**Labels.** Sorted by start date, a label filter drives the listing from its range of
``labels``, in the listing's order. Each positive label's range is first counted up to
:data:`LABEL_PROBE_MAX` (:func:`label_probes`), and the rarest drives: alone, or beside other
filters when it has fewer rows than that bound (each of its rows then reads its execution;
otherwise the listing's index drives and each row seeks the label). On SQLite, several labels
alone are an ``INTERSECT`` of their ranges (``EXCEPT`` a negative label's) in the listing's
order, which SQLite answers by merging the sorted ranges, one pass over each stopped at the
page or the count's bound, instead of one seek per row of the driving range; so are labels
beside one namespace and one state at most (and date or flow filters), merged with that range
of the listing's index, unless an execution without a start date exists (its label rows say
``no_date``, its row NULL). PostgreSQL's planner picks its own join for the ``EXISTS`` checks.
- ``namespaces``: every namespace seen. Namespace filters other than ``EQUALS`` (Kestra's
  ``PREFIX``, ``STARTS_WITH``, ``CONTAINS``...) are resolved against it into a list of
  namespaces first, so they become index lookups instead of scans.
- ``feed_offsets``: written in the same transaction as the data.

**Fan-out.** ``namespace IN (a, b)`` or ``state IN (FAILED, KILLED)`` ordered by start date is
not one ordered index range, and an engine would sort every match to return 25. When the sort is
by start date, the page query is instead a ``UNION ALL`` of one ordered, ``LIMIT``-ed range per
value (and per namespace x state, while the product stays small), merged and cut: the work is
(values x page end), whatever the number of matches. The count needs no such help.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kestream.api.index.nul import escape
from kestream.api.index.query import (
    ChildFilter,
    DateField,
    DateFilter,
    LabelFilter,
    Op,
    SearchQuery,
    SortField,
    TextField,
    TextFilter,
)
from kestream.api.index.text_index import TEXT_TABLE, fts_phrase, like_pattern
from kestream.models.state import StateType

#: :attr:`Dialect.text_index` values.
FTS5_TRIGRAM = "fts5-trigram"
PG_TRGM = "pg_trgm"
#: Candidates of SQLite's text index past which a text is *dense*: its page is then found by
#: walking the listing's order and checking rows (25 matches come soon), not by fetching and
#: sorting every candidate (:func:`text_probe`).
TEXT_DENSE = 5_000
#: Most branches in a fan-out, and most rows all branches may read (branches x page end).
FAN_OUT_MAX = 64
FAN_OUT_ROWS_MAX = 20_000
#: The newest rows (in the listing's order) a text no index answers is first checked on
#: (:func:`text_window`): its page is found there when it has that many matches, and its count
#: is that window's, a lower bound when the window is full. A page not found there is looked
#: for in a wider window of the store's ``SEARCH_SCAN_MAX`` rows.
TEXT_WINDOW = 5_000
#: A positive label's rows are counted up to this many to pick the rarest label
#: (:func:`label_probes`); one under it drives beside other filters, reading its executions.
LABEL_PROBE_MAX = 2_000


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the engines in otherwise shared SQL."""

    name: str
    #: How a ``?`` placeholder is written ("?" for sqlite3, "%s" for psycopg).
    placeholder: str
    #: ``instr`` (SQLite) or ``strpos`` (PostgreSQL): position of a substring, 0 when absent.
    find: str
    #: Appended to a document column to read it as text ("::text": PostgreSQL keeps JSONB).
    doc_cast: str
    #: A date as a query parameter (an ISO string for SQLite, a datetime for psycopg).
    date: Callable[[datetime], Any]
    #: SQL for the ``labels.start_date`` of an execution without a start date (never NULL there).
    no_date: str
    #: The engine refuses NUL in text: user text is escaped (:mod:`kestream.api.index.nul`).
    escapes_nul: bool = False
    #: A log line's message read from its ``l.doc`` (the logs search's text filter).
    log_message: str = "json_extract(l.doc, '$.message')"
    #: What answers the text search ``q`` (:mod:`kestream.api.index.text_index`): ``None``, a
    #: scan; :data:`FTS5_TRIGRAM`, SQLite's ``executions_text``; :data:`PG_TRGM`, ``LIKE``
    #: (which PostgreSQL's trigram indexes answer where they exist).
    text_index: str | None = None
    #: Several labels alone are one ``INTERSECT`` of their ranges, sorted: SQLite merges them
    #: (a ``MERGE (INTERSECT)`` plan) when the compound is ordered and limited.
    merge_intersect: bool = False
    _cache: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def sql(self, text: str) -> str:
        """``text`` with its ``?`` placeholders in this engine's style."""
        if self.placeholder == "?":
            return text
        converted = self._cache.get(text)
        if converted is None:
            converted = text.replace("%", "%%").replace("?", self.placeholder)
            self._cache[text] = converted
        return converted

    def text(self, value: str) -> str:
        """User text (a label, a search needle) as this engine stores and compares it."""
        return escape(value) if self.escapes_nul else value


def marks(count: int) -> str:
    """``?, ?, ...`` for an ``IN`` list."""
    return ", ".join("?" * count)


_TEXT_COLUMNS = {
    TextField.NAMESPACE: "e.namespace",
    TextField.FLOW_ID: "e.flow_id",
    TextField.TRIGGER_EXECUTION_ID: "e.parent_id",
}
_DATE_COLUMNS = {DateField.START_DATE: "e.start_date", DateField.END_DATE: "e.end_date"}
_SORT_COLUMNS = {
    SortField.ID: "e.id",
    SortField.NAMESPACE: "e.namespace",
    SortField.FLOW_ID: "e.flow_id",
    SortField.STATE: "e.state",
    SortField.START_DATE: "e.start_date",
    SortField.END_DATE: "e.end_date",
}
_COMPARISONS = {
    Op.EQUALS: "=",
    Op.NOT_EQUALS: "<>",
    Op.GREATER_THAN: ">",
    Op.GREATER_THAN_OR_EQUAL_TO: ">=",
    Op.LESS_THAN: "<",
    Op.LESS_THAN_OR_EQUAL_TO: "<=",
}


# -- namespaces and states as value sets ------------------------------------------------------


def _text_matches(flt: TextFilter, value: str) -> bool:
    """``flt`` evaluated in Python (same semantics as :meth:`_Where.text`)."""
    first = flt.values[0]
    checks: dict[Op, Callable[[], bool]] = {
        Op.EQUALS: lambda: value == first,
        Op.NOT_EQUALS: lambda: value != first,
        Op.IN: lambda: value in flt.values,
        Op.NOT_IN: lambda: value not in flt.values,
        Op.STARTS_WITH: lambda: value.startswith(first),
        Op.PREFIX: lambda: value == first or value.startswith(f"{first}."),
        Op.ENDS_WITH: lambda: value.endswith(first),
        Op.CONTAINS: lambda: first in value,
    }
    return checks[flt.op]()


def needs_namespaces(query: SearchQuery) -> bool:
    """True when the namespace filters must be resolved against the ``namespaces`` table."""
    return any(t.field is TextField.NAMESPACE and t.op is not Op.EQUALS for t in query.texts)


def matching_namespaces(query: SearchQuery, known: Iterable[str]) -> list[str]:
    """The namespaces among ``known`` that pass every namespace filter of ``query``."""
    filters = [t for t in query.texts if t.field is TextField.NAMESPACE]
    return sorted(ns for ns in known if all(_text_matches(t, ns) for t in filters))


def _namespaces(query: SearchQuery, resolved: Sequence[str] | None) -> list[str] | None:
    """The namespaces allowed, or ``None`` for "no namespace filter"."""
    filters = [t for t in query.texts if t.field is TextField.NAMESPACE]
    if not filters:
        return None
    if resolved is not None:
        return sorted(resolved)
    if any(t.op is not Op.EQUALS for t in filters):
        raise ValueError("namespace filters other than EQUALS need the known namespaces")
    values = {t.values[0] for t in filters}
    return sorted(values) if len(values) == 1 else []


def _states(query: SearchQuery) -> list[str] | None:
    """The states allowed by every state filter, or ``None`` when there is none."""
    if not query.states:
        return None
    allowed = set(StateType)
    for flt in query.states:
        allowed = allowed - flt.states if flt.negate else allowed & flt.states
    return sorted(s.value for s in allowed)


# -- WHERE --------------------------------------------------------------------------------------


def _next_string(text: str) -> str | None:
    """The smallest string above every string that starts with ``text`` (binary order)."""
    last = ord(text[-1])
    return None if last >= 0x10FFFF else text[:-1] + chr(last + 1)


class _Where:
    """AND-ed clauses and their parameters, in text order."""

    def __init__(self, dialect: Dialect, clauses: Iterable[str] = ("NOT e.deleted",)) -> None:
        self.dialect = dialect
        self.clauses: list[str] = list(clauses)
        self.params: list[Any] = []

    def copy(self) -> _Where:
        other = _Where(self.dialect, self.clauses)
        other.params = list(self.params)
        return other

    def add(self, clause: str, *params: Any) -> None:
        self.clauses.append(clause)
        self.params.extend(params)

    def one_of(self, column: str, values: Sequence[str]) -> None:
        if len(values) == 1:
            self.add(f"{column} = ?", values[0])
        else:
            self.add(f"{column} IN ({marks(len(values))})", *values)

    def text(self, flt: TextFilter) -> None:
        column = _TEXT_COLUMNS[flt.field]
        values = [self.dialect.text(v) for v in flt.values]
        value = values[0]
        if flt.op is Op.EQUALS:
            self.add(f"{column} = ?", value)
        elif flt.op is Op.NOT_EQUALS:
            self.add(f"{column} <> ?", value)
        elif flt.op in (Op.IN, Op.NOT_IN):
            negation = "NOT " if flt.op is Op.NOT_IN else ""
            self.add(f"{column} {negation}IN ({marks(len(values))})", *values)
        elif flt.op is Op.PREFIX:  # Kestra: the value itself or anything under "value."
            self.add(f"({column} = ? OR ({column} >= ? AND {column} < ?))", value, *_dot(value))
        elif flt.op is Op.STARTS_WITH:
            upper = _next_string(value)
            if upper is None:
                self.add(f"{column} >= ?", value)
            else:
                self.add(f"{column} >= ? AND {column} < ?", value, upper)
        elif flt.op is Op.ENDS_WITH:
            self.add(
                f"length({column}) >= ? AND substr({column}, length({column}) - ? + 1) = ?",
                len(value),
                len(value),
                value,
            )
        elif flt.op is Op.CONTAINS:
            self.add(f"{self.dialect.find}({column}, ?) > 0", value)
        else:  # the parser never builds one
            raise ValueError(f"text operation {flt.op} is not evaluated")

    def date(self, flt: DateFilter) -> None:
        column = _DATE_COLUMNS[flt.field]
        self.add(f"{column} {_COMPARISONS[flt.op]} ?", self.dialect.date(flt.value))

    def label(self, flt: LabelFilter, start: str | None = None, execution: str = "e.id") -> None:
        """The execution (``start``, ``execution``: its start date and id) has the label.

        The start date completes the labels key: one index seek per candidate row.
        """
        start = start or f"coalesce(e.start_date, {self.dialect.no_date})"
        negation = "NOT " if flt.negate else ""
        self.add(
            f"{negation}EXISTS (SELECT 1 FROM labels x WHERE x.key = ? AND x.value = ? "
            f"AND x.start_date = {start} AND x.execution_id = {execution})",
            self.dialect.text(flt.key),
            self.dialect.text(flt.value),
        )

    def q(
        self,
        text: str,
        *,
        candidates: bool,
        columns: Sequence[str] = ("e.id", "e.namespace", "e.flow_id"),
    ) -> None:
        """A case-insensitive substring of the id, namespace or flow id (``columns``). With
        ``candidates``, SQLite's text index picks the rows, and each is still checked as the scan
        checks it, so the answer is the scan's (:mod:`kestream.api.index.text_index`)."""
        needle = self.dialect.text(text.lower())
        if self.dialect.text_index == PG_TRGM:
            pattern = like_pattern(needle)
            self.add(
                "(" + " OR ".join(f"lower({c}) LIKE ?" for c in columns) + ")",
                *[pattern] * len(columns),
            )
            return
        phrase = _phrase(self.dialect, text) if candidates else None
        if phrase is not None:
            self.add(
                f"e.rowid IN (SELECT rowid FROM {TEXT_TABLE} WHERE {TEXT_TABLE} MATCH ?)", phrase
            )
        find = self.dialect.find
        self.add(
            "(" + " OR ".join(f"{find}(lower({c}), ?) > 0" for c in columns) + ")",
            *[needle] * len(columns),
        )

    @property
    def empty(self) -> bool:
        """Only the ``NOT deleted`` every search has."""
        return len(self.clauses) == 1

    def sql(self) -> str:
        return " AND ".join(self.clauses)


def _dot(namespace: str) -> tuple[str, str]:
    """Bounds of "everything under ``namespace.``": ``[ns., ns/)`` ('/' follows '.')."""
    return f"{namespace}.", f"{namespace}/"


def _phrase(dialect: Dialect, text: str | None) -> str | None:
    """The FTS5 phrase of SQLite's text index for the text ``q``, or ``None`` where that index
    cannot answer it (another engine, no index, a needle too short)."""
    if not text or dialect.text_index != FTS5_TRIGRAM:
        return None
    return fts_phrase(text.lower())


def text_probe(query: SearchQuery, dialect: Dialect) -> tuple[str, list[Any]] | None:
    """The statement counting the text index's candidates for ``query``'s text, up to
    :data:`TEXT_DENSE` (``None`` when no text index answers it): more, and the text is dense
    (``search_sql(..., text_dense=True)``)."""
    phrase = _phrase(dialect, query.q)
    if phrase is None:
        return None
    return (
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {TEXT_TABLE} WHERE {TEXT_TABLE} MATCH ? LIMIT ?) c",
        [phrase, TEXT_DENSE],
    )


def _only_labels(query: SearchQuery) -> bool:
    """Whether the labels are the query's only filters."""
    return not (query.texts or query.states or query.dates or query.q or query.child)


def _by_start(query: SearchQuery) -> bool:
    return [k.field for k in query.sort] == [SortField.START_DATE]


def label_probes(query: SearchQuery, dialect: Dialect) -> list[tuple[LabelFilter, str, list[Any]]]:
    """``(label, statement, params)`` counting each positive label's rows up to
    :data:`LABEL_PROBE_MAX`, when the plan depends on which is rarest (several labels, or a label
    beside other filters, sorted by start date); the counts go to :func:`search_sql`."""
    positive = list(dict.fromkeys(label for label in query.labels if not label.negate))
    if not positive or not _by_start(query) or (len(positive) == 1 and _only_labels(query)):
        return []
    statement = dialect.sql(
        "SELECT COUNT(*) FROM (SELECT 1 FROM labels WHERE key = ? AND value = ? LIMIT ?) c"
    )
    return [
        (label, statement, [dialect.text(label.key), dialect.text(label.value), LABEL_PROBE_MAX])
        for label in positive
    ]


def undated_probe(query: SearchQuery, dialect: Dialect) -> str | None:
    """The statement telling whether some execution has no start date, asked where labels
    beside other filters could be merged with the listing's range (``search_sql``'s
    ``undated``); one seek of the start dates' index."""
    if not (dialect.merge_intersect and query.labels and _by_start(query)) or _only_labels(query):
        return None
    return "SELECT 1 FROM executions WHERE start_date IS NULL AND NOT deleted LIMIT 1"


def text_scanned(query: SearchQuery, dialect: Dialect) -> bool:
    """Whether the text ``q`` is checked row by row, no index answering it: a needle shorter
    than a trigram, or an engine without a text index."""
    if not query.q:
        return False
    return dialect.text_index is None or fts_phrase(query.q.lower()) is None


@dataclass(slots=True)
class TextWindow:
    """A text no index answers, checked on the newest :attr:`rows` rows of the listing (its
    other filters applied): the page among them, and ``(rows read, matches)`` of them."""

    page: str
    page_params: list[Any]
    count: str
    count_params: list[Any]
    rows: int


def text_window(
    query: SearchQuery,
    dialect: Dialect,
    namespaces: Sequence[str] | None = None,
    rows: int | None = None,
) -> TextWindow | None:
    """The window of a text no index answers (:func:`text_scanned`), without labels (which
    drive their own ranges); ``None`` otherwise, or when nothing can match.

    The window is the first ``rows`` rows of the listing's order that pass the other filters,
    a range of the listing's index. When it holds every such row, its page and count are the
    answer. When it is full, its page is the answer if it is full too (the newest matches are
    in it), and its matches are a lower bound of the total; otherwise the store reads a wider
    window, and no more (:data:`kestream.api.index.store.SEARCH_SCAN_MAX`).
    """
    if not text_scanned(query, dialect) or query.labels or query.q is None:
        return None
    size = TEXT_WINDOW if rows is None else rows
    # The window is the listing of the other filters, one page of ``size`` rows (fanned out
    # over namespaces or states as a page is).
    listing = query.model_copy(update={"q": None, "page": 1, "size": size})
    plan = _plan(listing, dialect, namespaces)
    if plan is None:
        return None
    keys = ", ".join(f"{column} AS s{i}" for i, (column, _) in enumerate(plan.order))
    select = (
        f"SELECT e.id AS pid, {keys}, e.id AS t0, e.namespace AS t1, e.flow_id AS t2 "
        "FROM executions e"
    )
    order = _order_by([column for column, _ in plan.order], plan.order)
    fanned = _fan_out(plan, listing)
    if fanned:
        window, window_params = _branches(plan, fanned, select, order, listing)
    else:
        where = _filters(plan)
        window = f"{select} WHERE {where.sql()} ORDER BY {order} LIMIT ? OFFSET ?"
        window_params = [*where.params, size, 0]
    match = _Where(dialect, [])
    match.q(query.q, candidates=False, columns=("w.t0", "w.t1", "w.t2"))
    inner_keys = ", ".join(f"w.s{i} AS s{i}" for i in range(len(plan.order)))
    inner_order = _order_by([f"w.s{i}" for i in range(len(plan.order))], plan.order)
    outer_order = _order_by([f"p.s{i}" for i in range(len(plan.order))], plan.order)
    return TextWindow(
        page=dialect.sql(
            f"SELECT e.doc{dialect.doc_cast} FROM (SELECT w.pid, {inner_keys} FROM ({window}) w "
            f"WHERE {match.sql()} ORDER BY {inner_order} LIMIT ? OFFSET ?) p "
            f"JOIN executions e ON e.id = p.pid ORDER BY {outer_order}"
        ),
        page_params=[*window_params, *match.params, query.size, query.offset],
        count=dialect.sql(
            f"SELECT COUNT(*), COALESCE(SUM(CASE WHEN {match.sql()} THEN 1 ELSE 0 END), 0) "
            f"FROM ({window}) w"
        ),
        count_params=[*match.params, *window_params],
        rows=size,
    )


def _rest(query: SearchQuery, dialect: Dialect, *, candidates: bool = False) -> _Where:
    """Every filter but namespaces, states and labels; ``candidates``: the text index picks
    the rows of a text (:meth:`_Where.q`)."""
    where = _Where(dialect)
    for text in query.texts:
        if text.field is not TextField.NAMESPACE:
            where.text(text)
    for date in query.dates:
        where.date(date)
    if query.q:
        where.q(query.q, candidates=candidates)
    if query.child is ChildFilter.CHILD:
        where.add("e.parent_id IS NOT NULL")
    elif query.child is ChildFilter.MAIN:
        where.add("e.parent_id IS NULL")
    return where


# -- the statements -----------------------------------------------------------------------------


@dataclass(slots=True)
class SearchSQL:
    """The page query and its count (same FROM and WHERE, separate statements)."""

    page: str
    page_params: list[Any]
    count: str
    count_params: list[Any]
    #: The count's bound, when it has one: it reads one match past it, so that more matches
    #: than the bound (a capped total) tell from exactly that many.
    count_max: int | None = None


@dataclass(slots=True)
class _Plan:
    rest: _Where
    #: ``(column, values)`` of the namespace and state sets, when filtered.
    dims: list[tuple[str, list[str]]]
    #: Every label filter but the driving one, the positive ones rarest first.
    labels: list[LabelFilter]
    #: The label whose index drives the page (sorted by start date; see the module's doc).
    drive: LabelFilter | None
    order: list[tuple[str, bool]]

    @property
    def joined(self) -> bool:
        """A driving label reads its executions (other filters than labels hold)."""
        return bool(self.dims) or not self.rest.empty


def _plan(
    query: SearchQuery,
    dialect: Dialect,
    namespaces: Sequence[str] | None,
    *,
    candidates: bool = False,
    label_rows: Mapping[LabelFilter, int] | None = None,
) -> _Plan | None:
    """``None`` when nothing can match (an empty namespace or state set). ``label_rows``: the
    counts of :func:`label_probes`."""
    dims: list[tuple[str, list[str]]] = []
    for column, values in (
        ("e.namespace", _namespaces(query, namespaces)),
        ("e.state", _states(query)),
    ):
        if values is not None:
            if not values:
                return None
            dims.append((column, values))
    rest = _rest(query, dialect, candidates=candidates)
    rows = label_rows or {}
    # Rarest first; a label not counted is taken as common, and ties keep the query's order.
    positive = sorted(
        (label for label in query.labels if not label.negate),
        key=lambda label: rows.get(label, LABEL_PROBE_MAX),
    )
    drive = None
    if positive and _by_start(query):
        alone = not dims and rest.empty
        if alone or rows.get(positive[0], LABEL_PROBE_MAX) < LABEL_PROBE_MAX:
            drive = positive[0]
    descending = query.sort[0].descending
    if drive is not None:
        order = [("l.start_date", descending), ("l.execution_id", descending)]
    else:
        order = [(_SORT_COLUMNS[k.field], k.descending) for k in query.sort]
        if SortField.ID not in {k.field for k in query.sort}:
            order.append(("e.id", descending))  # the tie-break: pages never overlap
    others = positive[1:] if drive is not None else positive
    labels = [*others, *(label for label in query.labels if label.negate)]
    return _Plan(rest, dims, labels, drive, order)


def _order_by(columns: Sequence[str], order: Sequence[tuple[str, bool]]) -> str:
    return ", ".join(
        f"{column} {'DESC' if desc else 'ASC'}"
        for column, (_, desc) in zip(columns, order, strict=True)
    )


def _fan_out(plan: _Plan, query: SearchQuery) -> list[int]:
    """Indexes into ``plan.dims`` to fan out on (empty: one plain ordered query)."""
    if plan.drive is not None or [k.field for k in query.sort] != [SortField.START_DATE]:
        return []
    wide = [i for i, (_, values) in enumerate(plan.dims) if len(values) > 1]
    page_end = query.offset + query.size
    for chosen in (wide, wide[:1]):
        branches = 1
        for i in chosen:
            branches *= len(plan.dims[i][1])
        if chosen and branches <= FAN_OUT_MAX and branches * page_end <= FAN_OUT_ROWS_MAX:
            return chosen
    return []


def search_sql(
    query: SearchQuery,
    dialect: Dialect,
    namespaces: Sequence[str] | None = None,
    count_max: int | None = None,
    *,
    text_dense: bool = False,
    label_rows: Mapping[LabelFilter, int] | None = None,
    undated: bool = True,
) -> SearchSQL | None:
    """The page and count statements of ``query``; ``None`` when nothing can match.

    ``namespaces`` are the namespaces that pass the query's namespace filters
    (:func:`matching_namespaces`); needed when :func:`needs_namespaces` says so. The page is
    chosen on indexes alone (ids and sort keys, ``LIMIT``/``OFFSET``), then only its rows'
    documents are read, so a sort or a deep page never drags thousands of documents along.
    ``count_max`` bounds the count (it stops past that many matches) when filters are checked
    row by row (a text, labels beside the driving range): that count is otherwise a read of
    every candidate. A count an index range answers alone stays exact.

    A text that SQLite's text index answers is counted from the index's candidates, each
    joined to its row and checked; its page is picked among them too, unless the text is
    ``text_dense`` (:func:`text_probe`): then the page walks the listing's order instead.
    ``label_rows`` are the counts of :func:`label_probes`, which pick the driving label.
    ``undated``: some execution may lack a start date (:func:`undated_probe`).
    """
    phrase = _phrase(dialect, query.q)
    plan = _plan(
        query,
        dialect,
        namespaces,
        candidates=phrase is not None and not text_dense,
        label_rows=label_rows,
    )
    if plan is None:
        return None
    where = _filters(plan)
    if plan.drive is not None:
        # Label rows exist only for executions that are not deleted, and carry the start
        # date: other labels are checked from them, with no join.
        source, id_column = "labels l", "l.execution_id"
        where = _Where(dialect, ["l.key = ?", "l.value = ?"])
        where.params = [dialect.text(plan.drive.key), dialect.text(plan.drive.value)]
        if plan.joined:
            source = "labels l JOIN executions e ON e.id = l.execution_id"
            checks = _filters(plan, "l.start_date", "l.execution_id")
            where.clauses += checks.clauses
            where.params += checks.params
        else:
            merged = _merged_labels(plan, query, dialect, count_max, undated=undated)
            if merged is not None:
                return merged
            for label in plan.labels:
                where.label(label, "l.start_date", "l.execution_id")
    else:
        merged = _merged_labels(plan, query, dialect, count_max, undated=undated)
        if merged is not None:
            return merged
        source, id_column = "executions e", "e.id"

    keys = ", ".join(f"{column} AS s{i}" for i, (column, _) in enumerate(plan.order))
    outer_keys = [f"s{i}" for i in range(len(plan.order))]
    select = f"SELECT {id_column} AS pid, {keys} FROM {source}"
    order = _order_by([column for column, _ in plan.order], plan.order)
    fanned = _fan_out(plan, query)
    if fanned:
        inner, inner_params = _branches(plan, fanned, select, order, query)
    else:
        inner = f"{select} WHERE {where.sql()} ORDER BY {order} LIMIT ? OFFSET ?"
        inner_params = [*where.params, query.size, query.offset]
    page = (
        f"SELECT e.doc{dialect.doc_cast} FROM ({inner}) p JOIN executions e ON e.id = p.pid "
        f"ORDER BY {_order_by([f'p.{k}' for k in outer_keys], plan.order)}"
    )
    row_by_row = bool(query.q or plan.labels)
    bound = count_max if row_by_row else None
    if phrase is not None:
        # The candidates' rowids drive (CROSS JOIN keeps them outside), each row read by its
        # rowid: no read of the index's content, nor of the ids' index.
        counted = _plan(query, dialect, namespaces, label_rows=label_rows)
        assert counted is not None  # as plan: the same namespaces and states
        where = _filters(counted)
        if counted.drive is not None:
            where.label(counted.drive)
        source = f"{TEXT_TABLE} t CROSS JOIN executions e ON e.rowid = t.rowid"
        where.clauses.insert(0, f"t.{TEXT_TABLE} MATCH ?")
        where.params.insert(0, phrase)
    return SearchSQL(
        page=dialect.sql(page),
        page_params=inner_params,
        count=dialect.sql(
            f"SELECT COUNT(*) FROM {source} WHERE {where.sql()}"
            if bound is None
            else f"SELECT COUNT(*) FROM (SELECT 1 FROM {source} WHERE {where.sql()} LIMIT ?) c"
        ),
        count_params=[*where.params] if bound is None else [*where.params, bound + 1],
        count_max=bound,
    )


def _filters(plan: _Plan, start: str | None = None, execution: str = "e.id") -> _Where:
    """Every filter of ``plan`` but its driving label, on ``executions e`` (the labels checked
    against ``start`` and ``execution``: :meth:`_Where.label`)."""
    where = plan.rest.copy()
    for column, values in plan.dims:
        where.one_of(column, values)
    for label in plan.labels:
        where.label(label, start, execution)
    return where


def _merged_labels(
    plan: _Plan, query: SearchQuery, dialect: Dialect, count_max: int | None, *, undated: bool
) -> SearchSQL | None:
    """Labels on an engine that merges an ordered compound: the driving label's range, or
    else the listing's range of the other filters (one namespace and state at most, no text),
    ``INTERSECT`` each other positive label's, ``EXCEPT`` each negative one's (label rows
    carry their execution's start date, so a pair ``(start date, id)`` names one execution in
    every range). The page and the count walk the ranges side by side in the listing's order;
    ``None`` when that does not apply. ``undated``: some execution has no start date, which
    its label rows spell ``no_date``: the listing's range cannot be merged with them then."""
    if not dialect.merge_intersect or not plan.labels:
        return None
    member = "SELECT l.execution_id, l.start_date, l.execution_id FROM labels l"
    if plan.drive is not None:
        parts = [
            "SELECT l.execution_id AS pid, l.start_date AS s0, l.execution_id AS s1 "
            "FROM labels l WHERE l.key = ? AND l.value = ?"
        ]
        params = [dialect.text(plan.drive.key), dialect.text(plan.drive.value)]
    else:
        single = all(len(values) == 1 for _, values in plan.dims)
        if undated or query.q or not single or not _by_start(query):
            return None
        if not any(not label.negate for label in plan.labels):
            return None  # only negative labels: a seek per row of the range is as good
        where = plan.rest.copy()
        for column, values in plan.dims:
            where.one_of(column, values)
        parts = [
            f"SELECT e.id AS pid, e.start_date AS s0, e.id AS s1 FROM executions e "
            f"WHERE {where.sql()}"
        ]
        params = list(where.params)
    # Every INTERSECT before any EXCEPT: the compound reads left to right.
    for label in sorted(plan.labels, key=lambda label: label.negate):
        operator = "EXCEPT" if label.negate else "INTERSECT"
        parts.append(f"{operator} {member} WHERE l.key = ? AND l.value = ?")
        params += [dialect.text(label.key), dialect.text(label.value)]
    direction = "DESC" if query.sort[0].descending else "ASC"
    # Ordered and limited, or SQLite drops the order of a subquery and combines by sorting.
    compound = f"{' '.join(parts)} ORDER BY s0 {direction}, s1 {direction} LIMIT ?"
    outer = _order_by(["p.s0", "p.s1"], plan.order)
    return SearchSQL(
        page=dialect.sql(
            f"SELECT e.doc{dialect.doc_cast} FROM ({compound} OFFSET ?) p "
            f"JOIN executions e ON e.id = p.pid ORDER BY {outer}"
        ),
        page_params=[*params, query.size, query.offset],
        count=dialect.sql(f"SELECT COUNT(*) FROM ({compound}) c"),
        count_params=[*params, -1 if count_max is None else count_max + 1],
        count_max=count_max,
    )


def _branches(
    plan: _Plan, fanned: list[int], select: str, order: str, query: SearchQuery
) -> tuple[str, list[Any]]:
    """The fan-out: one ordered, limited range per combination of the fanned values."""
    page_end = query.offset + query.size
    parts: list[str] = []
    params: list[Any] = []
    for combo in itertools.product(*(plan.dims[i][1] for i in fanned)):
        where = plan.rest.copy()
        chosen = dict(zip(fanned, combo, strict=True))
        for i, (column, values) in enumerate(plan.dims):
            where.one_of(column, [chosen[i]] if i in chosen else values)
        for label in plan.labels:
            where.label(label)
        parts.append(
            f"SELECT * FROM ({select} WHERE {where.sql()} ORDER BY {order} LIMIT ?) b{len(parts)}"
        )
        params.extend([*where.params, page_end])
    outer = _order_by([f"s{i}" for i in range(len(plan.order))], plan.order)
    union = " UNION ALL ".join(parts)
    return (
        f"SELECT * FROM ({union}) u ORDER BY {outer} LIMIT ? OFFSET ?",
        [*params, query.size, query.offset],
    )
