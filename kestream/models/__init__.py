"""models: the data kestream works on (flows, inputs, executions, states, durations).

Modules, imported directly (this package imports none of them, so that importing
``kestream.models.state`` stays cheap and ``kestream.tasks`` can use it without a cycle):

- ``yaml_source``: YAML as Kestra reads it, with the line of every value;
- ``validation``: located flow problems and the bottom-up task checker;
- ``inputs``: typed flow inputs, ``parse_inputs`` and flow output typing;
- ``flow``: the ``Flow`` model, ``parse_flow`` and ``check_flow``;
- ``state``, ``durations``, ``execution``, ``clock``, ``ids``.
"""
