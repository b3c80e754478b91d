"""Every Python code block of the documentation runs: README.md and docs/**/*.md.

The rules a page follows (docs/index.md says them to writers too):

- A page's untitled ```` ```python ```` blocks run in order as one program, in a fresh
  directory and a fresh interpreter, as a reader pasting them one after another would run
  them: later blocks see the names of earlier ones. A block may use top-level ``await``
  (as in ``python -m asyncio``); all such blocks of a page share one event loop.
- A titled block (```` ```python title="bank.py" ````) is a file: it is written into that
  directory under its name before the page runs, for the blocks to import or start, and is
  checked to parse. (docs/how-to/write-a-backend.md's two files are run by
  tests/test_third_party_backend.py, which installs a backend and runs the suite with them.)
- Blocks that are not Python to run use another fence: ``sh``, ``text``, ``toml``, ``sql``.
- A page naming the documentation's PostgreSQL URL (:data:`POSTGRES_URL`) runs on a fresh
  database of the test server (``CQRS_TEST_POSTGRES_URL``), and one naming the MongoDB URL
  (:data:`MONGODB_URL`) on a fresh database of ``CQRS_TEST_MONGODB_URL``; when that server
  is unreachable the page is skipped with the reason, or fails if ``CQRS_TEST_REQUIRE``
  names the backend.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

from cqrs_conformance.plugin import unusable

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
"""Where the documentation's PostgreSQL snippets connect (the local default server)."""
MONGODB_URL = "mongodb://127.0.0.1:27017/bank?replicaSet=rs0"
"""Where the documentation's MongoDB snippets connect (compose.yaml's replica set)."""

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<info>[^\n`]*)$")
RUNNABLE_LANGUAGES = {"python", "py"}

DRIVER = """\
import ast, asyncio, inspect, json, pathlib, sys

blocks = json.loads(pathlib.Path(sys.argv[1]).read_text("utf-8"))
namespace = {"__name__": "__main__"}
loop = asyncio.new_event_loop()
for block in blocks:
    source = "\\n" * (block["line"] - 1) + block["code"]  # tracebacks name the page's line
    code = compile(source, block["page"], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:
        loop.run_until_complete(eval(code, namespace))
    else:
        exec(code, namespace)
loop.run_until_complete(loop.shutdown_asyncgens())
loop.close()
"""


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the block's first code line in the page
    language: str
    title: str | None
    code: str


def blocks(page: Path, root: Path = ROOT) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    found: list[Block] = []
    lines = page.read_text("utf-8").splitlines()
    name = page.relative_to(root).as_posix()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        assert end < len(lines), f"{name}:{index + 1}: the code block is never closed"
        body = [line.removeprefix(indent) for line in lines[index + 1 : end]]
        language = info.split()[0].lstrip(".").lower() if info else ""
        title = re.search(r'title="([^"]+)"', info)
        found.append(
            Block(name, index + 2, language, title[1] if title else None, "\n".join(body) + "\n")
        )
        index = end + 1
    return found


def runnable(page: Path) -> bool:
    return any(b.language in RUNNABLE_LANGUAGES and b.title is None for b in blocks(page))


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


# -- servers ---------------------------------------------------------------------------------


def unavailable(backend_id: str, reason: str) -> NoReturn:
    """Skip the page, or fail it if CQRS_TEST_REQUIRE names the backend."""
    unusable(backend_id, reason)
    raise AssertionError  # unreachable: unusable skips or fails


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a new database on the test server, dropped afterwards."""
    try:
        import psycopg  # noqa: PLC0415 - only pages that need PostgreSQL import the driver
    except ImportError:
        unavailable("postgres", "psycopg is not installed")
    server = os.environ.get("CQRS_TEST_POSTGRES_URL", POSTGRES_URL)
    name = f"cqrs_docs_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(server, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        unavailable("postgres", f"server unreachable: {str(error).strip()[:200]}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def mongodb_database() -> Iterator[str]:
    """The URL of a new database on the MongoDB test server, dropped afterwards."""
    server = os.environ.get("CQRS_TEST_MONGODB_URL")
    if not server:
        unavailable("mongodb", "CQRS_TEST_MONGODB_URL is not set")
    try:
        import pymongo  # noqa: PLC0415 - only pages that need MongoDB import the driver
    except ImportError:
        unavailable("mongodb", "pymongo is not installed")
    name = f"cqrs_docs_{uuid.uuid4().hex[:12]}"
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        server, serverSelectionTimeoutMS=5000
    )
    with client:
        try:
            client.admin.command("ping")
        except pymongo.errors.PyMongoError as error:
            unavailable("mongodb", f"server unreachable: {str(error)[:200]}")
        try:
            yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
        finally:
            client.drop_database(name)


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=page_id)
def test_the_python_blocks_of_the_page_run(page, tmp_path):
    page_blocks = blocks(page)
    for block in page_blocks:
        if block.language in RUNNABLE_LANGUAGES and block.title is not None:
            (tmp_path / block.title).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / block.title).write_text(block.code, "utf-8")
    program = [
        {"page": b.page, "line": b.line, "code": b.code}
        for b in page_blocks
        if b.language in RUNNABLE_LANGUAGES and b.title is None
    ]
    text = json.dumps(program)
    with contextlib.ExitStack() as servers:
        if POSTGRES_URL in text:
            text = text.replace(POSTGRES_URL, servers.enter_context(postgres_database()))
        if MONGODB_URL in text:
            text = text.replace(MONGODB_URL, servers.enter_context(mongodb_database()))
        (tmp_path / "_blocks.json").write_text(text, "utf-8")
        (tmp_path / "_driver.py").write_text(DRIVER, "utf-8")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
        env.pop("CQRS_DATABASE_URL", None)  # the example app's default must not leak in
        result = subprocess.run(
            [sys.executable, "-W", "error", "_driver.py", "_blocks.json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert result.returncode == 0, f"{page_id(page)} failed:\n{result.stdout}\n{result.stderr}"
    # A warning raised where it cannot propagate (an unclosed file or connection) is printed.
    assert "Exception ignored" not in result.stderr, result.stderr


def test_every_fence_names_a_language_and_every_python_block_parses():
    # A page with no runnable block is fine (concepts, tables), but a python block must never
    # be left out by a fence without a language.
    for page in PAGES:
        for block in blocks(page):
            assert block.language, f"{block.page}:{block.line - 1}: a fence without a language"
            if block.language in RUNNABLE_LANGUAGES:
                ast.parse(block.code, f"{block.page}:{block.line}")


def test_the_collector_finds_the_blocks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        '# A page\n\n```python\nx = 1\n```\n\n- item\n\n    ```python title="m.py"\n'
        "    y = 2\n    ```\n\n````text\n```python\nnot code\n```\n````\n",
        "utf-8",
    )
    found = blocks(page, tmp_path)
    assert [(b.line, b.language, b.title, b.code) for b in found] == [
        (4, "python", None, "x = 1\n"),
        (10, "python", "m.py", "y = 2\n"),
        (14, "text", None, "```python\nnot code\n```\n"),
    ]


