"""``KESTREAM_PRODUCER_LINGER_MS`` is the one linger of every producer, on both brokers.

A linger is a wait on the critical path of every hop (the executor's flush, a worker's result),
so it comes from the setting alone (:func:`make_producer`, which every role's producer is made
by): the broker kind does not choose it.
"""

from __future__ import annotations

import pytest

from kestream.runtime.kafka import make_producer
from kestream.runtime.tansu_compat import producer_options
from kestream.settings import Settings

KINDS = ("tansu", "kafka")
# Not a loopback address: no doorbell is set up for a broker no local process can reach.
BOOTSTRAP = "192.0.2.1:9092"


async def _linger_s(settings: Settings, kind: str) -> float:
    producer = make_producer(settings, BOOTSTRAP, kind)
    # Where aiokafka keeps the linger moved in 0.14 (from the sender to the accumulator); the
    # lower bound in pyproject (0.13) is older than that.
    holder = producer._message_accumulator
    if not hasattr(holder, "_linger_time"):
        holder = producer._sender
    linger: float = holder._linger_time
    await producer.stop()  # never started: only closes its client
    return linger


@pytest.fixture(autouse=True)
def _a_linger_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell that sets the variable changes no result here: the tests name their values."""
    monkeypatch.setenv("KESTREAM_PRODUCER_LINGER_MS", "5")


@pytest.mark.parametrize("kind", KINDS)
async def test_the_default_sends_at_once_on_both_brokers(kind: str) -> None:
    default = Settings.model_fields["producer_linger_ms"].default
    assert default == 0
    assert await _linger_s(Settings(producer_linger_ms=default), kind) == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_the_setting_governs_every_producer(kind: str) -> None:
    assert await _linger_s(Settings(producer_linger_ms=7), kind) == pytest.approx(0.007)


@pytest.mark.parametrize("kind", KINDS)
def test_the_broker_kind_does_not_choose_a_linger(kind: str) -> None:
    assert "linger_ms" not in producer_options(kind)
