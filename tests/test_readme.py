"""The README's quickstart runs as pasted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

# Run after the quickstart, in the same script: its refusal must reach the caller as a
# UserError (a declared domain error), and a bug in its handler as an UnexpectedError.
REFUSAL_CHECK = """

async def refuse() -> None:
    async with cqrs.connect("memory://") as repository:
        app = cqrs.CqrsFramework(cqrs.PersistedEventStore(repository, Account))
        try:
            await app.execute("acc-2", -5)
        except cqrs.UserError as refused:
            print("refused:", refused)
        try:
            await app.execute("acc-2", "ten")
        except cqrs.UnexpectedError as bug:
            print("bug:", type(bug.__cause__).__name__)


asyncio.run(refuse())
"""


def quickstart() -> str:
    section = README.read_text("utf-8").split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    return code.group(1)


def run(tmp_path: Path, code: str) -> str:
    script = tmp_path / "quickstart.py"
    script.write_text(code, "utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    return result.stdout.strip()


def test_quickstart_runs_as_pasted(tmp_path):
    assert run(tmp_path, quickstart()) == "150"


def test_quickstart_refusal_is_a_user_error_and_a_bug_is_not(tmp_path):
    assert run(tmp_path, quickstart() + REFUSAL_CHECK).splitlines() == [
        "150",
        "refused: deposit a positive amount",
        "bug: TypeError",
    ]


TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install nox && .venv/bin/nox -s tests"
DEMO_COMMAND = "python3 -m venv .venv && .venv/bin/pip install nox && .venv/bin/nox -s demo"


def test_the_two_commands_are_first_and_ci_runs_the_test_command_exactly():
    readme = README.read_text("utf-8")
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert commands == [DEMO_COMMAND, TEST_COMMAND]
    ci = (README.parent / ".ci" / "run").read_text("utf-8").splitlines()
    assert TEST_COMMAND in ci  # the line itself, exactly


def test_every_relative_link_of_the_readme_resolves():
    readme = README.read_text("utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if "://" not in link]
    assert local, "the README links to the documentation"
    for link in local:
        path, _, anchor = link.partition("#")
        target = README.parent / path
        assert target.is_file(), f"README links to a missing file: {link}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text("utf-8"), re.MULTILINE)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README links to a missing heading: {link}"


def test_the_readme_maps_the_documentation_and_stays_short():
    readme = README.read_text("utf-8")
    for page in ("docs/tutorial.md", "docs/reference/index.md", "docs/backends.md"):
        assert f"({page}" in readme, page
    # The entry point: details belong in docs/ (the site's pages), not here.
    assert len(readme.splitlines()) < 320, "move long material into a page of docs/"
