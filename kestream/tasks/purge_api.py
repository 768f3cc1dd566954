"""The purger of a broker installation: the API, which keeps the execution index.

A worker has no index of its own, and must not write into any API process's database: each API
process keeps its own index, fed from Kafka. So the purge tasks ask one API (``KESTREAM_API_URL``,
with the API's credentials) to purge; that API picks the executions and lines from its index and
sends the deletions through Kafka, where every API process's index applies them
(:mod:`kestream.api.purge`). The counts are what the asked API's index deleted.

The credentials are the API's own (admin) ones: sent over plain ``http`` to another machine,
anyone on the way reads them. That is refused (:func:`check_clear_credentials`) unless
``KESTREAM_API_PLAIN_HTTP`` allows it (an installation on a trusted private network), and then
the process warns, once per URL: use ``https`` for ``KESTREAM_API_URL``, or a loopback address.
`kestream executions` (:mod:`kestream.api_client`) follows the same rule.
"""

from __future__ import annotations

import ipaddress
import logging
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from kestream.settings import Settings, get_settings
from kestream.tasks.base import TaskError
from kestream.tasks.purge import ExecutionPurge, ExecutionPurgeCounts, LogPurge

#: The API paths of the purges (relative to ``/api/v1/{tenant}``).
EXECUTIONS_PATH = "/executions/purge"
LOGS_PATH = "/logs/purge"
#: A purge of many executions is many records and one wait for the index: generous.
_TIMEOUT_S = 300.0

log = logging.getLogger("kestream.tasks.purge")


def api_base(settings: Settings) -> str:
    """The API's root URL as seen from this process (module docs)."""
    if settings.api_url:
        return settings.api_url.rstrip("/")
    host = settings.web_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.web_port}"


def auth_headers(settings: Settings) -> dict[str, str]:
    """The ``Authorization`` header of the API's own credentials (Basic first, else the first
    bearer token); none without credentials."""
    if settings.api_username is not None and settings.api_password is not None:
        auth = aiohttp.BasicAuth(settings.api_username, settings.api_password.get_secret_value())
        return {"Authorization": auth.encode()}
    tokens = settings.api_bearer_tokens
    return {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}


def exposes_credentials(url: str) -> bool:
    """Whether credentials sent to ``url`` cross a network in clear: plain ``http`` to a host
    that is not this machine's loopback."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: another machine, as far as this process can tell
        return True


def shown_url(url: str) -> str:
    """``url`` without the user and password it may carry (``http://user:pw@host``), for
    messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def check_clear_credentials(base: str, headers: dict[str, str], allowed: bool) -> str | None:
    """Why credentials must not go to ``base`` (plain http to another machine, not
    ``allowed`` by ``KESTREAM_API_PLAIN_HTTP``), or ``None``; warns once when allowed."""
    if not headers or not exposes_credentials(base):
        return None
    if allowed:
        _warn_clear_credentials(base)
        return None
    return (
        f"refusing to send the API's credentials to {shown_url(base)} over plain http, "
        "readable on the network: set KESTREAM_API_URL to an https URL (or a loopback "
        "address), or KESTREAM_API_PLAIN_HTTP=true on a network trusted for it"
    )


@cache
def _warn_clear_credentials(base: str) -> None:
    """Once per URL and process (module docs)."""
    log.warning(
        "sending the API's credentials to %s over plain http, readable on the network "
        "(KESTREAM_API_PLAIN_HTTP=true): set KESTREAM_API_URL to an https URL (or a loopback "
        "address)",
        shown_url(base),
    )


class ApiPurger:
    """Purges through the API's purge routes (module docs)."""

    def __init__(
        self, base: str, tenant: str, headers: dict[str, str], *, plain_http: bool = False
    ) -> None:
        self.root = f"{base}/api/v1/{tenant}"
        self.headers = headers
        refused = check_clear_credentials(base, headers, plain_http)
        if refused is not None:
            raise TaskError(refused[0].upper() + refused[1:])

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ApiPurger:
        settings = settings or get_settings()
        return cls(
            api_base(settings),
            settings.tenant,
            auth_headers(settings),
            plain_http=settings.api_plain_http,
        )

    async def purge_executions(self, query: ExecutionPurge) -> ExecutionPurgeCounts:
        answer = await self._post(EXECUTIONS_PATH, query.model_dump(mode="json"))
        return ExecutionPurgeCounts.model_validate(answer)

    async def purge_logs(self, query: LogPurge) -> int:
        answer = await self._post(LOGS_PATH, query.model_dump(mode="json"))
        return int(answer["count"])

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.root + path
        timeout = aiohttp.ClientTimeout(total=_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, json=body, headers=self.headers) as response,
            ):
                if response.status != 200:
                    text = (await response.text())[:500]
                    raise TaskError(f"The API refused the purge ({response.status}): {text}")
                answer: dict[str, Any] = await response.json()
                return answer
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TaskError(
                f"Cannot reach the API at {shown_url(url)} to purge ({type(exc).__name__}: {exc}); "
                "set KESTREAM_API_URL where the workers run"
            ) from None
