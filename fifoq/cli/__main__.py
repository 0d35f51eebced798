"""``python -m fifoq.cli``: the same as the ``fifoq`` console script."""

from . import main

main()
