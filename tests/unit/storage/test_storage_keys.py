"""Kestra's storage layout and the URI checks every file access goes through."""

from __future__ import annotations

import pytest

from kestream.storage import StorageUriError, TaskRunFiles, input_key, parse_uri, to_uri


def test_task_run_files_follow_kestras_layout() -> None:
    files = TaskRunFiles("io.kestra.tests", "for-each_item", "E1", "each_split", "TR1")
    assert to_uri(files.key("a.txt")) == (
        "kestra:///io/kestra/tests/for-each-item/executions/E1/tasks/each-split/TR1/a.txt"
    )
    assert input_key("company.team", "f", "E1", "data", "orders.csv") == (
        "company/team/f/executions/E1/inputs/data/orders.csv"
    )


@pytest.mark.parametrize(
    "uri",
    [
        "kestra:///ns/f/../../etc/passwd",
        "kestra:///ns/f/%2e%2e/x",
        "kestra:///ns/f/%2E%2E/%2e%2e/x",
        "kestra://host/ns/f/x",
        "kestra:///ns//x",
        "kestra:///ns/f/x?y=1",
        "kestra:///ns/f/x#frag",
        "kestra:///",
        "file:///etc/passwd",
        "/etc/passwd",
        "kestra:///ns/f/a%00b",
        "kestra:///ns/f/a%5C..%5Cb",
    ],
)
def test_uris_that_are_not_plain_paths_are_refused(uri: str) -> None:
    with pytest.raises(StorageUriError):
        parse_uri(uri)


def test_parse_uri_decodes_once() -> None:
    assert parse_uri("kestra:///ns/f/a%20b.txt") == "ns/f/a b.txt"
    assert parse_uri(to_uri("ns/f/x.txt")) == "ns/f/x.txt"
