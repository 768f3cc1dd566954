"""Namespace files: mounted into script tasks, read by templates, managed through the API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer

from kestream.api.handle import ApiHandle
from kestream.api.namespace_file_routes import NamespaceFileRoutes
from kestream.models.state import StateType
from kestream.settings import Settings
from kestream.storage import Storage
from kestream.testing import Driver

S = StateType
ROOT = "company/team/_files/"


def test_scripts_mount_the_namespace_files_they_include(storage: Storage) -> None:
    storage.put(ROOT + "scripts/hello.sh", b"echo hello from $1\n")
    storage.put(ROOT + "scripts/skip.txt", b"not mounted\n")
    storage.put(ROOT + "main.py", b"print('top')\n")
    storage.put("company/other/_files/scripts/foreign.sh", b"echo foreign\n")
    with Driver() as driver:
        flow = driver.deploy(
            """id: nsfiles
namespace: company.team
tasks:
  - id: all
    type: io.kestra.plugin.scripts.shell.Commands
    namespaceFiles:
      enabled: true
    commands:
      - sh scripts/hello.sh all
      - find . -type f | sort
  - id: some
    type: io.kestra.plugin.scripts.shell.Commands
    namespaceFiles:
      enabled: true
      include: ["**/*.sh", "**/*.py"]
      exclude: ["main.py"]
    commands:
      - find . -type f | sort
"""
        )
        execution = driver.start(flow.namespace, flow.id)
        logs = [(line.taskId, line.message) for line in driver.logs(execution.id)]
    assert execution.state.current is S.SUCCESS, logs
    assert [m for t, m in logs if t == "all"] == [
        "hello from all", "./main.py", "./scripts/hello.sh", "./scripts/skip.txt",
    ]  # fmt: skip
    assert [m for t, m in logs if t == "some"] == ["./scripts/hello.sh"]


@pytest.fixture
async def client(storage: Storage) -> AsyncIterator[TestClient]:
    app = web.Application()
    app.add_routes(NamespaceFileRoutes(ApiHandle(Settings()), storage).routes())
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def _upload(content: bytes) -> FormData:
    form = FormData()
    form.add_field("fileContent", content, filename="x.bin")
    return form


async def test_upload_list_stat_download_delete(client: TestClient, storage: Storage) -> None:
    base = "/api/v1/main/namespaces/company.team/files"
    for path, content in (("/sql/q.sql", b"select 1"), ("/sql/deep/r.sql", b"x"), ("/a.txt", b"")):
        answer = await client.post(f"{base}?path={path}", data=_upload(content))
        assert answer.status == 200
    assert storage.get(ROOT + "sql/q.sql") == b"select 1"
    listed = await (await client.get(f"{base}/directory")).json()
    assert [(e["fileName"], e["type"]) for e in listed] == [("a.txt", "File"), ("sql", "Directory")]
    inside = await (await client.get(f"{base}/directory?path=/sql")).json()
    assert [(e["fileName"], e["type"], e["size"]) for e in inside] == [
        ("deep", "Directory", 0), ("q.sql", "File", 8),
    ]  # fmt: skip
    stats = await (await client.get(f"{base}/stats?path=/sql/q.sql")).json()
    assert stats["type"] == "File" and stats["size"] == 8
    assert (await (await client.get(f"{base}/stats?path=/sql")).json())["type"] == "Directory"
    assert await (await client.get(f"{base}?path=/sql/q.sql")).read() == b"select 1"
    found = await (await client.get(f"{base}/search?q=.sql")).json()
    assert found == ["/sql/deep/r.sql", "/sql/q.sql"]
    assert (await client.delete(f"{base}?path=/sql")).status == 204
    assert storage.list(ROOT) == [ROOT + "a.txt"]
    assert (await client.get(f"{base}?path=/sql/q.sql")).status == 404


@pytest.mark.parametrize(
    "path", ["/../../x/executions/E/secret", "/a/../../b", "/a//b", "/%2e%2e/x", "/a\\..\\b"]
)
async def test_paths_that_leave_the_namespace_are_refused(
    client: TestClient,
    storage: Storage,
    path: str,
) -> None:
    storage.put("company/x/executions/E/secret", b"secret")
    base = "/api/v1/main/namespaces/company.team/files"
    answer = await client.get(f"{base}?path={path}")
    assert answer.status in (400, 404)
    upload = await client.post(f"{base}?path={path}", data=_upload(b"planted"))
    assert upload.status == 400
    assert storage.list("company") == ["company/x/executions/E/secret"]


async def test_uploads_past_the_upload_limit_are_refused(storage: Storage) -> None:
    app = web.Application()
    settings = Settings(api_max_upload_bytes=4096)
    app.add_routes(NamespaceFileRoutes(ApiHandle(settings), storage).routes())
    async with TestClient(TestServer(app)) as small:
        base = "/api/v1/main/namespaces/company.team/files"
        assert (await small.post(f"{base}?path=/ok.bin", data=_upload(b"x" * 1000))).status == 200
        refused = await small.post(f"{base}?path=/big.bin", data=_upload(b"x" * 20_000))
        assert refused.status == 413
    assert storage.list(ROOT) == [ROOT + "ok.bin"]
