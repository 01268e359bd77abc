"""One request at a time (issue 13): decide by variant id, exact propensities, replay from the
event id across threads, learning from log rows, snapshots, bad input."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import moments_reference, uniform_traffic

from copyloop.agents import BernoulliTSPolicy, LinearTSPolicy, LinUCBPolicy, LogisticTSPolicy
from copyloop.agents.store import VariantStore
from copyloop.envs.vector import CopyMarketVectorEnv

FAST = {"linear_ts": LinearTSPolicy, "logistic_ts": LogisticTSPolicy, "linucb": LinUCBPolicy}


@pytest.fixture(scope="module")
def store(market) -> VariantStore:
    return VariantStore.from_catalog(market.catalog)


@pytest.fixture(scope="module")
def traffic(market):
    """Three batches of uniform traffic (obs, actions, rewards) and the next observation."""
    return uniform_traffic(market, 0, 3)


def _trained(name: str, traffic, store: VariantStore, **kw):
    pol = FAST[name](seed=3, **kw) if name in FAST else BernoulliTSPolicy(seed=3, **kw)
    for obs, a, r in traffic[0]:
        pol.update(obs, a, r)
    return pol.attach(store)


def _request(market, obs, i: int) -> tuple[np.ndarray, list[str]]:
    """Row ``i`` of an env batch as a request: (user features, candidate variant ids)."""
    k = int(obs["action_mask"][i].sum())
    camp = int(np.flatnonzero((market.slot_features == obs["candidates"][i]).all(axis=1))[0])
    ids = [market.catalog.variant_ids[v] for v in market.catalog.slots[camp, :k]]
    return obs["user"][i], ids


@pytest.mark.parametrize("name", ["linear_ts", "logistic_ts"])
def test_request_propensities_match_thompson_sampling(name, market, store, traffic) -> None:
    """The per-request probabilities (K-dimensional Gaussian over a fixed Sobol bank) agree with
    the batched path's 30k fresh posterior draws within 0.016 on every candidate (the bank's
    error ≤ ~0.007 measured in bench/serve_agents.py, plus 3 × the reference's ≤ 0.0029 SE)."""
    pol = _trained(name, traffic, store)
    obs = traffic[1]
    for i in range(6):
        u, ids = _request(market, obs, i)
        got = pol.decide(u, ids, event_id=f"e{i}").probs
        pol.n_draws = 30_000
        ref = pol.act({k: v[i : i + 1] for k, v in obs.items()}).probs[0, : len(ids)]
        pol.n_draws = 128
        np.testing.assert_allclose(got, ref, atol=0.016)
        assert got.sum() == pytest.approx(1.0, abs=1e-12)


def test_linucb_request_matches_its_batched_argmax(market, store, traffic) -> None:
    pol = _trained("linucb", traffic, store)
    obs = traffic[1]
    for i in range(20):
        u, ids = _request(market, obs, i)
        ref = pol.act({k: v[i : i + 1] for k, v in obs.items()}).probs[0, : len(ids)]
        np.testing.assert_allclose(pol.decide(u, ids, event_id=f"x{i}").probs, ref, atol=1e-9)


@pytest.mark.parametrize("name", ["linear_ts", "logistic_ts", "linucb", "bernoulli_ts"])
def test_choices_follow_the_logged_probabilities(name, market, store, traffic) -> None:
    """Over 4,000 event ids on one request, each candidate is chosen at its logged probability
    (4.5 standard errors + 0.003): the propensity is the probability the choice was made with."""
    kw = {"segment_columns": (0, 5)} if name == "bernoulli_ts" else {}
    pol = _trained(name, traffic, store, **kw)
    u, ids = _request(market, traffic[1], 5)
    n = 4000
    if name == "bernoulli_ts":  # fresh draws per event: average the reported distributions
        choices = [pol.decide(u, ids, event_id=f"ev{j}") for j in range(n)]
        p = np.mean([c.probs for c in choices], axis=0)
    else:
        p = pol.decide(u, ids, event_id="ev0").probs
        choices = [pol.decide(u, ids, event_id=f"ev{j}") for j in range(n)]
        assert all(np.array_equal(c.probs, p) for c in choices)
    freq = np.bincount([c.index for c in choices], minlength=len(ids)) / n
    se = np.sqrt(p * (1 - p) / n)
    assert (np.abs(freq - p) <= 4.5 * se + 0.003).all(), (freq, p)


