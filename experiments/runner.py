"""Compare agents on the copy market: agents × seeds × market variants, in parallel processes.

An experiment is one TOML file (the shipped ones are in ``configs/``)::

    name = "smoke"
    seeds = [0, 1]            # one run per (env, agent, seed)
    rounds = 3000             # impressions per run (T)
    batch_size = 100          # decisions per policy update
    eval_every = 100          # metric granularity, in impressions
    save_logs = false         # also write logs/{env}-{agent}-{seed}.parquet DecisionLogs
                              # (each with its variants table, *.variants.parquet)

    [market]                  # MarketConfig.from_dict
    catalog = { n_campaigns = 24 }

    [[envs]]                  # variants of [market]; their keys override it
    name = "drift"            # (no [[envs]] = one env called "default")
    world.drift_period = 20000

    [[agents]]
    name = "eps"              # display name (unique)
    policy = "epsilon_greedy" # key of copyloop.agents.POLICIES
    params = { epsilon = 0.05 }
    # train_steps = 200000    # calls policy.train(market, ...) before the run (e.g. ppo)

Every run steps the batched market (:class:`~copyloop.envs.vector.CopyMarketVectorEnv`) for
``rounds`` impressions, the env and the policy both seeded with the run's seed, so for one seed
every agent meets the same users and campaigns (common random numbers: the oracle's clicks are
the same for all agents, and differences between agents are paired). The policy learns after
every batch of ``batch_size`` decisions, as in :func:`copyloop.envs.simulate.simulate`. Metrics
are cumulative at every ``eval_every`` impressions:

* ``clicks``: observed clicks (the reward);
* ``expected_clicks``: sum of the true CTR of the chosen copy (clicks without the coin flips);
* ``oracle_clicks``: sum of the best candidate's true CTR (the oracle that knows the world);
* ``regret``: ``oracle_clicks − expected_clicks`` (expected, or pseudo-, regret);
* ``ctr``: ``clicks / t``.

``train_steps`` impressions of training (``ppo``) happen before the run and are not counted.

Output folder (written to a temporary folder beside it and moved into place at the end, so
an error leaves nothing): ``config.toml`` (the resolved config: rerun the folder with it),
``metrics.parquet``, ``summary.csv``, ``summary.md``, ``regret.png``, ``ctr.png`` and, with
``save_logs``, ``logs/``.

Example:
    >>> from copyloop.experiments import run_experiment, summary_text
    >>> result = run_experiment("smoke", "runs/smoke")  # doctest: +SKIP
    >>> print(summary_text(result))  # doctest: +SKIP
    ucb1 wins: regret 58.2 ± 9.1 vs epsilon_greedy 60.3 ± 4.4, uniform 61.9 ± 2.0

Run it as a script with ``python -m copyloop.experiments CONFIG --out DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import inspect
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import tempfile
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

if TYPE_CHECKING:
    from copyloop.agents.base import Policy
    from copyloop.envs.market import Market, MarketConfig

CONFIG_DIR = Path(__file__).parent / "configs"
"""The shipped experiment configs (``smoke``, ``contextual``, ``drift``, ``drift_sweep``,
``fatigue``, ``large_candidates``)."""

METRICS = ("clicks", "expected_clicks", "oracle_clicks", "regret", "ctr")
"""Metric columns of ``metrics.parquet`` (cumulative at impression ``t``; ``ctr`` = clicks/t)."""

CUMULATIVE = ("clicks", "expected_clicks", "oracle_clicks", "regret")
"""The metrics that never decrease in ``t``."""

SUMMARY_METRICS = ("clicks", "expected_clicks", "regret", "ctr")
"""Final-``t`` metrics summarised over seeds in ``summary.csv``."""

CI_LEVEL = 0.95
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ---- config -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AgentSpec:
    """One agent of an experiment (a ``[[agents]]`` entry).

    Attributes:
        name: display name, unique in the experiment; used in file names and tables.
        policy: key of :data:`copyloop.agents.POLICIES`.
        params: constructor keyword arguments of the policy (``seed`` comes from the run).
        train_steps: impressions of ``policy.train(market, total_timesteps=…, session_length=…)``
            before the run, for policies that must be trained first (``ppo``); None = no training.
    """

    name: str
    policy: str
    params: dict[str, Any] = field(default_factory=dict)
    train_steps: int | None = None

    def __post_init__(self) -> None:
        from copyloop.agents import POLICIES

        where = f"agent {self.name!r}"
        _check_name(self.name, "agents[].name")
        if self.policy not in POLICIES:
            raise ValueError(
                f"{where}: unknown policy {self.policy!r}; known: {sorted(POLICIES)} — check "
                "`policy` (agents not yet in copyloop.agents.POLICIES cannot run)"
            )
        if not isinstance(self.params, Mapping):
            raise ValueError(f"{where}: `params` must be a table, got {type(self.params).__name__}")
        object.__setattr__(self, "params", dict(self.params))
        if "seed" in self.params:
            raise ValueError(
                f"{where}: `params.seed` is not allowed — each run seeds its policy from `seeds`"
            )
        klass = POLICIES[self.policy]
        try:
            inspect.signature(klass).bind(**self.params, seed=0)
        except TypeError as e:
            accepted = [p for p in inspect.signature(klass).parameters if p != "seed"]
            raise ValueError(
                f"{where}: bad `params` for policy {self.policy!r} ({e}); it accepts {accepted}"
            ) from None
        if self.train_steps is not None:
            _check_int(self.train_steps, f"{where}: `train_steps`", low=1)
            if not callable(getattr(klass, "train", None)):
                raise ValueError(
                    f"{where}: `train_steps` is set but policy {self.policy!r} has no train() — "
                    "remove `train_steps`"
                )

    @classmethod
    def from_dict(cls, data: Any, where: str) -> AgentSpec:
        """Build from a ``[[agents]]`` table; unknown or missing keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a table, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in {where}; known: {sorted(known)}")
        missing = [k for k in ("name", "policy") if k not in data]
        if missing:
            raise ValueError(f"{where} is missing {missing}")
        return cls(
            name=data["name"],
            policy=data["policy"],
            params=data.get("params", {}),
            train_steps=data.get("train_steps"),
        )

    def make(self, seed: int) -> Policy:
        """A fresh policy seeded with ``seed``."""
        from copyloop.agents import POLICIES

        return POLICIES[self.policy](**copy.deepcopy(self.params), seed=seed)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "policy": self.policy}
        if self.train_steps is not None:
            d["train_steps"] = self.train_steps
        d["params"] = dict(self.params)
        return d


