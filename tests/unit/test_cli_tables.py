"""What `fifoq list`, `stats` and `policy list` print: user text as is, narrow terminals, totals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console
from rich.table import Table

from fifoq import Execution, Policy, QueueStats, Status
from fifoq.cli._common import format_execution, terminal_safe
from fifoq.cli.line import line_table, summary
from fifoq.cli.policy import policy_table
from fifoq.cli.stats import stats_table
from fifoq.validation import MAX_BATCH

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _execution(
    seq: int, status: Status, *, group: str | None = None, payload: object = None
) -> Execution:
    return Execution(
        id=1_000_000 + seq,
        action="cli.show",
        group=group,
        seq=seq,
        status=status,
        payload=payload,
        result=None,
        error=None,
        enqueued_at=NOW - timedelta(seconds=5),
        started_at=None if status is Status.QUEUED else NOW - timedelta(seconds=2),
        finished_at=None,
        owner=None,
    )


def _queue(group: str | None, *, active: int, waiting: int) -> QueueStats:
    return QueueStats(
        action="cli.show",
        group=group,
        queue_length=waiting,
        active_count=active,
        max_concurrent=active,
        oldest_enqueued_at=None,
        total_enqueued=active + waiting,
        total_completed=0,
        total_failed=0,
        total_cancelled=0,
        total_timed_out=0,
        last_updated=NOW,
    )


def _render(table: Table, width: int) -> list[list[str]]:
    out = Console(width=width, record=True, color_system=None)
    out.print(table)
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in out.export_text().splitlines()
        if line.startswith("│")
    ]


def test_payloads_and_groups_that_look_like_markup_are_shown_as_they_are() -> None:
    executions = [
        _execution(1, Status.ACTIVE, group="[bold]", payload={"path": "[/etc]"}),
        _execution(2, Status.QUEUED, group="[bold]", payload="[red]x[/red]"),
    ]
    cells = _render(line_table(executions, NOW), 200)
    assert [(c[0], c[7]) for c in cells] == [
        ("[bold]", '{"path": "[/etc]"}'),
        ("[bold]", '"[red]x[/red]"'),
    ]


def test_stats_show_group_names_that_look_like_markup_as_they_are() -> None:
    cells = _render(
        stats_table([_queue("[/x]", active=1, waiting=2), _queue("[b]", active=0, waiting=0)]), 200
    )
    assert [c[:4] for c in cells] == [["cli.show", "[/x]", "2", "1"], ["cli.show", "[b]", "0", "0"]]


def test_policies_whose_names_look_like_markup_are_listed_as_they_are() -> None:
    policies = [
        Policy("x.[/etc]", 2, 10, None, "enqueue", ()),
        Policy("x.[b]", 1, 0, 5.0, "reject", ("[red]k", "host")),
    ]
    cells = _render(policy_table(policies), 200)
    assert cells == [
        ["x.[/etc]", "2", "10", "none", "enqueue", "-"],
        ["x.[b]", "1", "0", "5 s", "reject", "[red]k, host"],
    ]


def test_on_a_narrow_terminal_the_payload_gives_way_and_the_numbers_stay_whole() -> None:
    long_group = "rack-" + "7" * 40
    executions = [
        _execution(1, Status.ACTIVE, group=long_group, payload={"text": "x" * 200}),
        _execution(2, Status.QUEUED, group=long_group, payload={"text": "y" * 200}),
    ]
    for width in (80, 100):
        cells = _render(line_table(executions, NOW), width)
        assert [(c[1], c[2], c[3], c[4], c[5]) for c in cells] == [
            ("1", "1000001", "active", "-", "2.0 s"),
            ("2", "1000002", "queued", "1", "5.0 s"),
        ], f"at {width} columns"
        assert all(c[7].startswith('{"text"') and c[7].endswith("…") for c in cells)


def test_control_and_bidi_characters_in_user_text_are_escaped_not_sent_to_the_terminal() -> None:
    sneaky = "ok\x1b[2J\u202edone\x85"
    assert terminal_safe(sneaky) == "ok\\x1b[2J\\u202edone\\x85"
    assert terminal_safe("日本 é [x]") == "日本 é [x]"
    cells = _render(line_table([_execution(1, Status.QUEUED, payload=sneaky)], NOW), 200)
    assert cells[0][7] == '"ok\\u001b[2J\\u202edone\\x85"'
    shown = format_execution(_execution(1, Status.ACTIVE, payload={"t": sneaky}))
    assert "\x1b" not in shown and "\u202e" not in shown and "\\u202e" in shown


def test_a_listing_shorter_than_its_limit_is_counted_from_its_own_rows() -> None:
    rows = [_execution(1, Status.ACTIVE), _execution(2, Status.QUEUED)]
    # Counters read a moment later may disagree; the short listing is all there is.
    later = [_queue(None, active=3, waiting=9)]
    assert summary("cli.show", rows, 100, later) == "cli.show: 1 active, 1 waiting"
    assert summary("cli.show", [], 100, None) == "cli.show: 0 active, 0 waiting"


@pytest.mark.parametrize(
    ("limit", "tail"),
    [(2, " (first 2 shown; --limit shows more)"), (MAX_BATCH, f" (first {MAX_BATCH:,} shown)")],
)
def test_a_full_listing_is_counted_from_the_queues_and_says_how_to_see_more(
    limit: int, tail: str
) -> None:
    rows = [_execution(n, Status.QUEUED) for n in range(1, limit + 1)]
    totals = [_queue("a", active=1, waiting=limit), _queue("b", active=0, waiting=5)]
    text = summary("cli.show", rows, limit, totals)
    assert text == f"cli.show: 1 active, {limit + 5:,} waiting{tail}"
    # Counters that fell behind the listing never count fewer than it shows.
    behind = summary("cli.show", rows, limit, [_queue("a", active=0, waiting=1)])
    assert behind == f"cli.show: 0 active, {limit:,} waiting"