@pytest.mark.parametrize("name", ["linear_ts", "logistic_ts", "linucb", "bernoulli_ts"])
def test_same_event_same_snapshot_same_decision_from_8_threads(
    name, market, store, traffic
) -> None:
    kw = {"segment_columns": (0, 5)} if name == "bernoulli_ts" else {}
    pol = _trained(name, traffic, store, **kw)
    obs = traffic[1]
    reqs = [(*_request(market, obs, i % 64), f"event-{i}") for i in range(400)]
    seq = [pol.decide(u, ids, event_id=e) for u, ids, e in reqs]
    with ThreadPoolExecutor(8) as ex:
        par = list(ex.map(lambda r: pol.decide(r[0], r[1], event_id=r[2]), reqs))
    for a, b in zip(seq, par, strict=True):
        assert (a.variant_id, a.model_version) == (b.variant_id, b.model_version)
        np.testing.assert_array_equal(a.probs, b.probs)
    # a new snapshot (an update) may change the decision's randomness, never within one
    assert len({c.model_version for c in seq}) == 1


def test_unseen_copy_is_ranked_without_refitting(market, traffic) -> None:
    """A line the catalog never saw joins the store through the saved featurizer and LinearTS
    and LinUCB rank it next to the campaign's own variants; nothing is refitted."""
    from copyloop.envs.embed import default_encoder

    store = VariantStore.from_catalog(market.catalog)
    basis = market.catalog.featurizer.components.copy()
    camp = market.catalog.campaign_ids[0]
    ids = [market.catalog.variant_ids[v] for v in market.catalog.slots[0] if v >= 0]
    text = "New: " + market.catalog.products[0].title + " — free returns, order today!"
    rows = store.add(["fresh-1"], [text], camp, encoder=default_encoder())
    assert store.features[rows].shape == (1, store.dim)
    np.testing.assert_array_equal(market.catalog.featurizer.components, basis)
    u = traffic[1]["user"][0]
    for cls in (LinearTSPolicy, LinUCBPolicy):
        pol = cls(seed=1)
        for obs, a, r in traffic[0]:
            pol.update(obs, a, r)
        pol.attach(store)
        c = pol.decide(u, [*ids, "fresh-1"], event_id="new-line")
        assert c.probs.shape == (len(ids) + 1,) and c.probs.sum() == pytest.approx(1.0)
        if cls is LinearTSPolicy:
            assert c.probs[-1] > 0.0


BAD = [
    ({"candidate_ids": ["nope"]}, "unknown variant id"),
    ({"candidate_ids": []}, "`candidate_ids` is empty"),
    ({"candidate_ids": "dup"}, "repeats"),
    ({"context": "wide"}, "has 29 features but this policy was trained on 28"),
    ({"context": "nan"}, "must be finite; positions \\[3\\]"),
    ({"context": "matrix"}, "one vector"),
    ({"event_id": ""}, "`event_id` must be a non-empty string"),
]


@pytest.mark.parametrize(("change", "match"), BAD, ids=[m for _, m in BAD])
@pytest.mark.parametrize("name", ["linear_ts", "bernoulli_ts"])
def test_bad_requests_are_refused_and_change_nothing(
    name, change, match, market, store, traffic
) -> None:
    kw = {"segment_columns": (0, 5)} if name == "bernoulli_ts" else {}
    pol = _trained(name, traffic, store, **kw)
    u, ids = _request(market, traffic[1], 0)
    args = {"context": u, "candidate_ids": ids, "event_id": "e"}
    for key, v in change.items():
        if v == "dup":
            v = [ids[0], ids[0]]
        elif v == "wide":
            v = np.append(u, 1.0)
        elif v == "nan":
            v = u.copy()
            v[3] = np.nan
        elif v == "matrix":
            v = np.stack([u, u])
        args[key] = v
    before = {k: np.array(v, copy=True) for k, v in pol._get_state().items()}
    version = pol.model_version
    with pytest.raises(ValueError, match=match):
        pol.decide(args["context"], args["candidate_ids"], event_id=args["event_id"])
    assert pol.model_version == version
    for k, v in pol._get_state().items():
        np.testing.assert_array_equal(v, before[k])


