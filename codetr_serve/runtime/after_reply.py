"""Work a worker does after a batch's replies have gone: one daemon thread, in submission order.

TorchServe's worker sends a batch's replies and then blocks until the frontend hands it the next batch; that
turnaround is idle time for the worker (measured in docs/tuning.md, "Serving overhead, round 2"). Work the
replies do not need, such as printing the batch's metric lines for the frontend, runs in that gap here
instead of in front of the replies.

Nothing is dropped: `submit` waits when `max_pending` jobs are queued already, so a worker whose metric
lines cannot be written stalls as it would have without this thread. A job that raises is logged and the
thread goes on with the next one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Job = Callable[[], None]
LOWEST_PRIORITY = 19  # nice value


class AfterReply:
    """A queue of jobs run one at a time, in order, on a daemon thread named `name` at the lowest priority."""

    def __init__(self, name: str, max_pending: int = 8) -> None:
        self._jobs: queue.Queue[Job] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def native_id(self) -> int | None:
        """The thread's id for the OS (what `ps -L` and os.getpriority see)."""
        return self._thread.native_id

    def submit(self, job: Job) -> None:
        """Queue `job`; waits while `max_pending` jobs are queued already."""
        self._jobs.put(job)

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every job submitted before this call has run; False if that took over `timeout_s`."""
        done = threading.Event()
        try:
            self._jobs.put(done.set, timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    def _run(self) -> None:
        # Lowest CPU priority for this thread alone (Linux nice values are per thread): woken by `submit`, it
        # would otherwise take the GIL whenever the worker's thread does I/O before its replies are sent
        # and, on a worker with one core, keep it (docs/tuning.md, "Serving overhead, round 2").
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:  # one failed job must not stop the jobs after it
                log.exception("a job run after the replies failed")
