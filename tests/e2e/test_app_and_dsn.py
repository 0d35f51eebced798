"""In-process checks of what the worker and the CLI are built on: App, load_app, redact."""

from __future__ import annotations

import psycopg
import pytest

from fifoq import App, InvalidInput, InvalidPolicy
from fifoq.dsn import redact, resolve_dsn
from fifoq.worker import AppLoadError, Worker, describe_error, load_app


def test_app_registers_async_handlers_with_their_policy() -> None:
    app = App()

    @app.action("x.deploy", max_concurrent=2, group_by=("host",), timeout=5)
    async def deploy(payload: object) -> object:
        return payload

    spec = app["x.deploy"]
    assert spec.handler is deploy
    assert (spec.max_concurrent, spec.group_by, spec.timeout) == (2, ("host",), 5.0)
    assert "x.deploy" in app and len(app) == 1


def test_app_refuses_bad_registrations() -> None:
    app = App()

    def not_async(payload: object) -> None:
        return None

    with pytest.raises(TypeError, match="must be an async function"):
        app.action("x.sync")(not_async)  # type: ignore[arg-type]
    with pytest.raises(InvalidPolicy, match="max_concurrent"):
        app.action("x.bad", max_concurrent=0)
    with pytest.raises(InvalidInput, match="invalid action name"):
        app.action("bad\nname")
    with pytest.raises(ValueError, match="timeout"):
        app.action("x.t", timeout=-1)

    @app.action("x.once")
    async def once(payload: object) -> None:
        return None

    with pytest.raises(ValueError, match="already registered"):
        app.action("x.once")
    assert len(app) == 1


def test_worker_refuses_unknown_actions_and_empty_apps() -> None:
    app = App()
    with pytest.raises(ValueError, match="no actions"):
        Worker(app)

    @app.action("x.a")
    async def a(payload: object) -> None:
        return None

    with pytest.raises(ValueError, match="unknown action"):
        Worker(app, actions=["x.b"])
    with pytest.raises(ValueError, match="concurrency"):
        Worker(app, concurrency=0)
    assert Worker(app).actions == ["x.a"]


def test_load_app_explains_what_is_wrong() -> None:
    with pytest.raises(AppLoadError, match="expected MODULE:APP"):
        load_app("not a module")
    with pytest.raises(AppLoadError, match="no module named"):
        load_app("surely_not_a_module_4711:app")
    with pytest.raises(AppLoadError, match=r"not a fifoq\.App"):
        load_app("fifoq:QueueManager")
    assert load_app("fifoq.demo:app") is load_app("fifoq.demo")


def test_error_text_is_type_and_message() -> None:
    assert describe_error(ValueError("bad input 3")) == "ValueError: bad input 3"
    assert describe_error(KeyError()) == "KeyError"
    assert describe_error(RuntimeError("a\x00b")) == "RuntimeError: a\\x00b"


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:pw-1@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://:pw-1@h/db", "postgres://:***@h/db"),
        (
            "postgresql://u@h/db?sslmode=require&password=pw-1",
            "postgresql://u@h/db?sslmode=require&password=***",
        ),
        ("host=h password=pw-1 user=u", "host=h password=*** user=u"),
        ("host=h password = 'p w\\'1' user=u", "host=h password = *** user=u"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("", ""),
    ],
)
def test_redact_hides_passwords(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown


def test_resolve_dsn_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIFOQ_DSN", "postgresql://env/db")
    assert resolve_dsn("postgresql://cli/db") == "postgresql://cli/db"
    assert resolve_dsn(None) == "postgresql://env/db"
    monkeypatch.delenv("FIFOQ_DSN")
    assert resolve_dsn(None) == ""  # libpq's PG* variables


async def test_a_worker_runs_once() -> None:
    app = App()

    @app.action("x.run")
    async def run(payload: object) -> None:
        return None

    worker = Worker(app, "postgresql://nobody@127.0.0.1:1/none")  # nothing listens on port 1
    with pytest.raises(psycopg.OperationalError):
        await worker.run()
    # A second run would start out stopping, with the first run's counters.
    with pytest.raises(RuntimeError, match="runs once"):
        await worker.run()
