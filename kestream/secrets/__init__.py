"""Secrets: ``secret()`` resolved on the worker only, and masked wherever a value would show.

:mod:`.resolver` (where values come from), :mod:`.deferred` (how a property calling ``secret()``
travels unrendered to the worker), :mod:`.masking` (``******`` in lines, errors and outputs),
:mod:`.inputs` (SECRET inputs, encrypted at rest with ``KESTREAM_ENCRYPTION_KEY``).
"""
