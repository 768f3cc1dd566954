"""FLOAT, URI and EMAIL input texts: linear-time checks that accept exactly what the regexes did.

The regexes below are the ones these inputs were checked with before. They backtrack
quadratically on a long value that almost matches, so the checks became plain scans; on short texts
the regexes are fast and serve as the reference: every text made of a few pieces that matter
gets the same answer from both.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

import pytest

from kestream.models.inputs import InputValidationError, parse_inputs

REFERENCE = {
    "FLOAT": re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"),
    "URI": re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/?#]+[^\s]*$"),
    "EMAIL": re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
}

#: Pieces of text each check treats differently (an ordinary character, a non-ASCII letter or
#: digit, whitespace of both kinds, the final newline ``$`` allowed); the texts checked are every
#: sequence of up to four pieces.
PIECES = {
    "FLOAT": ["1", ".", "e", "E", "+", "-", "x", "_", " ", "\n", "٣", "12"],
    "URI": ["a", "1", "+.-", ":", "/", "://", "?", "#", "@", " ", "\n", "\u00a0", "é", "xy"],
    "EMAIL": ["a", ".", "@", " ", "\n", "\u2003", "b.c", "x@y"],
}

#: Long texts that almost match, which took the regexes seconds (32k characters: 17 s, 3.9 s,
#: 4.4 s); each is refused.
ALMOST = {
    "FLOAT": "1" * 1_000_000 + "x",
    "URI": "a://" + "x" * 1_000_000 + " y",
    "EMAIL": "a@" + "." * 1_000_000 + " ",
}


def accepts(type_name: str, value: Any) -> bool:
    """Whether the text passes the type's check (a later refusal, such as ``1e999`` not being a
    finite number, still counts as passing it)."""
    try:
        parse_inputs([{"id": "x", "type": type_name}], {"x": value})
    except InputValidationError as exc:
        (problem,) = exc.problems
        return not problem.message.startswith("expected ")
    return True


def texts(pieces: list[str]) -> list[str]:
    return [
        "".join(chosen) for size in range(5) for chosen in itertools.product(pieces, repeat=size)
    ]


@pytest.mark.parametrize("type_name", sorted(REFERENCE))
def test_the_check_accepts_exactly_the_texts_the_regex_matched(type_name: str) -> None:
    pattern = REFERENCE[type_name]
    checked = texts(PIECES[type_name])
    differ = [text for text in checked if accepts(type_name, text) != bool(pattern.match(text))]
    assert differ == []
    accepted = sum(1 for text in checked if pattern.match(text))
    assert accepted > 100  # the pieces does reach accepted texts, not only refused ones


@pytest.mark.parametrize(
    ("type_name", "text"),
    [
        ("FLOAT", "-1.5e+3"),
        ("FLOAT", ".5"),
        ("FLOAT", "1."),
        ("FLOAT", "1.5\n"),
        ("URI", "https://kestra.io/docs?x=1#top"),
        ("URI", "git+ssh://host"),
        ("EMAIL", "first.last@sub.example.com"),
    ],
)
def test_usual_texts_are_accepted(type_name: str, text: str) -> None:
    assert accepts(type_name, text)


@pytest.mark.parametrize(
    ("type_name", "text"),
    [
        ("FLOAT", "1_000"),  # float() takes it, the FLOAT input never did
        ("FLOAT", "٣"),  # a non-ASCII digit, also taken by float()
        ("FLOAT", " 1"),
        ("FLOAT", "nan"),
        ("FLOAT", "1e"),
        ("FLOAT", "1.5\n\n"),
        ("URI", "1a://host"),
        ("URI", "a:///path"),
        ("URI", "a://host/x y"),
        ("URI", "é://host"),
        ("EMAIL", "a@b@c.d"),
        ("EMAIL", "a@.bc"),
        ("EMAIL", "a@bc."),
        ("EMAIL", "a b@c.d"),
    ],
)
def test_near_misses_are_refused(type_name: str, text: str) -> None:
    assert not accepts(type_name, text)


@pytest.mark.parametrize("type_name", sorted(ALMOST))
def test_a_long_almost_matching_value_is_refused(type_name: str) -> None:
    """A megabyte value is checked in linear time (the figure is printed, not asserted)."""
    started = time.perf_counter()
    refused = not accepts(type_name, ALMOST[type_name])
    elapsed = time.perf_counter() - started
    print(f"{type_name}: {len(ALMOST[type_name]):,} characters refused in {elapsed * 1000:.1f} ms")
    assert refused
