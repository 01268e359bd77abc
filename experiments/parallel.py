"""Running many experiment runs: inline, in spawned worker processes, or on Ray actors.

Every run computes single-threaded (one BLAS and one torch thread), inline as in a worker, so a
run's numbers do not depend on how many workers ran it, nor on the backend; parallelism comes
from the processes. Backends (:data:`BACKENDS`):

* ``process``: a :class:`~concurrent.futures.ProcessPoolExecutor` of spawned processes on this
  machine (inline when one worker or one run);
* ``ray``: one Ray actor per worker (:func:`run_ray`), on a local Ray started for the sweep or
  on a cluster (``ray_address``). Each actor is a long-lived process, so module-level caches
  (the built market of :func:`copyloop.experiments.runner.run_one`) serve every run it gets:
  the market is built once per worker, not per run. Ray is the optional extra
  ``copyloop[ray]``.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from copyloop.experiments.config import RunSpec

    RunFn = Callable[[RunSpec, Callable[[int], None] | None], pd.DataFrame]
    """One run: ``run(spec, progress)`` with ``progress(impressions_done)``."""

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

BACKENDS = ("process", "ray")
"""Where the runs of an experiment execute (see the module docstring)."""

RAY_MISSING = (
    "the ray backend needs Ray, which is not installed — pip install 'copyloop[ray]' "
    "(or run with --backend process)"
)


def require_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ImportError: Ray is not installed (the message says which extra to install).
    """
    try:
        import ray
    except ImportError as e:
        raise ImportError(RAY_MISSING) from e
    return ray


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
    specs: list[RunSpec],
    run: RunFn,
    *,
    workers: int,
    progress: bool,
    name: str,
    backend: str = "process",
    ray_address: str | None = None,
) -> list[pd.DataFrame]:
    """``run(spec, progress)`` for every spec: with the ``process`` backend inline for one
    worker, else in spawned processes; with ``ray`` on ``workers`` Ray actors (``run`` must then
    be a module-level function, so that it pickles).

    Args:
        ray_address: the Ray cluster to use (``ray`` backend only); None starts a local Ray
            for the sweep (or joins the one ``RAY_ADDRESS`` names, as ``ray.init`` does).

    Returns:
        The results in spec order. An error names its run (an exception note).
    """
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if ray_address is not None and backend != "ray":
        raise ValueError("`ray_address` is for the ray backend — pass backend='ray' with it")
    total = sum(s.rounds for s in specs)
    if backend == "ray":
        with _progress_bar(progress, total, name, len(specs)) as advance:
            return run_ray(
                specs, run, workers=workers, address=ray_address, advance=advance
            ).results
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


@dataclass(frozen=True)
class RaySweep:
    """What :func:`run_ray` returns.

    Attributes:
        results: the runs' results, in spec order.
        pids: the worker process that ran each spec, in spec order.
        market_builds: per actor, how many markets it built
            (:func:`copyloop.experiments.runner.market_builds`): one per market config it met,
            however many runs it took.
    """

    results: list[pd.DataFrame]
    pids: list[int]
    market_builds: list[int]


def run_ray(
    specs: list[RunSpec],
    run: RunFn,
    *,
    workers: int,
    address: str | None = None,
    advance: Callable[[int, int], None] | None = None,
) -> RaySweep:
    """Run every spec on ``min(workers, len(specs))`` Ray actors (one CPU each).

    Each actor is one worker process, set up like a process-pool worker (single-threaded), and
    takes the next spec as soon as it is free. A local Ray started here (``address`` None and
    no Ray running in this process) is shut down at the end.

    Raises:
        ImportError: Ray is not installed (``pip install 'copyloop[ray]'``).
    """
    ray = require_ray()
    from ray.util import ActorPool

    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning"}
        if address is None:
            kwargs["num_cpus"] = max(workers, 1)
        ray.init(address=address, **kwargs)
    try:
        worker_cls = ray.remote(num_cpus=1)(_RayWorker)
        actors = [worker_cls.remote(run) for _ in range(min(workers, len(specs)))]
        pool = ActorPool(actors)
        for i, s in enumerate(specs):
            pool.submit(lambda a, v: a.run.remote(*v), (i, s))
        results: dict[int, tuple[pd.DataFrame, int]] = {}
        finished = 0
        while pool.has_next():
            i, df, pid = pool.get_next_unordered()
            results[i] = (df, pid)
            finished += specs[i].rounds
            if advance is not None:
                advance(finished, len(results))
        builds = ray.get([a.market_builds.remote() for a in actors])
        for a in actors:
            ray.kill(a)
        return RaySweep(
            [results[i][0] for i in range(len(specs))],
            [results[i][1] for i in range(len(specs))],
            [int(b) for b in builds],
        )
    finally:
        if started:
            ray.shutdown()


class _RayWorker:
    """One Ray actor: a long-lived, single-threaded worker process running runs in turn."""

    def __init__(self, run: RunFn) -> None:
        _init_worker()
        self._run = run

    def run(self, i: int, spec: RunSpec) -> tuple[int, pd.DataFrame, int]:
        return i, _noted(self._run, spec, None), os.getpid()

    def market_builds(self) -> int:
        from copyloop.experiments.runner import market_builds

        return market_builds()


def _advance_run(advance: Callable[[int, int], None], base: int, runs: int, done: int) -> None:
    advance(base + done, runs)


def _noted(run: RunFn, spec: RunSpec, progress: Callable[[int], None] | None) -> pd.DataFrame:
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
