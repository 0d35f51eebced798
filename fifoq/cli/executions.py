"""`fifoq enqueue|get|complete|cancel`: create, inspect and finish executions by hand."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer

from ..errors import (
    ExecutionAbandoned,
    ExecutionCancelled,
    FifoqError,
    InvalidInput,
    PolicyRejected,
    QueueFull,
    QueueTimeout,
)
from ..manager import QueueManager
from ..models import Execution, Status
from ..validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_BATCH,
    check_action,
    check_error_text,
    check_group,
    to_json,
)
from ._common import (
    DebugOption,
    DsnOption,
    JsonOption,
    bad_value,
    connect,
    connection_string,
    errors_handled,
    format_execution,
    parse_json_option,
    parse_seconds,
    print_json,
    run,
)

IdArgument = Annotated[int, typer.Argument(metavar="ID", help="Execution id.", min=1)]

# How long `enqueue --wait` waits for the statement that withdraws its
# execution when it gives up (--timeout, Ctrl-C). Normally a millisecond; but
# another transaction may hold the queue (a client's open enqueue(conn=...)),
# and the command must still end: it then says the execution may still wait.
_WITHDRAW_WAIT = 2.0


def _show(execution: Execution, as_json: bool) -> None:
    if as_json:
        print_json(execution)
    else:
        typer.echo(format_execution(execution))


async def _wait_active(qm: QueueManager, execution: Execution, timeout: float | None) -> Execution:
    """Wait until the execution holds a slot, without becoming its owner.

    Taking ownership (``wait_started``) would abandon it when this command
    exits; the CLI leaves it for a worker or a later ``fifoq complete``.
    When ``timeout`` runs out it gives up as ``wait_started`` does: the
    execution is ended ``timed_out`` (unless it started meanwhile), so it
    never takes a slot later that nobody would use.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.02
    while execution.status is Status.QUEUED:
        if deadline is not None and time.monotonic() >= deadline:
            where = f"execution {execution.id} of action {execution.action!r}"
            try:
                execution = await asyncio.wait_for(qm.time_out(execution.id), _WITHDRAW_WAIT)
            except TimeoutError:
                raise QueueTimeout(
                    f"{where} did not start within {timeout:g} s, and another transaction holds "
                    f"its queue: it may still be queued (`fifoq cancel {execution.id}` "
                    "withdraws it)"
                ) from None
            if execution.status is Status.TIMED_OUT:
                raise QueueTimeout(
                    f"{where} did not start within {timeout:g} s; it was withdrawn (timed_out)"
                )
            break  # it started, or ended, meanwhile: say which below
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)
        execution = await qm.get(execution.id)
    where = f"execution {execution.id} of action {execution.action!r}"
    if execution.status is Status.CANCELLED:
        raise ExecutionCancelled(f"{where} was cancelled before it started")
    if execution.status is Status.TIMED_OUT:
        waited = ""
        if execution.finished_at is not None:
            seconds = (execution.finished_at - execution.enqueued_at).total_seconds()
            waited = f" after waiting {seconds:.1f} s"
        raise QueueTimeout(f"{where} timed out{waited} in its queue (queue_timeout)")
    if execution.status is Status.ABANDONED:
        raise ExecutionAbandoned(f"{where} was abandoned")
    return execution


