"""The `fifoq` console script: commands, JSON output, exit codes and error messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import queue
import select
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from e2e_support import HERE, fifoq_bin, run_cli
from helpers import wait_until
from psycopg import sql
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from fifoq import QueueManager, Status
from fifoq.cli import app
from fifoq.migrations import migrations_dir

MIGRATIONS = sorted(
    p.stem for p in migrations_dir().glob("*.sql") if not p.name.endswith(".rollback.sql")
)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed command, checked to be one `fifoq: error:` line."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    assert lines[0].startswith("fifoq: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def empty_dsn(admin_dsn: str) -> Iterator[str]:
    """A database without the fifoq schema."""
    name = f"test_empty_{uuid.uuid4().hex}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


COMMANDS = [
    [],
    ["migrate"],
    ["policy"],
    ["policy", "set"],
    ["policy", "get"],
    ["policy", "list"],
    ["policy", "delete"],
    ["enqueue"],
    ["get"],
    ["complete"],
    ["cancel"],
    ["list"],
    ["stats"],
    ["worker"],
    ["demo"],
    ["bench"],
    ["purge"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "fifoq")
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    if command and command != ["policy"]:  # a group: its commands take --dsn
        assert "--dsn" in result.output


def test_console_script_help_and_version() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "enqueue" in result.stdout and "worker" in result.stdout
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("fifoq ")


def test_migrate_sql_apply_and_rollback(empty_dsn: str) -> None:
    shown = run_cli("migrate", "--sql", "--dsn", empty_dsn)
    assert shown.returncode == 0, shown.stderr
    assert "CREATE TABLE fifoq.executions" in shown.stdout
    # It says what it is for: review; only `fifoq migrate` applies and records.
    assert shown.stdout.startswith("-- For review: the migrations `fifoq migrate` would apply")
    # --sql changed nothing: the tables do not exist yet.
    with psycopg.connect(empty_dsn) as conn:
        row = conn.execute("SELECT to_regclass('fifoq.executions')").fetchone()
        assert row == (None,)
    applied = run_cli("migrate", "--dsn", empty_dsn)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith(f"applied {len(MIGRATIONS)} migration(s): {MIGRATIONS[0]}")
    again = run_cli("migrate", "--dsn", empty_dsn)
    assert again.returncode == 0
    assert again.stdout.strip() == "schema fifoq is up to date"
    back = run_cli("migrate", "--rollback", "--dsn", empty_dsn)
    assert back.returncode == 0, back.stderr
    assert f"rolled back {len(MIGRATIONS)} migration(s)" in back.stdout
    with psycopg.connect(empty_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'fifoq'").fetchone()
        assert row == (0,)
    # What --sql printed for the empty database runs as it is (as psql -f
    # would): it creates the schema before the migrations' objects.
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(shown.stdout.encode())
        row = conn.execute("SELECT to_regclass('fifoq.executions') IS NOT NULL").fetchone()
        assert row == (True,)


def test_migrate_executor_role_ships_with_the_package_and_grants_what_fifoq_needs(
    dsn: str,
) -> None:
    # pip-installed users have no scripts/ folder: the role comes with the CLI.
    shown = run_cli("migrate", "--executor-role", "--sql", "--dsn", dsn)
    assert shown.returncode == 0, shown.stderr
    assert "CREATE ROLE fifoq_executor NOLOGIN" in shown.stdout
    granted = run_cli("migrate", "--executor-role", "--dsn", dsn)
    assert granted.returncode == 0, granted.stderr
    assert "schema fifoq is up to date" in granted.stdout
    assert "IN ROLE fifoq_executor" in granted.stdout
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT has_schema_privilege('fifoq_executor', 'fifoq', 'USAGE'),"
            " has_function_privilege('fifoq_executor', 'fifoq.maintain()', 'EXECUTE'),"
            " has_table_privilege('fifoq_executor', 'fifoq.executions', 'DELETE')"
        ).fetchone()
    assert row == (True, True, False)
    refused = run_cli("migrate", "--executor-role", "--rollback", "--dsn", dsn)
    assert refused.returncode == 2
    assert "--executor-role" in one_line_error(refused)


def test_missing_schema_is_one_line_that_says_to_migrate(empty_dsn: str) -> None:
    result = run_cli("stats", "--dsn", empty_dsn)
    assert result.returncode == 1
    assert "fifoq migrate" in one_line_error(result)


def test_policy_enqueue_complete_cancel_and_stats(dsn: str) -> None:
    def cli_json(*args: str) -> object:
        result = run_cli(*args, "--json", "--dsn", dsn)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    policy = cli_json("policy", "set", "cli.job", "--max-concurrent", "1", "--group-by", "host")
    assert policy == {
        "action": "cli.job",
        "max_concurrent": 1,
        "max_queue_length": 10000,
        "queue_timeout": 3600.0,
        "on_limit": "enqueue",
        "group_by": ["host"],
    }
    got = cli_json("policy", "get", "cli.job")
    assert isinstance(got, dict) and got["max_concurrent"] == 1
    listed = cli_json("policy", "list")
    assert isinstance(listed, list) and [p["action"] for p in listed] == ["cli.job"]
    assert cli_json("policy", "set", "cli.gone", "--max-concurrent", "4")
    deleted = cli_json("policy", "delete", "cli.gone")
    assert deleted == {
        "deleted": {**policy, "action": "cli.gone", "max_concurrent": 4, "group_by": []},
        "now": {
            **policy,
            "action": "*",
            "max_concurrent": None,
            "max_queue_length": None,
            "queue_timeout": None,
            "group_by": [],
        },
    }
    again = run_cli("policy", "delete", "cli.gone", "--dsn", dsn)
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr.strip() == (
        "fifoq: error: no policy is set for 'cli.gone': nothing deleted"
        " (fifoq policy list shows them)"
    )

    first = cli_json("enqueue", "cli.job", "--payload", '{"host": "a", "n": 1}')
    second = cli_json("enqueue", "cli.job", "--payload", '{"host": "a", "n": 2}')
    assert isinstance(first, dict) and isinstance(second, dict)
    assert (first["status"], first["group"], first["seq"]) == ("active", "a", 1)
    assert (second["status"], second["seq"]) == ("queued", 2)
    assert first["owner"] is None  # the CLI does not own what it enqueues

    done = cli_json("complete", str(first["id"]), "--result", '{"ok": true}')
    assert isinstance(done, dict)
    assert (done["status"], done["result"]) == ("succeeded", {"ok": True})
    now = cli_json("get", str(second["id"]))
    assert isinstance(now, dict) and now["status"] == "active"  # admitted by the completion

    cancelled = cli_json("cancel", str(second["id"]))
    assert cancelled == {"id": second["id"], "cancelled": True, "status": "cancelled"}
    twice = cli_json("cancel", str(second["id"]))
    assert twice == {"id": second["id"], "cancelled": False, "status": "cancelled"}

    stats = cli_json("stats", "cli.job")
    assert isinstance(stats, list) and len(stats) == 1
    row = stats[0]
    assert (row["action"], row["group"], row["max_concurrent"]) == ("cli.job", "a", 1)
    assert (row["total_enqueued"], row["total_completed"], row["total_cancelled"]) == (2, 1, 1)
    assert (row["queue_length"], row["active_count"]) == (0, 0)
    snapshot = cli_json("stats", "--refresh")
    assert isinstance(snapshot, list)
    assert [(r["action"], r["total_enqueued"]) for r in snapshot] == [("cli.job", 2)]

    table = run_cli("stats", "--dsn", dsn)
    assert table.returncode == 0
    assert "cli.job" in table.stdout and "live queue statistics" in table.stdout
    failed = run_cli("enqueue", "cli.job", "--payload", '{"host": "b"}', "-q", "--dsn", dsn)
    assert failed.returncode == 0
    execution_id = failed.stdout.strip()
    assert execution_id.isdigit()
    text = run_cli("complete", execution_id, "--error", "disk full", "--dsn", dsn)
    assert text.returncode == 0
    assert "status       failed" in text.stdout
    assert "error        disk full" in text.stdout


def test_list_shows_the_active_then_the_line_with_places(dsn: str) -> None:
    assert (
        run_cli("policy", "set", "cli.line", "--max-concurrent", "1", "--dsn", dsn).returncode == 0
    )
    ids = []
    for n in range(3):
        made = run_cli("enqueue", "cli.line", "--payload", f'{{"n": {n}}}', "-q", "--dsn", dsn)
        assert made.returncode == 0, made.stderr
        ids.append(int(made.stdout))

    listed = run_cli("list", "cli.line", "--json", "--dsn", dsn)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["status"], r["payload"], r["place"]) for r in rows] == [
        (ids[0], "active", {"n": 0}, None),
        (ids[1], "queued", {"n": 1}, 1),
        (ids[2], "queued", {"n": 2}, 2),
    ]

    table = run_cli("list", "cli.line", "--limit", "2", "--dsn", dsn)
    assert table.returncode == 0, table.stderr
    assert "cli.line: 1 active, 2 waiting (first 2 shown" in table.stdout
    cells = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in table.stdout.splitlines()
        if line.startswith("│")
    ]
    # group, seq, id, status, place, for, owner, payload; the third is cut by --limit
    assert [(c[2], c[3], c[4], c[6], c[7]) for c in cells] == [
        (str(ids[0]), "active", "-", "-", '{"n": 0}'),
        (str(ids[1]), "queued", "1", "-", '{"n": 1}'),
    ]
    empty = run_cli("list", "cli.nothing", "--dsn", dsn)
    assert empty.returncode == 0 and "nothing active or waiting" in empty.stdout


def test_list_and_stats_print_text_that_looks_like_markup_as_it_is(dsn: str) -> None:
    made = run_cli(
        "enqueue", "cli.marks", "--group", "[b]", "--payload", '{"path": "[/etc]"}', "--dsn", dsn
    )
    assert made.returncode == 0, made.stderr
    listed = run_cli("list", "cli.marks", "--dsn", dsn)
    assert listed.returncode == 0, listed.stderr
    assert "cli.marks: 1 active, 0 waiting" in listed.stdout
    assert "[b]" in listed.stdout and '{"path": "[/etc]"}' in listed.stdout
    stats = run_cli("stats", "cli.marks", "--group", "[b]", "--dsn", dsn)
    assert stats.returncode == 0, stats.stderr
    assert "│ cli.marks │ [b]" in stats.stdout


def test_dsn_is_also_accepted_before_the_command(dsn: str) -> None:
    before = run_cli("--dsn", dsn, "enqueue", "cli.where", "-q")
    assert before.returncode == 0, before.stderr
    # The command's own --dsn wins over the one given before it.
    after = run_cli("--dsn", NO_SERVER, "get", before.stdout.strip(), "--json", "--dsn", dsn)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["action"] == "cli.where"
    nowhere = run_cli("--dsn", NO_SERVER, "stats")
    assert nowhere.returncode == 1 and "port 1" in nowhere.stderr
    # Also after a command group, before its command.
    grouped = run_cli("policy", "--dsn", dsn, "set", "cli.where", "--max-concurrent", "3")
    assert grouped.returncode == 0, grouped.stderr
    listed = run_cli("policy", "--dsn", dsn, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [p["max_concurrent"] for p in json.loads(listed.stdout)] == [3]


def test_enqueue_payloads_from_a_file_or_stdin_in_line_order(dsn: str, tmp_path: Path) -> None:
    policy = run_cli("policy", "set", "cli.bulk", "--max-concurrent", "2", "--dsn", dsn)
    assert policy.returncode == 0, policy.stderr
    lines = tmp_path / "payloads.jsonl"
    lines.write_text('{"n": 1}\n\n[2]\n"three"\nnull\n', encoding="utf-8")
    text = run_cli("enqueue", "cli.bulk", "--payloads", str(lines), "--dsn", dsn)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("enqueued 4 executions of cli.bulk: 2 active, 2 queued")
    piped = subprocess.run(
        [fifoq_bin(), "enqueue", "cli.bulk", "--payloads", "-", "--json", "--dsn", dsn],
        input='{"n": 5}\n{"n": 6}\n',
        capture_output=True,
        text=True,
        timeout=60,
        cwd=HERE,
    )
    assert piped.returncode == 0, piped.stderr
    assert [e["payload"] for e in json.loads(piped.stdout)] == [{"n": 5}, {"n": 6}]
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT payload, status FROM fifoq.execution_details"
            " WHERE action = 'cli.bulk' ORDER BY seq"
        ).fetchall()
    assert [r[0] for r in rows] == [{"n": 1}, [2], "three", None, {"n": 5}, {"n": 6}]
    assert [r[1] for r in rows] == ["active", "active", "queued", "queued", "queued", "queued"]


def test_enqueue_payloads_that_do_not_fit_store_nothing(dsn: str, tmp_path: Path) -> None:
    run_cli(
        "policy",
        "set",
        "cli.full",
        "--max-concurrent",
        "1",
        "--max-queue-length",
        "1",
        "--dsn",
        dsn,
    )
    lines = tmp_path / "payloads.jsonl"
    lines.write_text("1\n2\n3\n", encoding="utf-8")
    full = run_cli("enqueue", "cli.full", "--payloads", str(lines), "--dsn", dsn)
    assert full.returncode == 1
    assert "queue full for action 'cli.full'" in one_line_error(full)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("1\n{oops\n", encoding="utf-8")
    broken = run_cli("enqueue", "cli.full", "--payloads", str(bad), "--dsn", dsn)
    assert broken.returncode == 2
    assert "line 2 is not valid JSON" in broken.stderr
    # Past the first batch of 10,000: a bad value on the last line, or a
    # queue that overflows in the second batch, stores no line at all.
    many = tmp_path / "many.jsonl"
    many.write_text("".join(f"{n}\n" for n in range(10_500)) + "NaN\n", encoding="utf-8")
    late = run_cli("enqueue", "cli.many", "--payloads", str(many), "--dsn", dsn)
    assert late.returncode == 2
    assert "line 10501" in one_line_error(late)
    limited = ("--max-concurrent", "1", "--max-queue-length", "10200")
    assert run_cli("policy", "set", "cli.many", *limited, "--dsn", dsn).returncode == 0
    many.write_text("".join(f"{n}\n" for n in range(10_500)), encoding="utf-8")
    overflow = run_cli("enqueue", "cli.many", "--payloads", str(many), "--dsn", dsn)
    assert overflow.returncode == 1
    message = one_line_error(overflow)
    assert "queue full for action 'cli.many'" in message
    # The database counted the first batch as waiting; the message says so.
    assert "payloads 10,001 to 10,500 of 10,500" in message
    assert "nothing was enqueued" in message
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM fifoq.execution_details WHERE action IN ('cli.full', 'cli.many')"
        ).fetchone()
    assert row == (0,)


def test_purge_removes_finished_executions_in_batches(dsn: str) -> None:
    ids = []
    for _ in range(3):
        enqueued = run_cli("enqueue", "cli.purge", "-q", "--dsn", dsn)
        assert enqueued.returncode == 0, enqueued.stderr
        ids.append(enqueued.stdout.strip())
    for execution_id in ids[:2]:
        assert run_cli("complete", execution_id, "--dsn", dsn).returncode == 0
    result = run_cli("purge", "--older-than", "0", "--batch", "1", "--json", "--dsn", dsn)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["executions"] == 2
    assert run_cli("get", ids[0], "--dsn", dsn).returncode == 1  # gone
    assert run_cli("get", ids[2], "--dsn", dsn).returncode == 0  # still active: kept
    text = run_cli("purge", "--older-than", "7d", "--dsn", dsn)
    assert text.returncode == 0
    assert text.stdout.startswith("purged 0 finished execution(s)")


USAGE_ERRORS = [
    (["policy", "set", "x"], "--max-concurrent"),
    (["enqueue", "x", "--payload", "{bad"], "--payload"),
    (["complete", "1", "--result", "nope"], "--result"),
    (["enqueue", "x", "--timeout", "3"], "--timeout"),
    (["enqueue", "x", "--payloads", "-", "--wait"], "--payloads"),
    (["enqueue", "x", "--payloads", "/no/such/file.jsonl"], "cannot read"),
    (["policy", "set", "x", "--max-concurrent", "1", "--queue-timeout", "soon"], "--queue-timeout"),
    (["policy", "set", "x", "--max-concurrent", "1", "--on-limit", "drop"], "--on-limit"),
    (["complete", "not-a-number"], "ID"),
    (["stats", "--group", "g"], "needs ACTION"),
    (["list", "x", "--limit", "0"], "--limit"),
    (["list", "bad\x01name"], "invalid action name"),
    (["purge", "--older-than", "soon"], "--older-than"),
    (["purge", "--older-than", "7d", "--batch", "0"], "--batch"),
    (["worker", "no_such_module_here:app"], "no_such_module_here"),
    (["worker", "worker_apps:nothing"], "no attribute 'nothing'"),
    (["worker", "worker_apps:app", "--actions", "e2e.nope"], "e2e.nope"),
    (["frobnicate"], "frobnicate"),
    (["policy", "set", "x", "--max-concurrent", "1", "--queue-timeout", "0"], "--queue-timeout"),
    (["policy", "set", "x", "--max-concurrent", "1.5"], "--max-concurrent"),
    (["get", "-1"], "-1"),
    (["enqueue", "x", "--payload", '"\\ud800"'], "lone surrogate U+D800"),
    (["enqueue", "x", "--payload", "[" * 5000 + "]" * 5000], "nested too deeply"),
    (["complete", "1", "--error", "\udcff"], "lone surrogate U+DCFF"),
]
NO_SERVER = "postgresql://nobody@127.0.0.1:1/none"  # nothing listens on port 1


@pytest.mark.parametrize(("args", "needle"), USAGE_ERRORS, ids=lambda v: str(v))
def test_usage_errors_exit_2_naming_what_is_wrong(
    args: list[str], needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In process (fast); these must fail before connecting anywhere.
    monkeypatch.chdir(HERE)  # where worker_apps is
    result = CliRunner().invoke(app, [*args, "--dsn", NO_SERVER], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "needle"), USAGE_ERRORS, ids=lambda v: str(v)[:60])
def test_usage_errors_through_the_console_script_are_one_line_exit_2(
    args: list[str], needle: str
) -> None:
    # click would draw a box of five lines or more around a usage error.
    result = run_cli(*args, "--dsn", NO_SERVER)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in one_line_error(result)


def test_bad_policy_values_exit_2_with_one_line() -> None:
    result = run_cli("policy", "set", "x", "--max-concurrent", "0", "--dsn", NO_SERVER)
    assert result.returncode == 2
    assert "max_concurrent must be between 1" in one_line_error(result)
    bad_name = run_cli("enqueue", "bad\x07name", "--dsn", NO_SERVER)
    assert bad_name.returncode == 2
    assert "invalid action name" in one_line_error(bad_name)


def test_runtime_errors_exit_1_with_one_line_and_traceback_only_with_debug(dsn: str) -> None:
    unknown = run_cli("complete", "999999", "--dsn", dsn)
    assert unknown.returncode == 1
    assert one_line_error(unknown) == "fifoq: error: unknown execution 999999"
    # A refused command changed nothing, not even fifoq.executors: one-shot
    # commands connect as plain clients.
    assert run_cli("get", "999999", "--dsn", dsn).returncode == 1
    assert run_cli("stats", "--dsn", dsn).returncode == 0
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM fifoq.executors").fetchone() == (0,)
    debug = run_cli("complete", "999999", "--dsn", dsn, "--debug")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "UnknownExecution" in debug.stderr
    # Like --dsn, --debug is also taken before the command, or from the environment.
    before = run_cli("--debug", "--dsn", dsn, "complete", "999999")
    from_env = run_cli("complete", "999999", "--dsn", dsn, env={"FIFOQ_DEBUG": "1"})
    for result in (before, from_env):
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "UnknownExecution" in result.stderr


def test_unreachable_server_is_one_line_and_never_shows_the_password() -> None:
    secret = "s3cret-pw-9f2"
    for dsn in (
        f"postgresql://someone:{secret}@127.0.0.1:1/db",
        f"host=127.0.0.1 port=1 user=someone password={secret} dbname=db",
    ):
        result = run_cli("stats", "--dsn", dsn)
        assert result.returncode == 1
        one_line_error(result)
        assert secret not in result.stdout + result.stderr
        from_env = run_cli("policy", "list", env={"FIFOQ_DSN": dsn})
        assert from_env.returncode == 1
        assert secret not in from_env.stdout + from_env.stderr


async def test_enqueue_wait_returns_once_admitted_without_owning_it(dsn: str) -> None:
    async with QueueManager.connect(dsn) as qm:
        await qm.set_policy("cli.wait", max_concurrent=1)
        blocker = await qm.enqueue("cli.wait")
        with subprocess.Popen(
            [fifoq_bin(), "enqueue", "cli.wait", "--wait", "--json", "--dsn", dsn],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            out, err = await _wait_for_admission(qm, proc, blocker.id)
        assert proc.returncode == 0, err
        execution = json.loads(out)
        assert execution["status"] == "active" and execution["owner"] is None
        # The CLI exited; the execution is still active (not abandoned).
        assert (await qm.get(execution["id"])).status is Status.ACTIVE


@contextlib.contextmanager
def _waiting_enqueue(
    dsn: str, action: str, *options: str
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str], int]]:
    """``fifoq enqueue ACTION --wait`` once it waits: the process, its stderr lines, the id."""
    with subprocess.Popen(
        [fifoq_bin(), "enqueue", action, "--wait", *options, "--dsn", dsn],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            errors = _reader(proc.stderr)
            waiting_line = errors.get(timeout=30)
            assert "waiting..." in waiting_line
            yield proc, errors, int(waiting_line.split()[1])
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"]
)
async def test_enqueue_wait_interrupted_cancels_the_execution(
    dsn: str, signum: int, code: int
) -> None:
    # The CLI never owns what it enqueues, so nothing would end it: left
    # queued, it would later take a slot nobody uses. Ctrl-C, or SIGTERM
    # (timeout(1), systemd), cancels it, as cancelling enqueue_and_wait
    # does, and says so.
    async with QueueManager.connect(dsn) as qm:
        await qm.set_policy("cli.interrupted", max_concurrent=1)
        await qm.enqueue("cli.interrupted")
        with _waiting_enqueue(dsn, "cli.interrupted") as (proc, errors, waiting_id):
            proc.send_signal(signum)
            assert proc.wait(30) == code
        assert (await qm.get(waiting_id)).status is Status.CANCELLED
        assert errors.get(timeout=5).strip() == f"interrupted: execution {waiting_id} cancelled"


async def test_enqueue_wait_timeout_times_the_execution_out(dsn: str) -> None:
    # As wait_started's timeout does: it never takes the slot later.
    async with QueueManager.connect(dsn) as qm:
        await qm.set_policy("cli.gave_up", max_concurrent=1)
        blocker = await qm.enqueue("cli.gave_up")
        result = await asyncio.to_thread(
            run_cli, "enqueue", "cli.gave_up", "--wait", "--timeout", "0.5", "-q", "--dsn", dsn
        )
        assert result.returncode == 1
        message = one_line_error(result)
        assert message.endswith("did not start within 0.5 s; it was withdrawn (timed_out)")
        gave_up = int(message.split()[3])
        assert (await qm.get(gave_up)).status is Status.TIMED_OUT
        await qm.complete(blocker.id)
        assert (await qm.stats("cli.gave_up")).active_count == 0


@pytest.mark.parametrize("give_up", ["timeout", "ctrl-c"])
async def test_enqueue_wait_gives_up_in_bounded_time_while_its_queue_is_held(
    dsn: str, give_up: str
) -> None:
    # Withdrawing the execution needs the queue's lock, which a client's
    # open enqueue(conn=...) holds until its transaction ends: the command
    # waits at most 2 s for it, then ends saying the execution may still wait.
    async with QueueManager.connect(dsn) as qm:
        await qm.set_policy("cli.held", max_concurrent=1)
        await qm.enqueue("cli.held")
        timeout = ["--timeout", "2"] if give_up == "timeout" else []
        with _waiting_enqueue(dsn, "cli.held", *timeout) as (proc, errors, waiting_id):
            async with await psycopg.AsyncConnection.connect(dsn) as holder:
                await qm.enqueue("cli.held", conn=holder)  # holds cli.held from here
                if give_up == "ctrl-c":
                    proc.send_signal(signal.SIGINT)
                # It used to wait for the holder: for good, here.
                code = await asyncio.to_thread(proc.wait, 20)
                await holder.rollback()
        last = errors.get(timeout=5).strip()
        assert code == (1 if give_up == "timeout" else 130), last
        assert last.endswith(
            f"may still be queued (`fifoq cancel {waiting_id}` withdraws it)"
            if give_up == "timeout"
            else f"may still be queued; `fifoq cancel {waiting_id}` withdraws it"
        ), last


async def _wait_for_admission(
    qm: QueueManager, proc: subprocess.Popen[str], blocker_id: int
) -> tuple[str, str]:
    try:

        async def queued_behind() -> bool:
            return (await qm.stats("cli.wait")).queue_length == 1

        await wait_until(queued_behind, 30, message="the CLI's execution is queued")
        assert proc.poll() is None  # still waiting
        await qm.complete(blocker_id)
        return await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def _reader(stream: object) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _watch(dsn: str, *options: str, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """``fifoq stats --watch`` every 0.1 s, its output read through a pipe."""
    return subprocess.Popen(
        [fifoq_bin(), "stats", "--watch", *options, "--interval", "0.1", "--dsn", dsn],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def test_stats_watch_streams_json_until_ctrl_c(dsn: str) -> None:
    with _watch(dsn, "--json") as proc:
        _watch_json(proc, dsn)


def test_stats_watch_rides_out_a_lost_connection_quietly(dsn: str) -> None:
    # The server ends the watch's connections: it carries on, and the pool's
    # warning about the closed connection it replaced is not printed bare.
    with _watch(dsn, "--json", stderr=subprocess.PIPE) as proc:
        try:
            lines = _reader(proc.stdout)
            json.loads(lines.get(timeout=30))
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    # This test's own database: only the watch is connected.
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND backend_type = 'client backend'"
                )
            for _ in range(5):  # it goes on reading
                json.loads(lines.get(timeout=30))
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0
            assert err == "", err
        finally:
            if proc.poll() is None:
                proc.kill()


def _watch_json(proc: subprocess.Popen[str], dsn: str) -> None:
    try:
        lines = _reader(proc.stdout)
        first = json.loads(lines.get(timeout=30))
        assert first == []  # nothing enqueued yet
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT fifoq.enqueue('cli.watch', NULL, NULL, NULL)")
        deadline = time.monotonic() + 30
        while True:
            rows = json.loads(lines.get(timeout=30))
            if rows:
                break
            assert time.monotonic() < deadline
        assert rows[0]["action"] == "cli.watch" and rows[0]["total_enqueued"] == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stats_watch_table_redraws_on_a_terminal_until_stopped(dsn: str, stop: int) -> None:
    # A pseudo-terminal, so rich sees a terminal and redraws in place; Ctrl-C
    # and SIGTERM both end it cleanly, the cursor shown again.
    master, slave = pty.openpty()
    with subprocess.Popen(
        [fifoq_bin(), "stats", "--watch", "--interval", "0.1", "--dsn", dsn],
        cwd=HERE,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm"},
    ) as proc:
        os.close(slave)
        try:
            seen = b""
            deadline = time.monotonic() + 30
            # Two frames: it redraws, it does not just print once.
            while seen.count(b"fifoq stats at") < 2:
                assert time.monotonic() < deadline, f"no redraw within 30 s: {seen[-500:]!r}"
                ready, _, _ = select.select([master], [], [], 0.5)
                if ready:
                    seen += os.read(master, 65536)
            proc.send_signal(stop)
            assert proc.wait(30) == 0
            while select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the terminal's other end closed
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)
    assert b"\x1b[" in seen  # cursor movement: redrawn in place
    hidden, shown = seen.rfind(b"\x1b[?25l"), seen.rfind(b"\x1b[?25h")
    assert hidden != -1 and shown > hidden, seen[-300:]


def test_stats_watch_into_a_pipe_writes_each_frame_as_it_comes(dsn: str) -> None:
    with _watch(dsn) as proc:
        try:
            lines = _reader(proc.stdout)
            frames = 0
            while frames < 2:  # while it runs, not only at the end
                frames += "fifoq stats at" in lines.get(timeout=30)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_an_app_module_that_exits_while_imported_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(5)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(app, ["worker", "exits_on_import:app", "--dsn", NO_SERVER])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (
        "fifoq: error: could not import 'exits_on_import:app': SystemExit: 5"
    )
