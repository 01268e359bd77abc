"""OPE: bad inputs, hand-computed values, reward models, intervals, the gate and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from copyloop.cli import app
from copyloop.ope import (
    DM,
    DR,
    IPW,
    SNDR,
    SNIPW,
    BanditFeedback,
    DRos,
    RewardModel,
    SwitchDR,
    bootstrap_interval,
    check_target,
    fit_reward_model,
)
from copyloop.ope.gate import gate

runner = CliRunner()


def tiny() -> tuple[BanditFeedback, np.ndarray, np.ndarray]:
    """3 rows, 2 slots; logging uniform; target always slot 0."""
    data = BanditFeedback(
        context=np.zeros((3, 1)),
        mask=np.ones((3, 2), bool),
        action=np.array([0, 1, 0]),
        reward=np.array([1.0, 1.0, 0.0]),
        pscore=np.array([0.5, 0.5, 0.5]),
    )
    target = np.array([[1.0, 0.0]] * 3)
    q = np.array([[0.4, 0.2], [0.6, 0.3], [0.2, 0.1]])
    return data, target, q


def test_hand_computed_values() -> None:
    data, target, q = tiny()
    # w = [2, 0, 2]; w·r = [2, 0, 0]
    assert IPW().estimate(data, target) == pytest.approx(2 / 3)
    assert IPW(max_weight=1.5).estimate(data, target) == pytest.approx(1.5 / 3)
    assert SNIPW().estimate(data, target) == pytest.approx(2 / 4)
    # DM: mean(q[:, 0]) = (0.4 + 0.6 + 0.2) / 3
    assert DM().estimate(data, target, q) == pytest.approx(0.4)
    # DR: DM + mean(w (r − q(a))) = 0.4 + (2·0.6 + 0 + 2·(−0.2)) / 3
    assert DR().estimate(data, target, q) == pytest.approx(0.4 + 0.8 / 3)
    # SNDR: DM + Σ w (r − q(a)) / Σ w = 0.4 + 0.8 / 4
    assert SNDR().estimate(data, target, q) == pytest.approx(0.6)
    # Switch-DR with tau below every weight is DM; DRos with λ=0 is DM
    assert SwitchDR(tau=1.0).estimate(data, target, q) == pytest.approx(0.4)
    assert DRos(lambda_=0.0).estimate(data, target, q) == pytest.approx(0.4)
    # DRos: w̃ = λw/(w²+λ) = 4/(4+4) · 2... with λ = 4: w̃ = 4·2/(4+4) = 1
    assert DRos(lambda_=4.0).estimate(data, target, q) == pytest.approx(0.4 + (0.6 - 0.2) / 3)


def test_on_policy_target_recovers_the_mean() -> None:
    """When target == logging policy, IPW and SNIPW are exactly the observed mean."""
    rng = np.random.default_rng(0)
    n, k = 500, 4
    probs = rng.dirichlet(np.ones(k), n)
    a = np.array([rng.choice(k, p=p) for p in probs])
    data = BanditFeedback(
        context=rng.normal(size=(n, 2)),
        mask=np.ones((n, k), bool),
        action=a,
        reward=(rng.random(n) < 0.1).astype(float),
        pscore=probs[np.arange(n), a],
    )
    assert IPW().estimate(data, probs) == pytest.approx(data.reward.mean())
    assert SNIPW().estimate(data, probs) == pytest.approx(data.reward.mean())


BAD_TARGETS = [
    (np.full((3, 2), 0.6), "rows must sum to 1; rows \\[0, 1, 2\\]"),
    (np.array([[1.0, 0.0]] * 2), "must have shape \\(3, 2\\)"),
    (np.array([[1.0, np.nan]] * 3), "finite and >= 0"),
    (np.array([[1.5, -0.5]] * 3), "finite and >= 0"),
]


@pytest.mark.parametrize(("target", "match"), BAD_TARGETS)
def test_bad_target_probabilities(target, match) -> None:
    data, _, _ = tiny()
    with pytest.raises(ValueError, match=match):
        check_target(target, data)


def test_target_mass_on_invalid_slots() -> None:
    data, _, _ = tiny()
    masked = BanditFeedback(
        context=data.context,
        mask=np.array([[True, False]] * 3),
        action=np.zeros(3, int),
        reward=data.reward,
        pscore=np.ones(3),
    )
    with pytest.raises(ValueError, match="slots that are not candidates in rows \\[0, 1, 2\\]"):
        check_target(np.array([[0.5, 0.5]] * 3), masked)


def test_bad_feedback() -> None:
    with pytest.raises(ValueError, match="the log is empty"):
        BanditFeedback(
            context=np.zeros((0, 1)),
            mask=np.zeros((0, 2), bool),
            action=np.zeros(0, int),
            reward=np.zeros(0),
            pscore=np.zeros(0),
        )
    with pytest.raises(ValueError, match="valid slot"):
        BanditFeedback(
            context=np.zeros((2, 1)),
            mask=np.array([[True, False]] * 2),
            action=np.array([0, 1]),
            reward=np.zeros(2),
            pscore=np.ones(2),
        )
    data, target, _ = tiny()
    with pytest.raises(ValueError, match="needs reward-model predictions"):
        DR().estimate(data, target)
    with pytest.raises(ValueError, match="`tau` must be > 0"):
        SwitchDR(tau=0.0)
    with pytest.raises(ValueError, match="`kind` must be one of"):
        RewardModel(kind="forest")


@pytest.fixture(scope="module")
def logged(market):
    """A uniform-logging log from the click world with the true CTRs of every slot."""
    from copyloop.agents import UniformPolicy
    from copyloop.envs import CopyMarketVectorEnv

    env = CopyMarketVectorEnv(4000, market=market)
    obs, _ = env.reset(seed=3)
    d = UniformPolicy(seed=4).act(obs)
    _, r, _, _, info = env.step(d.actions)
    mask = obs["action_mask"].astype(bool)
    data = BanditFeedback(
        context=obs["user"].astype(float),
        mask=mask,
        action=d.actions,
        reward=r,
        pscore=d.propensity,
        logging_probs=d.probs,
    )
    c = obs["candidates"].reshape(4000, mask.shape[1], -1)
    score = np.where(mask, 2.0 * c[:, :, -3], -np.inf)  # prefers copy with a call to action
    target = np.exp(score - score.max(1, keepdims=True))
    target /= target.sum(1, keepdims=True)
    return data, target, info["true_ctr"]


def test_reward_model_beats_base_rate_and_dr_interval_covers(logged) -> None:
    data, target, ctr = logged
    fit = fit_reward_model(data, RewardModel(folds=3, c=0.01))
    assert fit.oof_logloss is not None and fit.oof_logloss <= fit.base_logloss + 1e-3
    truth = float((target * ctr).sum(1).mean())  # the value on these very contexts
    for est in (IPW(), SNIPW(), DR(), SNDR()):
        iv = est.interval(data, target, fit.q)
        assert iv.lower < iv.estimate < iv.upper
        assert iv.lower - 0.002 <= truth <= iv.upper + 0.002, (est.name, iv, truth)
        assert iv.ess is not None and 0 < iv.ess <= data.n_rows


def test_bootstrap_interval_is_seeded(logged) -> None:
    data, target, _ = logged
    a = bootstrap_interval(IPW(), data, target, n_boot=30, seed=1)
    b = bootstrap_interval(IPW(), data, target, n_boot=30, seed=1)
    assert a == b and a.lower < a.estimate < a.upper and a.method == "bootstrap"


def test_gate_promotes_only_on_evidence(logged) -> None:
    data, _, _ = logged
    uniform = data.mask / data.mask.sum(1, keepdims=True)
    worst = np.zeros_like(uniform)
    worst[np.arange(data.n_rows), data.mask.sum(1) - 1] = 1.0
    self_vs_self = gate(data, uniform, uniform, estimator="ipw")
    assert not self_vs_self.promote and "hold" in self_vs_self.reason
    d = gate(data, uniform, worst, estimator="snipw")
    assert d.promote == (d.candidate.lower > d.incumbent.estimate)


def test_cli_ope_and_gate(market, tmp_path: Path) -> None:
    from copyloop.agents import UniformPolicy
    from copyloop.envs.simulate import simulate

    simulate(market, UniformPolicy(seed=0), 3000, seed=0, out=tmp_path / "l.parquet")
    from copyloop import DecisionLog

    n = DecisionLog.read(tmp_path / "l.parquet").n_rows
    log = DecisionLog.read(tmp_path / "l.parquet")
    probs = np.zeros((n, market.max_candidates))
    for i, p in enumerate(log.column("action_probs")):
        probs[i, : len(p)] = p
    np.save(tmp_path / "same.npy", probs)
    res = runner.invoke(
        app,
        [
            "ope",
            "--logs",
            str(tmp_path / "l.parquet"),
            "--target-probs",
            str(tmp_path / "same.npy"),
            "--estimators",
            "ipw,snipw,dr",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{") :])
    by = {e["estimator"]: e for e in out["estimates"]}
    assert by["ipw"]["estimate"] == pytest.approx(out["logging_policy_value"])
    assert by["snipw"]["ess"] == pytest.approx(n, rel=1e-9)
    bad = probs.copy()
    bad[7] *= 2
    np.save(tmp_path / "bad.npy", bad)
    res = runner.invoke(
        app,
        [
            "ope",
            "--logs",
            str(tmp_path / "l.parquet"),
            "--target-probs",
            str(tmp_path / "bad.npy"),
            "--estimators",
            "ipw",
        ],
    )
    assert res.exit_code == 2 and "rows [7] sum to [2.0]" in " ".join(res.output.split())
    res = runner.invoke(
        app,
        [
            "ope",
            "gate",
            "--logs",
            str(tmp_path / "l.parquet"),
            "--candidate",
            str(tmp_path / "same.npy"),
            "--incumbent",
            str(tmp_path / "same.npy"),
            "--estimator",
            "ipw",
        ],
    )
    assert res.exit_code == 1 and "HOLD" in res.output


def test_feedback_from_log_is_compact_and_matches_the_variants(market, tmp_path: Path) -> None:
    """Slots carry variant indices (no (n, K, e) embedding copy); the logged slot's variant is
    the logged action; a reward model from ``variant`` + ``variant_embeddings`` predicts what
    one from per-slot embeddings does."""
    from copyloop import DecisionLog, VariantsTable
    from copyloop.agents import UniformPolicy
    from copyloop.envs.simulate import simulate
    from copyloop.ope import feedback_from_log

    simulate(market, UniformPolicy(seed=0), 3000, seed=1, out=tmp_path / "l.parquet")
    var = VariantsTable.read(tmp_path / "l.variants.parquet")
    log = DecisionLog.read(tmp_path / "l.parquet", variants=var)
    data = feedback_from_log(log, var)
    assert data.candidate_features is None and data.variant_embeddings is not None
    ids = np.array(var.variant_ids)
    logged_variant = data.variant[np.arange(data.n_rows), data.action]
    assert (ids[logged_variant] == np.array(log.column("action"))).all()
    assert ((data.variant >= 0) == data.mask).all()
    full = BanditFeedback(
        context=data.context,
        mask=data.mask,
        action=data.action,
        reward=data.reward,
        pscore=data.pscore,
        candidate_features=np.where(
            data.mask[..., None], data.variant_embeddings[data.variant], 0.0
        ).astype(np.float32),
    )
    m = RewardModel(folds=3, c=0.01)
    q_compact = fit_reward_model(data, m).q
    q_full = fit_reward_model(full, m).q
    np.testing.assert_allclose(q_compact, q_full, atol=2e-4)


def test_cli_interval_methods(market, tmp_path: Path) -> None:
    from copyloop.agents import UniformPolicy
    from copyloop.envs.simulate import simulate

    simulate(market, UniformPolicy(seed=0), 2000, seed=0, out=tmp_path / "l.parquet")
    from copyloop import DecisionLog

    log = DecisionLog.read(tmp_path / "l.parquet")
    probs = np.zeros((log.n_rows, market.max_candidates))
    for i, p in enumerate(log.column("action_probs")):
        probs[i, : len(p)] = p
    np.save(tmp_path / "same.npy", probs)
    base = ["ope", "--logs", str(tmp_path / "l.parquet"), "--target-probs"]
    base += [str(tmp_path / "same.npy"), "--estimators", "ipw,snipw", "--json"]
    for method, expected in (("auto", "bootstrap-t"), ("clt", "clt"), ("bootstrap", "bootstrap")):
        res = runner.invoke(app, [*base, "--interval", method, "--resamples", "199"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.output[res.output.index("{") :])
        assert {e["interval"] for e in out["estimates"]} == {expected}
    res = runner.invoke(app, [*base, "--interval", "wald"])
    assert res.exit_code == 2 and "--interval must be auto or one of" in res.output


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
def test_linear_reward_model_predicts_without_building_the_design(logged, kind) -> None:
    """Per-slot predictions through ``Design.linear`` ((x1 W)·a1) equal predicting on the full
    (n, K, p) design; the logged-slot design equals the full design at the logged slot."""
    from copyloop.ope.reward_models import Design, _fit

    data = logged[0]
    des = Design.fit(data, 8)
    rows = np.arange(300)
    x = des.logged(data, np.arange(data.n_rows))
    pred = _fit(RewardModel(kind=kind, c=0.1), x, data.reward)
    full_design = des.rows(data, rows)
    np.testing.assert_allclose(full_design[rows, data.action[rows]], x[rows], rtol=1e-12)
    full = pred(full_design.reshape(-1, x.shape[1])).reshape(rows.size, -1)
    fast = pred.link(des.linear(data, rows, pred.coef) + pred.intercept)
    np.testing.assert_allclose(fast, full, rtol=1e-9, atol=1e-12)
