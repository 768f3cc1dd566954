"""A worker's revoke grace on the embedded broker (kestream.runtime.context.for_broker).

Tansu completes a rebalance half a session after it began, rejoined or not, so a worker still
in its grace loses its partitions to another worker while its task runs go on: the same task
run then runs on both. With the embedded broker's own 2 s session the grace is 0 unless set.
"""

from __future__ import annotations

from kestream.runtime.context import for_broker
from kestream.runtime.embedded_broker import EMBEDDED_CLUSTER_ID
from kestream.runtime.tansu_compat import BrokerTraits
from kestream.settings import Settings

EMBEDDED = BrokerTraits(kind="tansu", cluster_id=EMBEDDED_CLUSTER_ID, idempotent_producer=False)
OWN_TANSU = BrokerTraits(kind="tansu", cluster_id="tansu_cluster", idempotent_producer=False)


def test_the_embedded_broker_takes_no_grace_unless_one_is_set() -> None:
    assert Settings().worker_revoke_grace_s == 2.0
    assert for_broker(Settings(), EMBEDDED).worker_revoke_grace_s == 0.0
    assert for_broker(Settings(worker_revoke_grace_s=3.0), EMBEDDED).worker_revoke_grace_s == 3.0


def test_elsewhere_or_with_a_chosen_session_the_grace_stays() -> None:
    assert for_broker(Settings(), OWN_TANSU).worker_revoke_grace_s == 2.0
    chosen = Settings(session_timeout_ms=10_000)
    assert for_broker(chosen, EMBEDDED).worker_revoke_grace_s == 2.0
