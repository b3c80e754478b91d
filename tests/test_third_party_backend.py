"""A backend outside this repository plugs in: installed into its own virtualenv, it is
reached by URL through the ``cqrs.backends`` entry point and passes the shipped conformance
suite, run with the two files docs/how-to/write-a-backend.md shows (read from that page).

The package, ``cqrs_dict``, serves ``dict://NAME``: an in-process store shared by every
repository opened with the same NAME (the memory backend's repository underneath). The
virtualenv sees this interpreter's packages (cqrs-es, pytest, hatchling) through a ``.pth``
file and gets ``cqrs_dict`` by ``pip install``, built from its own pyproject.toml.
"""

from __future__ import annotations

import re
import site
import subprocess
import venv
from pathlib import Path

import pytest

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "cqrs-dict"
version = "0.1"
dependencies = ["cqrs-es"]

[project.entry-points."cqrs.backends"]
dict = "cqrs_dict:from_url"

[tool.hatch.build.targets.wheel]
packages = ["cqrs_dict"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
"""

PACKAGE = '''\
"""dict://NAME: an in-process store shared by the repositories opened with that NAME."""

from urllib.parse import urlsplit

from cqrs_memory import MemoryDatabase, MemoryEventRepository

_DATABASES: dict[str, MemoryDatabase] = {}


class DictEventRepository(MemoryEventRepository):
    """The memory backend's repository over the database named by the URL."""


def from_url(
    url: str, *, events_table="events", snapshots_table="snapshots", page_size=500
) -> DictEventRepository:
    database = _DATABASES.setdefault(urlsplit(url).netloc, MemoryDatabase())
    return DictEventRepository(
        events_table, snapshots_table, database=database, page_size=page_size
    )


def drop(name: str) -> None:
    _DATABASES.pop(name, None)
'''


def readme_files() -> tuple[str, str]:
    """The conftest.py and the test module docs/how-to/write-a-backend.md shows."""
    page = Path(__file__).resolve().parent.parent / "docs" / "how-to" / "write-a-backend.md"
    files = dict(
        re.findall(r'```python title="tests/([^"]+)"\n(.*?)```', page.read_text("utf-8"), re.DOTALL)
    )
    return files["conftest.py"], files["test_conformance.py"]


CONNECT = """\
import asyncio, cqrs

async def main():
    async with cqrs.connect("dict://shop") as repository:
        print(type(repository).__module__, type(repository).__name__)
        print(await repository.get_events("T", "x"))

asyncio.run(main())
"""


def make_venv(root: Path) -> Path:
    """A virtualenv (no pip of its own) that also sees this interpreter's packages."""
    try:
        venv.EnvBuilder(with_pip=False).create(root)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot create a virtualenv here: {error}")
    python = root / "bin" / "python"
    (purelib,) = {Path(p) for p in root.glob("lib/python*/site-packages")}
    # addsitedir also runs the .pth files there (the editable install of cqrs-es).
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    lines = [f"import site; site.addsitedir({d!r})" for d in dirs if Path(d).is_dir()]
    (purelib / "_parent_packages.pth").write_text("\n".join(lines) + "\n", "utf-8")
    return python


def run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=300
    )


def test_an_out_of_tree_backend_is_connected_by_url_and_passes_the_shipped_suite(tmp_path):
    project = tmp_path / "cqrs-dict"
    (project / "cqrs_dict").mkdir(parents=True)
    (project / "pyproject.toml").write_text(PYPROJECT, "utf-8")
    (project / "cqrs_dict" / "__init__.py").write_text(PACKAGE, "utf-8")
    python = make_venv(tmp_path / "venv")

    pip = ["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(project)]
    installed = run(python, *pip, cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # The tests live apart from the package: what runs is the installed cqrs_dict.
    tests = tmp_path / "tests"
    tests.mkdir()
    conftest, module = readme_files()
    (tests / "conftest.py").write_text(conftest, "utf-8")
    (tests / "test_conformance.py").write_text(module, "utf-8")
    (tmp_path / "pyproject.toml").write_text(
        PYPROJECT[PYPROJECT.index("[tool.pytest.ini_options]") :], "utf-8"
    )

    connected = run(python, "-c", CONNECT, cwd=tmp_path)
    assert connected.returncode == 0, connected.stderr
    assert connected.stdout.split("\n")[:2] == ["cqrs_dict DictEventRepository", "[]"]

    listed = run(python, "-m", "pytest", "-q", "--collect-only", "tests", cwd=tmp_path)
    ids = [line for line in listed.stdout.splitlines() if "::" in line]
    assert len(ids) > 150, listed.stdout[-2000:] + listed.stderr[-2000:]
    on_dict = [line for line in ids if re.search(r"\[dict(-[^]]*)?\]$", line)]
    assert len(on_dict) > 150, ids[:5]  # the rest do not take a backend

    suite = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=tmp_path)
    assert suite.returncode == 0, suite.stdout[-5000:] + suite.stderr[-2000:]
    passed = re.search(r"(\d+) passed", suite.stdout)
    assert passed, suite.stdout[-2000:]
    assert int(passed.group(1)) > 150, suite.stdout[-2000:]
