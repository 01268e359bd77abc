"""The shared check-suite, run over every registered agent, plus agent-specific checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from copyloop.agents import POLICIES, BernoulliTSPolicy, Policy, UniformPolicy
from copyloop.envs import CopyMarketVectorEnv

NAMES = sorted(POLICIES)


def make(name: str, seed: int = 0) -> Policy:
    kw = {"segment_columns": (0, 5)} if name == "bernoulli_ts" else {}
    if name == "neural_linear_ts":
        kw = {"retrain_every": 2, "hidden": (16, 8)}
    return POLICIES[name](seed=seed, **kw)


@pytest.fixture(scope="module")
def batches(market):
    """Two batches of (obs, actions, rewards) from uniform traffic, and a fresh obs batch."""
    env = CopyMarketVectorEnv(256, market=market)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(2):
        a = np.array([rng.choice(np.flatnonzero(m)) for m in obs["action_mask"]])
        nxt, r, _, _, _ = env.step(a)
        out.append((obs, a, np.maximum(r, (rng.random(256) < 0.2).astype(float))))
        obs = nxt
    return out, obs


def trained(name: str, batches, seed: int = 0) -> Policy:
    pol = make(name, seed)
    for obs, a, r in batches[0]:
        if pol.learns_from_rows:  # PPO learns by train(), and refuses rows
            pol.update(obs, a, r)
    return pol


@pytest.mark.parametrize("name", NAMES)
def test_probs_are_distributions_and_propensity_matches(name, batches) -> None:
    pol = trained(name, batches)
    obs = batches[1]
    d = pol.act(obs)
    mask = obs["action_mask"].astype(bool)
    np.testing.assert_allclose(d.probs.sum(axis=1), 1.0, atol=1e-12)
    assert (d.probs[~mask] == 0).all() and (d.probs >= 0).all()
    assert mask[np.arange(len(d.actions)), d.actions].all()
    np.testing.assert_array_equal(d.propensity, d.probs[np.arange(len(d.actions)), d.actions])
    assert (d.propensity > 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_choice_frequencies_match_action_probs(name, batches) -> None:
    """20k seeded draws of one observation: every slot's frequency is within 4.5 binomial
    standard errors (+0.002) of the probability the policy reported for it."""
    pol = trained(name, batches)
    obs = {k: np.repeat(v[:1], 20_000, axis=0) for k, v in batches[1].items()}
    d = pol.act(obs)
    p = d.probs[0]
    np.testing.assert_allclose(d.probs, np.broadcast_to(p, d.probs.shape))
    freq = np.bincount(d.actions, minlength=p.size) / d.actions.size
    se = np.sqrt(p * (1 - p) / d.actions.size)
    assert (np.abs(freq - p) <= 4.5 * se + 0.002).all(), (freq, p)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_decisions(name, batches) -> None:
    a, b = trained(name, batches, 3), trained(name, batches, 3)
    obs = batches[1]
    for _ in range(2):
        da, db = a.act(obs), b.act(obs)
        np.testing.assert_array_equal(da.actions, db.actions)
        np.testing.assert_array_equal(da.probs, db.probs)


@pytest.mark.parametrize("name", NAMES)
def test_clone_is_untrained_copy(name, batches) -> None:
    pol = trained(name, batches, 5)
    fresh = make(name, 5)
    c = pol.clone()
    assert type(c) is type(pol) and c.get_params() == pol.get_params()
    obs = batches[1]
    np.testing.assert_array_equal(c.act(obs).probs, fresh.act(obs).probs)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, batches, tmp_path: Path) -> None:
    pol = trained(name, batches, 7)
    path = pol.save(tmp_path / "p.npz")
    back = Policy.load(path)
    assert type(back) is type(pol) and back.get_params() == pol.get_params()
    obs = batches[1]
    d1, d2 = pol.act(obs), back.act(obs)
    np.testing.assert_array_equal(d1.actions, d2.actions)
    np.testing.assert_allclose(d1.probs, d2.probs)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_not_mutated(name, batches) -> None:
    pol = make(name)
    obs, a, r = batches[0][0]
    copies = ({k: v.copy() for k, v in obs.items()}, a.copy(), r.copy())
    if pol.learns_from_rows:
        pol.update(obs, a, r)
    pol.act(obs)
    for k, v in obs.items():
        np.testing.assert_array_equal(v, copies[0][k])
    np.testing.assert_array_equal(a, copies[1])
    np.testing.assert_array_equal(r, copies[2])


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs(name, batches) -> None:
    pol = make(name)
    obs, a, r = batches[0][0]
    if not pol.learns_from_rows:
        with pytest.raises(ValueError, match="cannot learn from rows: PPO learns on-policy"):
            pol.update(obs, a, r)
        return
    pol.update(obs, a, r)
    wide = dict(obs, user=np.hstack([obs["user"], obs["user"][:, :1]]))
    with pytest.raises(ValueError, match="`user` had 28, now 29"):
        pol.act(wide)
    empty = dict(obs, action_mask=np.zeros_like(obs["action_mask"]))
    with pytest.raises(ValueError, match="no valid candidate"):
        pol.act(empty)
    with pytest.raises(ValueError, match="`rewards` must be finite; rows \\[3\\]"):
        pol.update(obs, a, np.where(np.arange(r.size) == 3, np.nan, r))
    with pytest.raises(ValueError, match="`actions` must be"):
        pol.update(obs, a[:-1], r)


def test_single_observation_is_a_batch_of_one(batches) -> None:
    obs = {k: v[0] for k, v in batches[1].items()}
    d = UniformPolicy(seed=0).act(obs)
    assert d.actions.shape == (1,) and d.probs.shape == (1, obs["action_mask"].size)


def test_exploration_floor(batches) -> None:
    pol = trained("linucb", batches)
    pol.exploration_floor = 0.02
    obs = batches[1]
    p = pol.act(obs).probs
    mask = obs["action_mask"].astype(bool)
    assert (p[mask] >= 0.02 - 1e-12).all()
    np.testing.assert_allclose(p.sum(1), 1.0)
    with pytest.raises(ValueError, match="exploration_floor"):
        UniformPolicy(exploration_floor=1.5)


def test_bernoulli_ts_learns_best_arm() -> None:
    """Two variants with CTR 2 % and 6 %: after 20k impressions the better one gets > 80 %."""
    rng = np.random.default_rng(0)
    pol = BernoulliTSPolicy(seed=0)
    cand = np.array([[0.0, 1.0, 1.0, 0.0]], np.float32)
    obs = {
        "user": np.zeros((500, 2)),
        "candidates": np.repeat(cand, 500, 0),
        "action_mask": np.ones((500, 2), np.int8),
    }
    ctr = np.array([0.02, 0.06])
    for _ in range(40):
        d = pol.act(obs)
        pol.update(obs, d.actions, (rng.random(500) < ctr[d.actions]).astype(float))
    assert pol.act(obs).probs[0, 1] > 0.8


@pytest.mark.parametrize("name", ["bernoulli_ts", "linear_ts"])
def test_warm_start_from_log_beats_cold_start(name, market, tmp_path: Path) -> None:
    """A policy warm-started on 30k uniform impressions earns more expected clicks on the next
    20k than a cold one (same seeds)."""
    from copyloop import DecisionLog
    from copyloop.agents import warm_start
    from copyloop.envs.simulate import simulate

    simulate(market, UniformPolicy(seed=0), 30_000, seed=10, out=tmp_path / "l.parquet")
    log = DecisionLog.read(tmp_path / "l.parquet")
    warm = warm_start(make(name, 1), log, market)
    s_warm = simulate(market, warm, 20_000, seed=11)
    s_cold = simulate(market, make(name, 1), 20_000, seed=11)
    assert s_warm.expected_clicks > s_cold.expected_clicks


def test_warm_start_refuses_foreign_log(market) -> None:
    from copyloop import DecisionLog
    from copyloop.agents import warm_start
    from copyloop.contract import LogValidationError

    log = DecisionLog.from_arrays(
        event_id=["a"],
        campaign_id=["nope"],
        context=np.zeros((1, 28)),
        action=["x"],
        action_index=[0],
        propensity=[1.0],
        reward=[1.0],
    )
    with pytest.raises(LogValidationError, match="campaigns the market does not have"):
        warm_start(UniformPolicy(), log, market)
    short = DecisionLog.from_arrays(
        event_id=["a"],
        campaign_id=["c"],
        context=np.zeros((1, 3)),
        action=["x"],
        action_index=[0],
        propensity=[1.0],
    )
    with pytest.raises(LogValidationError, match="3 features but the market's users have 28"):
        warm_start(UniformPolicy(), short, market)


@pytest.mark.parametrize("name", ["linear_ts", "logistic_ts"])
@pytest.mark.parametrize("kind", ["interaction", "candidate"])
@pytest.mark.parametrize("one_campaign", [False, True])
def test_factorised_scores_match_scoring_phi(name, kind, one_campaign, batches) -> None:
    """The TS agents score u1ᵀΘc1 without building φ = u1 ⊗ c1 (with a shortcut when every row
    has the same candidates); the decision must be the one that scoring φ directly gives (same
    draws, same pick; float32 rounding may differ by ~1e-6, far below the gaps between draws'
    scores here)."""
    from copyloop.agents.features import features
    from copyloop.agents.ts import choose_from_draws

    pol = POLICIES[name](features=kind, seed=4)
    for obs, a, r in batches[0]:
        pol.update(obs, a, r)
    obs = dict(batches[1])
    if one_campaign:
        for key in ("candidates", "action_mask"):
            obs[key] = np.repeat(obs[key][:1], len(obs["user"]), axis=0)
    mask = obs["action_mask"].astype(bool)
    phi = features(obs, kind)
    b, k, d = phi.shape
    rng = np.random.default_rng([pol._entropy, pol._calls])
    theta = pol._draw_heads(d, pol.n_draws, rng).astype(np.float32)
    ref_a, ref_p = choose_from_draws((phi.reshape(b * k, d) @ theta.T).reshape(b, k, -1), mask, rng)
    got = pol.act(obs)
    np.testing.assert_array_equal(got.actions, ref_a)
    np.testing.assert_allclose(got.probs, ref_p, atol=1e-12)


def test_early_stop_draws_keep_propensities_exact(batches) -> None:
    """``min_draws``: rows whose first draws agree act with probability 1, the others on all
    ``n_draws``; either way 20k seeded draws of a row match the probabilities it reported."""
    from copyloop.agents import LinearTSPolicy

    pol = LinearTSPolicy(noise=0.05, n_draws=64, min_draws=8, seed=2)
    for obs, a, r in batches[0]:
        pol.update(obs, a, r)
    obs = batches[1]
    d = pol.act(obs)
    settled = d.probs.max(axis=1) == 1.0
    assert settled.any() and (~settled).any()  # both paths are exercised
    np.testing.assert_allclose(d.probs.sum(axis=1), 1.0, atol=1e-12)
    assert (d.propensity[settled] == 1.0).all()
    # the open rows' frequencies are over all 64 draws
    assert np.allclose((d.probs[~settled] * 64) % 1, 0) and not np.allclose(
        (d.probs[~settled] * 8) % 1, 0
    )
    for row in (np.flatnonzero(settled)[0], np.flatnonzero(~settled)[0]):
        many = {k: np.repeat(v[row : row + 1], 20_000, axis=0) for k, v in obs.items()}
        dm = pol.act(many)
        p = dm.probs[0]
        freq = np.bincount(dm.actions, minlength=p.size) / dm.actions.size
        se = np.sqrt(p * (1 - p) / dm.actions.size)
        assert (np.abs(freq - p) <= 4.5 * se + 0.002).all(), (row, freq, p)
    with pytest.raises(ValueError, match="min_draws"):
        LinearTSPolicy(n_draws=16, min_draws=32)


def _spd(d: int, seed: int = 0) -> np.ndarray:
    """A ridge Gram matrix like LinearTS's A: I + XᵀX over sparse rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3 * d, d)) * (rng.random((3 * d, d)) < 0.1)
    return np.eye(d) + x.T @ x


