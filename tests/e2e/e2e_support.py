"""Helpers of the end-to-end tests: real `fifoq` processes started through the console script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def fifoq_bin() -> str:
    """The `fifoq` console script of the environment running the tests."""
    path = Path(sys.executable).parent / "fifoq"
    if not path.exists():
        pytest.fail(f"no console script at {path}: install the package (pip install -e .)")
    return str(path)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `fifoq ARGS...` to completion, capturing its output."""
    return subprocess.run(
        [fifoq_bin(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=HERE,
    )


@dataclass
class WorkerProcess:
    """A running `fifoq worker worker_apps:app` process and its log file."""

    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        """Everything it logged so far."""
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        """Send a signal."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for it to exit; its exit code."""
        return self.proc.wait(timeout)


class Workers:
    """Starts worker processes for one test and stops them afterwards."""

    def __init__(self, dsn: str, tmp_path: Path) -> None:
        self.dsn = dsn
        self.tmp_path = tmp_path
        self.started: list[WorkerProcess] = []

    def start(self, *args: str, ready_timeout: float = 30) -> WorkerProcess:
        """Start one and return once it logged that it is ready (policies applied)."""
        log = self.tmp_path / f"worker-{len(self.started) + 1}.log"
        with open(log, "wb") as out:
            # --log-level debug first: a later --log-level in args wins.
            proc = subprocess.Popen(
                [
                    fifoq_bin(),
                    "worker",
                    "worker_apps:app",
                    "--dsn",
                    self.dsn,
                    "--log-level",
                    "debug",
                    *args,
                ],
                cwd=HERE,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(proc, log)
        self.started.append(worker)
        deadline = time.monotonic() + ready_timeout
        while "worker ready" not in worker.log_text():
            if proc.poll() is not None:
                pytest.fail(f"worker exited with {proc.returncode}:\n{worker.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"worker not ready within {ready_timeout} s:\n{worker.log_text()}")
            time.sleep(0.02)
        return worker

    def stop_all(self) -> None:
        """SIGTERM what still runs, then SIGKILL what does not exit."""
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self.started:
            try:
                worker.proc.wait(15)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
