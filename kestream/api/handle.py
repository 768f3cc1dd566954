"""The routes' way to the API service, which starts after faust's web server has its routes.

faust builds its aiohttp application (and kestream adds its routes to it) before the role's
services start, so a route holds this handle and answers 503 until the service is there.
"""

from __future__ import annotations

from dataclasses import dataclass

from kestream.api.http import ApiError
from kestream.api.service import ApiService
from kestream.settings import Settings


@dataclass(slots=True)
class ApiHandle:
    settings: Settings
    service: ApiService | None = None

    def get(self) -> ApiService:
        service = self.service
        if service is None or not service.ready:
            what = "starting" if service is None else "reading the executions it indexes"
            raise ApiError(
                503, f"The API is {what}; try again shortly", headers={"Retry-After": "1"}
            )
        return service

    def tenant(self, tenant: str) -> None:
        """Refuse a path whose tenant is not this installation's (``KESTREAM_TENANT``)."""
        if tenant != self.settings.tenant:
            raise ApiError(
                404, f"Tenant '{tenant}' not found (this API serves '{self.settings.tenant}')"
            )

    @property
    def max_body(self) -> int:
        return self.settings.api_max_body_bytes
