"""Runs `fifoq bench` without the CLI app: ``python -m fifoq.bench --quick``."""

import typer

from fifoq.cli.bench import bench

if __name__ == "__main__":
    typer.run(bench)
