"""A real S3-compatible server on loopback for the storage tests: moto's server mode.

The server runs in a thread of the test process and speaks S3 over HTTP, so a storage under test
(and role processes the test starts) reach it as they would reach MinIO or AWS.
"""

from __future__ import annotations

import logging
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kestream.storage import Storage


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key_id: str = "kestream-test"
    secret_access_key: str = "kestream-test-secret"
    region: str = "us-east-1"

    def create_bucket(self) -> str:
        """A new empty bucket (moto accepts any signature; a plain PUT creates it)."""
        bucket = f"kestream-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{self.url}/{bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()
        return bucket

    def storage(self, bucket: str, prefix: str = "") -> Storage:
        return Storage.s3(
            bucket,
            prefix,
            endpoint=self.url,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
        )

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The settings that make a kestream process use this bucket."""
        return {
            "KESTREAM_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "KESTREAM_STORAGE_S3_ENDPOINT": self.url,
            "KESTREAM_STORAGE_S3_REGION": self.region,
            "KESTREAM_STORAGE_S3_ACCESS_KEY_ID": self.access_key_id,
            "KESTREAM_STORAGE_S3_SECRET_ACCESS_KEY": self.secret_access_key,
        }


@contextmanager
def s3_server() -> Iterator[S3Endpoint]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Endpoint(f"http://{host}:{port}")
    finally:
        server.stop()
