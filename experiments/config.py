"""Experiment configs: what to compare (agents × seeds × market variants), read from TOML.

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

Configs are validated on construction (:class:`ExperimentConfig`), written back with
``tomli-w`` (:meth:`ExperimentConfig.to_toml`), and expanded into plain, picklable
:class:`RunSpec` s, one per (env, agent, seed), that :mod:`copyloop.experiments.runner` runs.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tomli_w

if TYPE_CHECKING:
    from copyloop.agents.base import Policy
    from copyloop.envs.market import MarketConfig

CONFIG_DIR = Path(__file__).parent / "configs"
"""The shipped experiment configs (``smoke``, ``contextual``, ``drift``, ``drift_sweep``,
``fatigue``, ``large_candidates``)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
        check_name(self.name, "agents[].name")
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
            check_int(self.train_steps, f"{where}: `train_steps`", low=1)
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
        check_name(self.name, "envs[].name")
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
        check_name(self.name, "name")
        if isinstance(self.seeds, int) or not isinstance(self.seeds, Sequence):
            raise ValueError(f"`seeds` must be a list of integers, got {self.seeds!r}")
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds:
            raise ValueError("`seeds` is empty — give at least one seed, e.g. seeds = [0, 1, 2]")
        for s in self.seeds:
            check_int(s, "`seeds` entries", low=0)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` has duplicates: {list(self.seeds)}")
        check_int(self.rounds, "`rounds`", low=1)
        check_int(self.batch_size, "`batch_size`", low=1)
        check_int(self.eval_every, "`eval_every`", low=1)
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
        return tomli_w.dumps(_toml_ready(self.to_dict()))

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


def check_name(name: Any, key: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"`{key}` must be a non-empty name of letters, digits, '_', '.', '-' (it names "
            f"files), got {name!r}"
        )


def check_int(v: Any, key: str, *, low: int) -> None:
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


def _toml_ready(v: Any) -> Any:
    """``v`` with numpy scalars as Python ones (``tomli_w`` writes only Python types)."""
    if isinstance(v, Mapping):
        return {k: _toml_ready(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_toml_ready(x) for x in v]
    if v is None:
        raise ValueError("TOML has no null: drop the key instead of setting it to None")
    return v.item() if isinstance(v, np.generic) else v


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
