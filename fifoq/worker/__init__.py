"""The worker runtime (SPEC §7): an App registers handlers, a Worker runs them."""

from __future__ import annotations

from .app import ActionSpec, App, Handler
from .runtime import AppLoadError, Worker, current_execution, describe_error, load_app

__all__ = [
    "ActionSpec",
    "App",
    "AppLoadError",
    "Handler",
    "Worker",
    "current_execution",
    "describe_error",
    "load_app",
]
