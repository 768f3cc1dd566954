"""The environment a worker hands to what tasks run: an allow-list, never its secrets.

A worker holds every secret of the installation in its environment (``SECRET_<NAME>``,
:mod:`.resolver`) and its own credentials in its settings (``KESTREAM_*``). A script task is text
any flow author writes, so what it runs gets only the variables a program needs to work on this
machine (:data:`INHERITED`, the ``LC_*`` locale family) plus what the task sets itself. A name
that is neither reaches no script: a deny-list would let through the next credential someone adds
to the worker's environment.

Python task code (plugin code the installation deploys, not flow text) runs in the worker's own
process image: :func:`forget_secrets` removes the secrets and kestream's settings from the
environment of a pool child, so that nothing it starts inherits them. The values the worker
already read stay in that process's memory; this protects the processes task code starts, not
the task code itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from kestream.secrets.resolver import ENV_PREFIX

__all__ = ["DOCKER_CLIENT", "INHERITED", "PRIVATE_PREFIXES", "forget_secrets", "task_environment"]

#: What a program started for a task needs from the machine: where programs and home are, the
#: locale and time zone, temporary directories, the terminal, proxies and CA bundles.
INHERITED = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "HOSTNAME",
        "LANG", "LANGUAGE", "TZ", "TERM",
        "TMPDIR", "TEMP", "TMP",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
        "http_proxy", "https_proxy", "no_proxy", "all_proxy",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    }
)  # fmt: skip
_INHERITED_PREFIXES = ("LC_",)
#: What the Docker CLI needs besides :data:`INHERITED` to reach its daemon (the container itself
#: gets only the task's environment).
DOCKER_CLIENT = frozenset(
    {"DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY",
     "XDG_RUNTIME_DIR"}
)  # fmt: skip
#: Names never handed on, whatever else allows them: the secrets and the worker's settings.
PRIVATE_PREFIXES = (ENV_PREFIX, "KESTREAM_")


def task_environment(
    environ: Mapping[str, str] | None = None, *, also: frozenset[str] = frozenset()
) -> dict[str, str]:
    """The allowed part of ``environ`` (the process's by default); ``also`` names more that the
    caller needs (:data:`DOCKER_CLIENT`). Private names never pass."""
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if (name in INHERITED or name in also or name.startswith(_INHERITED_PREFIXES))
        and not name.startswith(PRIVATE_PREFIXES)
    }


def forget_secrets(environ: MutableMapping[str, str] | None = None) -> None:
    """Remove the private names from ``environ`` (the process's by default, so the processes
    it starts do not inherit them)."""
    target = os.environ if environ is None else environ
    for name in [name for name in target if name.startswith(PRIVATE_PREFIXES)]:
        del target[name]
