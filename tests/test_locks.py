"""edgefleet/locks.py: one holder at a time; the second is told it waits, then gets the lock."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgefleet.locks import exclusive

HOLD = "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"


def test_a_second_process_is_told_it_waits_and_gets_the_lock_when_the_first_lets_go(tmp_path):
    lock = tmp_path / "cache" / ".build.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, lock], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    told: list[bool] = []

    def let_go() -> None:  # the holder ends once told; only then can the lock be taken
        told.append(holder.poll() is None)
        holder.stdin.close()

    with exclusive(lock, let_go):
        assert holder.wait(10) == 0
    assert told == [True]
    with exclusive(lock, lambda: pytest.fail("nobody holds the lock now")):
        pass
