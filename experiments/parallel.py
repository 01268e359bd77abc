"""Running many experiment runs: inline or in spawned worker processes, one thread each.

Every run computes single-threaded (one BLAS and one torch thread), inline as in a worker, so a
run's numbers do not depend on how many workers ran it; parallelism comes from the processes.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from copyloop.experiments.config import RunSpec

    RunFn = Callable[[RunSpec, Callable[[int], None] | None], pd.DataFrame]
    """One run: ``run(spec, progress)`` with ``progress(impressions_done)``."""

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """At most ``n`` BLAS threads inside the block (no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with sentence-transformers
        yield
        return
    with threadpool_limits(n):
        yield


def _init_worker() -> None:
    """Worker processes compute single-threaded: parallelism comes from the processes."""
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    import torch  # now, so that agents importing it later (neural_linear_ts, ppo) get 1 thread

    torch.set_num_threads(1)


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run in this process with one BLAS and one torch thread, as a worker does (so results
    match the workers' to the bit), restoring the thread counts after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with blas_threads(1):
            yield
    finally:
        torch.set_num_threads(n)


def run_all(
    specs: list[RunSpec], run: RunFn, *, workers: int, progress: bool, name: str
) -> list[pd.DataFrame]:
    """``run(spec, progress)`` for every spec: inline for one worker, else in spawned processes
    (``run`` must then be a module-level function, so that it pickles).

    Returns:
        The results in spec order. An error names its run (an exception note).
    """
    total = sum(s.rounds for s in specs)
    with _progress_bar(progress, total, name, len(specs)) as advance:
        if workers == 1 or len(specs) == 1:
            frames = []
            with _single_threaded():
                base = 0
                for i, s in enumerate(specs):
                    frames.append(_noted(run, s, functools.partial(_advance_run, advance, base, i)))
                    base += s.rounds
                    advance(base, i + 1)
            return frames
        ctx = mp.get_context("spawn")  # fork is unsafe with torch and threads in the parent
        pool = ProcessPoolExecutor(
            min(workers, len(specs)), mp_context=ctx, initializer=_init_worker
        )
        futures: dict[Future[pd.DataFrame], int] = {}
        try:
            futures = {pool.submit(run, s, None): i for i, s in enumerate(specs)}
            results: dict[int, pd.DataFrame] = {}
            pending = set(futures)
            finished = 0
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    i = futures[f]
                    exc = f.exception()
                    if isinstance(exc, BrokenProcessPool):
                        raise RuntimeError(
                            "a worker process died (out of memory, killed, or the calling script "
                            "lacks the `if __name__ == '__main__':` guard that spawned processes "
                            "need) — rerun with workers=1 to see the error in this process"
                        ) from exc
                    if exc is not None:
                        _add_note(exc, specs[i])
                        raise exc
                    results[i] = f.result()
                    finished += specs[i].rounds
                    advance(finished, len(results))
            return [results[i] for i in range(len(specs))]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _advance_run(advance: Callable[[int, int], None], base: int, runs: int, done: int) -> None:
    advance(base + done, runs)


def _noted(run: RunFn, spec: RunSpec, progress: Callable[[int], None]) -> pd.DataFrame:
    try:
        return run(spec, progress)
    except Exception as e:
        _add_note(e, spec)
        raise


def _add_note(e: BaseException, spec: RunSpec) -> None:
    e.add_note(f"in experiment run env={spec.env!r} agent={spec.agent.name!r} seed={spec.seed}")


@contextlib.contextmanager
def _progress_bar(
    show: bool, total: int, name: str, n_runs: int
) -> Iterator[Callable[[int, int], None]]:
    """Yields ``advance(impressions_done, runs_done)``."""
    if not show:
        yield lambda done, runs: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("impressions · {task.fields[runs]}/" + str(n_runs) + " runs"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(name, total=total, runs=0)
        yield lambda done, runs: bar.update(task, completed=done, runs=runs)
