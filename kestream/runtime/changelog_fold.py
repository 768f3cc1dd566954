"""One changelog partition folded into the last committed record of each key.

Every step of an execution ends with a commit mark: its dynamic record (``<id>#``), or, for the
step that ends it, its ended marker (``<id>!``) or that marker's tombstone. :class:`PartitionRead`
holds back an execution's records until its next commit mark, so a torn step's prefix (a
processor killed while it wrote the step) is left out (see
:mod:`kestream.runtime.changelog_restorer` for what recovery does with it).

The fold is a function of the records read, in order, and of nothing else: its state
(:attr:`PartitionRead.latest` and :attr:`PartitionRead.held`) taken after offset ``n`` and then
fed the records after ``n`` ends where a fold of the whole partition ends. The local checkpoints
(:mod:`kestream.runtime.changelog_checkpoints`) rest on that.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiokafka.structs import ConsumerRecord

from kestream.executor import codec
from kestream.runtime import records

__all__ = ["ExecutionRecords", "PartitionRead", "decode_record"]

log = logging.getLogger("kestream.executor")

#: Records of one execution, by changelog key.
ExecutionRecords = dict[str, Any]


class PartitionRead:
    """One changelog partition folded into the last committed record of each key, by
    execution (see the module docstring: records after an execution's last commit mark are
    its torn tail, left out and listed in :attr:`torn`).

    Read from the beginning, a tombstone deletes its key; read from a checkpoint
    (``tombstones``), it is kept as None, to delete the key from what was known there.
    """

    def __init__(
        self,
        latest: dict[str, ExecutionRecords] | None = None,
        *,
        tombstones: bool = False,
        held: dict[str, list[tuple[str, Any]]] | None = None,
    ) -> None:
        """``latest`` and ``held``: where an earlier read stopped (a checkpoint on disk,
        :mod:`kestream.runtime.changelog_checkpoints`): folding the records after it gives
        what folding the whole partition gives."""
        self.latest: dict[str, ExecutionRecords] = {} if latest is None else latest
        self.tombstones = tombstones
        self._tails: dict[str, list[tuple[str, Any]]] = {} if held is None else held

    def add(self, rec: ConsumerRecord[Any, Any]) -> None:
        """Fold one consumer record in; a record no processor could have written (no key, a
        value that is not JSON) is skipped and logged: one bad record must not stop the
        recovery of the whole partition."""
        if (decoded := decode_record(rec)) is not None:
            self.put(*decoded)

    def put(self, key: str, value: Any) -> None:
        """Fold one record in (``value`` None: a tombstone)."""
        execution_id = codec.execution_of(key)
        if not codec.is_commit_mark(key, value):
            self._tails.setdefault(execution_id, []).append((key, value))
            return
        for held_key, held in self._tails.pop(execution_id, ()):
            self._apply(execution_id, held_key, held)
        self._apply(execution_id, key, value)

    @property
    def held(self) -> dict[str, list[tuple[str, Any]]]:
        """Per execution, the records read after its last commit mark, in order (held back
        until a commit mark makes them count)."""
        return self._tails

    @property
    def torn(self) -> dict[str, list[str]]:
        """Per execution, the keys written after its last commit mark (a torn step)."""
        return {e: list(dict.fromkeys(k for k, _ in tail)) for e, tail in self._tails.items()}

    def repairs(self, committed: Mapping[str, ExecutionRecords]) -> list[tuple[str, Any]]:
        """``(key, value)`` to write again for each key of a torn step: its value in
        ``committed`` (the execution's records once this read is applied), else a tombstone."""
        out: list[tuple[str, Any]] = []
        for execution_id, keys in self.torn.items():
            log.warning("execution %s: %d changelog records of a step cut short are left out",
                        execution_id, len(keys))  # fmt: skip
            recs = committed.get(execution_id) or {}
            out.extend((key, recs.get(key)) for key in keys)
        return out

    def _apply(self, execution_id: str, key: str, value: Any) -> None:
        recs = self.latest.setdefault(execution_id, {})
        if value is not None:
            recs[key] = value
        elif self.tombstones:
            recs[key] = None
        else:
            recs.pop(key, None)
            if not recs:
                self.latest.pop(execution_id, None)


def decode_record(rec: ConsumerRecord[Any, Any]) -> tuple[str, Any] | None:
    """A changelog record's key and JSON value (None: a tombstone); None, logged, for a record
    no processor could have written (no key, a value that is not JSON)."""
    try:
        key = rec.key.decode()
        return key, records.loads(rec.value) if rec.value is not None else None
    except (AttributeError, UnicodeDecodeError, records.RecordError) as exc:
        log.error("skipping the unreadable record at %s[%d]@%d: %s",
                  rec.topic, rec.partition, rec.offset, exc)  # fmt: skip
        return None
