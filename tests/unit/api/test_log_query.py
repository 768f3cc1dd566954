"""The logs search's parameters: both URL shapes, parsed with the executions listing's rules;
what kestream does not evaluate is refused, never dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from multidict import MultiDict

from kestream.api.index.log_query import parse_log_search
from kestream.api.index.query import QueryError
from kestream.api.index.store import LogSearch

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def parse(**params: str) -> LogSearch:
    return parse_log_search(MultiDict(params), now=NOW)


def test_the_bracket_form_means_what_the_plain_one_does() -> None:
    plain = parse(q="disk", namespace="company", flowId="hello", minLevel="warning")
    assert plain == LogSearch(text="disk", namespace="company", flow_id="hello", min_level="WARN")
    bracket = parse_log_search(
        MultiDict(
            {
                "filters[q][EQUALS]": "disk",
                "filters[namespace][PREFIX]": "company",
                "filters[flowId][EQUALS]": "hello",
                "filters[level][EQUALS]": "WARN",
            }
        ),
        now=NOW,
    )
    assert bracket == plain
    exact = parse_log_search(MultiDict({"filters[namespace][EQUALS]": "company"}), now=NOW)
    assert exact.namespace == "company" and exact.exact_namespace


def test_dates_in_either_form_all_hold() -> None:
    wanted = parse_log_search(
        MultiDict(
            {
                "filters[startDate][GREATER_THAN_OR_EQUAL_TO]": "2026-12-01T00:00:00Z",
                "filters[endDate][LESS_THAN_OR_EQUAL_TO]": "2026-12-04T00:00:00Z",
                "timeRange": "P2D",
            }
        ),
        now=NOW,
    )
    assert wanted.start == NOW - timedelta(days=2)  # the latest start wins
    assert wanted.end == datetime(2026, 12, 4, tzinfo=UTC)
    assert parse(startDate="2026-12-05T10:00:00Z", timeRange="P1D").start == datetime(
        2026, 12, 5, 10, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("filters[q][NOT_EQUALS]", "error", "NOT_EQUALS is not supported for q"),
        ("filters[startDate][LESS_THAN]", "2026-12-01T00:00:00Z", "not supported for startDate"),
        ("filters[labels][EQUALS][k]", "v", "unknown field 'labels' for logs"),
        ("filters[namespace][REGEX]", "comp.*", "not supported for namespace"),
        ("filters[level][EQUALS]", "LOUD", "the level must be one of"),
        ("timeRange", "-PT1H", "the time range must be positive"),
        ("timeRange", "PT0S", "the time range must be positive"),
        ("timeRange", "P1000000D", "before the year 1"),
        ("filters[timeRange][EQUALS]", "P1000000D", "before the year 1"),
        ("startDate", "yesterday", "not an ISO-8601 date-time"),
        ("size", "5000", "the page size must be between 1 and 1000"),
        ("page", "0", "pages are numbered from 1"),
    ],
)
def test_what_is_not_evaluated_is_refused(name: str, value: str, says: str) -> None:
    with pytest.raises(QueryError, match=says) as refused:
        parse_log_search(MultiDict({name: value}), now=NOW)
    assert refused.value.parameter == name


def test_a_page_ends_within_the_counted_lines() -> None:
    assert parse(page="10", size="1000").page == 10
    assert parse(page="400", size="25").page == 400
    with pytest.raises(QueryError, match="within the first 10000 lines"):
        parse(page="11", size="1000")
    with pytest.raises(QueryError, match="within the first 10000 lines"):
        parse(page="401")


def test_the_executions_listing_refuses_a_time_range_out_of_reach_too() -> None:
    from kestream.api.index.query import parse_search_params

    with pytest.raises(QueryError, match="before the year 1"):
        parse_search_params({"timeRange": "P1000000D"}, now=NOW)


def test_the_route_answers_400_for_a_refused_parameter() -> None:
    from aiohttp.test_utils import make_mocked_request

    from kestream.api.http import ApiError
    from kestream.api.log_routes import log_search

    request = make_mocked_request("GET", "/api/v1/main/logs/search?timeRange=P1000000D")
    with pytest.raises(ApiError) as refused:
        log_search(request)
    assert refused.value.status == 400
    request = make_mocked_request("GET", "/api/v1/main/logs/search?filters[q][NOT_EQUALS]=x")
    with pytest.raises(ApiError) as refused:
        log_search(request)
    assert refused.value.status == 400
    ok = make_mocked_request("GET", "/api/v1/main/logs/search?filters[q][EQUALS]=x&size=10")
    assert log_search(ok) == LogSearch(text="x", size=10)
