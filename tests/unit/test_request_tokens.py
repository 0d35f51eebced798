"""Request tokens (sql/0021) never repeat, also across a fork."""

from __future__ import annotations

import os

from fifoq import lost_replies


def test_tokens_count_up_within_a_process() -> None:
    first = next(lost_replies.tokens)
    assert next(lost_replies.tokens) == first + 1


def test_a_forked_child_draws_its_own_tokens() -> None:
    # Without a new draw the child would go on from the parent's count and
    # send the very tokens the parent sends next.
    parent = next(lost_replies.tokens)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next token and leave at once
        os.close(read_end)
        os.write(write_end, str(next(lost_replies.tokens)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        child = int(reader.read())
    os.waitpid(pid, 0)
    assert child != parent + 1
