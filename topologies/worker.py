"""faust app of kestream's worker role.

Run with ``faust -A topologies.worker worker`` (or ``kestream worker``).

Configured only from ``KESTREAM_*`` variables; ``KESTREAM_BROKER`` must name the broker.
"""

from kestream.runtime.faust_app import make_app

app = make_app("worker")
