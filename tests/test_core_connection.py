"""cqrs.connect: which backend a URL names, the errors that say what to install, and the
repository's lifecycle around it."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import cqrs
import cqrs.connection
from cqrs import ConfigurationError, NotOpenError, connect
from cqrs_memory import MemoryEventRepository


class Recorder(MemoryEventRepository):
    """A memory repository that records its lifecycle; ``fail_schema`` makes schema fail."""

    instances: list[Recorder] = []  # noqa: RUF012 - shared on purpose, reset per test
    fail_schema = False

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.calls: list[str] = []
        Recorder.instances.append(self)

    async def open(self) -> None:
        self.calls.append("open")
        await super().open()

    async def create_schema(self) -> None:
        self.calls.append("create_schema")
        if self.fail_schema:
            raise RuntimeError("schema refused")
        await super().create_schema()

    async def close(self) -> None:
        self.calls.append("close")
        await super().close()


class FailingRecorder(Recorder):
    fail_schema = True


NOT_CALLABLE = "a string, not a factory"


@pytest.fixture
def schemes(monkeypatch):
    """Register test schemes next to the installed ones; return the recorded repositories."""
    installed = cqrs.connection.backends()
    here = __name__
    extra = {
        "recorded": EntryPoint("recorded", f"{here}:Recorder", "cqrs.backends"),
        "failing": EntryPoint("failing", f"{here}:FailingRecorder", "cqrs.backends"),
        "nocall": EntryPoint("nocall", f"{here}:NOT_CALLABLE", "cqrs.backends"),
        "gone": EntryPoint("gone", "no_such_backend_module:from_url", "cqrs.backends"),
        "gone2": EntryPoint("gone2", "no_such_backend_module:from_url [a, b]", "cqrs.backends"),
    }
    monkeypatch.setattr(cqrs.connection, "backends", lambda: {**installed, **extra})
    Recorder.instances = []
    return Recorder.instances


async def test_async_with_opens_creates_the_schema_and_closes(schemes):
    async with connect("recorded://db") as repository:
        assert isinstance(repository, Recorder)
        assert repository.url == "recorded://db"
        assert repository.calls == ["open", "create_schema"]
        assert await repository.get_events("T", "a") == []
    assert repository.calls == ["open", "create_schema", "close"]
    with pytest.raises(NotOpenError):
        await repository.get_events("T", "a")


async def test_await_leaves_the_repository_open_for_the_caller(schemes):
    repository = await connect("recorded://db", create_schema=False)
    assert repository.calls == ["open"]
    assert await repository.get_events("T", "a") == []
    await repository.close()


async def test_a_failing_schema_creation_closes_the_repository_and_is_raised(schemes):
    with pytest.raises(RuntimeError, match="schema refused"):
        async with connect("failing://db"):
            pytest.fail("entered a repository whose schema failed")
    (repository,) = schemes
    assert repository.calls == ["open", "create_schema", "close"]
    with pytest.raises(RuntimeError, match="schema refused"):
        await connect("failing://db")
    assert schemes[1].calls == ["open", "create_schema", "close"]


async def test_schemes_are_case_insensitive_and_only_the_first_separator_counts(schemes):
    async with connect("RECORDED://a://b") as repository:
        assert repository.url == "RECORDED://a://b"
    async with connect("Memory://x") as memory:
        assert await memory.get_events("T", "a") == []


@pytest.mark.parametrize("url", ["memory", "sqlite", "recorded:/x", "://memory", None, 42])
def test_a_url_without_a_known_scheme_is_refused_at_once(schemes, url):
    with pytest.raises(ConfigurationError) as raised:
        connect(url)
    message = str(raised.value)
    assert message.startswith(f"unsupported database URL {url!r}: the scheme must be one of ")
    known = message.partition("the scheme must be one of ")[2].split(", ")
    assert known == [f"{scheme}://" for scheme in sorted(cqrs.connection.backends())]
    assert {"failing://", "gone://", "gone2://", "memory://", "sqlite://"} <= set(known)


async def test_a_backend_that_does_not_import_says_how_to_install_it(schemes):
    with pytest.raises(ConfigurationError) as raised:
        await connect("gone://x")
    message = str(raised.value)
    assert message.startswith("the gone:// backend is not available (No module named ")
    assert message.endswith("install it with: reinstall 'no_such_backend_module:from_url'")
    assert isinstance(raised.value.__cause__, ImportError)
    with pytest.raises(ConfigurationError, match=r"install it with: pip install 'cqrs-es\[a,b\]'"):
        await connect("gone2://x")


async def test_an_entry_point_that_is_not_a_factory_is_refused(schemes):
    with pytest.raises(ConfigurationError) as raised:
        await connect("nocall://x")
    assert str(raised.value) == (
        f"the nocall:// backend's entry point '{__name__}:NOT_CALLABLE' is not callable"
    )


def test_connect_shows_its_url():
    assert repr(connect("memory://")) == "connect('memory://')"


# Ids that name no server backend: mutmut's test selection deselects ids containing one.
REDACTED = {
    "user-password": ("postgresql://user:secret@db:5432/app", "postgresql://user:***@db:5432/app"),
    "escaped-password": ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg://u:***@h/db"),
    "raw-at-in-password": ("x://u:p@ss@h/db", "x://u:***@h/db"),
    "colon-in-password": ("x://u:p:w@h/db", "x://u:***@h/db"),
    "several-hosts": ("mongodb://a:b@h1,h2/?replicaSet=rs", "mongodb://a:***@h1,h2/?replicaSet=rs"),
    "query-password": (
        "postgresql://h/db?user=u&password=pw&sslmode=off",
        "postgresql://h/db?user=u&password=***&sslmode=off",
    ),
    "query-secrets-any-case": (
        "x://h/db?Password=a&SECRET=b&token=c&pwd=d&passwd=e&sslpassword=f&sslmode=off",
        "x://h/db?Password=***&SECRET=***&token=***&pwd=***&passwd=***&sslpassword=***&sslmode=off",
    ),
    "query-blank-kept": ("x://h/db?a=&password=pw", "x://h/db?a=&password=***"),
    "query-without-secret-untouched": ("x://h/db?name=a%20b&c=d", "x://h/db?name=a%20b&c=d"),
    "no-password": ("mysql://root@localhost/test", "mysql://root@localhost/test"),
    "file-path": ("sqlite:///tmp/bank.db", "sqlite:///tmp/bank.db"),
    "no-host": ("memory://", "memory://"),
    "not-a-url": ("not a url", "not a url"),
    "unparsable": ("x://u:pw@[::1", "x://u:***@[::1"),
    "unparsable-raw-at": ("x://u:p@w@[::1", "x://u:***@[::1"),
    "unparsable-colon-in-password": ("x://u:p:w@[::1", "x://u:***@[::1"),
    "unparsable-second-scheme": ("x://u:pw@[::1/a://b", "x://u:***@[::1/a://b"),
    "unparsable-no-user": ("x://[::1", "x://[::1"),
    "unparsable-no-scheme": ("u:pw@[::1", "u:pw@[::1"),
}


@pytest.mark.parametrize(("url", "shown"), REDACTED.values(), ids=REDACTED.keys())
def test_redact_url_hides_passwords_and_keeps_the_rest(url, shown):
    assert cqrs.redact_url(url) == shown


def test_an_unsupported_scheme_is_refused_without_echoing_the_password():
    with pytest.raises(cqrs.ConfigurationError) as caught:
        cqrs.connect("postgresql+psycopg://user:secret@db/app")
    assert "secret" not in str(caught.value)
    assert "user:***@db" in str(caught.value)
