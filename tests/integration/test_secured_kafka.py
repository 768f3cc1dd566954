"""kestream on an Apache Kafka whose only client listener is SASL_SSL (PLAIN).

One broker for the module (:class:`~kestream.runtime.apache_kafka.ApacheKafka` with
``sasl_ssl=``, TLS material made by ``keytool``). First the broker is shown to refuse every
client that lacks the TLS and SASL settings, so the rest proves something; then ``kestream
standalone`` (executor, worker, scheduler and API processes, faust's clients included) runs
with the ``KESTREAM_BROKER_*`` variables alone, and W1 (``config/bench/w1.yaml``) runs to
SUCCESS through :class:`kestream.Client` and through the API's webhook route.

It runs where the ``apache`` backend is selected (the README's test command selects it), and is
skipped with the reason printed where Java, Maven or keytool are missing.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError
from api_stack import start_stack
from pydantic import SecretStr

from kestream.client import Client
from kestream.models.state import StateType
from kestream.runtime.apache_kafka import ApacheKafka
from kestream.runtime.apache_kafka_sasl import SaslSslListener
from kestream.runtime.embedded_broker import BrokerUnavailable, kafka_answers
from kestream.runtime.kafka_connection import SecurityFields, security_environment
from kestream.settings import SaslMechanism, SecurityProtocol, Settings

pytestmark = pytest.mark.integration

W1 = Path(__file__).resolve().parents[2] / "config" / "bench" / "w1.yaml"
DONE = {"SUCCESS", "FAILED", "KILLED", "WARNING"}


@pytest.fixture(scope="module")
def kafka(request: pytest.FixtureRequest) -> Iterator[ApacheKafka]:
    backends = str(request.config.getoption("--kafka-backend")).split(",")
    if "apache" not in (name.strip() for name in backends):
        pytest.skip("the SASL_SSL Kafka runs with the apache backend (--kafka-backend apache)")
    broker = ApacheKafka(sasl_ssl=SaslSslListener())
    started = time.monotonic()
    try:
        broker.start()
    except BrokerUnavailable as exc:
        pytest.skip(f"apache backend: {exc.reason}")
    print(f"\n[sasl_ssl] Kafka on {broker.bootstrap} ready in {time.monotonic() - started:.1f} s")
    try:
        yield broker
    finally:
        broker.stop()


def security(kafka: ApacheKafka) -> SecurityFields:
    fields = kafka.client_security()
    assert fields is not None, "a sasl_ssl broker hands out its client settings once started"
    return fields


def settings(kafka: ApacheKafka, prefix: str = "kestream.", **changes: object) -> Settings:
    fields = {**security(kafka), **changes}
    return Settings.model_validate({"broker": kafka.bootstrap, "topic_prefix": prefix, **fields})


async def test_the_broker_refuses_clients_without_sasl_ssl(kafka: ApacheKafka) -> None:
    """Right settings get an answer; no TLS, no SASL, or a wrong password get none."""
    bootstrap = kafka.bootstrap
    assert await kafka_answers(bootstrap, settings=settings(kafka))
    tls_only = settings(
        kafka,
        broker_security_protocol=SecurityProtocol.SSL,
        broker_sasl_mechanism=None,
        broker_sasl_username=None,
        broker_sasl_password=None,
    )
    no_tls = settings(
        kafka, broker_security_protocol=SecurityProtocol.SASL_PLAINTEXT, broker_ssl_cafile=None
    )
    wrong_password = settings(kafka, broker_sasl_password=SecretStr("not-the-password"))
    refused = {
        "PLAINTEXT": None,
        "SSL without SASL": tls_only,
        "SASL_PLAINTEXT": no_tls,
        "wrong password": wrong_password,
    }
    for what, attempt in refused.items():
        assert not await kafka_answers(bootstrap, settings=attempt, timeout=3.0), what
    with pytest.raises(KafkaError):
        await Client.connect(wrong_password)


async def test_w1_runs_to_success_on_every_role_over_sasl_ssl(
    kafka: ApacheKafka, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Executor, worker, scheduler and API processes configured only through the environment;
    the tasks go through the worker (inline tasks off), so every hop crosses the broker."""
    prefix = f"it.sasl.{uuid.uuid4().hex[:10]}."
    env = {**security_environment(security(kafka)), "KESTREAM_EXECUTOR_INLINE_TASKS": "false"}
    assert env["KESTREAM_BROKER_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KESTREAM_BROKER_SASL_MECHANISM"] == SaslMechanism.PLAIN.value
    started = time.monotonic()
    workdir = tmp_path_factory.mktemp("sasl")
    with contextlib.contextmanager(start_stack)(kafka.bootstrap, prefix, workdir, env) as stack:
        ready_s = time.monotonic() - started
        async with await Client.connect(settings(kafka, prefix)) as client:
            flow = await client.deploy(W1.read_text())
            t0 = time.monotonic()
            execution_id = await client.submit(flow.namespace, flow.id, {"name": "SASL"})
            execution = await client.wait(execution_id, timeout=90)
            client_s = time.monotonic() - t0
            assert execution.state.current is StateType.SUCCESS, stack.log_tail()
            runs = {run.taskId: run for run in execution.taskRunList}
            assert set(runs) == {"concatenate", "log"}
            assert runs["concatenate"].outputs == {"values": {"message": "Hello SASL"}}

            path = f"/executions/webhook/{flow.namespace}/{flow.id}/benchmark01"
            reply = stack.request("POST", path, "{}", content_type="application/json")
            assert reply.status == 200, reply.body
            hooked = await client.wait(reply.json()["id"], timeout=90)
            assert hooked.state.current is StateType.SUCCESS, stack.log_tail()
        # The API's execution index followed the updates over SASL_SSL too.
        indexed = stack.wait_state(hooked.id, DONE)
        assert indexed["state"]["current"] == "SUCCESS"
        assert stack.process.poll() is None, stack.log_tail()
    print(
        f"\n[sasl_ssl] standalone ready in {ready_s:.1f} s; W1 through the client "
        f"(tasks on the worker) in {client_s * 1000:.0f} ms"
    )