def test_spd_inverse_is_the_inverse() -> None:
    """The compiled Cholesky inversion equals ``np.linalg.inv`` (to 1e-10 of the largest entry,
    condition number ~1e4 here), both triangles filled, exactly symmetric, A left as it was."""
    from copyloop.agents.ts import _spd_inverse

    for d in (1, 2, 7, 300):
        a = _spd(d, d)
        before = a.copy()
        inv = _spd_inverse(a)
        ref = np.linalg.inv(a)
        np.testing.assert_allclose(inv, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
        np.testing.assert_array_equal(inv, inv.T)
        np.testing.assert_array_equal(a, before)


def test_spd_inverse_falls_back_to_lu() -> None:
    """A symmetric matrix that is invertible but not positive definite fails the Cholesky
    factorisation (LAPACK info > 0) and is inverted by ``np.linalg.inv`` instead."""
    from copyloop.agents.request import kernels
    from copyloop.agents.ts import _spd_inverse

    a = _spd(50)
    a[7, 7] = -3.0  # an indefinite diagonal entry: no Cholesky factor
    assert kernels().spd_inverse(a.copy()) > 0
    inv = _spd_inverse(a)
    np.testing.assert_allclose(inv @ a, np.eye(50), atol=1e-8)
    np.testing.assert_array_equal(inv, inv.T)


def test_serving_posterior_is_the_inverse(batches) -> None:
    """LinearTS's serving posterior (built by the Cholesky inversion) is v²A⁻¹ and A⁻¹b."""
    pol = trained("linear_ts", batches)
    d = pol._A.shape[0]
    srv = pol._serving(d)
    inv = np.linalg.inv(pol._A)
    scale = pol.noise**2 * float(np.abs(inv).max())
    np.testing.assert_allclose(srv.cov, pol.noise**2 * inv, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(srv.mean, inv @ pol._b, rtol=1e-4, atol=1e-6)


def test_spd_inverse_releases_the_gil() -> None:
    """While a thread inverts (~17 ms a call at d = 800), the main thread keeps running Python.

    Checked: the main thread ran at some moment in the middle third of some call's interval.
    A call that holds the GIL leaves the main thread only the call's edges (before the native
    call starts and after it returns, at most a switch interval of 1 ms each): the same kernel
    compiled without ``nogil`` scores 0 ticks in every middle third, this one thousands
    (measured). A loaded machine only delays the main thread, and over 8 calls it gets a turn.
    """
    import sys
    import threading
    import time

    from copyloop.agents.request import kernels

    spd_inverse = kernels().spd_inverse
    a = _spd(800)
    spans: list[tuple[float, float]] = []
    started = threading.Event()

    def work() -> None:
        started.set()
        for _ in range(8):
            m = a.copy()
            t0 = time.perf_counter()
            spd_inverse(m)
            spans.append((t0, time.perf_counter()))

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        worker = threading.Thread(target=work)
        worker.start()
        started.wait()
        ticks = []
        while worker.is_alive():
            ticks.append(time.perf_counter())
            sum(range(200))
        worker.join()
    finally:
        sys.setswitchinterval(old)
    ts = np.array(ticks)
    third = [(t0 + (t1 - t0) / 3, t1 - (t1 - t0) / 3) for t0, t1 in spans]
    inside = [int(np.count_nonzero((ts > lo) & (ts < hi))) for lo, hi in third]
    assert max(inside) > 0, f"main-thread ticks in each call's middle third: {inside}"
