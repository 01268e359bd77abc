"""Compare agents on the copy market: run an experiment (agents × seeds × market variants).

The experiment is an :class:`~copyloop.experiments.config.ExperimentConfig` (a TOML file; see
:mod:`copyloop.experiments.config` for the layout). Every run steps the batched market
(:class:`~copyloop.envs.vector.CopyMarketVectorEnv`) for ``rounds`` impressions, the env and the
policy both seeded with the run's seed, so for one seed every agent meets the same users and
campaigns (common random numbers: the oracle's clicks are the same for all agents, and
differences between agents are paired). The policy learns after every batch of ``batch_size``
decisions, in the loop :func:`copyloop.envs.simulate.simulate` runs too. Metrics are cumulative
at every ``eval_every`` impressions:

* ``clicks``: observed clicks (the reward);
* ``expected_clicks``: sum of the true CTR of the chosen copy (clicks without the coin flips);
* ``oracle_clicks``: sum of the best candidate's true CTR (the oracle that knows the world);
* ``regret``: ``oracle_clicks − expected_clicks`` (expected, or pseudo-, regret);
* ``ctr``: ``clicks / t``.

``train_steps`` impressions of training (``ppo``) happen before the run and are not counted.
Runs go in parallel processes or on Ray actors (:mod:`copyloop.experiments.parallel`), with
the same numbers either way.

Output folder (written to a temporary folder beside it and moved into place at the end, so
an error leaves nothing): ``config.toml`` (the resolved config: rerun the folder with it),
``metrics.parquet``, ``summary.csv``, ``summary.md`` (:mod:`copyloop.experiments.summary`),
``regret.png``, ``ctr.png`` (:mod:`copyloop.experiments.plots`) and, with ``save_logs``,
``logs/``.

Example:
    >>> from copyloop.experiments import run_experiment, summary_text
    >>> result = run_experiment("smoke", "runs/smoke")  # doctest: +SKIP
    >>> print(summary_text(result))  # doctest: +SKIP
    ucb1 wins: regret 58.2 ± 9.1 vs epsilon_greedy 60.3 ± 4.4, uniform 61.9 ± 2.0

Run it as a script with ``python -m copyloop.experiments CONFIG --out DIR``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from copyloop.experiments.config import (
    ExperimentConfig,
    RunSpec,
    check_int,
    config_path,
)
from copyloop.experiments.parallel import blas_threads, run_all
from copyloop.experiments.plots import plot_metric
from copyloop.experiments.summary import summarize, summary_md

if TYPE_CHECKING:
    from copyloop.envs.market import Market, MarketConfig

METRICS = ("clicks", "expected_clicks", "oracle_clicks", "regret", "ctr")
"""Metric columns of ``metrics.parquet`` (cumulative at impression ``t``; ``ctr`` = clicks/t)."""

CUMULATIVE = ("clicks", "expected_clicks", "oracle_clicks", "regret")
"""The metrics that never decrease in ``t``."""


# ---- one run ------------------------------------------------------------------------------------
_MARKETS: dict[MarketConfig, Market] = {}
_BUILDS = 0


def market_builds() -> int:
    """How many markets this process has built for runs (a worker builds each config once)."""
    return _BUILDS


def _market(market: dict[str, Any]) -> Market:
    """The built market; variants differing only in session length share one build.

    Built single-threaded and cached here rather than through ``Market.get``: the catalog's
    candidate features differ in their last bits with the BLAS thread count, and one flipped
    click changes a learning agent's whole path, so every run (in a worker or in this process,
    whatever was cached before) must see the same build.
    """
    from copyloop.envs.market import Market, MarketConfig

    global _BUILDS
    cfg = MarketConfig.from_dict(market)
    base = replace(cfg, session_length=1)
    if base not in _MARKETS:
        with blas_threads(1):
            _MARKETS[base] = Market(base)
        _BUILDS += 1
    return _MARKETS[base].with_session_length(cfg.session_length)


def run_one(spec: RunSpec, progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """One run: train if asked, then ``rounds`` impressions with learning after every batch.

    Runs :func:`copyloop.envs.simulate.run_loop`, the loop that ``simulate`` runs too (same
    env, batch and seeds, so the totals agree), recording the cumulative metrics at every
    ``eval_every`` impressions instead of only the totals.

    Args:
        spec: the run.
        progress: called with the impressions done after each batch.

    Returns:
        Rows ``experiment, env, agent, seed, t`` + :data:`METRICS`, one per metric point.
    """
    from copyloop.envs.simulate import StepBatch, run_loop

    market = _market(spec.market)
    policy = spec.agent.make(spec.seed)
    if spec.agent.train_steps is not None:
        train = getattr(policy, "train", None)
        if train is None:
            raise ValueError(f"policy {spec.agent.policy!r} has no train() for `train_steps`")
        train(
            market,
            total_timesteps=spec.agent.train_steps,
            session_length=market.config.session_length,
        )
    points = np.unique(
        np.r_[np.arange(spec.eval_every, spec.rounds + 1, spec.eval_every), spec.rounds]
    )
    series = np.zeros((4, points.size))  # clicks, expected, oracle, regret at each point
    totals = np.zeros(4)
    p = 0

    def record(b: StepBatch) -> None:
        nonlocal p
        cum = np.cumsum(np.stack([b.clicks, b.expected, b.oracle, b.oracle - b.expected]), axis=1)
        q = int(np.searchsorted(points, b.end, side="right"))
        if q > p:  # metric points inside this batch (impression t = start + i + 1)
            series[:, p:q] = totals[:, None] + cum[:, points[p:q] - b.start - 1]
            p = q
        totals[:] += cum[:, -1]
        if progress is not None:
            progress(b.end)

    run_loop(
        market,
        policy,
        spec.rounds,
        seed=spec.seed,
        batch_size=spec.batch_size,
        out=spec.log_path,
        run_id=f"{spec.env}-{spec.agent.name}-{spec.seed}",
        metadata={"experiment": spec.experiment},
        on_batch=record,
    )
    df = pd.DataFrame(
        {
            "experiment": spec.experiment,
            "env": spec.env,
            "agent": spec.agent.name,
            "seed": np.full(points.size, spec.seed, np.int64),
            "t": points.astype(np.int64),
            "clicks": np.rint(series[0]).astype(np.int64),
            "expected_clicks": series[1],
            "oracle_clicks": series[2],
            "regret": series[3],
        }
    )
    df["ctr"] = df["clicks"] / df["t"]
    return df


# ---- the experiment -----------------------------------------------------------------------------
@dataclass
class ExperimentResult:
    """What :func:`run_experiment` wrote.

    Attributes:
        config: the resolved config (as in ``config.toml``).
        out_dir: the output folder.
        metrics: ``metrics.parquet``: one row per (env, agent, seed, t).
        summary: ``summary.csv``: one row per (env, agent), final-``t`` means and 95 % CI
            half-widths over seeds, ``rank`` by mean regret within the env (1 = best).
        elapsed_s: wall time of the runs.
    """

    config: ExperimentConfig
    out_dir: Path
    metrics: pd.DataFrame
    summary: pd.DataFrame
    elapsed_s: float = 0.0

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> ExperimentResult:
        """Read a finished experiment folder back."""
        p = Path(out_dir)
        for f in ("config.toml", "metrics.parquet", "summary.csv"):
            if not (p / f).is_file():
                raise FileNotFoundError(f"{p} has no {f} — not a finished experiment folder")
        return cls(
            ExperimentConfig.from_toml(p / "config.toml"),
            p,
            pd.read_parquet(p / "metrics.parquet"),
            pd.read_csv(p / "summary.csv"),
        )


def run_experiment(
    config: str | os.PathLike[str] | ExperimentConfig,
    out_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    backend: str = "process",
    ray_address: str | None = None,
) -> ExperimentResult:
    """Run every (env, agent, seed) of an experiment and write its folder.

    Args:
        config: a TOML path, the name of a shipped config (``"smoke"``) or a config object.
        out_dir: folder to write; must not exist or be empty (unless ``overwrite``).
        workers: parallel processes (Ray actors with ``backend="ray"``); default
            ``min(2, cpu count)`` (on a Ray cluster: its CPUs); 1 = run in this process
            (``process`` backend).
        progress: show a rich progress bar on stderr.
        overwrite: replace an existing non-empty ``out_dir`` (only once everything succeeded).
        backend: ``process`` (this machine's processes) or ``ray`` (Ray actors; the
            ``copyloop[ray]`` extra); the results are the same.
        ray_address: the Ray cluster (``ray://host:10001`` or ``host:6379``) for
            ``backend="ray"``; None starts a local Ray for the sweep.

    Returns:
        The result; the same data as the files in ``out_dir``.

    Raises:
        ValueError: a bad config (the message names the key), or ``out_dir`` not empty.
        FileNotFoundError: the config file does not exist.
        ImportError: ``backend="ray"`` without Ray installed.
    """
    from copyloop.experiments.parallel import BACKENDS, require_ray

    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if ray_address is not None and backend != "ray":
        raise ValueError("`ray_address` is for the ray backend — pass backend='ray' with it")
    if backend == "ray":
        require_ray()  # fail before any work
    cfg = (
        config
        if isinstance(config, ExperimentConfig)
        else ExperimentConfig.from_toml(config_path(config))
    )
    cfg = cfg.resolved()
    if len(cfg.seeds) < 2:
        warnings.warn(
            f"experiment {cfg.name!r} has 1 seed: its summary has no confidence intervals — "
            "use 3-5 seeds to compare agents",
            stacklevel=2,
        )
    out = Path(out_dir)
    _check_out(out, overwrite)
    n_workers = (
        workers
        if workers is not None
        else _cluster_cpus(ray_address)
        if ray_address is not None
        else min(2, os.cpu_count() or 1)
    )
    check_int(n_workers, "`workers`", low=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "config.toml").write_text(_config_header(cfg) + cfg.to_toml(), encoding="utf-8")
        specs = cfg.runs()
        if cfg.save_logs:
            (tmp / "logs").mkdir()
            specs = [
                replace(s, log_path=str(tmp / "logs" / f"{s.env}-{s.agent.name}-{s.seed}.parquet"))
                for s in specs
            ]
        start = time.perf_counter()
        frames = run_all(
            specs,
            run_one,
            workers=n_workers,
            progress=progress,
            name=cfg.name,
            backend=backend,
            ray_address=ray_address,
        )
        elapsed = time.perf_counter() - start
        metrics = pd.concat(frames, ignore_index=True)
        metrics.to_parquet(tmp / "metrics.parquet", index=False)
        summary = summarize(metrics, cfg)
        summary.to_csv(tmp / "summary.csv", index=False)
        result = ExperimentResult(cfg, out, metrics, summary, elapsed)
        (tmp / "summary.md").write_text(summary_md(result), encoding="utf-8")
        plot_metric(metrics, "regret", tmp / "regret.png", title=f"{cfg.name}: cumulative regret")
        plot_metric(metrics, "ctr", tmp / "ctr.png", title=f"{cfg.name}: cumulative CTR")
        _move_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _cluster_cpus(address: str) -> int:
    """The CPUs of the Ray cluster at ``address`` (the default worker count there)."""
    from copyloop.experiments.parallel import require_ray

    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="warning")
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder — choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(
            f"output folder {out} is not empty — choose a new folder or pass overwrite=True"
        )


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    _check_out(out, overwrite)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _config_header(cfg: ExperimentConfig) -> str:
    from copyloop import __version__

    return (
        f"# Resolved config of experiment {cfg.name!r} (copyloop {__version__}): every default\n"
        "# is written out. Rerun: copyloop experiment run config.toml --out NEW_FOLDER\n\n"
    )
