from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kestream.storage import Storage
from tests.s3_server import S3Endpoint, s3_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each test once on a local directory and once on an S3 bucket of a real server."""
    if request.param == "local":
        return Storage.local(tmp_path / "storage")
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    return endpoint.storage(endpoint.create_bucket(), "some/prefix")
