"""A step's independent per-network work (one network's dissection, one network's measures) spread over
worker processes, one torch thread each.

Each item is a module-level function and its picklable arguments; the function writes its result into
the run folder itself (atomically, under the same cache key the step checks), and the step then reads
every result back from there, so what a step returns does not depend on how many workers computed it
or in which order. Two processes at one thread each use two cores without the collapse that one
two-thread process suffers beside any other load (the README's thread policy). Workers are spawned
(not forked: the caller may be a Jupyter kernel holding torch's thread pool) and die with their parent.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import traceback
from typing import Any, Callable, Optional, Sequence

from tqdm.auto import tqdm

from kdlib.device import available_cores, die_with_parent
from kdlib.errors import KdlibError


# A worker spends about 18 s of CPU importing torch before its first item: below this many images per
# worker (what a step's items read in all), the caller's process alone finishes sooner.
MIN_IMAGES_PER_WORKER = 10_000


def default_jobs(items: int, images_per_item: int) -> int:
    """One worker per core, never more than there are items, and one process (no worker) when the items
    read fewer than :data:`MIN_IMAGES_PER_WORKER` images per worker (a tiny study)."""
    return max(1, min(available_cores(), items, items * images_per_item // MIN_IMAGES_PER_WORKER))


def _start_worker() -> None:
    import torch

    die_with_parent()
    torch.set_num_threads(1)


def run_items(fn: Callable[..., Any], items: Sequence[tuple], desc: str, jobs: Optional[int] = None,
              progress: bool = True, images_per_item: int = MIN_IMAGES_PER_WORKER) -> None:
    """``fn(*item)`` for every item, in this process when ``jobs`` (default :func:`default_jobs` of the
    items and the images each reads) is 1, else
    in up to ``jobs`` spawned workers taking the items in the given order (put the longest first). The
    first failure stops the rest: a :class:`KdlibError` is raised as it is (one line), a worker that dies
    becomes one line saying that finished items are kept."""
    if not items:
        return
    jobs = default_jobs(len(items), images_per_item) if jobs is None else max(1, min(jobs, len(items)))
    label = f"{desc}, {jobs} process{'es' if jobs > 1 else ''}"
    bar = tqdm(total=len(items), desc=label, disable=not progress)
    try:
        if jobs == 1:
            for item in items:
                fn(*item)
                bar.update()
            return
        _in_workers(fn, items, jobs, bar, label)
    finally:
        bar.close()


def _in_workers(fn: Callable[..., Any], items: Sequence[tuple], jobs: int, bar, label: str) -> None:
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for n, item in enumerate(items):
        tasks.put((n, item))
    for _ in range(jobs):
        tasks.put(None)
    procs = [ctx.Process(target=_worker, args=(fn, tasks, results), daemon=True) for _ in range(jobs)]
    for proc in procs:
        proc.start()
    try:
        for _ in items:
            kind, body = _next_result(results, procs, label)
            if kind == "error":
                raise KdlibError(body)
            if kind == "crash":
                raise RuntimeError(f"{label} failed in a worker process:\n{body}")
            bar.update()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()


def _next_result(results, procs: list, desc: str) -> tuple[str, Any]:
    """The next item's outcome; one line when a worker died without reporting one (killed, out of memory)."""
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in procs if not p.is_alive() and p.exitcode != 0]
            if dead:
                raise KdlibError(f"a worker process of '{desc}' died (exit code {dead[0].exitcode}); "
                                 "valid: run again (what finished is kept)") from None


def _worker(fn: Callable[..., Any], tasks, results) -> None:
    """A worker: items from ``tasks`` until a None, each outcome on ``results``."""
    _start_worker()
    while (task := tasks.get()) is not None:
        try:
            fn(*task[1])
            results.put(("done", None))
        except KdlibError as exc:
            results.put(("error", str(exc)))
        except BaseException:
            results.put(("crash", traceback.format_exc()))
            return
