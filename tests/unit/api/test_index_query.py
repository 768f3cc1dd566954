"""Kestra's listing parameters (1.x ``filters[...]`` and the legacy flat ones) -> SearchQuery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from multidict import MultiDict

from kestream.api.index.query import (
    MAX_PAGE_SIZE,
    SYSTEM_NAMESPACE,
    ChildFilter,
    DateField,
    DateFilter,
    LabelFilter,
    Op,
    QueryError,
    SearchQuery,
    SortField,
    SortKey,
    StateFilter,
    TextField,
    TextFilter,
    parse_search_params,
)
from kestream.models.state import StateType

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def parse(**params: str | list[str]) -> SearchQuery:
    return parse_search_params(params, now=NOW)


def parse_pairs(*pairs: tuple[str, str]) -> SearchQuery:
    return parse_search_params(MultiDict(pairs), now=NOW)


def test_no_parameters_is_the_first_page_newest_first() -> None:
    query = parse()
    assert query == SearchQuery()
    assert (query.page, query.size, query.offset) == (1, 25, 0)
    assert query.sort == (SortKey(field=SortField.START_DATE, descending=True),)


def test_kestra_1x_filters() -> None:
    query = parse_pairs(
        ("filters[namespace][PREFIX]", "company.team"),
        ("filters[flowId][EQUALS]", "hello"),
        ("filters[state][IN]", "FAILED,KILLED"),
        ("filters[startDate][GREATER_THAN_OR_EQUAL_TO]", "2025-01-01T00:00:00Z"),
        ("filters[endDate][LESS_THAN]", "2025-02-01T10:00:00.500+02:00"),
        ("filters[labels][EQUALS][team]", "data"),
        ("filters[labels][NOT_EQUALS][env]", "dev"),
        ("filters[q][EQUALS]", "nightly"),
        ("filters[childFilter][EQUALS]", "MAIN"),
        ("page", "3"),
        ("size", "50"),
        ("sort", "state.endDate:asc"),
    )
    assert query.texts == (
        TextFilter(field=TextField.NAMESPACE, op=Op.PREFIX, values=("company.team",)),
        TextFilter(field=TextField.FLOW_ID, op=Op.EQUALS, values=("hello",)),
    )
    assert query.states == (StateFilter(states=frozenset({StateType.FAILED, StateType.KILLED})),)
    assert query.dates == (
        DateFilter(
            field=DateField.START_DATE,
            op=Op.GREATER_THAN_OR_EQUAL_TO,
            value=datetime(2025, 1, 1, tzinfo=UTC),
        ),
        DateFilter(
            field=DateField.END_DATE,
            op=Op.LESS_THAN,
            value=datetime(2025, 2, 1, 8, 0, 0, 500_000, tzinfo=UTC),  # converted to UTC
        ),
    )
    assert query.labels == (
        LabelFilter(key="team", value="data"),
        LabelFilter(key="env", value="dev", negate=True),
    )
    assert query.q == "nightly"
    assert query.child is ChildFilter.MAIN
    assert (query.page, query.size, query.offset) == (3, 50, 100)
    assert query.sort == (SortKey(field=SortField.END_DATE, descending=False),)


def test_legacy_flat_parameters() -> None:
    query = parse_pairs(
        ("namespace", "company"),
        ("flowId", "hello"),
        ("state", "SUCCESS"),
        ("state", "WARNING"),
        ("labels", "team:data"),
        ("labels", "url:http://x"),  # only the first ':' splits
        ("startDate", "2025-01-01T00:00:00Z"),
        ("endDate", "2025-01-31T00:00:00Z"),
        ("q", "abc"),
        ("_", "1700000000"),  # a cache buster: not a filter
    )
    # Kestra 0.x: ``namespace`` is a prefix, ``endDate`` bounds the end date.
    assert query.texts[0] == TextFilter(
        field=TextField.NAMESPACE, op=Op.PREFIX, values=("company",)
    )
    assert query.texts[1] == TextFilter(field=TextField.FLOW_ID, op=Op.EQUALS, values=("hello",))
    assert query.states == (StateFilter(states=frozenset({StateType.SUCCESS, StateType.WARNING})),)
    assert [(f.field, f.op) for f in query.dates] == [
        (DateField.START_DATE, Op.GREATER_THAN_OR_EQUAL_TO),
        (DateField.END_DATE, Op.LESS_THAN_OR_EQUAL_TO),
    ]
    assert query.labels == (
        LabelFilter(key="team", value="data"),
        LabelFilter(key="url", value="http://x"),
    )
    assert query.q == "abc"


def test_mapping_of_lists_strings_and_multidicts_agree() -> None:
    as_lists = parse_search_params({"filters[state][IN]": ["FAILED", "KILLED"]})
    as_string = parse_search_params({"filters[state][IN]": "FAILED,KILLED"})
    as_brackets = parse_search_params({"filters[state][IN]": "[FAILED,KILLED]"})
    as_multidict = parse_search_params(
        MultiDict([("filters[state][IN]", "FAILED"), ("filters[state][IN]", "KILLED")])
    )
    assert as_lists == as_string == as_brackets == as_multidict


def test_state_negations_and_case() -> None:
    query = parse(**{"filters[state][NOT_IN]": "success,warning"})
    assert query.states == (
        StateFilter(states=frozenset({StateType.SUCCESS, StateType.WARNING}), negate=True),
    )
    assert parse(**{"filters[state][NOT_EQUALS]": "FAILED"}).states[0].negate


def test_labels_as_key_value_text_in_1x_filters() -> None:
    query = parse(**{"filters[labels][EQUALS]": "team:data"})
    assert query.labels == (LabelFilter(key="team", value="data"),)


def test_time_range_is_relative_to_now() -> None:
    query = parse(**{"filters[timeRange][EQUALS]": "PT24H"})
    assert query.dates == (
        DateFilter(
            field=DateField.START_DATE,
            op=Op.GREATER_THAN_OR_EQUAL_TO,
            value=NOW - timedelta(hours=24),
        ),
    )
    assert parse(timeRange="P7D").dates[0].value == NOW - timedelta(days=7)


def test_scope_and_kind() -> None:
    user = parse(**{"filters[scope][EQUALS]": "USER"})
    assert user.texts == (
        TextFilter(field=TextField.NAMESPACE, op=Op.NOT_EQUALS, values=(SYSTEM_NAMESPACE,)),
    )
    system = parse(**{"filters[scope][EQUALS]": "SYSTEM"})
    assert system.texts[0].op is Op.EQUALS
    assert parse(**{"filters[scope][EQUALS]": "USER,SYSTEM"}).texts == ()
    # Every kestream execution is NORMAL.
    assert parse(**{"filters[kind][EQUALS]": "NORMAL"}).nothing is False
    assert parse(**{"filters[kind][EQUALS]": "TEST"}).nothing is True
    assert parse(**{"filters[kind][NOT_EQUALS]": "NORMAL"}).nothing is True


def test_naive_dates_are_utc_and_a_decoded_plus_is_repaired() -> None:
    naive = parse(**{"filters[startDate][GREATER_THAN]": "2025-01-01T10:00:00"})
    assert naive.dates[0].value == datetime(2025, 1, 1, 10, tzinfo=UTC)
    # "+01:00" sent unencoded arrives as " 01:00".
    spaced = parse(**{"filters[startDate][GREATER_THAN]": "2025-01-01T10:00:00 01:00"})
    assert spaced.dates[0].value == datetime(2025, 1, 1, 9, tzinfo=UTC)


def test_sort_keys() -> None:
    query = parse(sort=["state.current:asc", "id:desc"])
    assert query.sort == (
        SortKey(field=SortField.STATE, descending=False),
        SortKey(field=SortField.ID, descending=True),
    )
    assert parse(sort="namespace").sort == (SortKey(field=SortField.NAMESPACE, descending=False),)


@pytest.mark.parametrize(
    ("params", "parameter", "words"),
    [
        ({"filters[worker][EQUALS]": "x"}, "filters[worker][EQUALS]", "unknown field"),
        ({"filters[state][LIKE]": "x"}, "filters[state][LIKE]", "unknown operation"),
        ({"filters[state][PREFIX]": "x"}, "filters[state][PREFIX]", "not supported"),
        ({"filters[namespace][REGEX]": "a.*"}, "filters[namespace][REGEX]", "kestream"),
        ({"filters[labels][IN][team]": "a"}, "filters[labels][IN][team]", "kestream"),
        ({"filters[or][0][namespace][EQUALS]": "a"}, "filters[or][0]", "and/or"),
        ({"filters[state][IN]": "DONE"}, "filters[state][IN]", "unknown state"),
        ({"filters[startDate][GREATER_THAN]": "yesterday"}, "filters[startDate]", "ISO-8601"),
        ({"filters[timeRange][EQUALS]": "1 day"}, "filters[timeRange][EQUALS]", "duration"),
        ({"filters[namespace]": "a"}, "filters[namespace]", "filters[field][OPERATION]"),
        ({"filters[flowId][EQUALS][x]": "a"}, "filters[flowId][EQUALS][x]", "no [key]"),
        ({"filters[labels][EQUALS]": "nocolon"}, "filters[labels][EQUALS]", "key:value"),
        ({"filters[childFilter][EQUALS]": "ALL"}, "filters[childFilter]", "CHILD or MAIN"),
        ({"filters[kind][EQUALS]": "ODD"}, "filters[kind][EQUALS]", "NORMAL"),
        ({"startDate": "nope"}, "startDate", "ISO-8601"),
        ({"labels": "nocolon"}, "labels", "key:value"),
        ({"page": "0"}, "page", "from 1"),
        ({"page": "two"}, "page", "whole number"),
        ({"size": str(MAX_PAGE_SIZE + 1)}, "size", "between 1"),
        ({"sort": "inputs.x:desc"}, "sort", "cannot sort"),
        ({"sort": "id:sideways"}, "sort", "asc or desc"),
    ],
)
def test_bad_parameters_name_themselves(params: dict[str, str], parameter: str, words: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_search_params(params, now=NOW)
    assert caught.value.parameter.startswith(parameter.split("[")[0])
    assert parameter in str(caught.value)
    assert words in str(caught.value)
    assert isinstance(caught.value, ValueError)  # the API turns it into a 4xx


def test_the_query_is_frozen() -> None:
    query = parse(**{"filters[namespace][EQUALS]": "a"})
    with pytest.raises(ValueError, match="frozen"):
        query.page = 2  # type: ignore[misc]
