"""Check mutmut's mutants against chosen test files, one forked pytest per mutant.

``nox -s mutate`` (mutmut) runs, for every mutant, every test that reached the mutated
function in its stats run, slowest functions last; on two cores the last third of the core's
mutants (functions reached by hundreds of SQLite tests) take hours. This script checks the
mutants mutmut has not checked yet the way mutmut does (a preloaded pytest process forks a
child per mutant, which sets ``MUTANT_UNDER_TEST`` and runs the tests with ``-x``), but
against the fast unit tests of the mutant's module only (``tests/test_core_<module>*.py``
and a few more: see ``FILES``), fastest first, leaving out any test that fails on the
unmutated code (a test newer than the mutated sources). A mutant is *killed* when a test
fails or the child runs over its time; otherwise it *survived these files* (it may still
be killed by other tests: the count is conservative).

Run it from mutmut's ``mutants/`` directory with the mutate session's Python, after a
``mutmut run`` (finished or stopped)::

    cd mutants && ../.nox/mutate/bin/python ../tests/mutation_finish.py NAMES RESULTS

``NAMES`` holds one mutant name per line (``mutmut results --all true`` lists them);
``RESULTS`` gets one line per mutant, ``name status seconds``, and names already in it are
skipped, so a stopped check resumes. ``MUTATION_TIMEOUT`` (seconds, default 90) bounds one
mutant. Not part of the test suite (its name does not start with ``test_``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

# The mutated package in the working directory, not the installed one.
sys.path.insert(0, str(Path.cwd()))

import pytest

FILES: dict[str, list[str]] = {
    "cqrs.checkpoints": ["tests/test_core_checkpoints.py"],
    "cqrs.cli": [
        "tests/test_core_cli.py",
        "tests/test_core_cli_checks.py",
        "tests/test_core_cli_copy.py",
        "tests/test_core_cli_projections.py",
    ],
    "cqrs.codec": ["tests/test_core_codec.py", "tests/test_codec.py"],
    "cqrs.connection": ["tests/test_core_connection.py"],
    "cqrs.ddl": ["tests/test_core_ddl.py"],
    "cqrs.events": ["tests/test_core_events.py"],
    "cqrs.framework": [
        "tests/test_core_framework.py",
        "tests/test_core_framework_outcomes.py",
        "tests/test_framework.py",
    ],
    "cqrs.projection": [
        "tests/test_core_projection.py",
        "tests/test_core_projection_feed.py",
        "tests/test_core_projection_run.py",
        "tests/test_core_projection_views.py",
        "tests/test_event_rows.py",
    ],
    "cqrs.query": ["tests/test_core_query.py", "tests/test_core_query_replay.py"],
    "cqrs.repository": ["tests/test_core_repository.py", "tests/test_event_rows.py"],
    "cqrs.store": ["tests/test_core_store.py", "tests/test_event_rows.py"],
    "cqrs.subscription": [
        "tests/test_core_subscription.py",
        "tests/test_core_subscription_pages.py",
        "tests/test_core_subscription_wakeups.py",
    ],
    "cqrs.tagged": ["tests/test_core_tagged.py", "tests/test_tagged_payloads.py"],
    "cqrs.telemetry": [
        "tests/test_core_telemetry.py",
        "tests/test_core_telemetry_more.py",
        "tests/test_telemetry.py",
    ],
    "cqrs.upcasting": ["tests/test_core_upcasting.py", "tests/test_upcasting.py"],
}
PYTEST = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly"]


def check(name: str, tests: list[str], timeout: float) -> str:
    """Run ``tests`` (node ids) against mutant ``name`` in a forked child: killed,
    survived or timeout."""
    pid = os.fork()
    if pid == 0:  # the child: quiet, its own process group, the mutant switched on
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.environ["MUTANT_UNDER_TEST"] = name
        os._exit(int(pytest.main(["-x", *PYTEST, *tests])))
    began = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            if code == 0:
                return "survived"
            return "no-tests" if code == pytest.ExitCode.NO_TESTS_COLLECTED else "killed"
        if time.monotonic() - began > timeout:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.02)


class _Timings:
    """A pytest plugin that records each test's time and outcome."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.failed: set[str] = set()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            self.failed.add(report.nodeid)


def ordered_tests(files: list[str], extra: list[str]) -> list[str]:
    """The tests of ``files`` that pass on the unmutated code, fastest first (as mutmut
    orders them: a mutant is usually killed by the first test that fails)."""
    timings = _Timings()
    pytest.main([*PYTEST, *files, *extra], plugins=[timings])
    passing = [node for node in timings.seconds if node not in timings.failed]
    return sorted(passing, key=timings.seconds.__getitem__)


def main(argv: list[str]) -> int:
    """Check every mutant named in ``argv[0]``; append the results to ``argv[1]``; any
    further arguments go to pytest."""
    names_file, results_file, *extra = argv
    import cqrs  # noqa: PLC0415 - after sys.path points at the mutants

    if not str(cqrs.__file__).startswith(str(Path.cwd())):
        sys.exit(f"run this from mutmut's mutants/ directory (cqrs is {cqrs.__file__})")
    results = Path(results_file)
    done = set()
    if results.exists():
        done = {line.split()[0] for line in results.read_text().splitlines() if line.strip()}
    names = [line.strip() for line in Path(names_file).read_text().splitlines() if line.strip()]
    names = [name for name in names if name not in done]
    timeout = float(os.environ.get("MUTATION_TIMEOUT", "90"))
    os.environ["MUTANT_UNDER_TEST"] = ""
    modules = {max((p for p in FILES if n.startswith(p + ".")), key=len, default="") for n in names}
    tests = {module: ordered_tests(FILES[module], extra) for module in modules if module}
    with results.open("a") as out:
        for name in names:
            module = max((p for p in FILES if name.startswith(p + ".")), key=len, default="")
            began = time.monotonic()
            status = check(name, tests[module], timeout) if tests.get(module) else "no-files"
            print(name, status, round(time.monotonic() - began, 2), file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
