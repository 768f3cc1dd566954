"""The cluster route: every role process of the installation and what it is doing.

``GET /api/v1/{tenant}/cluster`` answers from the members topic as this API reads it (the same
records the installation's ``/health/ready`` is computed from, :mod:`kestream.runtime.members`):
each process that counts (heard from within three heartbeats) with its role, host, pid, health,
and the figures it publishes with each heartbeat: the partitions it owns (executor, worker), its
consumer lag (records behind the high watermark, summed over those partitions) and the same per
partition number (``partitionLag``, as of its last fetch), an executor's stream threads, a
worker's thread slots and jobs running, its dead letters by source, and its throughput (per
second) and latency percentiles (seconds) over the interval since its previous record
(:mod:`kestream.runtime.member_rates`).
Nothing is asked of the processes themselves, so the page costs one read of a table in memory,
whatever the size of the installation.

Kestra has no such route (its cluster view is in the Enterprise Edition); the path follows its
1.x style. It is behind the API's credentials like every route under ``/api/v1``: a process's
lag and dead letters are not for the open ``/health``.
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from kestream.api.handle import ApiHandle
from kestream.api.http import ApiError, json_response
from kestream.runtime.members import MemberStatus
from kestream.runtime.restarts import CRASHES_FILE_ENV

PATH = "/api/v1/{tenant}/cluster"


def member_json(member: MemberStatus, now: float) -> dict[str, Any]:
    """One process as the route answers it (the record's fields, in the API's camel case)."""
    facts = member.facts
    return {
        "key": member.key,
        "role": member.role,
        "host": member.host,
        "pid": member.pid,
        "port": member.port,
        "group": member.group,
        "status": "UP" if member.ready and member.live else "DOWN",
        "live": member.live,
        "ready": member.ready,
        "notReady": list(member.not_ready),
        "startedS": round(max(0.0, now - member.started), 3),
        "heardS": round(max(0.0, now - member.ts), 3),
        "checks": facts.get("checks", {}),
        "consumerLag": facts.get("consumerLag", {}),
        "partitionLag": facts.get("partitionLag", {}),
        "deadLetters": facts.get("deadLetters", {}),
        "slots": facts.get("slots"),
        "jobsRunning": facts.get("jobsRunning"),
        "streamThreads": facts.get("streamThreads"),
        "throughput": facts.get("throughput", {}),
        "latency": facts.get("latency", {}),
        "windowS": facts.get("windowS"),
    }


class ClusterRoutes:
    def __init__(self, api: ApiHandle) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.cluster)]

    async def cluster(self, request: web.Request) -> web.Response:
        """The processes that count, their readiness and figures, and the broker's kind."""
        service = self.api.service_for(request)
        board = self.api.board
        if board is None or not board.loaded.is_set():
            raise ApiError(
                503, "The API is reading the members topic; try again shortly",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        roster = board.roster
        now = roster.clock()
        ready, installation = roster.status(now)
        kind = service.ctx.kind
        standalone = bool(os.environ.get(CRASHES_FILE_ENV))  # a child of `kestream standalone`
        # Standalone on Tansu without KESTREAM_STANDALONE_DURABLE: the embedded broker keeps
        # every record in memory only (a Tansu of one's own, given as KESTREAM_BROKER, is
        # memory-only too unless it was started with storage).
        memory_only = kind == "tansu" and standalone and not self.api.settings.standalone_durable
        return json_response(
            {
                "status": "UP" if ready else "DOWN",
                "missingRoles": installation["missingRoles"],
                "broker": {"kind": kind, "standalone": standalone, "memoryOnly": memory_only},
                "partitions": self.api.settings.partitions,
                "members": [member_json(m, now) for m in roster.members(now)],
            }
        )