def enqueue(
    action: Annotated[str, typer.Argument(metavar="ACTION", help="Action name, e.g. core.deploy.")],
    payload: Annotated[
        str | None,
        typer.Option(
            "--payload",
            metavar="JSON",
            help="Payload as JSON text (over about 128 KiB, the system's limit for one "
            "argument, put it on one line of a file and use --payloads FILE).",
        ),
    ] = None,
    payloads: Annotated[
        str | None,
        typer.Option(
            "--payloads",
            metavar="FILE",
            help="Enqueue one execution per line of FILE (JSON Lines; '-' reads stdin), in "
            f"one transaction: all lines or none ({MAX_BATCH:,} per statement).",
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group", metavar="G", help="Queue group (default: from the policy's group_by)."
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait until the execution is active (holds a slot); Ctrl-C or SIGTERM cancels it.",
        ),
    ] = False,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            metavar="S",
            help="With --wait: give up after S seconds (exit 1); the execution is then "
            "timed out, unless it started meanwhile.",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the execution id.")
    ] = False,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Enqueue an execution and print it (queued, or active if admitted at once).

    Nobody owns it: a worker running the action picks it up, or you finish
    it yourself with `fifoq complete ID`. With --payloads, many at once, in
    the order of the file's lines, in one transaction: all lines or none.
    """
    value = parse_json_option("--payload", payload)
    wait_timeout = parse_seconds("--timeout", timeout)
    if wait_timeout is not None and not wait:
        bad_value("--timeout", "only makes sense with --wait")
    if payloads is not None and (payload is not None or wait):
        bad_value("--payloads", "cannot be combined with --payload or --wait")
    with errors_handled(debug):
        check_action(action)
        check_group(group)
    conninfo = connection_string(dsn)
    if payloads is not None:
        _enqueue_lines(action, _read_lines(payloads), group, conninfo, quiet, as_json, debug)
        return

    # Set while an interrupted wait's execution is being withdrawn: if that
    # does not finish (a held queue, a second Ctrl-C), the user is told at exit.
    unsettled: list[int] = []

    async def go() -> Execution:
        if wait:
            # SIGTERM (timeout(1), systemd, a CI runner) gives up as Ctrl-C
            # does, through the task's cancellation: the default action
            # would end the process and leave the execution queued.
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        async with connect(conninfo, "enqueue", executor=wait) as qm:
            execution = await qm.enqueue(action, value, group=group)
            if wait:
                if not quiet and not as_json and execution.status is Status.QUEUED:
                    typer.echo(
                        f"execution {execution.id} queued (seq {execution.seq}); waiting...",
                        err=True,
                    )
                try:
                    execution = await _wait_active(qm, execution, wait_timeout)
                except asyncio.CancelledError:
                    # Ctrl-C or SIGTERM: the caller gave up waiting, and its
                    # execution goes with it, as when enqueue_and_wait is
                    # cancelled; left queued, it would later take a slot
                    # nobody uses.
                    unsettled.append(execution.id)
                    try:
                        withdrawn = await asyncio.wait_for(qm.cancel(execution.id), _WITHDRAW_WAIT)
                    except (TimeoutError, FifoqError, psycopg.Error):
                        raise asyncio.CancelledError from None  # told at exit
                    unsettled.clear()
                    typer.echo(
                        f"interrupted: execution {execution.id} "
                        + ("cancelled" if withdrawn else "had already ended"),
                        err=True,
                    )
                    raise
            return execution

    try:
        execution = run(go(), debug=debug, dsn=conninfo)
    except asyncio.CancelledError:  # SIGTERM (Ctrl-C comes out as KeyboardInterrupt)
        raise typer.Exit(128 + signal.SIGTERM) from None
    finally:
        for execution_id in unsettled:
            typer.echo(
                f"interrupted: execution {execution_id} may still be queued; "
                f"`fifoq cancel {execution_id}` withdraws it",
                err=True,
            )
    if quiet:
        typer.echo(str(execution.id))
    else:
        _show(execution, as_json)


def _read_lines(source: str) -> list[Any]:
    """The payloads of a JSON Lines file ('-': stdin); a usage error names a bad line.

    Every line is read and checked (JSON, storable, within the payload size
    limit) before anything is enqueued, so a bad line stores nothing.
    """
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        bad_value("--payloads", f"cannot read {source}: {exc}")
    values: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as exc:
            bad_value("--payloads", f"line {number} is not valid JSON ({exc.msg})")
        except RecursionError:
            bad_value("--payloads", f"line {number} is JSON nested too deeply to read")
        try:
            to_json(values[-1], what=f"line {number}", limit=DEFAULT_MAX_PAYLOAD_BYTES)
        except InvalidInput as exc:
            bad_value("--payloads", str(exc))
    if not values:
        bad_value("--payloads", f"{source} holds no payload (one JSON value per line)")
    return values


def _enqueue_lines(
    action: str,
    values: list[Any],
    group: str | None,
    conninfo: str,
    quiet: bool,
    as_json: bool,
    debug: bool,
) -> None:
    async def go() -> list[Execution]:
        done: list[Execution] = []
        async with (
            connect(conninfo, "enqueue") as qm,
            await psycopg.AsyncConnection.connect(conninfo) as conn,
            conn.transaction(),
        ):
            # One transaction for the whole file: all of it is enqueued or,
            # if the database refuses a batch (QueueFull, PolicyRejected),
            # none. The queue's lock is held until the commit.
            for start in range(0, len(values), MAX_BATCH):
                batch = values[start : start + MAX_BATCH]
                try:
                    done += await qm.enqueue_many(action, batch, group=group, conn=conn)
                except (QueueFull, PolicyRejected) as exc:
                    if len(values) <= MAX_BATCH:
                        raise
                    # The database counted the earlier batches of this file
                    # as waiting; after the rollback none of them is.
                    raise type(exc)(
                        f"{exc} (payloads {start + 1:,} to {start + len(batch):,} of "
                        f"{len(values):,}, counting this file's earlier batches; nothing was "
                        "enqueued)"
                    ) from exc
        return done

    executions = run(go(), debug=debug, dsn=conninfo)
    if quiet:
        typer.echo("\n".join(str(e.id) for e in executions))
    elif as_json:
        print_json(executions)
    else:
        active = sum(e.status is Status.ACTIVE for e in executions)
        typer.echo(
            f"enqueued {len(executions):,} executions of {action}: {active:,} active, "
            f"{len(executions) - active:,} queued (ids {min(e.id for e in executions)} to "
            f"{max(e.id for e in executions)})"
        )


ENQUEUE_EPILOG = (
    'Example: fifoq enqueue core.deploy --payload \'{"host": "web-1"}\' --wait;  '
    "ID=$(fifoq enqueue core.deploy -q);  fifoq enqueue core.deploy --payloads hosts.jsonl"
)


def get(
    execution_id: IdArgument,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Show one execution: status, payload, result or error, timestamps, owner."""
    conninfo = connection_string(dsn)

    async def go() -> Execution:
        async with connect(conninfo, "get") as qm:
            return await qm.get(execution_id)

    _show(run(go(), debug=debug, dsn=conninfo), as_json)


GET_EPILOG = "Example: fifoq get 42 --json"


def complete(
    execution_id: IdArgument,
    error: Annotated[
        str | None,
        typer.Option("--error", metavar="TEXT", help="Mark it failed with this error text."),
    ] = None,
    result: Annotated[
        str | None, typer.Option("--result", metavar="JSON", help="Result as JSON text.")
    ] = None,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Finish an active execution (succeeded, or failed with --error); its slot goes to the next."""
    value = parse_json_option("--result", result)
    try:
        check_error_text(error)
    except InvalidInput as exc:
        bad_value("--error", str(exc))
    conninfo = connection_string(dsn)

    async def go() -> Execution:
        async with connect(conninfo, "complete") as qm:
            return await qm.complete(execution_id, result=value, error=error)

    _show(run(go(), debug=debug, dsn=conninfo), as_json)


COMPLETE_EPILOG = (
    "Example: fifoq complete 42 --result '{\"ok\": true}';  fifoq complete 43 --error 'disk full'"
)


def cancel(
    execution_id: IdArgument,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Cancel a queued or active execution; a running handler is stopped, its slot goes on.

    Exit status 0 also when it had already finished (then nothing changes);
    an unknown id is an error (exit 1).
    """
    conninfo = connection_string(dsn)

    async def go() -> tuple[bool, Execution]:
        async with connect(conninfo, "cancel") as qm:
            cancelled = await qm.cancel(execution_id)
            return cancelled, await qm.get(execution_id)

    cancelled, execution = run(go(), debug=debug, dsn=conninfo)
    if as_json:
        print_json({"id": execution_id, "cancelled": cancelled, "status": execution.status})
    elif cancelled:
        typer.echo(f"execution {execution_id} cancelled")
    else:
        typer.echo(f"execution {execution_id} had already finished ({execution.status}); unchanged")


CANCEL_EPILOG = "Example: fifoq cancel 42"


def register(app: typer.Typer) -> None:
    """Add the execution commands to the ``fifoq`` app."""
    app.command(
        "enqueue",
        epilog=ENQUEUE_EPILOG,
        short_help="Enqueue an execution (--wait: until it starts).",
    )(enqueue)
    app.command("get", epilog=GET_EPILOG, short_help="Show one execution.")(get)
    app.command(
        "complete",
        epilog=COMPLETE_EPILOG,
        short_help="Finish an active execution; its slot goes on.",
    )(complete)
    app.command("cancel", epilog=CANCEL_EPILOG, short_help="Cancel a queued or active execution.")(
        cancel
    )
