"""The benchmark judges the original queue manager's targets only at their sizes."""

from __future__ import annotations

from fifoq.bench.report import Results
from fifoq.bench.workloads import Throughput


def _run(per_action: int, limit: int) -> Throughput:
    return Throughput(
        workload="single",
        label=f"{per_action:,} x limit {limit}",
        api="batched",
        actions=1,
        per_action=per_action,
        limit=limit,
        processes=3,
        loops_per_action=1,
        connections_per_process=1,
        rates=[1000.0],
        ceiling_rates=[2000.0],
    )


def test_original_targets_are_judged_at_their_sizes_only() -> None:
    full = Results(throughput=[_run(1_000, 5), _run(10_000, 10)]).targets()
    assert [t.name for t in full if "(original)" in t.name] == [
        "1,000 x limit 5, 3 proc, batched (original)",
        "10,000 x limit 10, 3 proc, batched (original)",
    ]
    # --quick's sizes say nothing about the original table's targets.
    quick = Results(throughput=[_run(100, 5), _run(400, 10)]).targets()
    assert [t.name for t in quick if "(original)" in t.name] == []
