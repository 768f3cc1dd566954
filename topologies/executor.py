"""faust app of kestream's executor role.

Run with ``faust -A topologies.executor worker`` (or ``kestream executor``).

Configured only from ``KESTREAM_*`` variables; ``KESTREAM_BROKER`` must name the broker.
"""

from kestream.runtime.faust_app import make_app

app = make_app("executor")
