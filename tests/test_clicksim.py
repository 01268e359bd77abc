"""The learned click simulator: fit, calibration, fidelity, persistence, env and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pytest
from gymnasium.utils.env_checker import check_env
from typer.testing import CliRunner

from copyloop.agents import POLICIES
from copyloop.cli import app
from copyloop.contract import DecisionLog, VariantsTable
from copyloop.envs.clicksim import (
    Calibrator,
    ClickData,
    ClickSimConfig,
    ClickSimError,
    ClickSimulator,
)
from copyloop.envs.clicksim_report import expected_calibration_error, fidelity_report
from copyloop.envs.market import CopyMarketEnv, MarketConfig
from copyloop.envs.simulate import simulate
from copyloop.envs.vector import CopyMarketVectorEnv

FAST = ClickSimConfig(members=3, epochs=6, patience=2, seed=0)


@pytest.fixture(scope="module")
def logs(market, tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("clicksim")
    simulate(market, POLICIES["uniform"](seed=1), 40_000, seed=1, out=d / "train.parquet")
    simulate(market, POLICIES["uniform"](seed=2), 40_000, seed=2, out=d / "test.parquet")
    return d / "train.parquet", d / "test.parquet"


@pytest.fixture(scope="module")
def data(logs) -> ClickData:
    return ClickData.from_files(logs[0])


@pytest.fixture(scope="module")
def sim(data) -> ClickSimulator:
    return ClickSimulator.fit(data, FAST)


def test_fit_learns_the_world(sim, logs, market) -> None:
    rep = fidelity_report(sim, ClickData.from_files(logs[1]), market=market, users_per_segment=60)
    w = rep.world
    assert w is not None
    # 40k rows (~900 clicks) on the 24-campaign market: far from Bayes, far above chance.
    assert rep.auc > 0.62, rep.auc
    assert rep.auc < w.bayes_auc + 0.01  # no model beats the world's own CTRs (up to noise)
    assert rep.logloss < rep.logloss_base_rate
    assert rep.ece_over_base < 0.25, rep.ece_over_base
    assert w.cell_ctr_pearson > 0.6, w.cell_ctr_pearson
    assert w.sim_policy_value > w.uniform_value  # its greedy policy beats random copy
    assert 0.0 <= w.value_gap < 0.5


def test_same_seed_same_model_and_exact_reload(sim, data, tmp_path: Path) -> None:
    again = ClickSimulator.fit(data, FAST)
    u, v = data.context[:500], data.variant[:500]
    p1 = sim.predict_variants(u, v)
    np.testing.assert_array_equal(p1.mean, again.predict_variants(u, v).mean)
    sim.save(tmp_path / "m")
    loaded = ClickSimulator.load(tmp_path / "m")
    p2 = loaded.predict_variants(u, v)
    np.testing.assert_array_equal(p1.mean, p2.mean)
    np.testing.assert_array_equal(p1.std, p2.std)
    assert loaded.campaign_ids == sim.campaign_ids and loaded.context_names == sim.context_names
    other = ClickSimulator.fit(data, ClickSimConfig(members=3, epochs=6, patience=2, seed=1))
    assert not np.array_equal(p1.mean, other.predict_variants(u, v).mean)


def test_ipw_on_a_uniform_log_is_the_plain_fit(sim, data) -> None:
    # Uniform logging: every weight is exactly 1, so weighting must change nothing.
    ipw = ClickSimulator.fit(data, ClickSimConfig(members=3, epochs=6, patience=2, weighting="ipw"))
    u, v = data.context[:300], data.variant[:300]
    np.testing.assert_array_equal(ipw.predict_variants(u, v).mean, sim.predict_variants(u, v).mean)


def test_ensemble_spread_and_pessimism(sim, data) -> None:
    pred = sim.predict_variants(data.context[:2000], data.variant[:2000])
    assert np.all(pred.std >= 0) and pred.std.mean() > 0  # members disagree somewhat
    low = pred.pessimistic(2.0)
    assert np.all(low <= pred.mean) and np.all(low >= 0)
    assert np.allclose(pred.pessimistic(0.0), pred.mean)


def test_click_reward(sim, market) -> None:
    texts = [
        market.catalog.variants.texts[0],
        "Save big today: limited stock, order now!",
        "Crafted premium quality, timeless and refined.",
    ]
    camp = market.catalog.campaign_ids[0]
    r = sim.click_reward(texts, campaign=camp, segment="bargain_hunter")
    assert len(r) == 3 and all(0 < x < 1 for x in r)
    assert len(set(r)) == 3  # the text matters
    premium = sim.click_reward(texts, campaign=camp, segment="premium_shopper")
    assert premium != r  # so does the segment
    assert sim.click_reward(texts, campaign=0, segment=0) == sim.click_reward(
        texts, campaign=camp, segment="bargain_hunter"
    )
    users = market.population.all_features[:10]
    assert len(sim.click_reward(texts, campaign=camp, users=users)) == 3
    pess = sim.click_reward(texts, campaign=camp, segment=0, pessimism=1.0)
    assert all(p <= q for p, q in zip(pess, r, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"campaign": "nope", "segment": 0}, "was not in the simulator's training log"),
        ({"campaign": 0, "segment": "astronaut"}, "unknown segment 'astronaut'"),
        ({"campaign": 999, "segment": 0}, "out of range"),
        ({"campaign": 0, "segment": 0, "users": np.zeros((2, 28))}, "not both"),
        ({"campaign": 0, "users": np.zeros((2, 5))}, r"shape \(n, 28\)"),
    ],
)
def test_click_reward_bad_input(sim, kwargs, match) -> None:
    with pytest.raises(ClickSimError, match=match):
        sim.click_reward(["Shop now"], **kwargs)
    with pytest.raises(ClickSimError, match="empty"):
        sim.click_reward([], campaign=0, segment=0)


def test_env_on_the_simulator(sim, market) -> None:
    env = CopyMarketEnv(market=market, click_model=sim)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=3)
    want = sim.bind_catalog(market.catalog).predict(
        obs["user"][None], market.catalog.slots[[env._block.campaigns[env._i]]]
    )
    # float32: the env scores its users in blocks of 256, this checks one user alone, and the
    # matrix products of the two shapes round differently (measured: 1.1e-6 relative).
    np.testing.assert_allclose(info["true_ctr"], want.mean[0], rtol=1e-5)
    world = CopyMarketEnv(market=market)
    _, winfo = world.reset(seed=3)
    assert not np.allclose(winfo["true_ctr"], info["true_ctr"])  # not the world's CTRs
    vec = CopyMarketVectorEnv(256, market=market, click_model=sim, pessimism=1.0)
    _, vinfo = vec.reset(seed=0)
    plain = CopyMarketVectorEnv(256, market=market, click_model=sim)
    _, pinfo = plain.reset(seed=0)
    assert np.all(vinfo["true_ctr"] <= pinfo["true_ctr"] + 1e-7)
    assert (vinfo["true_ctr"] < pinfo["true_ctr"]).any()
    clicks = 0.0
    for _ in range(20):
        _, r, *_ = plain.step(np.zeros(256, np.int64))
        clicks += r.sum()
    assert 0 < clicks < 256 * 20 * 0.2


def test_env_from_config_key(sim, small_config, tmp_path: Path) -> None:
    sim.save(tmp_path / "m")
    from dataclasses import replace

    cfg = replace(small_config, click_model=str(tmp_path / "m"), pessimism=0.5)
    env = gym.make("copyloop/CopyMarket-v0", config=cfg)
    assert env.unwrapped.market.click_model is not None
    env.reset(seed=0)
    with pytest.raises(ValueError, match="needs a `click_model`"):
        MarketConfig(pessimism=1.0)
    with pytest.raises(ValueError, match="needs a `click_model`"):
        CopyMarketEnv(config=small_config, pessimism=1.0)


def test_ipw_weights_hand_computed() -> None:
    d = object.__new__(ClickData)
    d.n_candidates = np.array([2, 2, 4, 4])
    d.propensity = np.array([0.5, 0.25, 0.25, 0.05])
    raw = np.array([1.0, 2.0, 1.0, 5.0])  # (1/K)/p
    np.testing.assert_allclose(d.ipw_weights(100.0), raw / raw.mean())
    clipped = d.ipw_weights(1.5)  # 5/2.25 = 2.22 is clipped at 1.5, then renormalised
    c = np.minimum(raw / raw.mean(), 1.5)
    np.testing.assert_allclose(clipped, c / c.mean())
    flat = d.ipw_weights(100.0, power=0.5)  # flattened: sqrt of the raw weights
    np.testing.assert_allclose(flat, np.sqrt(raw) / np.sqrt(raw).mean())


def test_platt_recovers_a_known_miscalibration() -> None:
    rng = np.random.default_rng(0)
    true_logit = rng.normal(-3.5, 1.0, 200_000)
    y = (rng.random(true_logit.size) < 1 / (1 + np.exp(-true_logit))).astype(float)
    model_logit = (true_logit - 0.4) / 2.0  # a model that is off by a = 2, b = 0.4
    cal = Calibrator.fit("platt", model_logit, y, None)
    assert cal.a == pytest.approx(2.0, abs=0.1) and cal.b == pytest.approx(0.4, abs=0.2)
    iso = Calibrator.fit("isotonic", model_logit, y, None)
    p = iso(model_logit)
    assert abs(p.mean() - y.mean()) < 2e-3


def test_ece_hand_computed() -> None:
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0.0, 0.0, 1.0, 0.0])
    ece, curve = expected_calibration_error(p, y, n_bins=2)
    assert ece == pytest.approx(0.5 * 0.1 + 0.5 * 0.4)
    assert [b["rows"] for b in curve] == [2, 2]


# ---- bad input -------------------------------------------------------------------------------


def _log_with(data_path: Path, **changes) -> DecisionLog:
    t = DecisionLog.read(data_path).table
    for name, col in changes.items():
        t = t.set_column(t.schema.get_field_index(name), name, col)
    return DecisionLog(t)


def test_logs_without_rewards(logs) -> None:
    log = _log_with(logs[0], reward=pa.nulls(40_000, pa.float64()))
    with pytest.raises(ClickSimError, match="no rewards"):
        ClickData.from_log(log, VariantsTable.read(logs[0].with_suffix(".variants.parquet")))


def test_rewards_outside_clicks(logs) -> None:
    r = DecisionLog.read(logs[0]).reward.copy()
    r[3] = 2.0
    log = _log_with(logs[0], reward=pa.array(r))
    with pytest.raises(ClickSimError, match=r"click in \[0, 1\]; rows \[3\]"):
        ClickData.from_log(log, VariantsTable.read(logs[0].with_suffix(".variants.parquet")))


def test_mismatched_variants_table(logs) -> None:
    v = VariantsTable.read(logs[0].with_suffix(".variants.parquet"))
    t = v.table.slice(0, 10)  # the first campaigns only
    with pytest.raises(ClickSimError, match="not in the variants table"):
        ClickData.from_log(DecisionLog.read(logs[0]), VariantsTable(t))
    # Same variant ids, campaigns relabelled: the log's campaigns no longer match.
    camp = pa.array(["x" + c for c in v.table.column("campaign_id").to_pylist()])
    t2 = v.table.set_column(1, "campaign_id", camp)
    with pytest.raises(ClickSimError, match="variant of another campaign"):
        ClickData.from_log(DecisionLog.read(logs[0]), VariantsTable(t2))


@pytest.mark.parametrize("damage", ["weights", "config", "missing", "kind"])
def test_corrupted_model_dir(sim, tmp_path: Path, damage: str) -> None:
    d = sim.save(tmp_path / "m")
    if damage == "weights":
        raw = bytearray((d / "weights.pt").read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (d / "weights.pt").write_bytes(bytes(raw))
        match = "does not match its checksum"
    elif damage == "config":
        (d / "clicksim.json").write_text("{not json")
        match = "is corrupted"
    elif damage == "missing":
        (d / "variants.parquet").unlink()
        match = r"missing \['variants.parquet'\]"
    else:
        meta = json.loads((d / "clicksim.json").read_text())
        meta["kind"] = "something else"
        (d / "clicksim.json").write_text(json.dumps(meta))
        match = "does not describe a copyloop click simulator"
    with pytest.raises(ClickSimError, match=match):
        ClickSimulator.load(d)
    with pytest.raises(ClickSimError, match="does not exist"):
        ClickSimulator.load(tmp_path / "nowhere")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="`weighting`"):
        ClickSimConfig(weighting="magic")
    with pytest.raises(ValueError, match="`weight_power`"):
        ClickSimConfig(weight_power=0.0)
    with pytest.raises(ValueError, match="`members`"):
        ClickSimConfig(members=0)
    with pytest.raises(ValueError, match="unknown click-simulator setting"):
        ClickSimConfig.from_dict({"layers": 3})


# ---- CLI -------------------------------------------------------------------------------------


def test_cli_fit_and_report(logs, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "sim"
    res = runner.invoke(
        app,
        ["clicksim", "fit", "--logs", str(logs[0]), "--out", str(out), "--members", "2",
         "--epochs", "3", "--threads", "1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (out / "clicksim.json").is_file() and (out / "metrics.json").is_file()
    png = tmp_path / "rel.png"
    res = runner.invoke(
        app, ["clicksim", "report", str(out), "--logs", str(logs[1]), "--json", "--plot", str(png)]
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert 0.5 < rep["auc"] <= 1 and rep["world"]["bayes_auc"] > 0.6
    assert png.is_file() and png.stat().st_size > 1000
    res = runner.invoke(app, ["clicksim", "report", str(out), "--logs", str(logs[1]),
                              "--world", "none", "--json"])  # fmt: skip
    assert res.exit_code == 0 and json.loads(res.stdout)["world"] is None


def test_cli_bad_input(logs, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["clicksim", "fit", "--logs", str(logs[0]), "--out",
                              str(tmp_path / "s"), "--weighting", "magic"])  # fmt: skip
    assert res.exit_code == 2 and "--weighting" in res.output
    assert not (tmp_path / "s").exists()
    missing = str(tmp_path / "no.parquet")
    res = runner.invoke(app, ["clicksim", "fit", "--logs", str(logs[0]), "--out",
                              str(tmp_path / "s"), "--variants", missing])  # fmt: skip
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["clicksim", "report", str(tmp_path / "none"), "--logs", str(logs[1])])
    assert res.exit_code == 2 and "does not exist" in res.output
