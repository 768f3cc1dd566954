"""FILE inputs: a file given at creation (an API upload, ``kestream run --input x=@path``) is
stored before the execution starts, and the input's value is its ``kestra://`` URI, in Kestra's
place for inputs: ``.../executions/{execution}/inputs/{input}/{file name}``."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from kestream.storage.backend import Storage
from kestream.storage.keys import input_key, safe_file_name, to_uri


def store_input_file(
    storage: Storage,
    namespace: str,
    flow_id: str,
    execution_id: str,
    input_id: str,
    filename: str,
    source: bytes | Path | IO[bytes],
) -> str:
    """Store one FILE input's content; returns the URI the input takes as its value."""
    key = input_key(namespace, flow_id, execution_id, input_id, safe_file_name(filename))
    storage.put(key, source)
    return to_uri(key)
