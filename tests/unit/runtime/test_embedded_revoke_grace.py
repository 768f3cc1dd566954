"""A worker's revoke grace on the embedded broker (kestream.runtime.context.for_broker).

Tansu completes a rebalance half a session after it began, rejoined or not, and a member
learns of the rebalance at its next heartbeat. A worker still in its grace after that misses
the rebalance: its partitions go to another worker while its task runs go on (the same task
run then runs on both), and its late rejoin starts another rebalance. With the embedded
broker's own session the grace is 0 unless set; what a grace of 0 does to the running task
runs (they go on, and stop unreported once their partition is assigned elsewhere) is
tests/unit/runtime/test_worker_rebalance.py's.
"""

from __future__ import annotations

from kestream.runtime.context import for_broker
from kestream.runtime.embedded_broker import EMBEDDED_CLUSTER_ID
from kestream.runtime.tansu_compat import BrokerTraits
from kestream.settings import Settings

EMBEDDED = BrokerTraits(kind="tansu", cluster_id=EMBEDDED_CLUSTER_ID, idempotent_producer=False)
OWN_TANSU = BrokerTraits(kind="tansu", cluster_id="tansu_cluster", idempotent_producer=False)


def _left_in_a_rebalance_s(settings: Settings) -> float:
    """What Tansu leaves a worker to wait out its grace and rejoin: the rebalance ends half a
    session after it began, and the worker may learn of it a heartbeat late."""
    return (settings.session_timeout() / 2 - settings.heartbeat_interval_ms) / 1000


def test_the_embedded_broker_takes_no_grace_unless_one_is_set() -> None:
    assert Settings().worker_revoke_grace_s == 2.0
    assert for_broker(Settings(), EMBEDDED).worker_revoke_grace_s == 0.0
    assert for_broker(Settings(worker_revoke_grace_s=3.0), EMBEDDED).worker_revoke_grace_s == 3.0


def test_the_default_grace_would_outlast_the_embedded_rebalance() -> None:
    """Why the grace is 0 there, at the 4 s session as at 2 s: the usual 2 s grace does not fit
    in what a rebalance leaves (1 s), and any grace leaves less for the commit and the rejoin
    of a worker on a loaded machine."""
    embedded = for_broker(Settings(), EMBEDDED)
    assert embedded.session_timeout() == 4_000
    left = _left_in_a_rebalance_s(embedded)
    assert left == 1.0
    assert Settings().worker_revoke_grace_s > left >= embedded.worker_revoke_grace_s


def test_elsewhere_or_with_a_chosen_session_the_grace_stays() -> None:
    assert for_broker(Settings(), OWN_TANSU).worker_revoke_grace_s == 2.0
    chosen = Settings(session_timeout_ms=10_000)
    assert for_broker(chosen, EMBEDDED).worker_revoke_grace_s == 2.0
