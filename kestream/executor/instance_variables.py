"""``envs`` and ``globals``: variables every flow of an instance sees, set by whoever runs it.

Kestra gives flows ``{{ envs.name }}`` for each environment variable that starts with a prefix
(``ENV_MY_NAME`` is ``envs.my_name``: prefix removed, lower case; the default prefix is ``ENV_``
since Kestra 0.23, ``KESTRA_`` before) and ``{{ globals.name }}`` for the values its configuration
lists under ``kestra.variables.globals``.

In kestream both are set once per process: every role takes them from its settings when it
connects (``KESTREAM_ENV_VARS_PREFIX``, ``KESTREAM_GLOBALS``), and the broker-free driver's caller
sets them with :func:`set_instance_variables`. Only variables that start with the prefix are ever
read, and no prefix may reach kestream's own ``KESTREAM_*`` settings (their passwords and tokens)
nor the ``SECRET_*`` variables ``secret()`` reads: ``envs`` are rendered by the executor and
travel in Kafka records, where no secret may ever be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kestream.secrets.resolver import ENV_PREFIX

#: kestream's own settings and the secrets: never exposed to flows, whatever the prefix.
_PROTECTED = {"KESTREAM_": "kestream's own KESTREAM_* settings", ENV_PREFIX: "the secrets"}


@dataclass(frozen=True, slots=True)
class InstanceVariables:
    """What ``envs`` and ``globals`` hold for every execution run by this process."""

    envs: Mapping[str, str] = field(default_factory=dict)
    globals: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], prefix: str, globals_: Mapping[str, Any] | None = None
    ) -> InstanceVariables:
        """``envs`` from the variables of ``environ`` that start with ``prefix``."""
        check_env_prefix(prefix)
        envs = {
            name[len(prefix) :].lower(): value
            for name, value in environ.items()
            if name.startswith(prefix) and len(name) > len(prefix)
        }
        return cls(envs, dict(globals_ or {}))


def check_env_prefix(prefix: str) -> str:
    """Refuse a prefix that would expose every variable, kestream's own settings or the
    secrets (a prefix of theirs, ``S``, or one inside them, ``SECRET_DB``)."""
    if not prefix:
        raise ValueError("the environment prefix for envs cannot be empty")
    upper = prefix.upper()
    for protected, what in _PROTECTED.items():
        if upper.startswith(protected) or protected.startswith(upper):
            raise ValueError(
                f"the environment prefix for envs cannot be {prefix!r}: it would expose {what} "
                "to flows"
            )
    return prefix


_current = InstanceVariables()


def set_instance_variables(variables: InstanceVariables) -> InstanceVariables:
    """Use ``variables`` for every execution context built from now on; returns the previous
    ones (so a test can put them back)."""
    global _current
    previous, _current = _current, variables
    return previous


def instance_variables() -> InstanceVariables:
    """The ``envs`` and ``globals`` of this process."""
    return _current