@dataclass(frozen=True)
class EnvSpec:
    """One market variant (a ``[[envs]]`` entry): ``[market]`` with ``overrides`` merged in.

    Attributes:
        name: display name, unique in the experiment.
        overrides: market keys to change, nested like ``[market]`` (``world.drift_period``).
    """

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.name, "envs[].name")
        if not isinstance(self.overrides, Mapping):
            raise ValueError(f"env {self.name!r}: overrides must be a table")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.overrides}


@dataclass(frozen=True)
class ExperimentConfig:
    """An experiment: agents × seeds × market variants, each run for ``rounds`` impressions.

    Attributes:
        name: experiment name (file-name safe); the ``experiment`` column of the metrics.
        seeds: seeds of the runs (env and policy); distinct, >= 0.
        rounds: impressions per run (T).
        agents: the agents compared (``[[agents]]``); at least one, unique names.
        envs: market variants (``[[envs]]``); empty = one env ``default`` = ``[market]``.
        market: the base market table (:meth:`copyloop.envs.MarketConfig.from_dict`).
        batch_size: decisions per policy update (and sessions stepped together).
        eval_every: impressions between recorded metric points (the last point is ``rounds``).
        save_logs: also write every run's DecisionLog (with its variants table) to ``logs/``.
        description: free text, kept in ``config.toml`` and ``summary.md``.

    Example:
        >>> cfg = ExperimentConfig.from_dict({
        ...     "name": "demo", "seeds": [0, 1], "rounds": 1000,
        ...     "agents": [{"name": "uniform", "policy": "uniform"}]})
        >>> [e.name for e in cfg.env_specs], cfg.eval_every
        (['default'], 1000)
    """

    name: str
    seeds: tuple[int, ...]
    rounds: int
    agents: tuple[AgentSpec, ...]
    envs: tuple[EnvSpec, ...] = ()
    market: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 256
    eval_every: int = 1000
    save_logs: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        if isinstance(self.seeds, int) or not isinstance(self.seeds, Sequence):
            raise ValueError(f"`seeds` must be a list of integers, got {self.seeds!r}")
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds:
            raise ValueError("`seeds` is empty — give at least one seed, e.g. seeds = [0, 1, 2]")
        for s in self.seeds:
            _check_int(s, "`seeds` entries", low=0)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` has duplicates: {list(self.seeds)}")
        _check_int(self.rounds, "`rounds`", low=1)
        _check_int(self.batch_size, "`batch_size`", low=1)
        _check_int(self.eval_every, "`eval_every`", low=1)
        if self.eval_every > self.rounds:
            raise ValueError(
                f"`eval_every` ({self.eval_every}) is above `rounds` ({self.rounds}) — lower it"
            )
        if not isinstance(self.save_logs, bool):
            raise ValueError(f"`save_logs` must be true or false, got {self.save_logs!r}")
        if not isinstance(self.description, str):
            raise ValueError("`description` must be a string")
        if not isinstance(self.market, Mapping):
            raise ValueError(f"[market] must be a table, got {type(self.market).__name__}")
        agents = [
            a if isinstance(a, AgentSpec) else AgentSpec.from_dict(a, f"agents[{i}]")
            for i, a in enumerate(self.agents)
        ]
        if not agents:
            raise ValueError("`agents` is empty — add at least one [[agents]] table")
        object.__setattr__(self, "agents", tuple(agents))
        envs = [
            e if isinstance(e, EnvSpec) else _env_from_dict(e, i) for i, e in enumerate(self.envs)
        ]
        object.__setattr__(self, "envs", tuple(envs))
        for what, names in (("agents", [a.name for a in agents]), ("envs", [e.name for e in envs])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} names must be unique; repeated: {dup}")
        for env in self.env_specs:
            self.market_config(env)  # validates [market] and every override

    @property
    def env_specs(self) -> tuple[EnvSpec, ...]:
        """The market variants run (``default`` when no ``[[envs]]`` is given)."""
        return self.envs or (EnvSpec("default"),)

    def market_config(self, env: EnvSpec) -> MarketConfig:
        """The :class:`MarketConfig` of ``env`` (``[market]`` with its overrides)."""
        from copyloop.envs.market import MarketConfig

        where = "[market]" if not env.overrides else f"env {env.name!r} ([[envs]] over [market])"
        try:
            return MarketConfig.from_dict(_merge(self.market, env.overrides))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        """Build from a dict as read from TOML; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"an experiment config must be a table, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown key(s) {unknown} in the experiment config; known: {sorted(known)}"
            )
        missing = [k for k in ("name", "seeds", "rounds", "agents") if k not in data]
        if missing:
            raise ValueError(f"the experiment config is missing {missing}")
        for key in ("agents", "envs"):
            if key in data and not isinstance(data[key], list):
                raise ValueError(f"`{key}` must be an array of tables ([[{key}]])")
        kw = dict(data)
        kw["agents"] = tuple(data["agents"])
        kw["envs"] = tuple(data.get("envs", ()))
        kw["market"] = dict(data.get("market", {}))
        return cls(**kw)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> ExperimentConfig:
        """Read a TOML file (see the module docstring for the layout)."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"experiment config {p} does not exist")
        try:
            with p.open("rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{p} is not valid TOML: {e}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "seeds": list(self.seeds),
            "rounds": self.rounds,
            "batch_size": self.batch_size,
            "eval_every": self.eval_every,
            "save_logs": self.save_logs,
            "market": copy.deepcopy(self.market),
        }
        if self.envs:
            d["envs"] = [e.to_dict() for e in self.envs]
        d["agents"] = [a.to_dict() for a in self.agents]
        return d

    def to_toml(self) -> str:
        """The config as TOML text (``from_toml`` reads it back to an equal config)."""
        return _toml_dumps(self.to_dict())

    def resolved(self) -> ExperimentConfig:
        """This config with every default written out: the full ``[market]`` table, explicit
        ``[[envs]]`` and each agent's full constructor arguments, so the run is reproducible
        even if code defaults change. Instantiates each policy once (checks its params)."""
        from copyloop.envs.market import MarketConfig

        base = MarketConfig.from_dict(dict(self.market))
        market = base.to_dict()
        if MarketConfig.from_dict(market) != base:  # e.g. values to_dict cannot express
            market = copy.deepcopy(self.market)
        agents = tuple(replace(a, params=_resolved_params(a)) for a in self.agents)
        return replace(self, market=market, envs=self.env_specs, agents=agents)

    def runs(self) -> list[RunSpec]:
        """Every (env, agent, seed) run, envs outermost."""
        out = []
        for env in self.env_specs:
            market = self.market_config(env).to_dict()
            for agent in self.agents:
                for seed in self.seeds:
                    out.append(
                        RunSpec(
                            self.name,
                            env.name,
                            market,
                            agent,
                            seed,
                            self.rounds,
                            self.batch_size,
                            self.eval_every,
                        )
                    )
        return out


def _env_from_dict(data: Any, i: int) -> EnvSpec:
    if not isinstance(data, Mapping):
        raise ValueError(f"envs[{i}] must be a table, got {type(data).__name__}")
    if "name" not in data:
        raise ValueError(f"envs[{i}] has no `name`")
    rest = {k: v for k, v in data.items() if k != "name"}
    return EnvSpec(name=data["name"], overrides=rest)


def _resolved_params(agent: AgentSpec) -> dict[str, Any]:
    """The agent's full constructor arguments (as TOML values), or its params as given where
    the full set would not rebuild the same policy (e.g. a None that TOML cannot hold)."""
    try:
        pol = agent.make(0)
    except (ValueError, TypeError) as e:
        raise ValueError(f"agent {agent.name!r} (policy {agent.policy!r}): {e}") from None
    full = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in pol.get_params().items()
        if k != "seed" and v is not None
    }
    try:
        same = (
            type(pol)(**copy.deepcopy(full), seed=0).get_params()  # type: ignore[arg-type]
            == pol.get_params()
        )
    except (ValueError, TypeError):
        same = False
    return full if same else dict(agent.params)


def _check_name(name: Any, key: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"`{key}` must be a non-empty name of letters, digits, '_', '.', '-' (it names "
            f"files), got {name!r}"
        )


def _check_int(v: Any, key: str, *, low: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise ValueError(f"{key} must be an integer, got {v!r}")
    if v < low:
        raise ValueError(f"{key} must be >= {low}, got {v}")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def config_path(name: str | os.PathLike[str]) -> Path:
    """The TOML file for ``name``: a path, or the name of a shipped config (``"smoke"``)."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / f"{p.name}.toml"
    if p.suffix == "" and len(p.parts) == 1 and shipped.is_file():
        return shipped
    known = sorted(q.stem for q in CONFIG_DIR.glob("*.toml"))
    raise FileNotFoundError(
        f"experiment config {str(name)!r} does not exist; pass a TOML file or one of the shipped "
        f"configs {known}"
    )


# ---- one run ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """Everything one worker needs for one (env, agent, seed) run (plain, picklable data)."""

    experiment: str
    env: str
    market: dict[str, Any]
    agent: AgentSpec
    seed: int
    rounds: int
    batch_size: int
    eval_every: int
    log_path: str | None = None


_MARKETS: dict[MarketConfig, Market] = {}


def _market(market: dict[str, Any]) -> Market:
    """The built market; variants differing only in session length share one build.

    Built single-threaded and cached here rather than through ``Market.get``: the catalog's
    candidate features differ in their last bits with the BLAS thread count, and one flipped
    click changes a learning agent's whole path, so every run (in a worker or in this process,
    whatever was cached before) must see the same build.
    """
    from copyloop.envs.market import Market, MarketConfig

    cfg = MarketConfig.from_dict(market)
    base = replace(cfg, session_length=1)
    if base not in _MARKETS:
        with _blas_threads(1):
            _MARKETS[base] = Market(base)
    return _MARKETS[base].with_session_length(cfg.session_length)


@contextlib.contextmanager
def _blas_threads(n: int) -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with sentence-transformers
        yield
        return
    with threadpool_limits(n):
        yield


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
        with _blas_threads(1):
            yield
    finally:
        torch.set_num_threads(n)


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
) -> ExperimentResult:
    """Run every (env, agent, seed) of an experiment and write its folder.

    Args:
        config: a TOML path, the name of a shipped config (``"smoke"``) or a config object.
        out_dir: folder to write; must not exist or be empty (unless ``overwrite``).
        workers: parallel processes; default ``min(2, cpu count)``; 1 = run in this process.
        progress: show a rich progress bar on stderr.
        overwrite: replace an existing non-empty ``out_dir`` (only once everything succeeded).

    Returns:
        The result; the same data as the files in ``out_dir``.

    Raises:
        ValueError: a bad config (the message names the key), or ``out_dir`` not empty.
        FileNotFoundError: the config file does not exist.
    """
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
    n_workers = min(2, os.cpu_count() or 1) if workers is None else workers
    _check_int(n_workers, "`workers`", low=1)
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
        frames = _run_all(specs, n_workers, progress, cfg.name)
        elapsed = time.perf_counter() - start
        metrics = pd.concat(frames, ignore_index=True)
        metrics.to_parquet(tmp / "metrics.parquet", index=False)
        summary = summarize(metrics, cfg)
        summary.to_csv(tmp / "summary.csv", index=False)
        result = ExperimentResult(cfg, out, metrics, summary, elapsed)
        (tmp / "summary.md").write_text(_summary_md(result), encoding="utf-8")
        plot_metric(metrics, "regret", tmp / "regret.png", title=f"{cfg.name}: cumulative regret")
        plot_metric(metrics, "ctr", tmp / "ctr.png", title=f"{cfg.name}: cumulative CTR")
        _move_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


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


def _run_all(specs: list[RunSpec], workers: int, progress: bool, name: str) -> list[pd.DataFrame]:
    """Run ``specs`` (inline for one worker, else in spawned processes); results in spec order."""
    total = sum(s.rounds for s in specs)
    with _progress_bar(progress, total, name, len(specs)) as advance:
        if workers == 1 or len(specs) == 1:
            frames = []
            with _single_threaded():
                base = 0
                for i, s in enumerate(specs):
                    frames.append(_noted(s, functools.partial(_advance_run, advance, base, i)))
                    base += s.rounds
                    advance(base, i + 1)
            return frames
        ctx = mp.get_context("spawn")  # fork is unsafe with torch and threads in the parent
        pool = ProcessPoolExecutor(
            min(workers, len(specs)), mp_context=ctx, initializer=_init_worker
        )
        futures: dict[Future[pd.DataFrame], int] = {}
        try:
            futures = {pool.submit(run_one, s): i for i, s in enumerate(specs)}
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


def _noted(spec: RunSpec, progress: Callable[[int], None]) -> pd.DataFrame:
    try:
        return run_one(spec, progress)
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


# ---- summaries ----------------------------------------------------------------------------------
def ci_halfwidth(x: Sequence[float] | np.ndarray, level: float = CI_LEVEL) -> float:
    """Half-width of the t-interval of the mean of ``x`` (NaN for fewer than 2 values)."""
    a = np.asarray(x, np.float64)
    if a.size < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))


def summarize(metrics: pd.DataFrame, config: ExperimentConfig) -> pd.DataFrame:
    """Per (env, agent): mean and 95 % CI half-width over seeds of the final metrics, and the
    rank by mean regret within the env (1 = least regret). Rows in config order."""
    final = metrics[metrics["t"] == config.rounds]
    rows = []
    policy = {a.name: a.policy for a in config.agents}
    for env in config.env_specs:
        for agent in config.agents:
            g = final[(final["env"] == env.name) & (final["agent"] == agent.name)]
            row: dict[str, Any] = {
                "env": env.name,
                "agent": agent.name,
                "policy": policy[agent.name],
                "seeds": len(g),
                "rounds": config.rounds,
            }
            for m in SUMMARY_METRICS:
                row[f"{m}_mean"] = float(g[m].mean())
                row[f"{m}_ci"] = ci_halfwidth(g[m].to_numpy())
            rows.append(row)
    df = pd.DataFrame(rows)
    df["rank"] = df.groupby("env", sort=False)["regret_mean"].rank(method="min").astype(np.int64)
    return df


def winner(result: ExperimentResult) -> str:
    """The best agent: least mean regret (averaged rank over envs when there are several,
    total regret breaking ties)."""
    s = result.summary
    score = s.groupby("agent", sort=False).agg(rank=("rank", "mean"), regret=("regret_mean", "sum"))
    return str(score.sort_values(["rank", "regret"], kind="stable").index[0])


def summary_text(result: ExperimentResult, env: str | None = None) -> str:
    """One line per env: ``"linear_ts wins: regret 812 ± 40 vs ucb1 950 ± 31, uniform …"``,
    noting when the winner's lead over the runner-up is not significant (one-sided paired
    t-test over seeds, which share their traffic). Envs are prefixed when there are several."""
    s = result.summary
    envs = [env] if env is not None else list(dict.fromkeys(s["env"]))
    lines = []
    for e in envs:
        g = s[s["env"] == e].sort_values(["rank", "regret_mean"], kind="stable")
        if g.empty:
            raise ValueError(f"no env {e!r} in the result; envs: {sorted(set(s['env']))}")
        best = g.iloc[0]
        line = f"{best['agent']} wins: regret {_pm(best['regret_mean'], best['regret_ci'])}"
        if len(g) > 1:
            line += " vs " + ", ".join(
                f"{r.agent} {_pm(r.regret_mean, r.regret_ci)}" for r in g.iloc[1:].itertuples()
            )
            second = str(g.iloc[1]["agent"])
            p = _paired_p(result.metrics, e, str(best["agent"]), second, result.config.rounds)
            if not p < 0.05:
                line += f" (lead over {second} not significant: paired p = {p:.2g})"
        lines.append(f"[{e}] {line}" if env is None and len(envs) > 1 else line)
    return "\n".join(lines)


def _paired_p(metrics: pd.DataFrame, env: str, a: str, b: str, t: int) -> float:
    final = metrics[(metrics["env"] == env) & (metrics["t"] == t)]
    ra = final[final["agent"] == a].set_index("seed")["regret"]
    rb = final[final["agent"] == b].set_index("seed")["regret"]
    d = (rb - ra).dropna()
    if d.size < 2:
        return math.nan
    if np.allclose(d, d.iloc[0]):
        return 0.0 if d.iloc[0] > 0 else 1.0
    return float(stats.ttest_1samp(d, 0.0, alternative="greater").pvalue)


def _pm(mean: Any, ci: Any, digits: int = 1) -> str:
    """``"812.0 ± 40.2"`` (just the mean when the CI is undefined)."""
    mean, ci = float(mean), float(ci)
    if math.isnan(ci):
        return f"{mean:,.{digits}f}"
    return f"{mean:,.{digits}f} ± {ci:,.{digits}f}"


def _summary_md(result: ExperimentResult) -> str:
    cfg, s = result.config, result.summary
    out = [f"# {cfg.name}", ""]
    if cfg.description:
        out += [cfg.description.strip(), ""]
    out += [
        f"{cfg.rounds:,} impressions per run · {len(cfg.seeds)} seeds {list(cfg.seeds)} · "
        f"batch {cfg.batch_size} · mean ± {CI_LEVEL:.0%} CI over seeds (t-interval) at "
        f"t = {cfg.rounds:,}; regret = oracle's expected clicks − the agent's; rank by regret.",
        "",
    ]
    for env in cfg.env_specs:
        g = s[s["env"] == env.name].sort_values(["rank", "regret_mean"], kind="stable")
        sl = cfg.market_config(env).session_length
        over = f" — overrides {json.dumps(env.overrides)}" if env.overrides else ""
        out += [
            f"## env `{env.name}` (session_length {sl}){over}",
            "",
            "| rank | agent | policy | clicks | expected clicks | regret | CTR |",
            "|---:|---|---|---:|---:|---:|---:|",
        ]
        for r in g.itertuples():
            out.append(
                f"| {r.rank} | {r.agent} | {r.policy} | {_pm(r.clicks_mean, r.clicks_ci)} | "
                f"{_pm(r.expected_clicks_mean, r.expected_clicks_ci)} | "
                f"{_pm(r.regret_mean, r.regret_ci)} | {_pm(r.ctr_mean, r.ctr_ci, 4)} |"
            )
        out += ["", summary_text(result, env.name), ""]
    return "\n".join(out)


def plot_metric(
    metrics: pd.DataFrame, metric: str, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Mean over seeds against ``t`` with its 95 % CI band, one line per agent, one panel per
    env (matplotlib's Agg canvas, no pyplot state). For ``ctr`` the oracle's CTR is dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    envs = list(dict.fromkeys(metrics["env"]))
    fig = Figure(figsize=(5.5 * len(envs), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(envs), squeeze=False)[0]
    for ax, env in zip(axes, envs, strict=True):
        m = metrics[metrics["env"] == env]
        for agent, g in m.groupby("agent", sort=False):
            by_t = g.groupby("t")[metric]
            mean = by_t.mean()
            half = by_t.agg(ci_halfwidth).fillna(0.0)
            (line,) = ax.plot(mean.index, mean.to_numpy(), label=str(agent), lw=1.5)
            ax.fill_between(
                mean.index, mean - half, mean + half, color=line.get_color(), alpha=0.2, lw=0
            )
        if metric == "ctr":
            oracle = m.groupby("t")["oracle_clicks"].mean()
            ax.plot(
                oracle.index,
                oracle.to_numpy() / oracle.index.to_numpy(),
                "k--",
                lw=1,
                label="oracle",
            )
        ax.set_title(f"env {env}")
        ax.set_xlabel("impressions t")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return Path(path)


# ---- TOML writing (tomllib only reads) ----------------------------------------------------------
def _config_header(cfg: ExperimentConfig) -> str:
    from copyloop import __version__

    return (
        f"# Resolved config of experiment {cfg.name!r} (copyloop {__version__}): every default\n"
        "# is written out. Rerun: copyloop experiment run config.toml --out NEW_FOLDER\n\n"
    )


def _toml_dumps(data: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _toml_table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _toml_table(d: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    def is_table_array(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)

    for k, v in d.items():
        if not isinstance(v, Mapping) and not is_table_array(v):
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in d.items():
        if isinstance(v, Mapping):
            lines += ["", "[" + ".".join(_toml_key(x) for x in [*path, k]) + "]"]
            _toml_table(v, [*path, k], lines)
    for k, v in d.items():
        if is_table_array(v):
            for item in v:
                lines += ["", "[[" + ".".join(_toml_key(x) for x in [*path, k]) + "]]"]
                _toml_table(item, [*path, k], lines)


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        f = float(v)
        if math.isnan(f):
            return "nan"
        return repr(f) if math.isfinite(f) else ("inf" if f > 0 else "-inf")
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        raise ValueError("TOML has no null: drop the key instead of setting it to None")
    raise ValueError(f"cannot write {type(v).__name__} {v!r} to TOML")


# ---- script -------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    """``python -m copyloop.experiments CONFIG --out DIR [--workers N] [--overwrite]``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("config", help="experiment TOML, or a shipped config name (smoke, ...)")
    ap.add_argument("--out", required=True, help="output folder (new or empty)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default min(2, CPUs))")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = ap.parse_args(argv)
    result = run_experiment(args.config, args.out, workers=args.workers, overwrite=args.overwrite)
    print(summary_text(result))
    print(f"wrote {result.out_dir} in {result.elapsed_s:.1f} s")


if __name__ == "__main__":
    main()
