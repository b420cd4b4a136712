"""AfterReply: the thread that runs a batch's metric lines once its replies have gone."""

from __future__ import annotations

import logging
import os
import threading
import time

from codetr_serve.runtime.after_reply import AfterReply


def test_jobs_run_in_order_and_drain_waits_for_them() -> None:
    runner, seen = AfterReply("test-order"), []
    for index in range(20):
        runner.submit(lambda index=index: (time.sleep(0.001), seen.append(index)))
    assert runner.drain(5.0)
    assert seen == list(range(20))


def test_a_failing_job_is_logged_and_the_next_ones_still_run(caplog) -> None:
    runner, seen = AfterReply("test-failure"), []

    def broken() -> None:
        raise ValueError("metric cache broke")

    with caplog.at_level(logging.ERROR, logger="codetr_serve.runtime.after_reply"):
        runner.submit(broken)
        runner.submit(lambda: seen.append("after"))
        assert runner.drain(5.0)
    assert seen == ["after"]
    assert [r.exc_info[0] for r in caplog.records] == [ValueError]


def test_submit_waits_instead_of_dropping_when_the_queue_is_full() -> None:
    runner, release, seen = AfterReply("test-full", max_pending=2), threading.Event(), []
    runner.submit(release.wait)  # taken by the thread at once, then it blocks
    time.sleep(0.05)
    runner.submit(lambda: seen.append(1))
    runner.submit(lambda: seen.append(2))  # the queue holds two now
    third = threading.Thread(target=runner.submit, args=(lambda: seen.append(3),))
    third.start()
    third.join(0.2)
    assert third.is_alive(), "a third pending job was accepted past max_pending"
    release.set()
    third.join(5.0)
    assert runner.drain(5.0) and seen == [1, 2, 3]


def test_drain_gives_up_after_its_timeout() -> None:
    runner, release = AfterReply("test-timeout"), threading.Event()
    runner.submit(release.wait)
    assert not runner.drain(0.1)
    release.set()
    assert runner.drain(5.0)


def test_the_thread_runs_at_the_lowest_priority_and_the_caller_keeps_its_own() -> None:
    # Woken by submit() while the worker's own thread still has replies to send, the thread must not win
    # the core (and with it the GIL) from that thread.
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    runner = AfterReply("test-priority")
    assert runner.drain(5.0)
    assert os.getpriority(os.PRIO_PROCESS, runner.native_id) == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
