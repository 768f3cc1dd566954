"""The Webhook trigger's route, ``/api/v1/{tenant}/executions/webhook/{ns}/{id}/{key}``.

The key is compared in constant time; an unknown flow, a flow without that key and a disabled
trigger all get the same 404 ("Webhook not found") and create nothing, so the route does not
reveal which flows exist; a disabled flow gets 409, as in Kestra. A call that does not pass the
trigger's ``conditions`` gets 204 and creates nothing; one whose conditions cannot be evaluated
gets 422. The answer is Kestra's ``WebhookResponse``: the execution as created (its ``id`` is
the one to follow) and its ``url``. With ``wait: true`` the answer waits for the execution's
first stop (its end, or a pause), at most ``KESTREAM_API_WAIT_MAX_S`` (then the execution as it
stands); with ``returnOutputs: true`` as well, the answer is the flow's outputs alone, as JSON,
sent with ``responseContentType``.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from kestream.api.execution_routes import execution_url
from kestream.api.handle import ApiHandle
from kestream.api.http import ApiError, invalid, json_response, read_body
from kestream.models.ids import new_id
from kestream.models.values import UnportableValue
from kestream.scheduler.conditions import ConditionError
from kestream.scheduler.webhooks import find_webhook, webhook_accepts, webhook_execution
from kestream.secrets.encryption import mask_sealed

PATH = "/api/v1/{tenant}/executions/webhook/{namespace}/{flowId}/{key}"
#: Headers kept out of ``trigger.headers``: the execution, its index entry and every reader of
#: the API would otherwise hold the caller's credentials.
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
#: Kestra's ``WebhookResponse``: the execution as created, without its inputs and task runs.
_RESPONSE_FIELDS = (
    "id",
    "namespace",
    "flowId",
    "flowRevision",
    "trigger",
    "outputs",
    "labels",
    "state",
)


class WebhookRoutes:
    def __init__(self, api: ApiHandle) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        # No HEAD (aiohttp adds one to every GET): a link checker or a preview bot sends HEAD,
        # and the handler would start the flow. HEAD is answered 405.
        return [
            web.get(PATH, self.trigger, allow_head=False),
            web.post(PATH, self.trigger),
            web.put(PATH, self.trigger),
        ]

    async def trigger(self, request: web.Request) -> web.Response:
        service = self.api.service_for(request)
        namespace, flow_id = request.match_info["namespace"], request.match_info["flowId"]
        flow = service.flow(namespace, flow_id)
        trigger = find_webhook(flow, request.match_info["key"]) if flow is not None else None
        if flow is None or trigger is None:
            raise ApiError(404, "Not Found: Webhook not found")
        if flow.disabled:
            raise ApiError(409, "Illegal state: Cannot execute a disabled flow")
        payload = await read_body(request, self.api.max_body)
        headers = {
            name: request.headers.getall(name)
            for name in request.headers
            if name.lower() not in _CREDENTIAL_HEADERS
        }
        parameters = {name: request.query.getall(name) for name in request.query}
        try:
            event = webhook_execution(
                flow,
                trigger,
                body=payload,
                content_type=request.content_type,
                headers=headers,
                parameters=parameters,
                execution_id=new_id(),
            )
        except UnportableValue as exc:
            problem = [{"path": exc.path, "message": str(exc)}]
            raise invalid(f"Invalid webhook call: {exc}", problem) from None
        try:
            if not webhook_accepts(flow, trigger, event):
                return web.Response(status=204)
        except ConditionError as exc:
            raise invalid(f"Invalid webhook call: {exc}", [{"message": str(exc)}]) from None
        created = await service.submit_event(event, flow)
        if trigger.wait:
            waited = await service.wait(created["id"], self.api.settings.api_wait_max_s)
            created = waited or created
            if trigger.returnOutputs:
                return web.Response(
                    body=mask_sealed(orjson.dumps(created.get("outputs") or {})),
                    headers={"Content-Type": trigger.responseContentType},
                )
        body = {key: created[key] for key in _RESPONSE_FIELDS if created.get(key) is not None}
        body["tenantId"] = self.api.settings.tenant
        body["url"] = execution_url(request, created)
        return json_response(body)
