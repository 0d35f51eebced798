"""`fifoq bench`: measure fifoq's throughput and latencies against its targets."""

from pathlib import Path
from typing import Annotated

import typer

_EPILOG = (
    "Example: fifoq bench --quick; "
    "fifoq bench --repeat 3 --json bench.json --plot bench.png; "
    "fifoq bench --dsn postgresql://me@db/postgres --workloads throughput,handoff"
)


def bench(
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            envvar="FIFOQ_DSN",
            help="Server to measure (needs CREATEDB: each workload gets a scratch database, "
            "dropped afterwards). Default: a throwaway embedded PostgreSQL with durable commits.",
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Shrink every workload so the run takes seconds (tests).")
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
            help="Draw throughput against process count and limit (needs fifoq[bench]).",
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
        ),
    ] = None,
    repeat: Annotated[
        int,
        typer.Option(
            "--repeat", min=1, help="Run each throughput workload N times; report the median."
        ),
    ] = 1,
) -> None:
    """Measure fifoq's throughput, hand-off and cancel latency, stats cost and storage.

    Every throughput figure is also printed as a ratio of the server's own
    insert+update ceiling measured in the same run. FIFO order and the
    limit are checked from the database after every workload; a violation
    exits with status 1.
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
        )
    except BenchUsageError as exc:
        raise typer.BadParameter(str(exc)) from None
    raise typer.Exit(run(options))


bench.__doc__ = f"{bench.__doc__}\n\n{_EPILOG}"
