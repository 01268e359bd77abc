"""The service's logged propensities are true, and the reward semantics tests/test_serve.py leaves
out: concurrent duplicate rewards, late rewards after a join, default rewards that teach, and
deferred activation racing an early reward.

Propensities: 50,000 decisions from one fixed snapshot (a LinearTS campaign taught 20 rows, the
learner then stopped), random contexts, through ``Service.rank`` (decide, then the durable
write), read back from the store. Two tests at ``ALPHA``, each also run on deliberately wrong
probability vectors to show it rejects them:

- *arm counts*: the realised count of each candidate against the sum of its logged
  probabilities; the decisions are independent categoricals with different probabilities, so the
  statistic uses their summed covariance ``Σ diag(p) − ppᵀ`` (chi-square, K−1 dof, by the CLT);
- *calibration*: one candidate per decision drawn independently of the service, binned by its
  logged probability; in each bin chosen-count against summed probability, variance
  ``Σ p(1−p)`` (chi-square, one dof per bin). It catches errors the counts cannot see, such as
  probabilities estimated from few draws (right on average, wrong per decision).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("fastapi")
from scipy import stats
from test_serve import TEXTS, Clock, _config

from copyloop.serve import Service, ServiceConfig
from copyloop.serve.service import ServiceError
from copyloop.serve.store import CampaignConfig

ALPHA = 0.001
N_DECISIONS = 50_000
BINS = 10


# ---- the two tests ---------------------------------------------------------------------------
def arm_counts_pvalue(probs: npt.NDArray[np.float64], chosen: npt.NDArray[np.int64]) -> float:
    """P-value of "each row's choice was drawn from its row of ``probs``", on per-candidate
    counts. ``probs`` (n, K), rows summing to 1; ``chosen`` (n,) indexes."""
    k = probs.shape[1]
    observed = np.bincount(chosen, minlength=k).astype(np.float64)
    expected = probs.sum(axis=0)
    cov = np.diag(expected) - probs.T @ probs  # Σ_i diag(p_i) − p_i p_iᵀ
    d = (observed - expected)[: k - 1]  # the K counts sum to n: drop one
    stat = float(d @ np.linalg.solve(cov[: k - 1, : k - 1], d))
    return float(stats.chi2.sf(stat, k - 1))


def calibration_pvalue(
    probs: npt.NDArray[np.float64], chosen: npt.NDArray[np.int64], seed: int = 0
) -> float:
    """P-value of "a candidate logged with probability p is chosen with probability p", over
    ``BINS`` quantile bins of p. One candidate per row (uniform, from ``seed``), so the rows'
    indicators are independent Bernoullis."""
    n, k = probs.shape
    j = np.random.default_rng(seed).integers(k, size=n)
    p = probs[np.arange(n), j]
    hit = (chosen == j).astype(np.float64)
    edges = np.quantile(p, np.linspace(0, 1, BINS + 1)[1:-1])
    b = np.searchsorted(edges, p, side="right")
    observed = np.bincount(b, weights=hit, minlength=BINS)
    expected = np.bincount(b, weights=p, minlength=BINS)
    var = np.bincount(b, weights=p * (1 - p), minlength=BINS)
    used = var > 0
    stat = float((((observed - expected) ** 2)[used] / var[used]).sum())
    return float(stats.chi2.sf(stat, int(used.sum())))


# ---- 50k logged decisions ----------------------------------------------------------------------
@dataclass(frozen=True)
class Logged:
    probs: npt.NDArray[np.float64]  # (n, K), as stored
    chosen: npt.NDArray[np.int64]  # (n,), as stored
    model_versions: set[str]
    served_match: bool  # every stored row equals the rank's response


async def _teach(svc: Service, rng: np.random.Generator, n: int) -> None:
    """``n`` decisions with context-dependent clicks, so the snapshot's probabilities differ by
    context (v0 clicks when x0 > 0, v1 when x1 > 0, v2 when x2 > 0, v3 never)."""
    for _ in range(n):
        x = rng.normal(size=3)
        rec, _ = await svc.rank("c1", x.tolist(), None, [], None, False)
        k = int(rec.action[1:])
        await svc.reward(rec.event_id, "", float(k < 3 and x[k] > 0))


async def _decide_many(svc: Service, contexts: npt.NDArray[np.float64]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for s in range(0, len(contexts), 100):
        recs = await asyncio.gather(
            *(
                svc.rank("c1", contexts[i].tolist(), None, [], f"chi-{i}", False)
                for i in range(s, min(s + 100, len(contexts)))
            )
        )
        for rec, _ in recs:
            out[rec.event_id] = [float(rec.action_index), *rec.action_probs]
    return out


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    db = tmp_path_factory.mktemp("props") / "s.db"
    clock = Clock()
    # NORMAL: durability is not under test here, and FULL would fsync every small batch
    cfg: ServiceConfig = _config(db, clock, synchronous="NORMAL")
    svc = Service(cfg)
    try:
        camp = CampaignConfig(
            "c1", 3, agent_params={"seed": 7}, exploration_floor=0.02, reward_wait_s=10.0
        )
        svc.create_campaign(camp, [(f"v{i}", t) for i, t in enumerate(TEXTS)], "test")
        rng = np.random.default_rng(2026)
        asyncio.run(_teach(svc, rng, 20))
        assert svc.learner.step() == 20  # one snapshot, then the learner never runs again
        responses = asyncio.run(_decide_many(svc, rng.normal(size=(N_DECISIONS, 3))))
        out = db.with_name("log.parquet")  # the DecisionLog OPE reads: what "logged" means
        svc.store.export_log(out, now=clock.now + 1e6)
    finally:
        svc.close()
    from copyloop.contract import DecisionLog

    log = DecisionLog.read(out)
    all_ids, all_probs = log.column("event_id"), log.column("action_probs")
    keep = [i for i, e in enumerate(all_ids) if e.startswith("chi-")]
    ids = [all_ids[i] for i in keep]
    probs = np.array([all_probs[i] for i in keep])
    chosen = log.action_index[keep].astype(np.int64)
    assert len(keep) == N_DECISIONS
    versions = log.column("model_version")
    return Logged(
        probs=probs,
        chosen=chosen,
        model_versions={versions[i] for i in keep},
        served_match=all(
            np.allclose(responses[e], [float(c), *p], rtol=0, atol=1e-12)
            for e, c, p in zip(ids, chosen, probs, strict=True)
        ),
    )


@pytest.mark.slow
def test_logged_propensities_are_true(logged: Logged) -> None:
    """50k decisions of one snapshot: realised choices match the logged probabilities (arm
    counts and calibration at ALPHA), and the store holds exactly what each response said."""
    p, c = logged.probs, logged.chosen
    assert len(logged.model_versions) == 1 and logged.model_versions != {"0"}
    assert logged.served_match
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    assert p.min() >= 0.02 - 1e-12  # the exploration floor holds
    # the probabilities must differ by context, or the calibration test has nothing to bin
    assert np.quantile(p, 0.1) < 0.05 and np.quantile(p, 0.9) > 0.5
    assert np.all(p[np.arange(len(c)), c] > 0)
    p_arms = arm_counts_pvalue(p, c)
    p_cal = calibration_pvalue(p, c)
    print(f"propensities: arm counts p={p_arms:.3g}, calibration p={p_cal:.3g} (alpha {ALPHA})")
    assert p_arms > ALPHA, f"arm counts do not match the logged probabilities (p={p_arms:.2g})"
    assert p_cal > ALPHA, f"logged probabilities are not calibrated (p={p_cal:.2g})"


@pytest.mark.slow
def test_the_propensity_tests_reject_wrong_probabilities(logged: Logged) -> None:
    """The same choices against deliberately wrong logged vectors: each is rejected at ALPHA.

    - the candidates' order rotated (probabilities logged against the wrong ids);
    - mixed 10% with uniform (claiming exploration that was not done);
    - the floor dropped (claiming the agent's raw probabilities after a floor was applied);
    - Monte-Carlo estimates from 64 draws (right on average, wrong per decision): only the
      calibration test can see it, and does.
    """
    p, c = logged.probs, logged.chosen
    k = p.shape[1]
    rng = np.random.default_rng(1)
    rotated = np.roll(p, 1, axis=1)
    mixed = 0.9 * p + 0.1 / k
    unfloored = np.clip((p - 0.02) / (1 - 0.02 * k), 1e-6, None)
    unfloored /= unfloored.sum(axis=1, keepdims=True)
    mc = np.array([rng.multinomial(64, row) for row in p]) / 64.0
    mc = np.clip(mc, 1e-3, None)
    mc /= mc.sum(axis=1, keepdims=True)
    for name, wrong in [("rotated", rotated), ("mixed", mixed), ("unfloored", unfloored)]:
        p_arms, p_cal = arm_counts_pvalue(wrong, c), calibration_pvalue(wrong, c)
        print(f"{name}: arm counts p={p_arms:.3g}, calibration p={p_cal:.3g}")
        assert p_arms < ALPHA and p_cal < ALPHA, name
    p_arms, p_cal = arm_counts_pvalue(mc, c), calibration_pvalue(mc, c)
    print(f"64-draw estimates: arm counts p={p_arms:.3g}, calibration p={p_cal:.3g}")
    assert p_cal < ALPHA
    # a test that can fail must also be able to pass on the truth with other draws
    truth = np.array([rng.choice(k, p=row) for row in p[:20_000]])
    assert arm_counts_pvalue(p[:20_000], truth) > ALPHA
    assert calibration_pvalue(p[:20_000], truth) > ALPHA


# ---- reward semantics --------------------------------------------------------------------------
@pytest.fixture
def svc(tmp_path: Path) -> Iterator[tuple[Service, Clock]]:
    clock = Clock()
    s = Service(_config(tmp_path / "s.db", clock))
    try:
        yield s, clock
    finally:
        s.close()


def _campaign(s: Service, **kw: object) -> None:
    cfg = CampaignConfig("c1", 3, agent_params={"seed": 7}, reward_wait_s=10.0, **kw)  # type: ignore[arg-type]
    s.create_campaign(cfg, [(f"v{i}", t) for i, t in enumerate(TEXTS)], "test")


def _rank(s: Service, defer: bool = False) -> str:
    rec, _ = asyncio.run(s.rank("c1", [1.0, 0.0, 0.5], None, [], None, defer))
    return rec.event_id


def _joined(s: Service, tmp_path: Path, now: float) -> dict[str, float]:
    """The exported (joined, activated) rows' rewards by event id."""
    from copyloop.contract import DecisionLog

    out = tmp_path / f"export-{now}.parquet"
    s.store.export_log(out, now=now)
    log = DecisionLog.read(out)
    return dict(zip(log.column("event_id"), log.reward.tolist(), strict=True))


def test_concurrent_duplicate_rewards_count_once(
    svc: tuple[Service, Clock], tmp_path: Path
) -> None:
    """20 copies of one reward sent at once (one group-commit batch): one accepted, 19
    duplicates; with `sum` aggregation the joined reward is the value once, not 20 times."""
    s, clock = svc
    _campaign(s, aggregation="sum")
    e = _rank(s)

    async def burst() -> list[str]:
        outs = await asyncio.gather(*(s.reward(e, "click", 1.0) for _ in range(20)))
        return [o.status for o in outs]

    statuses = asyncio.run(burst())
    assert sorted(statuses) == ["accepted"] + ["duplicate"] * 19
    assert s.store.stats("c1")["rewards"] == 1
    clock.now += 11
    assert s.learner.step() == 1
    assert _joined(s, tmp_path, clock.now) == {e: 1.0}


def test_late_reward_after_the_join_changes_nothing(
    svc: tuple[Service, Clock], tmp_path: Path
) -> None:
    """`earliest`: a quiet decision is joined with the default and learned; a reward after the
    window — before the learner ran, or after — is stored and counted as late, and neither the
    joined reward nor the model moves."""
    s, clock = svc
    _campaign(s, default_reward=0.0)
    joined_first, unjoined = _rank(s), _rank(s)
    clock.now += 11
    before_join = asyncio.run(s.reward(unjoined, "", 1.0))  # window closed, learner not yet run
    assert before_join.late and before_join.status == "accepted"
    assert s.learner.step() == 2
    version = s.runtimes["c1"].policy.model_version
    snaps = len(s.store.snapshots("c1"))
    after = asyncio.run(s.reward(joined_first, "", 1.0))
    assert after.late and after.status == "accepted"
    assert s.learner.step() == 0
    assert s.runtimes["c1"].policy.model_version == version
    assert len(s.store.snapshots("c1")) == snaps
    assert _joined(s, tmp_path, clock.now) == {joined_first: 0.0, unjoined: 0.0}
    st = s.store.stats("c1")
    assert (st["late_rewards"], st["default_rewards"], st["learned"]) == (2, 2, 2)


@pytest.mark.parametrize("aggregation", ["earliest", "max"])
def test_default_reward_on_expiry_is_learned(
    svc: tuple[Service, Clock], tmp_path: Path, aggregation: str
) -> None:
    """A decision whose window closes without a reward is joined with the campaign's default
    reward, taught (the model moves on default rows alone) and exported with it."""
    s, clock = svc
    _campaign(s, aggregation=aggregation, default_reward=0.25)
    quiet = [_rank(s) for _ in range(3)]
    assert s.learner.step() == 0  # windows open
    clock.now += 10.5
    assert s.learner.step() == 3
    assert s.runtimes["c1"].policy.model_version != "0"
    st = s.store.stats("c1")
    assert (st["default_rewards"], st["learned"], st["mean_joined_reward"]) == (3, 3, 0.25)
    assert _joined(s, tmp_path, clock.now) == dict.fromkeys(quiet, 0.25)
    assert s.metrics.default_rewards._value.get() == 3


def test_activation_is_idempotent_and_order_free(
    svc: tuple[Service, Clock], tmp_path: Path
) -> None:
    """`sum`: a reward before the activation counts once the impression is activated inside the
    window; activating twice is fine; a never-activated one is joined, not learned, not
    exported."""
    s, clock = svc
    _campaign(s, aggregation="sum")
    shown, never = _rank(s, defer=True), _rank(s, defer=True)
    for e in (shown, never):
        asyncio.run(s.reward(e, "", 1.0))
    assert s.learner.step() == 0
    asyncio.run(s.activate(shown))
    asyncio.run(s.activate(shown))
    clock.now += 11
    assert s.learner.step() == 2
    assert s.store.stats("c1")["learned"] == 1
    assert _joined(s, tmp_path, clock.now) == {shown: 1.0}


def test_deferred_event_waits_for_activation_under_earliest(
    svc: tuple[Service, Clock], tmp_path: Path
) -> None:
    """Personalizer's deferred activation: a reward may arrive before the impression is shown;
    activated inside the window, the event is learned. With `earliest` the reward is final at
    once — but the event must not settle before it is activated (or its window closes)."""
    s, clock = svc
    _campaign(s, aggregation="earliest")
    e = _rank(s, defer=True)
    asyncio.run(s.reward(e, "", 1.0))
    s.learner.step()  # a tick between the reward and the activation, inside the window
    try:
        asyncio.run(s.activate(e))
    except ServiceError as err:
        pytest.fail(f"activation inside the window refused: {err.status} {err.message}")
    clock.now += 11
    s.learner.step()
    assert s.store.stats("c1")["learned"] == 1
    assert _joined(s, tmp_path, clock.now) == {e: 1.0}
