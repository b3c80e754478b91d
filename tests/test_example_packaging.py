"""The example's dependencies: one list, offered as the `example` extra (pip) and group (nox)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_example_extra_and_group_list_the_same_requirements():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extra = pyproject["project"]["optional-dependencies"]["example"]
    group = pyproject["dependency-groups"]["example"]
    assert extra == group
    names = {requirement.split(">")[0].split("[")[0] for requirement in extra}
    assert {"fastapi", "uvicorn", "pydantic", "swagger-ui-bundle-v2"} <= names


def test_the_server_modules_import_only_what_the_extra_installs():
    # The domain, auth and idempotency modules need only the core; the HTTP layer needs the
    # extra. The README's `pip install -e '.[example]'` is the whole install.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[example]'" in readme