def test_the_readme_and_the_tutorial_have_runnable_python():
    ids = {page_id(p) for p in PAGES if runnable(p)}
    assert {"README.md", "docs/tutorial.md"} <= ids


def test_a_failing_block_fails_the_page(tmp_path):
    block = {"page": "docs/x.md", "line": 7, "code": "await asyncio.sleep(0)\nraise KeyError(7)\n"}
    (tmp_path / "_blocks.json").write_text(
        json.dumps([{"page": "docs/x.md", "line": 1, "code": "import asyncio\n"}, block]), "utf-8"
    )
    (tmp_path / "_driver.py").write_text(DRIVER, "utf-8")
    result = subprocess.run(
        [sys.executable, "_driver.py", "_blocks.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert 'File "docs/x.md", line 8' in result.stderr
    assert "KeyError: 7" in result.stderr


def test_every_page_of_the_docs_is_in_the_site_navigation():
    # mkdocs build --strict fails on a page left out of the nav; this says so in the tests.
    nav = (ROOT / "mkdocs.yml").read_text("utf-8").split("\nnav:\n", 1)[1]
    listed = set(re.findall(r"([\w./-]+\.md)\s*$", nav, re.MULTILINE))
    docs = ROOT / "docs"
    pages = {p.relative_to(docs).as_posix() for p in docs.rglob("*.md") if "_ext" not in p.parts}
    assert pages - listed == set(), "add these pages to the nav of mkdocs.yml"
    assert listed - pages == set(), "the nav of mkdocs.yml names missing pages"
