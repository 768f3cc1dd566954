"""Which processing guarantee a process runs with: the setting, as far as the broker allows.

``exactly_once`` needs transactions (``InitProducerId`` with a transactional id, ``AddOffsetsToTxn``
and read-committed fetches), which Apache Kafka has and the embedded Tansu has not. There the
guarantee stays ``at_least_once``, whose idempotent effects (derived ids, ended markers) make
a replay harmless, and the first role to ask says so once.
"""

from __future__ import annotations

import logging

from kestream.settings import Settings

__all__ = ["exactly_once", "isolation_level"]

log = logging.getLogger("kestream.guarantee")

_warned = False


def exactly_once(settings: Settings, kind: str) -> bool:
    """Whether this process runs exactly-once: asked for, and the broker has transactions."""
    global _warned
    if settings.processing_guarantee != "exactly_once":
        return False
    if kind == "tansu":
        if not _warned:
            _warned = True
            log.warning(
                "KESTREAM_PROCESSING_GUARANTEE=exactly_once needs a broker with transactions "
                "(Apache Kafka); Tansu has none, so processing stays at_least_once"
            )
        return False
    return True


def isolation_level(settings: Settings, kind: str) -> str:
    """What kestream's consumers read: committed records only on Apache Kafka, whatever this
    process's own guarantee, since the executors writing the topics may run exactly-once while
    this process (a worker, the API, a CLI started without the variable) does not: reading
    uncommitted, it would run jobs of aborted transactions and index ends that never happened.
    Without transactions it costs nothing (the last stable offset is the high watermark). Tansu
    has no transactions and reads everything written.

    ``settings`` is kept for the callers' sake (one signature for every client option)."""
    del settings
    return "read_uncommitted" if kind == "tansu" else "read_committed"
