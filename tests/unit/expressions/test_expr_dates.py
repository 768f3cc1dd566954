"""Kestra's date filters with Java ``DateTimeFormatter`` patterns."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from kestream.expressions import RenderError, render

MOMENT = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
CTX: dict[str, Any] = {"d": MOMENT, "day": date(2024, 1, 2), "epoch": 1704164645}


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("yyyy-MM-dd", "2024-01-02"),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSXXX", "2024-01-02T03:04:05.678Z"),
        ("yy/M/d H:m:s", "24/1/2 3:4:5"),
        ("MMM MMMM MMMMM", "Jan January J"),
        ("E EEE EEEE", "Tue Tue Tuesday"),
        ("D DDD", "2 002"),
        ("hh:mm a", "03:04 AM"),
        ("K k", "3 3"),
        ("SSSSSS SSSSSSSSS", "678901 678901000"),
        ("'quoted ''text''' yyyy", "quoted 'text' 2024"),
        ("[yyyy]", "2024"),
        ("Q QQQ QQQQ", "1 Q1 1st quarter"),
        ("X XX XXX x xxx Z ZZZZZ", "Z Z Z +00 +00:00 +0000 Z"),
        ("O VV z", "GMT Z UTC"),
        ("G u w", "AD 2024 1"),
    ],
)
def test_date_patterns(pattern: str, expected: str) -> None:
    assert render("{{ d | date(p) }}", {**CTX, "p": pattern}) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ d | date }}", "2024-01-02T03:04:05.678901Z"),
        ("{{ d | date('iso_sec') }}", "2024-01-02T03:04:05Z"),
        ("{{ d | date('sql') }}", "2024-01-02 03:04:05.678901"),
        ("{{ d | date('sql_seq') }}", "2024-01-02 03:04:05"),
        ("{{ d | date('iso_instant') }}", "2024-01-02T03:04:05.678901Z"),
        ("{{ d | date('iso_local_date') }}", "2024-01-02"),
        ("{{ d | date('iso_local_date_time') }}", "2024-01-02T03:04:05.678901"),
        ("{{ d | date('iso_date') }}", "2024-01-02Z"),
        ("{{ d | date('iso_week_date') }}", "2024-W01-2Z"),
        ("{{ d | date('iso_ordinal_date') }}", "2024-002Z"),
        ("{{ d | date('rfc_1123_date_time') }}", "Tue, 2 Jan 2024 03:04:05 GMT"),
        (
            "{{ d | date('iso_date_time', timeZone='Europe/Paris') }}",
            ("2024-01-02T04:04:05.678901+01:00[Europe/Paris]"),
        ),
        ("{{ d | date('short') }}", "1/2/24, 3:04 AM"),
        ("{{ d | date('medium') }}", "Jan 2, 2024, 3:04:05 AM"),
        ("{{ d | date('HH:mm XXX', timeZone='Europe/Paris') }}", "04:04 +01:00"),
        ("{{ d | date('HH:mm XXX', timezone='America/New_York') }}", "22:04 -05:00"),
        ("{{ d | date('HH:mm', timeZone='+05:30') }}", "08:34"),
        ("{{ d | date('HH:mm', timeZone='UTC+2') }}", "05:04"),
        ("{{ day | date('yyyy-MM-dd HH:mm') }}", "2024-01-02 12:00"),
        ("{{ epoch | date('yyyy-MM-dd HH:mm:ss') }}", "2024-01-02 03:04:05"),
        ("{{ '2024-01-02T03:04:05.678Z' | date('HH:mm:ss.SSS') }}", "03:04:05.678"),
        ("{{ '2024-01-02T03:04:05+02:00' | date('HH:mm') }}", "01:04"),
        ("{{ '2024-01-02T03:04:05+01:00[Europe/Paris]' | date('HH:mm') }}", "02:04"),
        ("{{ '2024-01-02T03:04:05' | date('HH:mm', timeZone='Europe/Paris') }}", "03:04"),
        ("{{ '2024-01-02' | date('yyyy-MM-dd HH:mm') }}", "2024-01-02 00:00"),
        ("{{ '12/25/2023' | date('yyyy-MM-dd', existingFormat='MM/dd/yyyy') }}", "2023-12-25"),
        (
            "{{ '25 Dec 2023 14:30' | date('iso_sec', existingFormat='dd MMM yyyy HH:mm') }}",
            ("2023-12-25T14:30:00Z"),
        ),
        (
            "{{ '2023-12-25 02:30 PM +0100'"
            " | date('HH:mm', existingFormat='yyyy-MM-dd hh:mm a Z') }}",
            "13:30",
        ),
        ("{{ d | date('yyyy') ~ '!' }}", "2024!"),
    ],
)
def test_date_filter(template: str, expected: str) -> None:
    assert render(template, CTX) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ d | dateAdd(1, 'DAYS') }}", "2024-01-03T03:04:05.678901Z"),
        ("{{ d | dateAdd(-2, 'HOURS', format='HH:mm') }}", "01:04"),
        ("{{ d | dateAdd(90, 'MINUTES', format='HH:mm') }}", "04:34"),
        ("{{ d | dateAdd(30, 'SECONDS', format='ss') }}", "35"),
        ("{{ d | dateAdd(2, 'WEEKS', format='yyyy-MM-dd') }}", "2024-01-16"),
        ("{{ '2024-01-31' | dateAdd(1, 'MONTHS', format='yyyy-MM-dd') }}", "2024-02-29"),
        ("{{ '2024-02-29' | dateAdd(1, 'YEARS', format='yyyy-MM-dd') }}", "2025-02-28"),
        ("{{ d | dateAdd(500, 'MILLIS', format='ss.SSS') }}", "06.178"),
        ("{{ d | timestamp }}", "1704164645"),
        ("{{ d | timestampMilli }}", "1704164645678"),
        ("{{ d | timestampMicro }}", "1704164645678901"),
        ("{{ d | timestampNano }}", "1704164645678901000"),
        ("{{ '1970-01-01T00:00:10Z' | timestamp }}", "10"),
    ],
)
def test_date_add_and_timestamps(template: str, expected: str) -> None:
    assert render(template, CTX) == expected


def test_dst_aware_day_addition() -> None:
    paris = "Europe/Paris"
    before_dst = datetime(2024, 3, 30, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    ctx = {"d": before_dst, "z": paris}
    assert render("{{ d | dateAdd(1, 'DAYS', format='HH:mm XXX', timeZone=z) }}", ctx) == (
        "12:00 +02:00"
    )
    assert render("{{ d | dateAdd(24, 'HOURS', format='HH:mm XXX', timeZone=z) }}", ctx) == (
        "13:00 +02:00"
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ d | date('yyyy', timeZone='Nowhere/City') }}", "Unknown time-zone ID: Nowhere/City"),
        ("{{ d | date('yyyy', timeZone='../../etc/passwd') }}", "Invalid ID for region-based"),
        ("{{ d | date('yyyy', timeZone='/etc/passwd') }}", "Invalid ID for region-based"),
        ("{{ d | date('bbb') }}", "Unknown pattern letter: b"),
        ('{{ d | date("yyyy \'open") }}', "Pattern ends with an incomplete string literal"),
        ("{{ d | date('#') }}", "Pattern includes reserved character: '#'"),
        ("{{ 'nope' | date }}", "Text 'nope' could not be parsed as an ISO-8601 date"),
        ("{{ 'x' | date(existingFormat='yyyy') }}", "Text 'x' could not be parsed with pattern"),
        ("{{ [1] | date }}", "cannot convert a list to a date"),
        ("{{ d | dateAdd(1, 'FORTNIGHTS') }}", "No enum constant java.time.temporal.ChronoUnit"),
        ("{{ d | dateAdd('1', 'DAYS') }}", "argument 'amount' must be an integer"),
        ("{{ d | date(format=1) }}", "argument 'format' must be a string"),
    ],
)
def test_date_errors(template: str, message: str) -> None:
    with pytest.raises(RenderError) as info:
        render(template, CTX)
    assert message in str(info.value)
