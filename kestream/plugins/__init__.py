"""Task types written in Python by kestream's users, and how processes load them.

- :mod:`~kestream.plugins.define`: ``@kestream.task`` and :class:`~kestream.PythonTask`, turned
  into runnable task classes registered in :mod:`kestream.tasks.registry`;
- :mod:`~kestream.plugins.context`: :class:`~kestream.RunContext`, what the task's code sees;
- :mod:`~kestream.plugins.loading`: :func:`load_plugins` (``KESTREAM_PLUGINS`` and the
  ``kestream.tasks`` entry points);
- :mod:`~kestream.plugins.embed`: :class:`~kestream.Worker` and :class:`~kestream.Executor`, a role
  inside the user's own process (the only module here that needs the Kafka runtime).

See docs/tasks.md.
"""
