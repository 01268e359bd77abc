"""The experiment runner: the smoke config end to end, determinism, and bad configs."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from copyloop.agents import POLICIES, UniformPolicy
from copyloop.contract import DecisionLog, read_variants_for
from copyloop.experiments import (
    CONFIG_DIR,
    ExperimentConfig,
    ExperimentResult,
    config_path,
    run_experiment,
    summary_text,
    winner,
)
from copyloop.experiments.runner import CUMULATIVE, METRICS, RunSpec, _market, run_one

SMOKE = config_path("smoke")


@pytest.fixture(scope="module")
def smoke_dict() -> dict[str, Any]:
    with SMOKE.open("rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> ExperimentResult:
    out = tmp_path_factory.mktemp("smoke") / "out"
    return run_experiment(SMOKE, out, workers=1, progress=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_smoke_writes_well_formed_folder(smoke: ExperimentResult) -> None:
    out = smoke.out_dir
    names = {"config.toml", "metrics.parquet", "summary.csv", "summary.md", "regret.png", "ctr.png"}
    assert names <= {p.name for p in out.iterdir()}
    assert _leftovers(out.parent) == []
    for png in ("regret.png", "ctr.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = pd.read_parquet(out / "metrics.parquet")
    pd.testing.assert_frame_equal(metrics, smoke.metrics)
    assert list(metrics.columns) == ["experiment", "env", "agent", "seed", "t", *METRICS]
    assert set(metrics["experiment"]) == {"smoke"}
    agents = [a.name for a in smoke.config.agents]
    assert agents == ["uniform", "epsilon_greedy", "ucb1"]
    assert metrics.groupby(["agent", "seed"]).size().to_dict() == {
        (a, s): 30 for a in agents for s in (0, 1)
    }

    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["agent"]) == sorted(agents)  # one row per agent (one env)
    assert summary["seeds"].eq(2).all()
    by_regret = summary.sort_values("regret_mean")
    assert by_regret["rank"].is_monotonic_increasing and by_regret["rank"].iloc[0] == 1
    assert summary[["regret_ci", "clicks_ci", "ctr_ci"]].gt(0).all().all()
    md = (out / "summary.md").read_text()
    assert md.startswith("# smoke") and all(f"| {a} |" in md for a in agents)

    # The folder reproduces the run: its config.toml reads back to the resolved config.
    assert ExperimentConfig.from_toml(out / "config.toml") == smoke.config
    loaded = ExperimentResult.load(out)
    pd.testing.assert_frame_equal(loaded.summary, smoke.summary, check_dtype=False)


def test_smoke_metrics_are_cumulative_and_regret_nonnegative(smoke: ExperimentResult) -> None:
    m = smoke.metrics
    for (_, _, _), g in m.groupby(["env", "agent", "seed"]):
        assert g["t"].tolist() == list(range(100, 3001, 100))
        for col in CUMULATIVE:
            assert (np.diff(g[col].to_numpy()) >= 0).all(), col
        assert (g["regret"] >= -1e-9).all()
        np.testing.assert_allclose(
            g["regret"], g["oracle_clicks"] - g["expected_clicks"], atol=1e-9
        )
        np.testing.assert_allclose(g["ctr"], g["clicks"] / g["t"])
    # Common random numbers: for a seed every agent meets the same traffic, so the same oracle.
    oracle = m.pivot_table(index=["seed", "t"], columns="agent", values="oracle_clicks")
    np.testing.assert_allclose(oracle.min(axis=1), oracle.max(axis=1), rtol=1e-12)


def test_same_config_and_seed_give_identical_metrics_across_processes(
    smoke: ExperimentResult, tmp_path: Path
) -> None:
    again = run_experiment(SMOKE, tmp_path / "out", workers=2, progress=False)
    pd.testing.assert_frame_equal(again.metrics, smoke.metrics)
    pd.testing.assert_frame_equal(again.summary, smoke.summary)


def test_run_totals_match_simulate(smoke: ExperimentResult) -> None:
    """The runner's accounting is simulate()'s: same totals for the same policy, seed, batch."""
    from copyloop.envs.simulate import simulate

    cfg = smoke.config
    spec = next(r for r in cfg.runs() if r.agent.name == "ucb1" and r.seed == 1)
    last = run_one(spec).iloc[-1]
    s = simulate(
        _market(spec.market), spec.agent.make(1), cfg.rounds, seed=1, batch_size=cfg.batch_size
    )
    assert last["clicks"] == s.clicks
    assert last["expected_clicks"] == pytest.approx(s.expected_clicks, rel=1e-6)
    assert last["oracle_clicks"] == pytest.approx(s.best_expected_clicks, rel=1e-6)


def test_winner_and_summary_text(smoke: ExperimentResult) -> None:
    w = winner(smoke)
    best = smoke.summary.sort_values("regret_mean").iloc[0]
    assert w == best["agent"]
    text = summary_text(smoke)
    assert text.startswith(f"{w} wins: regret {best['regret_mean']:,.1f} ± ")
    assert all(a.name in text for a in smoke.config.agents)


def test_save_logs_writes_valid_decision_logs(smoke_dict: dict[str, Any], tmp_path: Path) -> None:
    d = copy.deepcopy(smoke_dict) | {
        "rounds": 500,
        "save_logs": True,
        "agents": smoke_dict["agents"][2:],
    }
    res = run_experiment(ExperimentConfig.from_dict(d), tmp_path / "out", workers=1, progress=False)
    logs = res.out_dir / "logs"
    assert sorted(p.name for p in logs.iterdir()) == [
        "default-ucb1-0.parquet",
        "default-ucb1-0.variants.parquet",
        "default-ucb1-1.parquet",
        "default-ucb1-1.variants.parquet",
    ]
    for name in ("default-ucb1-0", "default-ucb1-1"):  # each log is paired with its own table
        variants = read_variants_for(logs / f"{name}.parquet")
        assert variants is not None and variants.n_variants > 0
    log = DecisionLog.read(logs / "default-ucb1-1.parquet")
    final = res.metrics[(res.metrics["seed"] == 1) & (res.metrics["t"] == 500)].iloc[0]
    assert len(log) == 500
    assert log.reward.sum() == final["clicks"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"agents": [{"name": "x", "policy": "nope"}]}, r"unknown policy 'nope'; known: \["),
        ({"roundz": 5}, r"unknown key\(s\) \['roundz'\]"),
        ({"seeds": []}, r"`seeds` is empty"),
        ({"seeds": [0, 0]}, r"`seeds` has duplicates"),
        ({"rounds": 0}, r"`rounds` must be >= 1, got 0"),
        ({"rounds": 2.5}, r"`rounds` must be an integer"),
        ({"batch_size": 0}, r"`batch_size` must be >= 1"),
        ({"eval_every": 5000}, r"`eval_every` \(5000\) is above `rounds`"),
        ({"agents": []}, r"`agents` is empty"),
        ({"agents": [{"name": "a", "policy": "uniform"}] * 2}, r"repeated: \['a'\]"),
        ({"agents": [{"name": "a", "policy": "uniform", "lr": 1}]}, r"unknown key.*\['lr'\]"),
        ({"agents": [{"name": "a", "policy": "ucb1", "params": {"cc": 1}}]}, r"bad `params`"),
        ({"agents": [{"name": "a", "policy": "ucb1", "params": {"seed": 1}}]}, r"params.seed"),
        ({"agents": [{"name": "a", "policy": "uniform", "train_steps": 10}]}, r"has no train"),
        ({"agents": [{"name": "a/b", "policy": "uniform"}]}, r"agents\[\]\.name"),
        ({"market": {"catalg": {}}}, r"\[market\].*unknown key\(s\) \['catalg'\]"),
        ({"envs": [{"name": "e", "session_length": 0}]}, r"env 'e'.*session_length"),
        ({"envs": [{"session_length": 2}]}, r"envs\[0\] has no `name`"),
    ],
)
def test_bad_configs_name_the_problem(
    smoke_dict: dict[str, Any], change: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        ExperimentConfig.from_dict(copy.deepcopy(smoke_dict) | change)


def test_bad_param_values_fail_before_running(smoke_dict: dict[str, Any], tmp_path: Path) -> None:
    d = copy.deepcopy(smoke_dict)
    d["agents"][1]["params"] = {"epsilon": 2.0}
    with pytest.raises(ValueError, match=r"agent 'epsilon_greedy'.*`epsilon` must be in \[0, 1\]"):
        run_experiment(ExperimentConfig.from_dict(d), tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_config_file_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SMOKE.read_text().replace('policy = "ucb1"', 'policy = "ppo_v9"'))
    with pytest.raises(ValueError, match="unknown policy 'ppo_v9'"):
        run_experiment(bad, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]
    with pytest.raises(FileNotFoundError, match="shipped configs"):
        run_experiment(tmp_path / "missing.toml", tmp_path / "out", progress=False)


class _FailingPolicy(UniformPolicy):
    policy_id = "failing"

    def _learn(self, obs: Any, actions: Any, rewards: Any) -> None:
        if self._calls > 3:
            raise RuntimeError("boom")


def test_failure_mid_run_leaves_nothing(
    smoke_dict: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(POLICIES, "failing", _FailingPolicy)
    d = copy.deepcopy(smoke_dict) | {"save_logs": True}
    d["agents"].append({"name": "failing", "policy": "failing"})
    with pytest.raises(RuntimeError, match="boom") as info:
        run_experiment(ExperimentConfig.from_dict(d), tmp_path / "out", workers=1, progress=False)
    assert "agent='failing' seed=0" in "".join(getattr(info.value, "__notes__", []))
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_out(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="is not empty"):
        run_experiment(SMOKE, tmp_path / "out", progress=False)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_shipped_configs_parse() -> None:
    """Every shipped config is valid and round-trips through its resolved TOML."""
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    assert {"smoke", "contextual", "drift", "drift_sweep", "fatigue", "large_candidates"} <= set(
        names
    )
    for name in names:
        cfg = ExperimentConfig.from_toml(config_path(name))
        assert cfg.name == name
        assert ExperimentConfig.from_dict(tomllib.loads(cfg.to_toml())) == cfg


def test_toml_round_trip_is_exact(smoke_dict: dict[str, Any]) -> None:
    """config → TOML (tomli-w) → config is exact: awkward strings, float reprs, numpy scalars and
    the fully resolved tables of every shipped config."""
    d = copy.deepcopy(smoke_dict) | {
        "description": 'quotes " and \\ backslash, ünïcode, a tab\tand a\nnewline',
        "seeds": [np.int64(0), 7],
        "rounds": np.int64(3000),
    }
    d["agents"][1]["params"] = {"epsilon": 0.1 + 0.2, "prior_ctr": np.float32(0.05)}
    cfg = ExperimentConfig.from_dict(d)
    back = ExperimentConfig.from_dict(tomllib.loads(cfg.to_toml()))
    assert back == cfg
    assert back.description == d["description"]
    assert back.agents[1].params["epsilon"] == 0.30000000000000004
    assert back.agents[1].params["prior_ctr"] == float(np.float32(0.05))
    for name in sorted(p.stem for p in CONFIG_DIR.glob("*.toml")):
        resolved = ExperimentConfig.from_toml(config_path(name)).resolved()
        assert ExperimentConfig.from_dict(tomllib.loads(resolved.to_toml())) == resolved


def test_toml_refuses_none(smoke_dict: dict[str, Any]) -> None:
    d = copy.deepcopy(smoke_dict)
    d["agents"][1]["params"] = {"epsilon": None}
    with pytest.raises(ValueError, match="TOML has no null"):
        ExperimentConfig.from_dict(d).to_toml()


def test_run_spec_is_plain_data(smoke: ExperimentResult) -> None:
    import pickle

    spec = smoke.config.runs()[0]
    assert isinstance(spec, RunSpec)
    assert pickle.loads(pickle.dumps(spec)) == spec
