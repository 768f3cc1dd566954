"""An executor stream processor under exactly-once that kills itself (SIGKILL) in the commit
of its first transaction that holds records: after its records and input offsets reached the
broker, before the transaction's end. Run as a process by ``test_executor_exactly_once``.

    python eos_victim.py BOOTSTRAP TOPIC_PREFIX FLOW_YAML_PATH
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import parse_flow
from kestream.runtime.context import connect
from kestream.runtime.executor_service import ExecutorService
from kestream.settings import Settings

_commit = AIOKafkaProducer.commit_transaction


async def _killed_in_commit(self: AIOKafkaProducer) -> Any:
    """SIGKILL in place of the commit of a transaction that wrote something (the empty one
    that takes a partition's transactional id commits as usual)."""
    if self._txn_manager is not None and self._txn_manager.txn_partitions:
        print("killed between produce and commit", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return await _commit(self)


async def main(bootstrap: str, prefix: str, flow_path: str) -> None:
    settings = Settings(
        broker=bootstrap, topic_prefix=prefix, partitions=4, processing_guarantee="exactly_once"
    )
    ctx = await connect(settings)
    registry = FlowRegistry()
    registry.put(parse_flow(Path(flow_path).read_text()))
    AIOKafkaProducer.commit_transaction = _killed_in_commit  # type: ignore[method-assign]
    service = ExecutorService(ctx, registry)
    await service.start()
    await asyncio.sleep(120)  # the kill comes first; the test fails on this exit
    await service.stop()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
