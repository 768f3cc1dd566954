"""Requests that would carry large values carry references instead (the Client's, the API's).

Three records sent to the executions topic can carry a whole execution or large values:

- a restart carries the execution's last JSON (an ended execution left the executor's state),
  which for a ForEach of 10 000 is several megabytes;
- a replay carries the replayed execution's JSON the same way;
- a creation carries the execution's inputs, which every update record of it repeats.

Past ``KESTREAM_OUTPUT_INLINE_MAX_BYTES`` (a length comparison on the record as encoded to be
sent: nothing more is encoded below it), the snapshot is written to the internal storage under
the execution's folder (``_snapshots/``) and the record carries ``snapshotUri`` in its place;
the executor reads it back when it decodes the record (:mod:`kestream.runtime.records`). The
largest inputs are stored under their input's folder and referenced
(:mod:`kestream.executor.references`): expressions read them as values. Inputs are only stored
once they are typed (a creation the executor validates keeps them inline).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from kestream.executor import events as ev
from kestream.executor.references import adopted, encoded, offload
from kestream.executor.restore import snapshot_attempt
from kestream.runtime import records
from kestream.storage.backend import Storage
from kestream.storage.current import get_storage
from kestream.storage.keys import to_uri
from kestream.storage.offload import (
    StorageUnavailable,
    input_value_key,
    snapshot_key,
)

log = logging.getLogger(__name__)

#: The key of a restart or replay record's stored snapshot (in place of ``snapshot``).
SNAPSHOT_URI = "snapshotUri"


def fit_event(
    event: ev.Event, value: bytes, threshold: int, storage: Storage | None = None
) -> tuple[ev.Event, bytes]:
    """``event`` and its record as they are sent: ``value`` (``event`` encoded) when it is
    within ``threshold`` (0: never offload), else with its large parts stored (module doc)."""
    if threshold <= 0 or len(value) <= threshold:
        return event, value
    if isinstance(event, ev.Restart) and event.snapshot is not None:
        body = records.event_value(event)
        body[SNAPSHOT_URI] = _store_snapshot(
            event.snapshot, event.snapshot, f"restart-{snapshot_attempt(event.snapshot)}.json",
            storage,
        )  # fmt: skip
        del body["snapshot"]
        return event, records.dumps(body)
    if not isinstance(event, ev.ExecutionCreated):
        return event, value
    if event.inputs and not event.validate_inputs:
        inputs = _offloaded_inputs(event, threshold, storage)
        if inputs is not None:
            event = dataclasses.replace(event, inputs=inputs)
            value = records.encode_event(event)
    if event.replay is not None and len(value) > threshold:
        body = records.event_value(event)
        where = {"namespace": event.namespace, "flowId": event.flow_id, "id": event.execution_id}
        uri = _store_snapshot(where, event.replay.snapshot, "replay.json", storage)
        body["replay"] = {SNAPSHOT_URI: uri, "taskRunId": event.replay.task_run_id}
        value = records.dumps(body)
    return event, value


def _offloaded_inputs(
    event: ev.ExecutionCreated, threshold: int, storage: Storage | None
) -> dict[str, Any] | None:
    inputs = event.inputs or {}
    return offload(
        inputs,
        len(encoded(inputs)),
        threshold,
        lambda _, name: input_value_key(
            event.namespace, event.flow_id, event.execution_id, str(name)
        ),
        storage,
        entries_only=True,
    )


def _store_snapshot(
    owner: dict[str, Any], snapshot: dict[str, Any], name: str, storage: Storage | None
) -> str:
    """Store ``snapshot`` in the snapshots folder of the execution ``owner`` names (its
    ``namespace``, ``flowId`` and ``id``); its URI."""
    key = snapshot_key(str(owner["namespace"]), str(owner["flowId"]), str(owner["id"]), name)
    (storage or get_storage()).put(key, records.dumps(snapshot))
    return to_uri(key)


# -- reading: off the event loop ------------------------------------------------------------

#: Tries of a record whose storage work fails for a reason that may pass (a network error, a
#: 5xx), and the pause before the second (doubling, capped): about half a minute in all, then
#: the processor stops and its partitions' next owner reads the record again.
PREPARE_TRIES = 8
PREPARE_BACKOFF_S = 0.5
PREPARE_BACKOFF_MAX_S = 8.0


def needs_storage(value: bytes) -> bool:
    """Whether the record ``value`` names a stored snapshot, or is the creation of a replay or
    a retry carrying references or file URIs (their values and files are copied,
    :func:`adopted`): a byte search, no decoding, so every other record costs nothing more."""
    if b'"snapshotUri"' in value:
        return True
    return (b'"@ref"' in value or b'"kestra:///' in value) and (
        b'"retryOf":"' in value or b'"parentId":"' in value
    )


def prepared_event(value: bytes) -> ev.Event:
    """The event of the record ``value``, with its storage work done (:func:`needs_storage`):
    a stored snapshot read, a creation's values adopted. Raises
    :class:`~kestream.runtime.records.RecordError` for a record to refuse (a missing or
    foreign snapshot) and :class:`StorageUnavailable` for one to try again. Blocking."""
    event = records.decode_event(value)
    if isinstance(event, ev.ExecutionCreated):
        event = adopted(event)
    return event


async def prepare(value: bytes) -> ev.Event | Exception:
    """:func:`prepared_event` in a thread, tried again with a growing pause while the storage
    is unavailable; a record to refuse comes back as its exception (dead-lettered as before).
    Still unavailable after :data:`PREPARE_TRIES`: :class:`StorageUnavailable` is raised."""
    delay = PREPARE_BACKOFF_S
    for attempt in range(1, PREPARE_TRIES + 1):
        try:
            return await asyncio.to_thread(prepared_event, value)
        except StorageUnavailable as exc:
            if attempt == PREPARE_TRIES:
                raise
            log.warning("storage unavailable (try %d of %d): %s", attempt, PREPARE_TRIES, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, PREPARE_BACKOFF_MAX_S)
        except Exception as exc:  # RecordError, or anything a hostile record provokes
            return exc
    raise AssertionError("unreachable")
