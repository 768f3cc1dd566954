"""Template-injection payloads (Jinja/Pebble/SSTI classics) must fail cleanly and do nothing.

Each payload must raise RenderError or TemplateSyntaxError (no other exception type), and the
payloads that try to create a file must leave no file behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kestream.expressions import RenderError, TemplateSyntaxError, render, render_value
from kestream.expressions.errors import RenderLimitError

SENTINEL = "@SENTINEL@"

PAYLOADS = [
    # Python / Jinja
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('touch @SENTINEL@').read() }}",
    "{{ config.items() }}",
    "{{ request }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('touch @SENTINEL@').read() }}",
    "{{ ().__class__.__bases__[0] }}",
    "{{ [].__class__.__base__.__subclasses__() }}",
    "{{ __import__('os').system('touch @SENTINEL@') }}",
    "{{ open('/etc/passwd').read() }}",
    "{{ open('@SENTINEL@', 'w').write('pwned') }}",
    "{{ getattr(x, '__class__') }}",
    "{{ '{0.__class__}'.format(x) }}",
    "{{ '{0.__init__.__globals__}'.format(x) }}",
    "{{ '%s' % x }}",
    "{% set x = __builtins__ %}{{ x }}",
    "{% set e = __builtins__['eval'] %}{{ e('1') }}",
    "{% import 'os' %}",
    "{% from 'os' import system %}",
    "{{ x|attr('__class__') }}",
    "{{ ''|attr('__class__')|attr('__mro__') }}",
    "{{ inputs.__class__ }}",
    "{{ inputs.__dict__ }}",
    "{{ inputs['__class__']['__init__'] }}",
    '{{ "".join }}',
    "{{ [].pop }}",
    "{{ [].pop() }}",
    "{{ range.__call__ }}",
    "{{ range(1, 2).__class__ }}",
    "{{ x.__len__() }}",
    "{{ inputs.keys() }}",
    "{{ inputs.update({'a': 1}) }}",
    "{{ obj.secret }}",
    "{{ obj.run() }}",
    "{{ obj['secret'] }}",
    "{{ _context }}",
    "{{ globals() }}",
    "{{ eval('1+1') }}",
    "{{ exec('import os') }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{% macro m() %}{{ m.__globals__ }}{% endmacro %}",
    "{% extends '/etc/passwd' %}",
    "{% debug %}",
    # Pebble / Java
    "{{ variable.getClass().forName('java.lang.Runtime') }}",
    "{{ 'x'.getClass().forName('java.lang.Runtime').getRuntime().exec('touch @SENTINEL@') }}",
    "{{ (1).TYPE }}",
    "{{ x.class }}",
    "{{ beans.get('x') }}",
    "{{ request.getSession() }}",
    "{% include '/etc/passwd' %}",
    "{% embed '/etc/passwd' %}{% endembed %}",
    "{{ T(java.lang.Runtime).getRuntime().exec('touch @SENTINEL@') }}",
    # Kestra functions that read the outside world: refused outside an execution (the storage
    # sandbox itself is tested in tests/unit/files)
    "{{ read('/etc/passwd') }}",
    "{{ secret('AWS_SECRET') }}",
    "{{ kv('key') }}",
    "{{ fileURI('file.txt') }}",
    "{{ printContext() }}",
    "{{ http('http://example.com') }}",
    "{{ inputs.x | className }}",
    "{{ env.HOME }}",
    "{{ envs.HOME }}",
    # jq escapes
    "{{ '{}' | jq('env') }}",
    "{{ '{}' | jq('$ENV.HOME') }}",
    "{{ '{}' | jq('input') }}",
    "{{ '{}' | jq('import \"os\" as os; .') }}",
    "{{ '{}' | jq('input_filename') }}",
    # zone names reaching the file system
    "{{ 1 | date('yyyy', timeZone='../../../../etc/passwd') }}",
    "{{ 1 | date('yyyy', timeZone='/etc/passwd') }}",
    # reserved context keys
    "{{ @now }}",
    "{{ inputs['@each_path'] }}",
    # resource exhaustion
    "{{ range(0, 100000000) }}",
    "{% set s = 'xxxxxxxx' %}{% for i in range(1, 64) %}{% set s = s ~ s %}{% endfor %}",
    "{% for a in range(1, 100000) %}{% for b in range(1, 100000) %}{% endfor %}{% endfor %}",
    "{{ 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!' | replace('(a|aa)+$', 'b', regexp=true) }}",
    "{{ 'x' | yaml }}{{ yaml('a: &a [1]\nb: [*a, *a]') }}",
]


class Secretive:
    """A Python object in the context: its attributes and methods must stay unreachable."""

    secret = "s3cret"

    def run(self) -> str:  # pragma: no cover - must never be called
        Path(os.environ.get("SANDBOX_SENTINEL", "/nonexistent/sentinel")).write_text("called")
        return "ran"


def _context() -> dict[str, Any]:
    return {"inputs": {"x": 1}, "x": 1, "obj": Secretive(), "@now": lambda: None}


def test_there_are_enough_payloads() -> None:
    assert len(PAYLOADS) >= 25


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_fails_cleanly(
    payload: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = tmp_path / "sentinel"
    monkeypatch.setenv("SANDBOX_SENTINEL", str(sentinel))
    template = payload.replace(SENTINEL, str(sentinel))
    with pytest.raises((RenderError, TemplateSyntaxError)) as info:
        render(template, _context())
    assert type(info.value) in (RenderError, RenderLimitError, TemplateSyntaxError)
    assert not sentinel.exists()


@pytest.mark.parametrize("payload", PAYLOADS[:20])
def test_payload_inside_render_value(payload: str) -> None:
    with pytest.raises((RenderError, TemplateSyntaxError)):
        render_value({"key": [payload]}, _context())


def test_dunder_names_are_plain_map_keys() -> None:
    ctx = {"m": {"__class__": "just a key", "_private": 1}}
    assert render("{{ m.__class__ }}|{{ m._private }}", ctx) == "just a key|1"


def test_objects_print_without_exposing_attributes() -> None:
    with pytest.raises(RenderError, match="Unable to find `secret`"):
        render("{{ obj.secret }}", _context())