def test_learning_from_log_rows_is_the_env_path(market, store, tmp_path: Path) -> None:
    """A simulated log replayed row-wise through learn_log gives LinearTS the state the env's
    batches gave it — one learning path for env, warm start and delayed rewards."""
    from copyloop import DecisionLog
    from copyloop.agents import UniformPolicy
    from copyloop.envs.simulate import simulate

    out = tmp_path / "l.parquet"
    simulate(market, UniformPolicy(seed=0), 3000, seed=0, out=out, batch_size=1000)
    log = DecisionLog.read(out)
    env_pol = LinearTSPolicy(seed=0)
    env = CopyMarketVectorEnv(1000, market=market)
    obs, _ = env.reset(seed=0)
    uni = UniformPolicy(seed=0)
    for _ in range(3):
        d = uni.act(obs)
        nxt, r, _, _, _ = env.step(d.actions)
        env_pol.update(obs, d.actions, r)
        uni.update(obs, d.actions, r)
        obs = nxt
    row_pol = LinearTSPolicy(seed=0).attach(store)
    assert row_pol.learn_log(log) == 3000
    np.testing.assert_allclose(row_pol._A, env_pol._A, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(row_pol._b, env_pol._b, rtol=1e-9, atol=1e-9)


def test_rank_one_serving_updates_match_a_refit(market, store, traffic) -> None:
    """Rows learned one at a time keep the per-request posterior by RLS; it agrees with the
    posterior refactorised from A (float32 drift below 1e-3 of the scale)."""
    pol = _trained("linear_ts", traffic, store)
    u, ids = _request(market, traffic[1], 2)
    pol.decide(u, ids, event_id="warm")  # builds the serving posterior
    obs, a, r = traffic[0][0]
    for i in range(40):
        pol.update({k: v[i : i + 1] for k, v in obs.items()}, a[i : i + 1], r[i : i + 1])
    assert pol._srv is not None and pol._srv.age == 40
    kept = pol._srv
    pol._srv = None
    fresh = pol._serving(kept.cov.shape[0])
    np.testing.assert_allclose(kept.mean, fresh.mean, atol=1e-4)
    np.testing.assert_allclose(kept.cov, fresh.cov, atol=1e-3 * float(np.abs(fresh.cov).max()))


def test_logistic_one_row_update_is_the_map(market, store, traffic) -> None:
    """The one-row Newton update lands on the same MAP as L-BFGS on that row."""
    from scipy.optimize import minimize
    from scipy.special import expit

    from copyloop.agents.ts import _logistic_row_update

    rng = np.random.default_rng(0)
    m, q = rng.normal(0, 0.1, 50), rng.uniform(0.5, 3.0, 50)
    x, y = rng.normal(0, 1, 50), 1.0

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = y * (x @ w)
        return float(0.5 * np.sum(q * (w - m) ** 2) + np.logaddexp(0, -z)), q * (
            w - m
        ) - x * y * expit(-z)

    ref = minimize(loss, m, jac=True, method="L-BFGS-B").x
    w, _ = _logistic_row_update(m, q, x, y)
    assert np.abs(loss(w)[1]).max() < 1e-9  # the optimum: zero gradient
    assert loss(w)[0] <= loss(ref)[0] + 1e-12  # no worse than L-BFGS's answer
    np.testing.assert_allclose(w, ref, atol=1e-4)


def test_snapshot_round_trip_serves_the_same_decisions(
    market, store, traffic, tmp_path: Path
) -> None:
    from copyloop.agents import Policy

    pol = _trained("linear_ts", traffic, store)
    u, ids = _request(market, traffic[1], 1)
    before = [pol.decide(u, ids, event_id=f"s{i}") for i in range(20)]
    path = pol.save(tmp_path / "snap.npz")
    back = Policy.load(path)
    assert back.store is not None and back.store.ids == store.ids
    assert back.model_version == pol.model_version
    for i, c in enumerate(before):
        d = back.decide(u, ids, event_id=f"s{i}")
        assert d.variant_id == c.variant_id
        np.testing.assert_allclose(d.probs, c.probs)
    raw = bytearray(path.read_bytes())
    i = raw.index(b"state/b.npy") + 200  # inside the array data of `b`
    raw[i] ^= 0x01
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"checksum mismatch|not a readable"):
        Policy.load(tmp_path / "bad.npz")


