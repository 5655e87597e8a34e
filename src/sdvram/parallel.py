"""Independent jobs side by side in forked worker processes, for the searches of ``fit``: each job is a
function of a progress ``tick`` that returns a picklable result. A forked child shares the parent's built
pipeline (copy-on-write), so a worker starts at once; it reports each tick and its result over a pipe.

Where ``fork`` is not available (or one worker is asked for), the jobs run one after the other here.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from sdvram.collector import settle

Job = Callable[[Callable[[], None]], Any]


class WorkerFailed(RuntimeError):
    """A job raised in its worker; the message carries the worker's traceback."""


def run_side_by_side(jobs: Sequence[Job], tick: Callable[[], None], workers: int | None = None) -> list[Any]:
    """Each job's result, in the jobs' order. At most ``workers`` jobs run at once (default: all of them, one
    process each, however many cores there are: the jobs of a fit search differ in length, and the system
    shares the cores among them better than a fixed assignment of jobs to cores would; on 2 cores the three
    chains of a 24 GB card took 22 s so, 31 s two at a time); ``tick`` is called in this process for every
    tick of every job."""
    count = min(workers or len(jobs), len(jobs))
    if count <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [job(tick) for job in jobs]
    context = multiprocessing.get_context("fork")
    # Python's gc docs: freeze before fork (collector.settle), so that the children's collections neither walk nor
    # touch (and so copy) the parent's objects, the built pipeline and the call logs among them (a fit: 15.0 s
    # against 15.5 s here). They stay frozen after, as what the libraries and the build made is (collector.py):
    # unfreezing would hand them all back to the next full collection.
    settle()
    results: dict[int, Any] = {}
    running: dict[Connection, tuple[int, Any]] = {}
    waiting = list(enumerate(jobs))
    try:
        while waiting or running:
            while waiting and len(running) < count:
                index, job = waiting.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_work, args=(job, send), daemon=True)
                process.start()
                send.close()
                running[receive] = (index, process)
            for connection in wait(list(running)):
                assert isinstance(connection, Connection)
                index, process = running[connection]
                try:
                    kind, payload = connection.recv()
                except EOFError:
                    kind, payload = "error", f"the worker ended without a result (exit code {process.exitcode})"
                if kind == "tick":
                    tick()
                    continue
                connection.close()
                process.join()
                del running[connection]
                if kind == "error":
                    raise WorkerFailed(payload)
                results[index] = payload
    finally:
        for connection, (_, process) in running.items():
            process.terminate()
            process.join()
            connection.close()
    return [results[i] for i in range(len(jobs))]


def cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container or taskset limits it)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies (Linux)


def _end_with_parent() -> None:
    """Ask the kernel to end this worker when its parent dies (killed with SIGTERM or SIGKILL, its own clean-up
    not run): a fit search's workers do not run on for seconds after it. Linux only; elsewhere nothing."""
    import ctypes
    import ctypes.util
    import signal

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        pass


def _work(job: Job, send: Connection) -> None:
    """In the child: run the job, sending ticks and then its result (or the traceback)."""
    import torch  # already imported by the parent: free

    _end_with_parent()
    torch.set_num_threads(1)  # one core per worker; and no OpenMP pool inherited across the fork is used
    try:
        result = job(lambda: send.send(("tick", None)))
        send.send(("done", result))  # the pipe pickles it
    except BaseException:  # noqa: BLE001 -- whatever happened, the parent must hear of it
        send.send(("error", traceback.format_exc()))
    finally:
        send.close()
