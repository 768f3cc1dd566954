"""The due-time index: order, lazy invalidation, and touching only what is due."""

from __future__ import annotations

from datetime import timedelta

from scheduler_helpers import utc

from kestream.scheduler.due_index import DueIndex

T0 = utc(2025, 1, 1)


def test_pop_due_returns_due_keys_in_order_and_leaves_the_rest() -> None:
    index = DueIndex()
    for n in (5, 1, 3, 9):
        index.update(f"k{n}", T0 + timedelta(seconds=n))
    assert index.next_due() == T0 + timedelta(seconds=1)
    assert index.pop_due(T0 + timedelta(seconds=5)) == ["k1", "k3", "k5"]
    assert len(index) == 1 and "k9" in index
    assert index.pop_due(T0 + timedelta(seconds=5)) == []


def test_update_moves_a_key_and_remove_forgets_it() -> None:
    index = DueIndex()
    index.update("a", T0 + timedelta(seconds=1))
    index.update("b", T0 + timedelta(seconds=2))
    index.update("a", T0 + timedelta(seconds=10))  # moved later: the old entry is stale
    index.remove("b")
    index.remove("unknown")
    assert index.pop_due(T0 + timedelta(seconds=5)) == []
    assert index.due_time("a") == T0 + timedelta(seconds=10)
    assert index.next_due() == T0 + timedelta(seconds=10)
    assert index.pop_due(T0 + timedelta(seconds=10)) == ["a"]
    assert index.next_due() is None


def test_iter_due_walks_only_due_entries_without_removing_them() -> None:
    index = DueIndex()
    for n in range(1000):
        index.update(f"k{n}", T0 + timedelta(seconds=n))
    index.remove("k2")
    found = dict(index.iter_due(T0 + timedelta(seconds=4)))
    assert sorted(found) == ["k0", "k1", "k3", "k4"]
    assert len(index) == 999


def test_stale_entries_are_compacted_away() -> None:
    index = DueIndex()
    for round_ in range(20):
        for n in range(200):
            index.update(f"k{n}", T0 + timedelta(seconds=round_ * 1000 + n))
    assert len(index) == 200
    assert len(index._heap) <= 2 * 200 + 1024
    assert index.pop_due(T0 + timedelta(days=1)) == [f"k{n}" for n in range(200)]
