"""The class form (:class:`kestream.PythonTask`) and the open registry's rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field

import kestream
from kestream.models.flow import check_flow
from kestream.models.state import StateType
from kestream.models.validation import unknown_type_message
from kestream.tasks.registry import TaskTypeConflict, known_types, plugin_modules, task_class
from kestream.testing import Driver

FLOW = "id: f\nnamespace: acme.team\ntasks:\n"


class Greeting(BaseModel):
    text: str


def test_fields_are_properties_with_aliases_and_async_execute_is_awaited() -> None:
    class Greet(kestream.PythonTask):
        type_name = "acme.tasks.Greet"
        aliases = ("acme.Greet",)

        name: str
        times: int = 1
        closing_word: str = Field(default="!", alias="closingWord")

        async def execute(self, run: kestream.RunContext) -> Greeting:
            run.logger.info("greeting %s", self.name)
            return Greeting(text=" ".join([f"Hello {self.name}"] * self.times) + self.closing_word)

    source = FLOW + (
        "  - id: g\n    type: acme.Greet\n    name: '{{ inputs.who }}'\n    times: '{{ 1 + 1 }}'\n"
        "    closingWord: '?'\n"
    )
    inputs = "inputs:\n  - id: who\n    type: STRING\ntasks:"
    execution = kestream.run(source.replace("tasks:", inputs), {"who": "Ada"})
    assert execution.state.current is StateType.SUCCESS
    assert execution.taskRunList[0].outputs == {"text": "Hello Ada Hello Ada?"}
    assert task_class("acme.Greet") is task_class("acme.tasks.Greet")


def test_a_rule_of_the_whole_task_fails_the_run_with_its_message() -> None:
    class Either(kestream.PythonTask):
        type_name = "acme.tasks.Either"

        left: str | None = None
        right: str | None = None

        def execute(self, run: kestream.RunContext) -> dict[str, Any]:
            if (self.left is None) == (self.right is None):
                raise kestream.TaskError("give left or right")
            return {"side": "left" if self.left else "right"}

    ok = kestream.run(FLOW + "  - id: e\n    type: acme.tasks.Either\n    right: x\n")
    assert ok.taskRunList[0].outputs == {"side": "right"}
    with Driver() as driver:
        driver.deploy(FLOW + "  - id: e\n    type: acme.tasks.Either\n")
        failed = driver.start("acme.team", "f")
        assert "give left or right" in [entry.message for entry in driver.logs(failed.id)]


def test_an_intermediate_base_without_type_name_is_not_registered() -> None:
    before = known_types()

    class Base(kestream.PythonTask):
        shared: int = 0

    class Concrete(Base):
        type_name = "acme.tasks.Concrete"

        def execute(self, run: kestream.RunContext) -> dict[str, Any]:
            return {"shared": self.shared}

    assert set(known_types()) - set(before) == {"acme.tasks.Concrete"}
    execution = kestream.run(FLOW + "  - id: c\n    type: acme.tasks.Concrete\n    shared: '3'\n")
    assert execution.taskRunList[0].outputs == {"shared": 3}


def test_a_type_name_claimed_by_different_code_is_refused_naming_both() -> None:
    @kestream.task("acme.tasks.Twice")
    def first() -> None: ...

    with pytest.raises(TaskTypeConflict) as caught:

        @kestream.task("acme.tasks.Twice")
        def second() -> None: ...

    message = str(caught.value)
    assert "acme.tasks.Twice" in message
    assert "first" in message and "second" in message


def test_kestreams_own_type_names_cannot_be_taken() -> None:
    with pytest.raises(TaskTypeConflict, match=r"kestream\.tasks\.simple\.Log"):

        class Log(kestream.PythonTask):
            type_name = "io.kestra.plugin.core.log.Log"


def test_the_same_code_registered_again_replaces_itself() -> None:
    def make() -> None:
        @kestream.task("acme.tasks.Again")
        def again() -> dict[str, Any]:
            return {"v": 1}

    make()
    make()  # same module and qualified name: a re-import, not a conflict
    assert known_types().count("acme.tasks.Again") == 1


def test_unknown_type_message_lists_the_loaded_plugin_modules() -> None:
    assert "no plugin modules loaded" in unknown_type_message("acme.tasks.Nope")

    @kestream.task("acme.tasks.Known")
    def known() -> None: ...

    message = unknown_type_message("acme.tasks.Knwn")
    assert "did you mean 'acme.tasks.Known'" in message
    assert f"plugin modules loaded: {__name__}" in message
    assert plugin_modules() == [__name__]
    problems = check_flow(FLOW + "  - id: k\n    type: acme.tasks.Unheard\n")
    assert f"plugin modules loaded: {__name__}" in problems[0].message
