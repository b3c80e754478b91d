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
