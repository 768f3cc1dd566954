"""The worker encodes a job's result once: the record it produced is the one it keeps to
answer a copy of the job sent again (broker-free)."""

from __future__ import annotations

import asyncio

from kestream.executor import events as ev
from kestream.runtime import records
from tests.unit.runtime.worker_fakes import RefusingProducer, close, job_record, make_worker

FLOW = """
id: once
namespace: test.worker
tasks:
  - id: ret
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.text }}"
"""


async def test_the_result_kept_for_a_resent_job_is_the_record_produced() -> None:
    worker, flow = make_worker(FLOW)
    producer = RefusingProducer()
    worker._producer = producer
    try:
        worker._handle(job_record(flow, "ret", {"format": "hello"}, offset=7))
        (job,) = worker._jobs.values()
        assert job.task is not None
        await asyncio.wait_for(job.task, 10.0)
        (produced,) = [value for topic, value in producer.acked if topic == "t.worker-results"]
        kept = worker._finished.result(job.key)
        assert kept is produced  # the same bytes, not a second encoding of the result
        result = records.decode_event(kept)
        assert isinstance(result, ev.WorkerResult) and result.outputs == {"value": "hello"}
    finally:
        await close(worker)
