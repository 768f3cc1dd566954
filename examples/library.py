"""kestream from Python: run a flow in-process, then on a broker through the client.

python examples/library.py            # needs KESTREAM_BROKER for the second part, or it
                                      # starts the embedded broker itself
"""

from __future__ import annotations

import asyncio

import kestream
from kestream.runtime.embedded_broker import EmbeddedBroker

FLOW = """
id: greet
namespace: company.team
inputs:
  - id: name
    type: STRING
    defaults: World
tasks:
  - id: hello
    type: io.kestra.plugin.core.output.OutputValues
    values:
      message: "Hello {{ inputs.name }}"
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{ outputs.hello.values.message }}"
"""


def in_process() -> None:
    """No broker: the real executor and task runner in this process (tests, notebooks)."""
    execution = kestream.run(FLOW, {"name": "library"})
    print("in-process:", execution.state.current, execution.taskRunList[0].outputs)


async def on_a_broker(bootstrap: str) -> None:
    """On a broker where kestream's roles run (``kestream standalone``): deploy, submit, wait."""
    settings = kestream.Settings(broker=bootstrap)
    async with await kestream.Client.connect(settings) as client:
        flow = await client.deploy(FLOW)
        execution_id = await client.submit(flow.namespace, flow.id, {"name": "broker"})
        async for update in client.follow(execution_id):
            print("update:", update.state.current, [t.taskId for t in update.taskRunList])
        execution = await client.wait(execution_id)
        print("on a broker:", execution.state.current, execution.taskRunList[0].outputs)


async def main() -> None:
    settings = kestream.Settings()
    if settings.broker:
        await on_a_broker(settings.broker)
        return
    # No broker configured: start the embedded one and kestream's roles in this process.
    from kestream.executor.flow_registry import FlowRegistry
    from kestream.runtime.context import connect
    from kestream.runtime.executor_service import ExecutorService
    from kestream.runtime.flows_table import FlowsTable
    from kestream.runtime.worker_service import WorkerService

    async with EmbeddedBroker() as broker:
        ctx = await connect(settings, broker.bootstrap)
        registry = FlowRegistry()
        table = FlowsTable(ctx, registry)
        await table.start()
        await table.loaded.wait()
        roles = [ExecutorService(ctx, registry), WorkerService(ctx, registry)]
        for role in roles:
            await role.start()
        try:
            await on_a_broker(broker.bootstrap)
        finally:
            for role in reversed(roles):
                await role.stop()
            await table.stop()


if __name__ == "__main__":
    in_process()  # synchronous: before the event loop starts
    asyncio.run(main())
