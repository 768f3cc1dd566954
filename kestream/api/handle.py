"""The routes' way to the API service, which starts after faust's web server has its routes.

faust builds its aiohttp application (and kestream adds its routes to it) before the role's
services start, so a route holds this handle and answers 503 until the service is there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kestream.api.http import ApiError, not_found
from kestream.api.service import ApiService
from kestream.runtime.members import MemberBoard
from kestream.runtime.triggers_table import TriggersTable
from kestream.settings import Settings


@dataclass(slots=True)
class ApiHandle:
    settings: Settings
    service: ApiService | None = None
    #: The trigger records the triggers API answers from (set when the role starts).
    triggers: TriggersTable | None = None
    #: The members topic as this process reads it (the cluster route's source).
    board: MemberBoard | None = None

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

    def service_for(self, request: web.Request) -> ApiService:
        """The service, for a request whose path names this installation's tenant."""
        self.tenant(request.match_info["tenant"])
        return self.get()

    async def execution_for(self, request: web.Request) -> tuple[ApiService, dict[str, Any]]:
        """The service and the execution the path's ``executionId`` names (404 if unknown or
        deleted)."""
        service = self.service_for(request)
        execution_id = request.match_info["executionId"]
        execution = await service.execution(execution_id)
        if execution is None or execution.get("deleted"):
            raise not_found(f"Execution '{execution_id}'")
        return service, execution
