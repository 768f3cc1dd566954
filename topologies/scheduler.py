"""faust app of kestream's scheduler role: Schedule and Flow triggers.

Run with ``faust -A topologies.scheduler worker`` (or ``kestream scheduler``).

Configured only from ``KESTREAM_*`` variables; ``KESTREAM_BROKER`` must name the broker.
"""

from kestream.runtime.faust_app import make_app

app = make_app("scheduler")
