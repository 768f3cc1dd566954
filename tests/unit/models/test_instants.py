"""One definition of each direction between instants and text (kestream.models.instants)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from kestream.expressions import render
from kestream.models.instants import NoOffset, instant_text, parse_instant


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2024, 2, 29, 12, tzinfo=UTC), "2024-02-29T12:00:00Z"),
        (datetime(2024, 2, 29, 12, 0, 0, 500_000, tzinfo=UTC), "2024-02-29T12:00:00.500Z"),
        (datetime(2024, 2, 29, 12, 0, 0, 123_456, tzinfo=UTC), "2024-02-29T12:00:00.123456Z"),
        (datetime(2024, 2, 29, 14, tzinfo=timezone(timedelta(hours=2))), "2024-02-29T12:00:00Z"),
    ],
)
def test_instant_text_is_javas_instant_to_string(moment: datetime, text: str) -> None:
    assert instant_text(moment) == text
    # The iso_instant date format prints the same text (one formatter for both).
    assert render("{{ when | date('iso_instant') }}", {"when": moment}) == text


@pytest.mark.parametrize(
    "text",
    ["2024-01-31T10:00:00Z", "2024-01-31T11:00:00+01:00", " 2024-01-31T10:00:00.000Z "],
)
def test_parse_instant_reads_any_offset_as_utc(text: str) -> None:
    moment = parse_instant(text)
    assert moment == datetime(2024, 1, 31, 10, tzinfo=UTC) and moment.tzinfo is UTC


def test_text_without_an_offset_is_utc_or_refused() -> None:
    assert parse_instant("2024-01-31T10:00:00") == datetime(2024, 1, 31, 10, tzinfo=UTC)
    with pytest.raises(NoOffset):
        parse_instant("2024-01-31T10:00:00", assume_utc=False)
    with pytest.raises(ValueError) as caught:
        parse_instant("yesterday")
    assert not isinstance(caught.value, NoOffset)
