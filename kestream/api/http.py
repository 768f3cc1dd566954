"""What every route shares: JSON responses, errors with Kestra's body, bounded request bodies.

Errors are JSON, shaped as Kestra's ``JsonError``: a ``message`` that names the field or the id,
and, for invalid input, ``_embedded.errors`` with one ``{message, path}`` per problem, so a client
written for Kestra shows them as it does Kestra's. Request bodies are read up to
``KESTREAM_API_MAX_BODY_BYTES``; a larger one is refused with 413 before it is buffered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from multidict import MultiDictProxy

from kestream.models.values import UnportableValue, loads_json, safe_text
from kestream.secrets.encryption import mask_sealed

if TYPE_CHECKING:
    from kestream.api.index.store import Listing

JSON = "application/json"


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON response serialised in one orjson pass (datetimes as ISO-8601)."""
    # SECRET inputs' encrypted values show as ****** (kestream.secrets.encryption)
    return web.Response(body=mask_sealed(orjson.dumps(body)), status=status, content_type=JSON)


#: Sent, as ``true``, with a search's ``{results, total}`` whose total is a lower bound (the
#: count stopped at its bound, :class:`~kestream.api.index.store.Listing`): the body keeps
#: Kestra's shape, and a client that knows the header shows "10000+" instead of "10000".
TOTAL_CAPPED_HEADER = "X-Kestream-Total-Capped"
#: Set to ``true`` on a log listing that holds only its first lines (``Link: rel="next"``).
TRUNCATED_HEADER = "X-Kestream-Truncated"
#: Response headers a page on another listed origin may read (``Access-Control-Expose-Headers``):
#: a browser hides every header outside the CORS safelist from it otherwise, so a Kestra UI
#: served elsewhere would show a capped total as exact and a truncated log as whole.
EXPOSED_HEADERS = (
    TOTAL_CAPPED_HEADER,
    TRUNCATED_HEADER,
    "Content-Disposition",
    "Link",
    "Retry-After",
)


def listing_response(listing: Listing) -> web.Response:
    """Kestra's ``{results, total}`` of a search, with :data:`TOTAL_CAPPED_HEADER` when the
    total is capped."""
    response = json_response({"results": listing.results, "total": listing.total})
    if listing.capped:
        response.headers[TOTAL_CAPPED_HEADER] = "true"
    return response


class ApiError(web.HTTPException):
    """An error answered as Kestra's JSON error body.

    Messages often repeat what the caller sent (an id from the path, an ``Origin``), which
    aiohttp decodes with ``surrogateescape``: every text is passed through
    :func:`~kestream.models.values.safe_text`, so a non-UTF-8 byte is escaped instead of
    making the error itself fail to serialise (a 500).
    """

    def __init__(
        self,
        status: int,
        message: str,
        errors: Iterable[Mapping[str, Any]] = (),
        *,
        headers: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = status
        body: dict[str, Any] = {"message": safe_text(message)}
        # beside Kestra's keys: what the caller needs to act on the error (an id to look up)
        body.update({key: safe_text(value) for key, value in (fields or {}).items()})
        problems = [_safe_problem(error) for error in errors]
        if problems:
            body["_embedded"] = {"errors": problems}
        super().__init__(
            headers=headers,
            text=orjson.dumps(body).decode(),
            content_type=JSON,
            reason=_reason(status),
        )


def _safe_problem(error: Mapping[str, Any]) -> dict[str, Any]:
    return {key: safe_text(v) if isinstance(v, str) else v for key, v in error.items()}


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def not_found(what: str) -> ApiError:
    """404 naming what was looked for: ``Not Found: Execution 'x' not found``."""
    return ApiError(404, f"Not Found: {what} not found")


def invalid(message: str, errors: Iterable[Mapping[str, Any]] = ()) -> ApiError:
    """422: the request is well formed but what it names is invalid (flow, inputs, filters)."""
    return ApiError(422, message, errors)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (checked before buffering)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data.extend(chunk)
        if len(data) > limit:
            raise _too_large(limit)
    return bytes(data)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body is larger than the limit of {limit} bytes")


async def read_text(request: web.Request, limit: int) -> str:
    data = await read_body(request, limit)
    try:
        return data.decode(request.charset or "utf-8")
    except (UnicodeDecodeError, LookupError) as exc:
        raise bad_request(f"Request body is not valid text: {exc}") from None


async def read_form(request: web.Request, limit: int, *, files: bool = False) -> dict[str, Any]:
    """Form fields of a multipart or url-encoded body (Kestra's execution inputs).

    A repeated field gives a list. An uploaded file is kept as its ``web.FileField`` with
    ``files`` (the caller stores it: FILE inputs), else read as text.
    """
    if not request.body_exists:
        return {}
    kind = request.content_type
    if kind == JSON:
        body = await read_body(request, limit)
        try:
            value = loads_json(body, "inputs") if body else {}  # exact, or refused with the path
        except UnportableValue as exc:
            raise invalid(
                f"Invalid inputs: {exc}", [{"path": exc.path, "message": str(exc)}]
            ) from None
        except ValueError as exc:
            raise bad_request(f"Request body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise bad_request("Request body must be a JSON object of inputs")
        return value
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        await read_body(request, limit)  # enforce the limit, then ignore an unknown body
        return {}
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    request._client_max_size = limit  # aiohttp's own bound for post()
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    return _fields(form, files)


def _fields(form: MultiDictProxy[Any], files: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in form:
        values = [_field_value(v, files) for v in form.getall(key)]
        out[key] = values[0] if len(values) == 1 else values
    return out


def _field_value(value: Any, files: bool) -> Any:
    if isinstance(value, web.FileField) and not files:
        return value.file.read().decode("utf-8", "replace")
    return value


def query_flag(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in ("", "true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise bad_request(f"Query parameter '{name}' must be true or false, not '{raw}'")


def query_instant(request: web.Request, name: str) -> datetime | None:
    """An ISO-8601 date-time query parameter (no offset: UTC), as the search filters read them."""
    # Imported here: every role's guard imports this module for its errors, and the index's
    # package brings its store and SQLite, which only the API's processes use.
    from kestream.api.index.query import QueryError, parse_instant

    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return parse_instant(name, raw)
    except QueryError as exc:
        raise bad_request(str(exc)) from None


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"Query parameter '{name}' must be an integer, not '{raw}'") from None
    if not low <= value <= high:
        raise bad_request(f"Query parameter '{name}' must be between {low} and {high}")
    return value


def parse_labels(values: Iterable[str], source: str = "labels") -> dict[str, str]:
    """Kestra's ``key:value`` label parameters (repeated), as a dict."""
    from kestream.api.index.query import QueryError, label_pair  # (see query_instant)

    try:
        return dict(label_pair(source, raw) for raw in values)
    except QueryError as exc:
        raise bad_request(str(exc)) from None
