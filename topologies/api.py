"""faust app of kestream's API role: REST, webhooks, follow streams and the execution index.

Run with ``faust -A topologies.api worker`` (or ``kestream api``).

Configured only from ``KESTREAM_*`` variables; ``KESTREAM_BROKER`` must name the broker.
"""

from kestream.runtime.faust_app import make_app

app = make_app("api")
