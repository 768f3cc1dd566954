"""The API client's pure parts: the event-stream parser and the listing's query parameters."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest

from kestream.api.index.query import parse_search_params
from kestream.api.sse import frame
from kestream.api_client import ApiClient, ApiError, SearchFilters, sse_frames
from kestream.models.state import StateType
from kestream.tasks import purge_api


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


async def _frames(data: bytes, size: int) -> list[tuple[str, bytes]]:
    return [item async for item in sse_frames(_chunks(data, size))]


async def test_the_api_s_own_frames_are_read_back_whatever_the_chunks() -> None:
    big = {"id": "E1", "taskRunList": [{"id": f"r{i}", "value": "x" * 50} for i in range(3000)]}
    stream = (
        frame({"id": "E1"}, event_id="start")
        + b": keepalive\n\n"
        + frame(big, event_id="progress")
        + frame({"id": "E1", "done": True}, event_id="end")
    )
    for size in (1, 7, 4096, len(stream)):
        got = await _frames(stream, size)
        assert [frame_id for frame_id, _ in got] == ["start", "progress", "end"]
        assert json.loads(got[1][1]) == big


async def test_crlf_multi_line_data_and_a_cut_frame() -> None:
    stream = b"id: a\r\ndata: one\r\ndata: two\r\n\r\nid: b\ndata: cut short"
    assert await _frames(stream, 3) == [("a", b"one\ntwo")]


def test_filters_are_kestra_1x_parameters_the_api_understands() -> None:
    filters = SearchFilters(
        namespace="company",
        flow_id="hello",
        states=["FAILED", "WARNING"],
        labels={"team": "data", "env": "prod"},
        page=3,
        size=10,
    )
    params = filters.params()
    assert ("filters[namespace][PREFIX]", "company") in params
    assert ("filters[labels][EQUALS][team]", "data") in params
    query = parse_search_params({name: [value] for name, value in params})
    assert query.page == 3 and query.size == 10
    assert [f.states for f in query.states] == [{StateType.FAILED, StateType.WARNING}]
    assert {(f.key, f.value) for f in query.labels} == {("team", "data"), ("env", "prod")}
    assert [(t.field.value, t.op.value, t.values) for t in query.texts] == [
        ("namespace", "PREFIX", ("company",)),
        ("flowId", "EQUALS", ("hello",)),
    ]


def test_no_filters_is_the_first_page_newest_first() -> None:
    query = parse_search_params({n: [v] for n, v in SearchFilters().params()})
    assert not query.texts and not query.states and not query.labels
    assert query.page == 1 and query.size == 25
    assert [(k.field.value, k.descending) for k in query.sort] == [("state.startDate", True)]


def test_credentials_in_clear_to_another_machine_are_refused_unless_allowed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = {"Authorization": "Bearer t"}
    with pytest.raises(ApiError, match="KESTREAM_API_PLAIN_HTTP"):
        ApiClient("http://kestream.example:8080", "main", headers)
    purge_api._warn_clear_credentials.cache_clear()
    with caplog.at_level(logging.WARNING, logger="kestream.tasks.purge"):
        ApiClient("http://127.0.0.1:8080", "main", headers)
        ApiClient("https://kestream.example", "main", headers)
        ApiClient("http://kestream.example", "main", {})  # nothing to expose
        assert not caplog.records
        ApiClient("http://kestream.example:8080", "main", headers, plain_http=True)
    (record,) = caplog.records
    assert "over plain http" in record.getMessage()
    assert "http://kestream.example:8080" in record.getMessage()
