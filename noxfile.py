"""The one entry point for people and CI: ``nox -s tests``, ``lint``, ``typecheck``, ``demo``.

Dependencies come from the extras and dependency groups in pyproject.toml.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
SECANTUS_VENV = ROOT / ".nox" / "_secantusdb"


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite against every backend whose server is reachable.

    PostgreSQL: CQRS_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
    MongoDB: CQRS_TEST_MONGODB_URL; when unset, a SecantusDB test server is installed in its
    own virtualenv and run for the session. CQRS_TEST_REQUIRE=postgres,mongodb turns a skip
    of those backends into a failure. Extra arguments go to pytest (e.g. ``-- -m stress``).
    """
    session.install("-e", ".[all]", *_group("test"))
    with _mongodb_test_server(session) as env:
        session.run("pytest", *session.posargs, env=env)


@nox.session
def demo(session: nox.Session) -> None:
    """Run the bank-account demo (default: embedded SQLite in ./bank.db).

    ``nox -s demo -- --database-url postgresql://...`` swaps the backend; ``nox -s demo --
    serve`` starts the HTTP API instead.
    """
    session.install("-e", ".[all]", *_group("example"))
    args = session.posargs
    command = args[0] if args and args[0] in ("demo", "serve") else "demo"
    rest = args[1:] if args and args[0] in ("demo", "serve") else args
    session.run("python", "-m", "examples.bank_account", command, *rest)


@nox.session
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks: framework vs raw driver vs the eventsourcing package.

    Arguments go to the harness, e.g. ``nox -s bench -- --quick --json out.json``.
    """
    session.install("-e", ".[all]", *_group("bench"))
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def mutate(session: nox.Session) -> None:
    """Mutation testing of the core (``cqrs/``) with mutmut against the memory and SQLite
    tests (see ``[tool.mutmut]`` in pyproject.toml); prints the score and the survivors.

    Not part of CI (it takes minutes). Arguments go to ``mutmut run`` (e.g. mutant names
    to re-check); ``mutmut browse`` in the session's virtualenv shows each survivor's diff.
    """
    session.install("-e", ".[all]", *_group("mutate"))
    session.run("mutmut", "run", *session.posargs, env={"CQRS_TEST_REQUIRE": ""})
    session.run("mutmut", "export-cicd-stats")
    stats = json.loads((ROOT / "mutants" / "mutmut-cicd-stats.json").read_text())
    checked = stats["total"] - stats["skipped"]  # a mutant no test reaches survives
    killed = stats["killed"] + stats["timeout"] + stats["segfault"]
    score = 100 * killed / checked if checked else 0.0
    session.log(f"mutation score {score:.1f}% ({killed} killed of {checked}; {stats})")
    session.run("mutmut", "results")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ with ``mkdocs build --strict`` (a warning, a
    broken link or anchor fails it), then check that no page loads anything from the
    network (fonts, scripts, styles, images). Open site/index.html to read it.

    The API reference is read from the source by mkdocstrings, so the package itself is
    not installed. The docs' code blocks are run by the tests (tests/test_docs_snippets.py).
    """
    session.install(*_group("docs"))
    site = ROOT / "site"
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", str(site), env={"NO_MKDOCS_2_WARNING": "1"}
    )
    fetched = _network_resources(site)
    if fetched:
        session.error(f"pages load from the network: {fetched[:10]}")
    session.log(f"documentation built: {site / 'index.html'}")


def _network_resources(site: Path) -> list[str]:
    """What the built pages would fetch from another host: scripts, styles, images, fonts."""
    loads = re.compile(
        r"""<(?:script|img|iframe|source)\b[^>]*\bsrc=["']((?:https?:)?//[^"']+)"""
        r"""|<link\b[^>]*\bhref=["']((?:https?:)?//[^"']+)"""
        r"""|@import\s+(?:url\()?["']?((?:https?:)?//[^"')]+)"""
        r"""|url\(["']?((?:https?:)?//[^"')]+)""",
        re.IGNORECASE,
    )
    found: set[str] = set()
    for path in site.rglob("*"):
        if path.suffix in {".html", ".css", ".js"}:
            for match in loads.finditer(path.read_text("utf-8", errors="replace")):
                found.add(f"{path.relative_to(site)}: {next(g for g in match.groups() if g)}")
    return sorted(found)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install(*_group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy with the pyproject config: --strict on the package, the backends, the example,
    the benchmarks, this file and the typed usage file (tests/typing/usage.py), relaxed on
    the tests; then the README quickstart, as pasted, under mypy --strict.

    The dev group (test, lint, typecheck, nox) and the bench group are installed so that
    mypy sees the types of everything the tests, benchmarks and this file import.
    """
    session.install("-e", ".[all]", *_group("dev"), *_group("bench"))
    session.run("mypy")
    session.run("pytest", "-p", "no:cacheprovider", "-q", "tests/test_typing.py")


def _secantusd(session: nox.Session) -> Path:
    """The SecantusDB server binary, installed in its own virtualenv (never imported)."""
    server = SECANTUS_VENV / "bin" / "secantusd-py"
    if not server.exists():
        session.run(sys.executable, "-m", "venv", str(SECANTUS_VENV), external=True)
        session.run(
            str(SECANTUS_VENV / "bin" / "pip"), "install", "-q", "secantusdb", external=True
        )
    return server


@contextlib.contextmanager
def _mongodb_test_server(session: nox.Session) -> Iterator[dict[str, str]]:
    server = _secantusd(session)  # some tests start servers of their own
    env = {"CQRS_TEST_SECANTUSD": str(server)}
    if os.environ.get("CQRS_TEST_MONGODB_URL"):
        yield env
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (ROOT / ".nox" / "secantusdb.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own venv's server binary
        [str(server), "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                session.error(f"SecantusDB did not start; see {log.name}")
            time.sleep(0.2)
        url = f"mongodb://127.0.0.1:{port}/?replicaSet=secantus"
        session.log(f"SecantusDB test server at {url} (pid {process.pid})")
        yield {**env, "CQRS_TEST_MONGODB_URL": url}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
