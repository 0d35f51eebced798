"""`fifoq bench`: measure fifoq's throughput and latencies against its targets."""

from pathlib import Path
from typing import Annotated

import typer

from ._common import DebugOption, dsn_option


def bench(
    dsn: Annotated[
        str | None,
        dsn_option(
            "Server to measure (its role needs CREATEDB: each workload runs in a scratch "
            "database, dropped afterwards). Default: $FIFOQ_DSN, else a throwaway embedded "
            "PostgreSQL with durable commits, removed afterwards (the libpq PG* variables are "
            "not used)."
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Shrink every workload so the run takes seconds (tests)."),
    ] = False,
    json_file: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Write every figure to FILE as JSON."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            metavar="FILE.png",
            help="Draw throughput against process count and limit (needs matplotlib, "
            "the bench extra).",
        ),
    ] = None,
    processes: Annotated[
        str,
        typer.Option("--processes", metavar="N,M", help="Executor process counts to run with."),
    ] = "1,3",
    workloads: Annotated[
        str | None,
        typer.Option(
            "--workloads",
            metavar="A,B",
            help="Workloads to run (default: all): throughput, many_queues, handoff, cancel, "
            "stats, storage. The insert+update ceiling runs with throughput and many_queues.",
            show_default=False,
        ),
    ] = None,
    repeat: Annotated[
        int,
        typer.Option(
            "--repeat", min=1, help="Run each throughput workload N times; report the median."
        ),
    ] = 1,
    server_setting: Annotated[
        list[str] | None,
        typer.Option(
            "--server-setting",
            metavar="NAME=VALUE",
            help="A setting for the embedded server, e.g. synchronous_commit=off to see what "
            "the commit flush costs (repeatable; not with --dsn).",
            show_default=False,
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Measure throughput, hand-off and cancel latency, stats cost and storage per execution.

    Throughput is also printed as a ratio of the server's own insert+update
    ceiling, measured in the same run. FIFO order, the limit and the queue
    counters are checked from the database after every workload; a
    violation exits with status 1.

    Example: fifoq bench --repeat 3 --json bench.json --plot bench.png
    """
    # Imported here so that `fifoq --help` does not pay for the benchmark code.
    from fifoq.bench.runner import BenchOptions, BenchUsageError, run

    try:
        options = BenchOptions.parse(
            dsn=dsn,
            quick=quick,
            json_file=json_file,
            plot=plot,
            processes=processes,
            workloads=workloads,
            repeat=repeat,
            server_settings=server_setting or (),
            debug=debug,
        )
    except BenchUsageError as exc:
        raise typer.BadParameter(str(exc)) from None
    raise typer.Exit(run(options))
