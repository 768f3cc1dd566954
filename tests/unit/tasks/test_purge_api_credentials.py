"""The purge tasks send the API's admin credentials: a worker refuses to send them across a
network in clear (plain http to a host that is not this machine) unless KESTREAM_API_PLAIN_HTTP
allows it, and then warns, once."""

from __future__ import annotations

import logging

import pytest

from kestream.tasks import purge_api
from kestream.tasks.base import TaskError
from kestream.tasks.purge_api import ApiPurger, exposes_credentials

AUTH = {"Authorization": "Bearer admin-token"}


@pytest.mark.parametrize(
    ("url", "exposed"),
    [
        ("http://api.internal:8080", True),
        ("http://10.0.0.7:8080", True),
        ("HTTP://Api.Internal", True),
        ("https://api.internal:8443", False),
        ("http://127.0.0.1:8080", False),
        ("http://127.8.0.1:8080", False),
        ("http://[::1]:8080", False),
        ("http://localhost:8080", False),
    ],
)
def test_plain_http_to_another_machine_exposes_credentials(url: str, exposed: bool) -> None:
    assert exposes_credentials(url) is exposed


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_purger_refuses_to_send_them_in_clear_unless_allowed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(TaskError, match="Refusing to send the API's credentials") as refused:
        ApiPurger("http://u:pw-in-url@api.internal:8080", "main", AUTH)
    assert "KESTREAM_API_PLAIN_HTTP" in str(refused.value) and "pw-in-url" not in str(refused.value)
    purge_api._warn_clear_credentials.cache_clear()
    with caplog.at_level(logging.WARNING, logger="kestream.tasks.purge"):
        ApiPurger("http://api.internal:8080", "main", AUTH, plain_http=True)
        ApiPurger("http://api.internal:8080", "main", AUTH, plain_http=True)
        ApiPurger("https://api.internal:8443", "main", AUTH)
        ApiPurger("http://other.internal:8080", "main", {})  # no credentials to expose
        ApiPurger("http://127.0.0.1:8080", "main", AUTH)
    warned = _warnings(caplog)
    assert len(warned) == 1 and "http://api.internal:8080" in warned[0]
    assert "admin-token" not in warned[0]