def test_ppo_refuses_log_rows(store) -> None:
    pytest.importorskip("stable_baselines3")
    from copyloop import DecisionLog
    from copyloop.agents import PPOPolicy

    log = DecisionLog.from_arrays(
        event_id=["a"], campaign_id=["c"], context=np.zeros((1, 28)), action=[store.ids[0]],
        action_index=[0], propensity=[1.0], candidates=[[store.ids[0]]], reward=[1.0],
    )  # fmt: skip
    with pytest.raises(ValueError, match="cannot learn from log rows: PPO learns on-policy"):
        PPOPolicy(seed=0).attach(store).learn_log(log)


@pytest.mark.parametrize("name", ["bernoulli_ts", "epsilon_greedy", "ucb1"])
def test_counting_agents_key_arms_by_variant_id(name, tmp_path: Path) -> None:
    """Two variants with identical features are two arms when the request and the log rows
    name them; a saved and loaded snapshot keeps the keys (and so the decisions)."""
    from copyloop import DecisionLog
    from copyloop.agents import POLICIES, Policy

    feats = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)  # "a" and "b" identical
    st = VariantStore(["a", "b", "c"], feats, ["camp"] * 3)
    pol = POLICIES[name](seed=0).attach(st)
    u = np.zeros(3, np.float32)
    n = 40
    log = DecisionLog.from_arrays(
        event_id=[f"l{i}" for i in range(2 * n)], campaign_id=["camp"] * (2 * n),
        context=np.zeros((2 * n, 3)), action=["a", "b"] * n, action_index=[0, 1] * n,
        propensity=[0.5] * (2 * n), candidates=[["a", "b"]] * (2 * n),
        reward=[1.0, 0.0] * n,
    )  # fmt: skip
    assert pol.learn_log(log) == 2 * n  # "a" always clicked, "b" never
    for _ in range(10):
        pol.learn_one(u, "b", 0.0)
    p = pol.decide(u, ["a", "b"], event_id="e").probs
    assert p[0] > 0.9 > p[1], p  # keyed by features, the two would tie at 0.5
    arms = dict(pol._index._keys)
    assert {"a", "b"} <= set(arms) and arms["a"] != arms["b"]
    back = Policy.load(pol.save(tmp_path / "snap.npz"))
    assert back._index._keys == arms
    for i in range(20):
        e = f"s{i}"
        a, b = (
            pol.decide(u, ["a", "b", "c"], event_id=e),
            back.decide(u, ["a", "b", "c"], event_id=e),
        )
        assert a.variant_id == b.variant_id
        np.testing.assert_array_equal(a.probs, b.probs)


def test_env_learned_arms_join_their_variant_ids(market, store, traffic) -> None:
    """A counting agent trained on env batches (feature rows) and then attached to the store
    serves the same statistics by variant id."""
    pol = BernoulliTSPolicy(seed=3)
    for obs, a, r in traffic[0]:
        pol.update(obs, a, r)
    u, ids = _request(market, traffic[1], 4)
    before = pol.act({k: v[4:5] for k, v in traffic[1].items()}).probs[0, : len(ids)]
    pol.attach(store)
    assert all(i in pol._index._keys for i in ids)  # the campaign's rows were re-keyed
    pol.n_draws = 20_000
    after = pol.decide(u, ids, event_id="e").probs
    ref = pol.act({k: v[4:5] for k, v in traffic[1].items()}).probs[0, : len(ids)]
    np.testing.assert_allclose(after, ref, atol=0.03)  # 20k Beta draws each: SE ≤ 0.0036
    assert np.abs(before - ref).max() < 0.2  # the same statistics as before attaching


@pytest.mark.parametrize("name", ["linear_ts", "logistic_ts", "linucb", "bernoulli_ts"])
def test_learn_one_is_update_on_one_row(name, market, store, traffic) -> None:
    """learn_one(context, variant id, reward) teaches what update() on that row teaches."""
    kw = {"segment_columns": (0, 5)} if name == "bernoulli_ts" else {}
    a_pol, b_pol = _trained(name, traffic, store, **kw), _trained(name, traffic, store, **kw)
    u, ids = _request(market, traffic[1], 0)
    a_pol.decide(u, ids, event_id="warm")  # the serving posterior exists in both
    b_pol.decide(u, ids, event_id="warm")
    obs, act, rew = traffic[0][1]
    for i in range(30):
        row = {k: v[i : i + 1] for k, v in obs.items()}
        a_pol.update(row, act[i : i + 1], rew[i : i + 1])
        ui, ids_i = _request(market, obs, i)
        b_pol.learn_one(ui, ids_i[act[i]], float(rew[i]))
    assert a_pol.model_version == b_pol.model_version
    sa, sb = a_pol._get_state(), b_pol._get_state()
    for k in sa:
        if k.startswith("index_"):
            continue  # env rows keyed via the store's feature rows: the same arms, same numbers
        np.testing.assert_allclose(sb[k], sa[k], rtol=1e-6, atol=1e-7, err_msg=k)
    for i in range(10):
        np.testing.assert_allclose(
            b_pol.decide(u, ids, event_id=f"x{i}").probs,
            a_pol.decide(u, ids, event_id=f"x{i}").probs,
            atol=1e-6 if name != "bernoulli_ts" else 0.15,
        )


