from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kestream.storage import Storage, using_storage
from tests.s3_server import S3Endpoint, s3_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """The process's storage for the test: a local directory, then an S3 bucket."""
    if request.param == "local":
        chosen = Storage.local(tmp_path / "storage")
    else:
        endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
        chosen = endpoint.storage(endpoint.create_bucket(), "kestream")
    with using_storage(chosen):
        yield chosen
