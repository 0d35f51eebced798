"""App: the registry of an application's action handlers and their concurrency policies."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import InvalidPolicy
from ..models import Policy
from ..validation import check_action, check_policy

logger = logging.getLogger("fifoq.worker")

if TYPE_CHECKING:
    from ..manager import QueueManager

__all__ = ["ActionSpec", "App", "Handler"]

Handler = Callable[[Any], Awaitable[Any]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One registered action: its handler, its policy and its handler timeout.

    ``max_concurrent=None`` registers a handler without a policy: the worker
    then leaves whatever policy is in force (the action's, its pack's or the
    default) untouched.
    """

    name: str
    handler: Handler
    max_concurrent: int | None = None
    max_queue_length: int = 10_000
    queue_timeout: float | None = 3600.0
    on_limit: str = "enqueue"
    group_by: tuple[str, ...] = ()
    timeout: float | None = None

    @property
    def has_policy(self) -> bool:
        """True when starting a worker sets this action's policy."""
        return self.max_concurrent is not None


class App:
    """An application: async handlers registered per action, run by ``fifoq worker``.

    Example::

        app = fifoq.App()

        @app.action("core.deploy", max_concurrent=2, group_by=("host",))
        async def deploy(payload: dict) -> dict:
            ...
            return {"ok": True}

    and run it with ``fifoq worker mymodule:app``.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self._actions: dict[str, ActionSpec] = {}

    def action(
        self,
        name: str,
        *,
        max_concurrent: int | None = None,
        max_queue_length: int = 10_000,
        queue_timeout: float | None = 3600.0,
        on_limit: str = "enqueue",
        group_by: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Callable[[H], H]:
        """Register the decorated ``async def handler(payload)`` for action ``name``.

        The policy arguments are those of ``QueueManager.set_policy``; a worker
        applies them when it starts (none when ``max_concurrent`` is None).
        ``timeout`` (seconds) cancels a handler that runs longer and fails its
        execution. The handler's return value (JSON-serialisable) becomes the
        result; an exception fails the execution with ``"TypeName: message"``.
        Raises ``InvalidInput``/``InvalidPolicy`` (``ValueError``) on bad
        values, ``ValueError`` for a name registered twice.
        """
        check_action(name)
        if name in self._actions:
            raise ValueError(f"action {name!r} is already registered")
        if max_concurrent is None:
            defaults = inspect.signature(App.action).parameters
            given = [
                arg
                for arg, value in (
                    ("max_queue_length", max_queue_length),
                    ("queue_timeout", queue_timeout),
                    ("on_limit", on_limit),
                    ("group_by", tuple(group_by)),
                )
                if value != defaults[arg].default
            ]
            if given:
                # Without max_concurrent the worker sets no policy at all, so
                # these would be dropped without a word.
                raise InvalidPolicy(
                    f"invalid policy for action {name!r}: {', '.join(given)} given without "
                    "max_concurrent (the policy is set only with a limit)"
                )
        else:
            check_policy(
                name,
                max_concurrent=max_concurrent,
                max_queue_length=max_queue_length,
                queue_timeout=queue_timeout,
                on_limit=on_limit,
                group_by=tuple(group_by),
            )
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (math.isfinite(timeout) and timeout > 0)
        ):
            raise ValueError(
                f"timeout of action {name!r} must be a positive number of seconds, got {timeout!r}"
            )

        def register(handler: H) -> H:
            checked: Any = handler  # iscoroutinefunction is a TypeGuard; keep H intact
            if not inspect.iscoroutinefunction(checked):
                raise TypeError(
                    f"the handler of action {name!r} must be an async function (async def), "
                    f"got {handler!r}"
                )
            self._actions[name] = ActionSpec(
                name=name,
                handler=handler,
                max_concurrent=max_concurrent,
                max_queue_length=max_queue_length,
                queue_timeout=queue_timeout,
                on_limit=on_limit,
                group_by=tuple(group_by),
                timeout=None if timeout is None else float(timeout),
            )
            return handler

        return register

    @property
    def actions(self) -> dict[str, ActionSpec]:
        """The registered actions by name (a copy)."""
        return dict(self._actions)

    def __getitem__(self, name: str) -> ActionSpec:
        return self._actions[name]

    def __contains__(self, name: object) -> bool:
        return name in self._actions

    def __len__(self) -> int:
        return len(self._actions)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<fifoq.App{label} actions={sorted(self._actions)}>"

    async def apply_policies(
        self, qm: QueueManager, actions: Iterable[str] | None = None
    ) -> list[Policy]:
        """Set the policy of every registered action (or of ``actions``) that declares one.

        An action's own policy that differs (set by hand, or by workers of
        another version of the app) is replaced, with a warning that names
        the differences: the last worker to start wins.
        """
        names = self._actions if actions is None else actions
        policies: list[Policy] = []
        for name in names:
            spec = self._actions[name]
            if spec.max_concurrent is None:
                continue
            before = await qm.get_policy(name)
            policy = await qm.set_policy(
                name,
                max_concurrent=spec.max_concurrent,
                max_queue_length=spec.max_queue_length,
                queue_timeout=spec.queue_timeout,
                on_limit=spec.on_limit,
                group_by=spec.group_by,
            )
            if before.action == name and before != policy:
                differ = [
                    (field.name, getattr(before, field.name), getattr(policy, field.name))
                    for field in dataclasses.fields(Policy)
                ]
                changes = ", ".join(
                    f"{k} {old!r} -> {new!r}" for k, old, new in differ if old != new
                )
                logger.warning(
                    "policy of %s replaced by this app's: %s (do all workers of it declare the "
                    "same policy?)",
                    name,
                    changes,
                )
            policies.append(policy)
        return policies