LEARN_BAD = [
    ({"variant_id": "no-such-variant"}, "`variant_id` 'no-such-variant' is not in the variant"),
    ({"reward": float("nan")}, "`reward` must be finite"),
    ({"reward": "x"}, "`reward` must be a number"),
    ({"context": "wide"}, "features but this policy was trained on"),
    ({"context": "nan"}, "`context` must be finite"),
    ({"weight": -1.0}, "`weight` must be a finite number >= 0"),
]


@pytest.mark.parametrize(("change", "match"), LEARN_BAD, ids=[m for _, m in LEARN_BAD])
def test_bad_learn_one_is_refused_and_changes_nothing(
    change, match, market, store, traffic
) -> None:
    pol = _trained("linear_ts", traffic, store)
    u, ids = _request(market, traffic[1], 0)
    args = {"context": u, "variant_id": ids[0], "reward": 1.0, "weight": None}
    for key, v in change.items():
        if v == "wide":
            v = np.append(u, 1.0)
        elif v == "nan":
            v = u.copy()
            v[2] = np.nan
        args[key] = v
    before = {k: np.array(v, copy=True) for k, v in pol._get_state().items()}
    version = pol.model_version
    with pytest.raises(ValueError, match=match):
        pol.learn_one(args["context"], args["variant_id"], args["reward"], weight=args["weight"])
    assert pol.model_version == version
    for k, v in pol._get_state().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("k", [2, 5, 10])
def test_gaussian_win_probs_match_fresh_draws(k) -> None:
    """The smoothed quasi-random win probabilities agree with 400k fresh Gaussian draws within
    0.012 (the bank's error ≤ 0.007 measured against a 2²⁰-point reference, plus 4.5 × the
    draws' ≤ 0.0008 SE), on near-ties (every candidate competitive) and on clear leaders."""
    from copyloop.agents.request import gaussian_win_probs

    rng = np.random.default_rng(k)
    for spread in (0.05, 1.0):
        f = rng.normal(size=(k, k + 2))
        cov = f @ f.T / (k + 2)
        mean = rng.normal(0.0, spread, k)
        got = gaussian_win_probs(mean, cov)
        z = rng.multivariate_normal(mean, cov, size=400_000)
        ref = np.bincount(z.argmax(axis=1), minlength=k) / z.shape[0]
        np.testing.assert_allclose(got, ref, atol=0.012)
        assert got.sum() == pytest.approx(1.0, abs=1e-12) and (got >= 0).all()


def test_gaussian_win_probs_identical_candidates() -> None:
    """Two identical candidates (a singular covariance: the plain counting fallback) share
    their wins: equal within the bank's 8,192-point resolution, the pair's total as in TS."""
    from copyloop.agents.request import gaussian_win_probs

    cov = np.array([[1.0, 1.0, 0.2], [1.0, 1.0, 0.2], [0.2, 0.2, 1.0]])
    p = gaussian_win_probs(np.array([0.1, 0.1, 0.0]), cov)
    z = np.random.default_rng(0).multivariate_normal([0.1, 0.0], cov[1:, 1:], size=400_000)
    pair = float(np.mean(z[:, 0] > z[:, 1]))  # the pair wins when either one beats the third
    assert abs(p[0] - p[1]) < 0.002 and p[0] + p[1] == pytest.approx(pair, abs=0.006)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_ppo_decides_one_request(market, store, traffic) -> None:
    """PPO serves a request through the same decide (its policy network on the candidates)."""
    pytest.importorskip("sb3_contrib")
    from copyloop.agents import PPOPolicy

    pol = PPOPolicy(n_steps=8, batch_size=256, n_epochs=2, net_arch=(16,), seed=0)
    pol.train(market, 512, num_envs=64)
    pol.attach(store)
    u, ids = _request(market, traffic[1], 3)
    c = pol.decide(u, ids, event_id="e")
    assert c.probs.shape == (len(ids),) and c.probs.sum() == pytest.approx(1.0, abs=1e-9)
    assert pol.decide(u, ids, event_id="e").variant_id == c.variant_id


