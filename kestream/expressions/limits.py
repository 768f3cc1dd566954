"""Resource ceilings for one render, so a template cannot exhaust memory or CPU.

Kestra caps ``range()`` at one million elements; the same ceiling applies here to every list a
template builds and to loop iterations, and a separate one to the length of produced text.
"""

from __future__ import annotations

MAX_ITEMS = 1_000_000
MAX_LOOP_STEPS = 1_000_000
MAX_TEXT = 10_000_000
