"""Instants as text, remembered: the executor writes the same instants again and again.

A task run's state history goes into every execution update and changelog record that carries
the task run, and its attempts repeat the same instants; formatting each one anew was a large
share of the executor's CPU per step. Each form keeps the texts it made for the latest
instants (a bounded map, emptied when full), so an instant is formatted about once.
"""

from __future__ import annotations

from datetime import UTC, datetime

from kestream.models.execution import format_instant

__all__ = ["edge_instant", "iso_instant"]

#: Instants remembered per form before the map is emptied (a few thousand executions' worth).
_MAX = 8192

_EDGE: dict[datetime, str] = {}
_ISO: dict[datetime, str] = {}


def edge_instant(moment: datetime) -> str:
    """:func:`~kestream.models.execution.format_instant` (Kestra's ``...T10:11:12.345Z``)."""
    text = _EDGE.get(moment)
    if text is None:
        if moment.tzinfo is UTC and moment.year >= 1000:  # strftime pads no year below 1000
            text = moment.isoformat(timespec="milliseconds")[:-6] + "Z"
        else:
            text = format_instant(moment)
        if moment.tzinfo is not None:  # a naive one's text depends on the local zone
            _remember(_EDGE, moment, text)
    return text


def iso_instant(moment: datetime) -> str:
    """``moment.isoformat()``, the changelog's form (read back with ``fromisoformat``)."""
    if moment.tzinfo is not UTC:  # equal instants in other zones print other offsets
        return moment.isoformat()
    text = _ISO.get(moment)
    if text is None:
        text = moment.isoformat()
        _remember(_ISO, moment, text)
    return text


def _remember(memo: dict[datetime, str], moment: datetime, text: str) -> None:
    if len(memo) >= _MAX:
        memo.clear()
    memo[moment] = text
