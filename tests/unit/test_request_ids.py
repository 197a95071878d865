"""New request ids: unique in a process and across forked processes."""

from __future__ import annotations

import os
import re

from adapters.http.middleware import new_request_id


def test_ids_are_24_hex_characters_and_unique() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_process_draws_its_own_prefix() -> None:
    mine = new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next id and leave at once
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    theirs = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(theirs) == 24
    assert theirs[:12] != mine[:12]
