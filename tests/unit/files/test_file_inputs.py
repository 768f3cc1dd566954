"""FILE inputs given on the command line (``--input key=@path``) and their stored place."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestream.cli import file_inputs, store_uploads
from kestream.models.flow import parse_flow
from kestream.storage import Storage, parse_uri


def test_at_names_a_file_and_double_at_is_text(tmp_path: Path) -> None:
    data = tmp_path / "orders.csv"
    data.write_text("a,b\n")
    kept, uploads = file_inputs({"data": f"@{data}", "note": "@@home", "plain": "x"})
    assert uploads == {"data": data}
    assert kept["note"] == "@home" and kept["plain"] == "x"
    with pytest.raises(ValueError, match="no such file"):
        file_inputs({"data": f"@{tmp_path / 'missing.csv'}"})


def test_uploads_are_stored_under_the_execution_inputs(storage: Storage, tmp_path: Path) -> None:
    data = tmp_path / "my orders.csv"
    data.write_bytes(b"a,b\n1,2\n")
    flow = parse_flow("id: f_one\nnamespace: company.team\ntasks:\n  - id: t\n    type: "
                      "io.kestra.plugin.core.log.Log\n    message: x\n")  # fmt: skip
    uris = store_uploads({"data": data}, flow, "EXEC1")
    assert uris == {
        "data": "kestra:///company/team/f-one/executions/EXEC1/inputs/data/my_orders.csv"
    }
    assert storage.get(parse_uri(uris["data"])) == b"a,b\n1,2\n"
