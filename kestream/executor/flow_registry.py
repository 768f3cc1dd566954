"""An in-memory flow repository with revisions: the driver's flow store and the runtime's view of
the compacted flows topic (a global table)."""

from __future__ import annotations

from kestream.kv.store import calls_kv
from kestream.models.flow import Flow


class FlowRegistry:
    """Flows by ``(namespace, id)``, every revision kept; the newest answers when none is named."""

    def __init__(self) -> None:
        self._flows: dict[tuple[str, str], dict[int, Flow]] = {}
        #: Whether a flow kept here may call ``kv()`` (its source says so): the executor then
        #: syncs the KV store once before each batch it steps (:mod:`kestream.kv.store`).
        self.calls_kv = False

    def put(self, flow: Flow) -> Flow:
        """Store ``flow``; without a revision it gets the next one (unchanged source: kept)."""
        revisions = self._flows.setdefault((flow.namespace, flow.id), {})
        if flow.revision is None:
            latest = revisions[max(revisions)] if revisions else None
            if latest is not None and latest.source == flow.source:
                return latest
            flow = flow.model_copy(update={"revision": max(revisions, default=0) + 1})
        revisions[flow.revision or 1] = flow
        self.calls_kv = self.calls_kv or calls_kv(flow.source)
        return flow

    def get(self, namespace: str, flow_id: str, revision: int | None = None) -> Flow | None:
        revisions = self._flows.get((namespace, flow_id))
        if not revisions:
            return None
        if revision is None:
            return revisions[max(revisions)]
        return revisions.get(revision)

    def all(self) -> list[Flow]:
        """The newest revision of every flow."""
        return [revs[max(revs)] for revs in self._flows.values() if revs]
