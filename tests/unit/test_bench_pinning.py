"""bench.pinning: the paired rounds' core split, applied to every thread of real processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import pinning

THREADED_CHILD = ("import threading, time\n"
                  "for _ in range(2): threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
                  "print('up', flush=True); time.sleep(30)\n")


def test_split_gives_the_last_core_to_the_model() -> None:
    split = pinning.split_cores([0, 1, 2, 3])
    assert split.model == {3} and split.serving == {0, 1, 2}
    assert pinning.split_cores([5]) is None


@pytest.fixture()
def threaded_child():
    child = subprocess.Popen([sys.executable, "-c", THREADED_CHILD], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "up"
    yield child.pid
    child.kill()
    child.wait()


def test_every_thread_is_pinned_and_our_own_affinity_comes_back(threaded_child) -> None:
    own = os.sched_getaffinity(0)
    core = min(own)
    split = pinning.CoreSplit(frozenset({core}), frozenset(own))
    with pinning.pinned(split, [threaded_child], []) as cores:
        threads = os.listdir(f"/proc/{threaded_child}/task")
        assert len(threads) >= 3
        assert all(os.sched_getaffinity(int(tid)) == {core} for tid in threads)
        assert cores["model_cores"] == [core]
    assert os.sched_getaffinity(0) == own


def test_no_split_pins_nothing(threaded_child) -> None:
    before = os.sched_getaffinity(threaded_child)
    with pinning.pinned(None, [threaded_child], []) as cores:
        assert cores == {"model_cores": None, "serving_cores": None}
        assert os.sched_getaffinity(threaded_child) == before
