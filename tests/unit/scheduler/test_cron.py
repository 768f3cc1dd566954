"""Compiled cron schedules: next and previous slots, seconds, nicknames, time zones and DST."""

from __future__ import annotations

import itertools
from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import pytest
from scheduler_helpers import utc

from kestream.scheduler.cron import Cron, compile_cron

PARIS = ZoneInfo("Europe/Paris")


def walk(cron: Cron, start, count):  # type: ignore[no-untyped-def]
    slots, at = [], start
    for _ in range(count):
        at = cron.next_after(at)
        slots.append(at)
    return slots


def test_next_is_strictly_after_and_previous_strictly_before() -> None:
    cron = Cron("17 * * * *")
    assert cron.next_after(utc(2025, 1, 1, 10, 17)) == utc(2025, 1, 1, 11, 17)
    assert cron.next_after(utc(2025, 1, 1, 10, 16, 59)) == utc(2025, 1, 1, 10, 17)
    assert cron.previous_before(utc(2025, 1, 1, 10, 17)) == utc(2025, 1, 1, 9, 17)
    assert cron.previous_before(utc(2025, 1, 1, 10, 17, 1)) == utc(2025, 1, 1, 10, 17)
    assert cron.latest_at_or_before(utc(2025, 1, 1, 10, 17)) == utc(2025, 1, 1, 10, 17)


def test_sub_second_instants_round_the_right_way() -> None:
    cron = Cron("* * * * * *", with_seconds=True)
    at = utc(2025, 1, 1, 0, 0, 5) + timedelta(microseconds=500_000)
    assert cron.next_after(at) == utc(2025, 1, 1, 0, 0, 6)
    assert cron.previous_before(at) == utc(2025, 1, 1, 0, 0, 5)


def test_results_are_aware_utc_whatever_the_input_zone() -> None:
    cron = Cron("0 12 * * *")
    found = cron.next_after(utc(2025, 6, 1).astimezone(PARIS))
    assert found == utc(2025, 6, 1, 12) and found.tzinfo is UTC


def test_with_seconds_reads_a_leading_seconds_field() -> None:
    cron = Cron("*/10 * * * * *", with_seconds=True)
    assert walk(cron, utc(2025, 1, 1), 3) == [
        utc(2025, 1, 1, 0, 0, 10),
        utc(2025, 1, 1, 0, 0, 20),
        utc(2025, 1, 1, 0, 0, 30),
    ]


@pytest.mark.parametrize(
    ("nickname", "expected"),
    [
        ("@hourly", utc(2025, 1, 1, 1)),
        ("@daily", utc(2025, 1, 2)),
        ("@midnight", utc(2025, 1, 2)),
        ("@weekly", utc(2025, 1, 5)),
        ("@monthly", utc(2025, 2, 1)),
        ("@yearly", utc(2026, 1, 1)),
        ("@annually", utc(2026, 1, 1)),
    ],
)
def test_nicknames(nickname: str, expected) -> None:  # type: ignore[no-untyped-def]
    assert Cron(nickname).next_after(utc(2025, 1, 1, 0, 30)) == expected


def test_no_timezone_means_utc() -> None:
    assert Cron("0 9 * * *").next_after(utc(2025, 7, 1)) == utc(2025, 7, 1, 9)


def test_a_timezone_moves_the_slots_with_its_offset() -> None:
    cron = Cron("0 9 * * *", timezone="Europe/Paris")
    assert cron.next_after(utc(2025, 1, 10)) == utc(2025, 1, 10, 8)  # CET, +01:00
    assert cron.next_after(utc(2025, 7, 10)) == utc(2025, 7, 10, 7)  # CEST, +02:00
    assert cron.local(utc(2025, 7, 10, 7)).isoformat() == "2025-07-10T09:00:00+02:00"


def test_dst_spring_forward_fires_a_missing_wall_time_after_the_jump_once() -> None:
    # 2025-03-30 in Paris: 02:00 CET -> 03:00 CEST; 02:30 does not exist that day.
    cron = Cron("30 2 * * *", timezone="Europe/Paris")
    slots = walk(cron, utc(2025, 3, 28, 12), 4)
    assert [cron.local(s).isoformat() for s in slots] == [
        "2025-03-29T02:30:00+01:00",
        "2025-03-30T03:30:00+02:00",
        "2025-03-31T02:30:00+02:00",
        "2025-04-01T02:30:00+02:00",
    ]


def test_dst_fall_back_fires_a_repeated_wall_time_once_and_keeps_the_next_day() -> None:
    # 2025-10-26 in Paris: 03:00 CEST -> 02:00 CET; 02:30 happens twice that day.
    cron = Cron("30 2 * * *", timezone="Europe/Paris")
    slots = walk(cron, utc(2025, 10, 24, 12), 3)
    assert [cron.local(s).isoformat() for s in slots] == [
        "2025-10-25T02:30:00+02:00",
        "2025-10-26T02:30:00+02:00",
        "2025-10-27T02:30:00+01:00",
    ]


def test_dst_every_half_hour_across_both_changes_is_strictly_increasing() -> None:
    cron = Cron("*/30 * * * *", timezone="Europe/Paris")
    for start in (utc(2025, 3, 29, 22), utc(2025, 10, 25, 22)):
        slots = walk(cron, start, 12)
        assert all(b > a for a, b in itertools.pairwise(slots))
        assert all(
            timedelta(minutes=30) <= b - a <= timedelta(hours=2)
            for a, b in itertools.pairwise(slots)
        )
        backwards = [cron.previous_before(s) for s in slots[1:]]
        assert backwards == slots[:-1]


def test_compile_cron_shares_one_cron_per_expression_and_zone() -> None:
    assert compile_cron("5 * * * *") is compile_cron("5 * * * *")
    assert compile_cron("5 * * * *", "Europe/Paris") is not compile_cron("5 * * * *")


def test_a_date_that_never_comes_has_no_slot() -> None:
    assert Cron("0 0 30 2 *").next_after(utc(2025, 1, 1)) is None
