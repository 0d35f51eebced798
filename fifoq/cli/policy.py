"""`fifoq policy set|get|list|delete`: concurrency policies of actions, packs and the default."""

from __future__ import annotations

import enum
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ..models import Policy
from ..validation import check_action, check_policy
from ._common import (
    DebugOption,
    DsnOption,
    JsonOption,
    connect,
    connection_string,
    console,
    errors_handled,
    fail,
    parse_seconds,
    pass_on,
    print_json,
    run,
    terminal_safe,
)

policy_app = typer.Typer(
    name="policy",
    help="Set and show concurrency policies (per action, per pack 'pack.*', default '*').",
    short_help="Set and show concurrency policies.",
    epilog="Example: fifoq policy set 'core.*' --max-concurrent 10;  fifoq policy list",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@policy_app.callback()
def _policy_group(dsn: DsnOption = None, debug: DebugOption = False) -> None:
    """Set and show concurrency policies (per action, per pack 'pack.*', default '*')."""
    # --dsn and --debug are also accepted here: fifoq policy --dsn URI list.
    pass_on(dsn, debug)


class OnLimit(enum.StrEnum):
    """What an enqueue does when the execution cannot start at once."""

    enqueue = "enqueue"
    reject = "reject"


def _describe(policy: Policy) -> str:
    limit = "unlimited" if policy.max_concurrent is None else str(policy.max_concurrent)
    timeout = "none" if policy.queue_timeout is None else f"{policy.queue_timeout:g} s"
    length = "unlimited" if policy.max_queue_length is None else str(policy.max_queue_length)
    return "\n".join(
        [
            f"{'policy':<17} {policy.action}",
            f"{'max_concurrent':<17} {limit}",
            f"{'max_queue_length':<17} {length}",
            f"{'queue_timeout':<17} {timeout}",
            f"{'on_limit':<17} {policy.on_limit}",
            f"{'group_by':<17} {', '.join(policy.group_by) or '-'}",
        ]
    )


@policy_app.command(
    "set",
    epilog="Example: fifoq policy set core.deploy --max-concurrent 2 --group-by host "
    "--queue-timeout 600",
)
def set_policy(
    action: Annotated[
        str,
        typer.Argument(
            metavar="ACTION", help="Action name, 'pack.*' for a pack, or '*' for the default."
        ),
    ],
    max_concurrent: Annotated[
        int,
        typer.Option("--max-concurrent", metavar="N", help="At most N active per queue."),
    ],
    max_queue_length: Annotated[
        int,
        typer.Option("--max-queue-length", metavar="M", help="At most M waiting per queue."),
    ] = 10_000,
    queue_timeout: Annotated[
        str,
        typer.Option(
            "--queue-timeout",
            metavar="S",
            help="Seconds an execution may wait before it is timed_out, or 'none'.",
        ),
    ] = "3600",
    on_limit: Annotated[
        OnLimit,
        typer.Option("--on-limit", help="enqueue: wait in line; reject: refuse at once."),
    ] = OnLimit.enqueue,
    group_by: Annotated[
        list[str] | None,
        typer.Option(
            "--group-by",
            metavar="KEY",
            help="Payload key whose value forms the group (repeatable); the limit is per group.",
        ),
    ] = None,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Set the concurrency policy of an action, a pack or the default.

    A raised limit admits waiting executions at once.
    """
    timeout = parse_seconds("--queue-timeout", queue_timeout, allow_none=True)
    keys = tuple(group_by or ())
    with errors_handled(debug):
        # Checked before connecting: bad values are usage errors, whatever the server.
        check_policy(
            action,
            max_concurrent=max_concurrent,
            max_queue_length=max_queue_length,
            queue_timeout=timeout,
            on_limit=on_limit.value,
            group_by=keys,
        )
    conninfo = connection_string(dsn)

    async def go() -> Policy:
        async with connect(conninfo, "policy set") as qm:
            return await qm.set_policy(
                action,
                max_concurrent=max_concurrent,
                max_queue_length=max_queue_length,
                queue_timeout=timeout,
                on_limit=on_limit.value,
                group_by=keys,
            )

    policy = run(go(), debug=debug, dsn=conninfo)
    if as_json:
        print_json(policy)
    else:
        typer.echo(_describe(policy))


@policy_app.command(
    "get",
    epilog="Example: fifoq policy get core.deploy  (shows the pack's or default if none)",
    short_help="Show the policy in force for an action.",
)
def get_policy(
    action: Annotated[str, typer.Argument(metavar="ACTION", help="Action name.")],
    as_json: JsonOption = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Show the policy in force for an action: its own, its pack's, the default, or unlimited."""
    with errors_handled(debug):
        check_action(action)
    conninfo = connection_string(dsn)

    async def go() -> Policy:
        async with connect(conninfo, "policy get") as qm:
            return await qm.get_policy(action)

    policy = run(go(), debug=debug, dsn=conninfo)
    if as_json:
        print_json({"for_action": action, **_as_dict(policy)})
        return
    typer.echo(f"{'action':<17} {action}  ({_source(action, policy)})")
    typer.echo(_describe(policy))


def _source(action: str, policy: Policy) -> str:
    # Which policy this is for the action: its own, its pack's, the default's.
    if policy.action == action:
        return "the action's own policy"
    if policy.action == "*":
        return "the default policy ('*')" if policy.max_concurrent is not None else "none set"
    return f"its pack's policy ({policy.action!r})"


def _as_dict(policy: Policy) -> dict[str, object]:
    return {
        "action": policy.action,
        "max_concurrent": policy.max_concurrent,
        "max_queue_length": policy.max_queue_length,
        "queue_timeout": policy.queue_timeout,
        "on_limit": policy.on_limit,
        "group_by": list(policy.group_by),
    }


@policy_app.command(
    "delete",
    epilog="Example: fifoq policy delete core.deploy  (core.deploy follows 'core.*' again)",
    short_help="Remove the policy of an action, a pack or the default.",
)
def delete_policy(
    action: Annotated[
        str,
        typer.Argument(
            metavar="ACTION", help="Action name, 'pack.*' for a pack, or '*' for the default."
        ),
    ],
    as_json: JsonOption = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Remove the policy of an action, a pack or the default.

    Its queues follow the next policy in force: the pack's, the default, or
    none (unlimited); a limit that rises admits waiting executions at once.
    Exits 1 if no policy of that name was set. Needs DELETE on
    fifoq.policies (the schema's owner; fifoq_executor cannot).
    """
    with errors_handled(debug):
        check_action(action)
    conninfo = connection_string(dsn)

    async def go() -> tuple[Policy | None, Policy | None]:
        async with connect(conninfo, "policy delete") as qm:
            deleted = await qm.delete_policy(action)
            if deleted is None or action == "*" or action.endswith(".*"):
                return deleted, None
            return deleted, await qm.get_policy(action)

    deleted, now = run(go(), debug=debug, dsn=conninfo)
    if deleted is None:
        fail(f"no policy is set for {action!r}: nothing deleted (fifoq policy list shows them)")
    if as_json:
        print_json({"deleted": _as_dict(deleted), "now": None if now is None else _as_dict(now)})
        return
    typer.echo(f"deleted the policy of {action}")
    typer.echo(_describe(deleted))
    if now is not None and now.max_concurrent is None:
        typer.echo(f"{action} now has no policy: unlimited")
    elif now is not None:
        typer.echo(f"{action} now follows {_source(action, now)}:")
        typer.echo(_describe(now))


@policy_app.command("list", epilog="Example: fifoq policy list --json")
def list_policies(
    as_json: JsonOption = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """List every policy that was set, ordered by action."""
    conninfo = connection_string(dsn)

    async def go() -> list[Policy]:
        async with connect(conninfo, "policy list") as qm:
            return await qm.list_policies()

    policies = run(go(), debug=debug, dsn=conninfo)
    if as_json:
        print_json([_as_dict(p) for p in policies])
        return
    if not policies:
        typer.echo("no policies set: every action is unlimited")
        return
    console().print(policy_table(policies))


def policy_table(policies: list[Policy]) -> Table:
    """A rich table of policies, one row each, in the order given.

    Cells are plain text, never rich markup: action names and group_by keys
    are the users' (``x.[b]`` and ``[/etc]`` are valid names).
    """
    table = Table("action", "max concurrent", "max queue", "queue timeout", "on limit", "group by")
    for p in policies:
        cells = (
            p.action,
            str(p.max_concurrent),
            str(p.max_queue_length),
            "none" if p.queue_timeout is None else f"{p.queue_timeout:g} s",
            p.on_limit,
            ", ".join(p.group_by) or "-",
        )
        table.add_row(*(Text(terminal_safe(cell)) for cell in cells))
    return table