@pytest.mark.parametrize("name", ["linear_ts", "logistic_ts", "bernoulli_ts"])
def test_trained_copy_decides_alike_and_stays_put(name, market, store, traffic) -> None:
    """A trained copy (the service's hand-over to its serving path) decides exactly as the
    original, and does not move when the original keeps learning."""
    kw = {"segment_columns": (0, 5)} if name == "bernoulli_ts" else {}
    pol = _trained(name, traffic, store, **kw)
    u, ids = _request(market, traffic[1], 0)
    twin = pol.trained_copy()
    assert twin.model_version == pol.model_version
    for i in range(5):
        a, b = pol.decide(u, ids, event_id=f"e{i}"), twin.decide(u, ids, event_id=f"e{i}")
        assert a.variant_id == b.variant_id
        np.testing.assert_array_equal(a.probs, b.probs)
    before = twin.decide(u, ids, event_id="after").probs
    obs, act, rew = traffic[0][2]
    pol.update(obs, act, np.ones_like(rew))
    assert twin.model_version != pol.model_version
    np.testing.assert_array_equal(twin.decide(u, ids, event_id="after").probs, before)


@pytest.mark.parametrize("density", [0.3, 0.6, 1.0])
def test_sparse_user_moments_match_the_dense_contraction(market, store, traffic, density) -> None:
    """The compiled moments (only Σ's rows the user's nonzeros select) and the dense BLAS pass
    both equal the float64 contraction of the float32 posterior to float32 rounding, on random
    sparse and dense users; the covariance comes back exactly symmetric."""
    from copyloop.agents import ts
    from copyloop.agents.request import kernels

    pol = _trained("linear_ts", traffic, store)
    rng = np.random.default_rng(int(density * 10))
    _, ids = _request(market, traffic[1], 0)
    cand = store.request(ids)[1]
    du = traffic[1]["user"].shape[1]
    srv = pol._serving((du + 1) * (cand.shape[1] + 1))
    for _ in range(10):
        u = (rng.normal(size=du) * (rng.random(du) < density)).astype(np.float32)
        want_mean, want_cov, tol = moments_reference(srv, u, cand)
        for dense_user in ((0, 1), ts._DENSE_USER):  # forced dense BLAS, then the default
            ts._DENSE_USER, kept = dense_user, ts._DENSE_USER
            try:
                mean, cov = ts._request_moments(pol, pol._serving, u, cand)
            finally:
                ts._DENSE_USER = kept
            np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
            assert np.all(np.abs(cov - want_cov) <= 16 * tol)
        got = np.empty(cand.shape[0]), np.empty((cand.shape[0],) * 2)
        u1 = np.concatenate([[1], u]).astype(np.float32)
        kernels().request_moments(srv.cov, srv.mean, u1, ts._request_c1(cand), *got)
        np.testing.assert_array_equal(got[1], got[1].T)
        assert np.all(np.abs(got[1] - want_cov) <= 16 * tol)


def test_sparse_user_decisions_match_the_dense_path(market, store, traffic) -> None:
    """Market requests (~17 of 29 user features nonzero) through the compiled moments give the
    dense path's propensities to within the float32 posterior's rounding (≤ 1e-3; measured
    1.2e-4 over 200 requests) and, where the draw is not on a boundary, the same choices."""
    from copyloop.agents import ts

    pol = _trained("linear_ts", traffic, store)
    obs = traffic[1]
    same = 0
    for i in range(40):
        u, ids = _request(market, obs, i)
        sparse = pol.decide(u, ids, event_id=f"s{i}")
        ts._DENSE_USER, kept = (0, 1), ts._DENSE_USER
        try:
            dense = pol.decide(u, ids, event_id=f"s{i}")
        finally:
            ts._DENSE_USER = kept
        np.testing.assert_allclose(sparse.probs, dense.probs, atol=1e-3)
        same += sparse.index == dense.index
    assert same >= 38
