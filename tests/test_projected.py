"""LinearTS's projected posterior (LinearTSPolicy.project): per-candidate-list tables that a
decision reads instead of the d×d posterior — same moments to float32 rounding, decisions
alike, dropped when the posterior moves, and built by a service at every hand-over."""

from __future__ import annotations

import numpy as np
import pytest
from agent_helpers import moments_reference, uniform_traffic

from copyloop.agents import LinearTSPolicy, LogisticTSPolicy
from copyloop.agents.store import VariantStore


@pytest.fixture(scope="module")
def store(market) -> VariantStore:
    return VariantStore.from_catalog(market.catalog)


@pytest.fixture(scope="module")
def traffic(market):
    """Two batches of uniform traffic (obs, actions, rewards) and the next observation."""
    return uniform_traffic(market, 1, 2)


def _trained(traffic, store: VariantStore, cls=LinearTSPolicy, **kw):
    pol = cls(seed=5, **kw)
    for obs, a, r in traffic[0]:
        pol.update(obs, a, r)
    return pol.attach(store)


def _requests(market, obs, n: int) -> list[tuple[np.ndarray, list[str]]]:
    """Rows of an env batch as requests: (user features, the campaign's candidate ids)."""
    out = []
    for i in range(n):
        k = int(obs["action_mask"][i].sum())
        camp = int(np.flatnonzero((market.slot_features == obs["candidates"][i]).all(axis=1))[0])
        ids = [market.catalog.variant_ids[v] for v in market.catalog.slots[camp, :k]]
        out.append((obs["user"][i], ids))
    return out


def test_projected_moments_match_the_contraction(market, store, traffic) -> None:
    """With tables, a request's mean and covariance equal the float64 contraction of the
    float32 posterior to float32 rounding, exactly symmetric, for market users and for dense
    random users."""
    from copyloop.agents import ts

    pol = _trained(traffic, store)
    reqs = _requests(market, traffic[1], 30)
    assert pol.project([ids for _, ids in reqs]) == 30
    rng = np.random.default_rng(0)
    for i, (u, ids) in enumerate(reqs):
        if i % 3 == 2:  # every third: a dense user
            u = rng.normal(size=u.shape).astype(np.float32)
        cand = store.request(ids)[1]
        srv = pol._srv
        assert id(cand) in srv.projected
        mean, cov = ts._request_moments(pol, pol._serving, u, cand)
        want_mean, want_cov, tol = moments_reference(srv, u, cand)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
        assert np.all(np.abs(cov - want_cov) <= 16 * tol)
        np.testing.assert_array_equal(cov, cov.T)


def test_projected_decisions_match_the_posterior_pass(market, store, traffic) -> None:
    """The same requests and event ids decided with and without tables: propensities within
    the float32 posterior's rounding carried through the win probabilities (≤ 1e-3; measured
    4.5e-4 over 500 service requests), and the same choices where a draw is not on a
    boundary."""
    pol = _trained(traffic, store)
    reqs = _requests(market, traffic[1], 60)
    before = [pol.decide(u, ids, event_id=f"p{i}") for i, (u, ids) in enumerate(reqs)]
    pol.project([ids for _, ids in reqs])
    after = [pol.decide(u, ids, event_id=f"p{i}") for i, (u, ids) in enumerate(reqs)]
    same = 0
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-3)
        assert a.model_version == b.model_version
        same += a.index == b.index
    assert same >= 57


def test_tables_are_dropped_when_the_posterior_moves(market, store, traffic) -> None:
    """A one-row update moves Σ by a rank-one step: the tables go, and decisions then come
    from the moved posterior (identical to a copy that never had tables)."""
    pol = _trained(traffic, store)
    reqs = _requests(market, traffic[1], 5)
    twin = pol.trained_copy()
    pol.project([ids for _, ids in reqs])
    assert pol._srv.projected
    u, ids = reqs[0]
    twin.decide(u, ids, event_id="warm")  # the twin's serving posterior, before the update
    for p in (pol, twin):
        p.learn_one(u, ids[0], 1.0)
    assert pol._srv.projected == {}
    for i, (u, ids) in enumerate(reqs):
        a, b = pol.decide(u, ids, event_id=f"m{i}"), twin.decide(u, ids, event_id=f"m{i}")
        np.testing.assert_array_equal(a.probs, b.probs)


@pytest.mark.parametrize(
    ("make", "want"),
    [
        (lambda t, s: _trained(t, s, features="candidate"), 0),  # no user index to project
        (lambda t, s: _trained(t, s, cls=LogisticTSPolicy), 0),  # diagonal: nothing to gain
        (lambda t, s: LinearTSPolicy(seed=1).attach(s), 0),  # untrained: no widths yet
        (lambda t, s: _trained(t, s), 2),
    ],
)
def test_project_table(market, store, traffic, make, want) -> None:
    pol = make(traffic, store)
    reqs = _requests(market, traffic[1], 2)
    assert pol.project([ids for _, ids in reqs]) == want


def test_project_refuses_unknown_ids(store, traffic) -> None:
    pol = _trained(traffic, store)
    with pytest.raises(ValueError, match="nope"):
        pol.project([["nope"]])
    assert pol._srv is None or pol._srv.projected == {}
