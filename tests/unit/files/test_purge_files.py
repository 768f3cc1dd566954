"""PurgeExecutions removes the purged executions' stored files (``purgeStorage``)."""

from __future__ import annotations

from kestream.models.state import StateType
from kestream.storage import Storage, execution_prefix
from kestream.testing import Driver

S = StateType
WRITER = """id: writer
namespace: company.team
tasks:
  - id: one
    type: io.kestra.plugin.core.storage.Write
    content: first
  - id: two
    type: io.kestra.plugin.core.storage.Write
    content: second
"""


def _purge(keep_files: bool) -> str:
    return f"""id: purge
namespace: system
tasks:
  - id: purge
    type: io.kestra.plugin.core.execution.PurgeExecutions
    namespace: company.team
    flowId: writer
    endDate: "{{{{ now() | dateAdd(1, 'DAYS') }}}}"
    purgeStorage: {str(not keep_files).lower()}
"""


def test_purge_removes_the_files_of_purged_executions_only(storage: Storage) -> None:
    with Driver() as driver:
        driver.deploy(WRITER)
        done = driver.start("company.team", "writer")
        assert done.state.current is S.SUCCESS
        folder = execution_prefix("company.team", "writer", done.id)
        assert len(storage.list(folder)) == 2
        unrelated = "company/team/other/executions/X/tasks/t/r/keep.txt"
        storage.put(unrelated, b"keep")

        driver.deploy(_purge(keep_files=True))
        kept = driver.start("system", "purge")
        assert (kept.taskRunList[0].outputs or {})["storagesCount"] == 0
        assert len(storage.list(folder)) == 2

        again = driver.start("company.team", "writer")
        driver.deploy(_purge(keep_files=False))
        purged = driver.start("system", "purge")
        assert purged.state.current is S.SUCCESS
        assert (purged.taskRunList[0].outputs or {})["storagesCount"] == 2  # the second run's files
        assert storage.list(execution_prefix("company.team", "writer", again.id)) == []
        assert storage.get(unrelated) == b"keep"
