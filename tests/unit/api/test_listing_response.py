"""A search's answer: Kestra's ``{results, total}``, and a header when the total is capped."""

from __future__ import annotations

import orjson

from kestream.api.http import TOTAL_CAPPED_HEADER, listing_response
from kestream.api.index.store import Listing


def test_an_exact_total_is_kestras_body_alone() -> None:
    response = listing_response(Listing([{"id": "e1"}], 1))
    assert response.body is not None
    assert orjson.loads(bytes(response.body)) == {"results": [{"id": "e1"}], "total": 1}
    assert TOTAL_CAPPED_HEADER not in response.headers


def test_a_capped_total_keeps_the_body_and_says_so_in_a_header() -> None:
    response = listing_response(Listing([{"id": "e1"}], 10_000, capped=True))
    assert response.body is not None
    assert orjson.loads(bytes(response.body)) == {"results": [{"id": "e1"}], "total": 10_000}
    assert response.headers[TOTAL_CAPPED_HEADER] == "true"
