"""Secrets: ``secret()`` resolved on the worker only, and masked wherever a value would show.

:mod:`.resolver` (where values come from), :mod:`.deferred` (how a property calling ``secret()``
travels unrendered to the worker), :mod:`.masking` (``******`` in lines, errors and outputs),
:mod:`.encryption` (SECRET inputs, encrypted at rest with ``KESTREAM_ENCRYPTION_KEY`` and bound
to their flow), :mod:`.environment` (what task processes inherit of the worker's environment).
"""
