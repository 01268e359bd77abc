"""copyloop's OPE estimators against hand-computed values and against obp 0.5.7.

* Hand-computed cases (always run): a 4-row, 2-slot log whose every estimate is worked out in
  the comments.
* Agreement with obp (skipped, with the reason, when ``import obp`` fails — install it with
  ``bash scripts/setup_bench.sh``; with ``COPYLOOP_REQUIRE_PEERS=1``, as in ``scripts/test.sh``
  and CI, they fail instead): identical arrays (n=5000, K=10, uniform logging, a Dirichlet
  target, Bernoulli rewards, a fixed q) go to obp's estimators and to ours; point estimates must
  agree to 1e-9 relative, and for the estimators that are a mean of per-row terms, the per-row
  terms too. obp's hyper-parameters that mean the same thing under another name are compared at
  matching values:

  ============================  =========================================  ===================
  copyloop                      obp                                        same definition
  ============================  =========================================  ===================
  ``IPW(max_weight=m)``         ``InverseProbabilityWeighting(lambda_=m)`` ``min(w, m)``
  ``SwitchDR(tau=t)``           ``SwitchDoublyRobust(lambda_=t)``          DR where ``w <= t``
  ``DRos(lambda_=l)``           ``DoublyRobustWithShrinkage(lambda_=l)``   ``l w / (w² + l)``
  ============================  =========================================  ===================

  Defaults differ: obp's SwitchDR has ``lambda_=inf`` (plain DR) where ours has ``tau=100``,
  and obp's DRos has ``lambda_=0`` (DM) where ours has ``lambda_=100``. obp's ``DoublyRobust``
  also clips with its own ``lambda_`` (default inf); ours has no clipped DR.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import norm

from copyloop.ope import DM, DR, IPW, SNDR, SNIPW, BanditFeedback, DRos, Estimator, SwitchDR

Array = npt.NDArray[np.float64]
REL = 1e-9


# ---- hand-computed ------------------------------------------------------------------------------
def _tiny() -> tuple[BanditFeedback, Array, Array]:
    """4 rows, 2 slots, uniform logging (p = 0.5 everywhere).

    ====  ======  ======  ===========  ============  ==================================
    row   action  reward  π(·|x)       q̂(x, ·)       w = π(a|x)/p
    ====  ======  ======  ===========  ============  ==================================
    0     0       1       (0.8, 0.2)   (0.5, 0.3)    0.8/0.5 = 1.6
    1     1       0       (0.5, 0.5)   (0.2, 0.4)    0.5/0.5 = 1.0
    2     0       1       (0.2, 0.8)   (0.6, 0.1)    0.2/0.5 = 0.4
    3     1       1       (1.0, 0.0)   (0.3, 0.9)    0.0/0.5 = 0.0
    ====  ======  ======  ===========  ============  ==================================
    """
    data = BanditFeedback(
        context=np.zeros((4, 1)),
        mask=np.ones((4, 2), bool),
        action=np.array([0, 1, 0, 1]),
        reward=np.array([1.0, 0.0, 1.0, 1.0]),
        pscore=np.full(4, 0.5),
        logging_probs=np.full((4, 2), 0.5),
    )
    target = np.array([[0.8, 0.2], [0.5, 0.5], [0.2, 0.8], [1.0, 0.0]])
    q = np.array([[0.5, 0.3], [0.2, 0.4], [0.6, 0.1], [0.3, 0.9]])
    return data, target, q


# DM per row Σ_a π q̂: 0.8·0.5 + 0.2·0.3 = 0.46; 0.5·0.2 + 0.5·0.4 = 0.30;
#                     0.2·0.6 + 0.8·0.1 = 0.20; 1.0·0.3 + 0 = 0.30   → sum 1.26
# residuals r − q̂(a): 1 − 0.5 = 0.5; 0 − 0.4 = −0.4; 1 − 0.6 = 0.4; 1 − 0.9 = 0.1
# w · residual: 0.8, −0.4, 0.16, 0.0                                 → sum 0.56
# w · r: 1.6, 0, 0.4, 0                                              → sum 2.0; Σw = 3.0
HAND: list[tuple[str, Estimator, float]] = [
    ("ipw", IPW(), 2.0 / 4),  # mean(w r) = 2.0 / 4 = 0.5
    ("snipw", SNIPW(), 2.0 / 3.0),  # Σ w r / Σ w = 2 / 3
    # clipped at 1.2: w = (1.2, 1.0, 0.4, 0) → Σ w r = 1.2 + 0.4 = 1.6 → 1.6 / 4 = 0.4
    ("ipw-clip", IPW(max_weight=1.2), 1.6 / 4),
    ("dm", DM(), 1.26 / 4),  # 0.315
    ("dr", DR(), 1.26 / 4 + 0.56 / 4),  # 0.315 + 0.14 = 0.455
    ("sndr", SNDR(), 1.26 / 4 + 0.56 / 3),  # 0.315 + 0.18667 = 0.50167
    # switch at tau = 1.2: row 0 (w = 1.6) drops its correction → (−0.4 + 0.16) / 4 = −0.06
    ("switch-dr", SwitchDR(tau=1.2), 1.26 / 4 - 0.24 / 4),  # 0.255
    # shrinkage λ = 1: w' = 1.6/(1.6² + 1), 1/(1 + 1), 0.4/(0.4² + 1), 0
    (
        "dros",
        DRos(lambda_=1.0),
        1.26 / 4 + (1.6 / 3.56 * 0.5 + 0.5 * -0.4 + 0.4 / 1.16 * 0.4) / 4,  # 0.35566
    ),
    # λ = 0 gives zero weights: DM
    ("dros-0", DRos(lambda_=0.0), 1.26 / 4),
    # tau below every positive weight: DM again
    ("switch-dr-dm", SwitchDR(tau=0.1), 1.26 / 4 + 0.0),
]


@pytest.mark.parametrize(("name", "est", "expected"), HAND, ids=[h[0] for h in HAND])
def test_hand_computed_estimates(name: str, est: Estimator, expected: float) -> None:
    data, target, q = _tiny()
    assert est.estimate(data, target, q) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_hand_computed_ipw_clt_interval() -> None:
    # terms w r = (1.6, 0, 0.4, 0), mean 0.5; deviations (1.1, −0.5, −0.1, −0.5), squares sum
    # 1.21 + 0.25 + 0.01 + 0.25 = 1.72 → sd (ddof 1) = sqrt(1.72 / 3); half = z sd / sqrt(4)
    data, target, _ = _tiny()
    iv = IPW().interval(data, target, alpha=0.05, method="clt")
    half = norm.ppf(0.975) * np.sqrt(1.72 / 3) / 2
    assert iv.estimate == pytest.approx(0.5, rel=1e-12)
    assert iv.lower == pytest.approx(0.5 - half, rel=1e-12)
    assert iv.upper == pytest.approx(0.5 + half, rel=1e-12)
    # diagnostics: ESS = (Σw)² / Σw² = 9 / (2.56 + 1 + 0.16) = 9 / 3.72; max weight 1.6
    assert iv.ess == pytest.approx(9 / 3.72, rel=1e-12)
    assert iv.max_weight == pytest.approx(1.6, rel=1e-12)


def test_hand_computed_snipw_influence_terms() -> None:
    # ψ = w (r − V̂) / mean(w), V̂ = 2/3, mean(w) = 0.75:
    # (1.6 · 1/3, 1.0 · (−2/3), 0.4 · 1/3, 0) / 0.75 = (0.71111, −0.88889, 0.17778, 0)
    data, target, _ = _tiny()
    est, psi = SNIPW()._terms(data, target, None)
    assert est == pytest.approx(2 / 3, rel=1e-12)
    expected = np.array([1.6 / 3, -2 / 3, 0.4 / 3, 0.0]) / 0.75
    np.testing.assert_allclose(psi, expected, rtol=1e-12, atol=1e-15)
    assert abs(psi.sum()) < 1e-12


# ---- agreement with obp -------------------------------------------------------------------------
REQUIRE_PEERS = "COPYLOOP_REQUIRE_PEERS"
"""Set to 1 (``scripts/test.sh`` and CI do) and a missing obp fails these tests, not skips them."""


@pytest.fixture(scope="module")
def obp_ope() -> ModuleType:
    how = "run `bash scripts/setup_bench.sh` (it installs obp 0.5.7 with --no-deps)"
    if os.environ.get(REQUIRE_PEERS) == "1":
        try:
            return importlib.import_module("obp.ope")
        except Exception as e:  # obp 0.5.7 can fail at import with more than ImportError
            pytest.fail(
                f"{REQUIRE_PEERS}=1 but obp.ope does not import ({type(e).__name__}: {e}) — {how}",
                pytrace=False,
            )
    return pytest.importorskip(
        "obp.ope", reason=f"obp is not importable in this venv — {how} to run the agreement tests"
    )


N, K = 5000, 10


@pytest.fixture(scope="module")
def synthetic() -> dict[str, Any]:
    """Identical inputs for both libraries: ours (n, K), obp's (n, K, 1) views of the same
    memory."""
    rng = np.random.default_rng(20240611)
    context = rng.standard_normal((N, 5))
    logging = np.full((N, K), 1.0 / K)
    action = rng.integers(0, K, N)
    pscore = logging[np.arange(N), action]
    target = rng.dirichlet(np.full(K, 0.7), size=N)
    q = rng.uniform(0.01, 0.3, size=(N, K))  # a fixed "reward model", deliberately imperfect
    true_ctr = np.clip(q + rng.normal(0, 0.05, (N, K)), 0.0, 1.0)
    reward = (rng.random(N) < true_ctr[np.arange(N), action]).astype(np.float64)
    data = BanditFeedback(
        context=context,
        mask=np.ones((N, K), bool),
        action=action,
        reward=reward,
        pscore=pscore,
        logging_probs=logging,
    )
    return {
        "data": data,
        "target": target,
        "q": q,
        "obp": {
            "reward": reward,
            "action": action,
            "pscore": pscore,
            "action_dist": target[:, :, None],
            "estimated_rewards_by_reg_model": q[:, :, None],
            "position": None,
        },
    }


def _pairs(obp_ope: ModuleType) -> list[tuple[str, Estimator, Any]]:
    o = obp_ope
    return [
        ("ipw", IPW(), o.InverseProbabilityWeighting()),
        ("ipw-clip-3", IPW(max_weight=3.0), o.InverseProbabilityWeighting(lambda_=3.0)),
        ("snipw", SNIPW(), o.SelfNormalizedInverseProbabilityWeighting()),
        ("dm", DM(), o.DirectMethod()),
        ("dr", DR(), o.DoublyRobust()),
        ("sndr", SNDR(), o.SelfNormalizedDoublyRobust()),
        ("switch-dr-2", SwitchDR(tau=2.0), o.SwitchDoublyRobust(lambda_=2.0)),
        ("switch-dr-inf", SwitchDR(tau=1e300), o.SwitchDoublyRobust()),
        ("dros-1", DRos(lambda_=1.0), o.DoublyRobustWithShrinkage(lambda_=1.0)),
        ("dros-100", DRos(lambda_=100.0), o.DoublyRobustWithShrinkage(lambda_=100.0)),
    ]


PAIR_IDS = [
    "ipw",
    "ipw-clip-3",
    "snipw",
    "dm",
    "dr",
    "sndr",
    "switch-dr-2",
    "switch-dr-inf",
    "dros-1",
    "dros-100",
]
LINEAR = {"ipw", "ipw-clip-3", "dm", "dr", "switch-dr-2", "switch-dr-inf", "dros-1", "dros-100"}


@pytest.mark.parametrize("which", PAIR_IDS)
def test_point_estimates_match_obp(
    obp_ope: ModuleType, synthetic: dict[str, Any], which: str
) -> None:
    name, ours, theirs = next(p for p in _pairs(obp_ope) if p[0] == which)
    mine = ours.estimate(synthetic["data"], synthetic["target"], synthetic["q"])
    other = float(theirs.estimate_policy_value(**synthetic["obp"]))
    assert mine == pytest.approx(other, rel=REL, abs=0), name


@pytest.mark.parametrize("which", sorted(LINEAR))
def test_per_row_terms_match_obp(
    obp_ope: ModuleType, synthetic: dict[str, Any], which: str
) -> None:
    """For estimators that are a mean of per-row terms, our influence terms + estimate are
    obp's round rewards."""
    _, ours, theirs = next(p for p in _pairs(obp_ope) if p[0] == which)
    est, psi = ours._terms(synthetic["data"], synthetic["target"], synthetic["q"])
    kw = dict(synthetic["obp"], position=np.zeros(N, dtype=int))
    rounds = theirs._estimate_round_rewards(**kw)
    np.testing.assert_allclose(psi + est, rounds, rtol=REL, atol=1e-12)


def test_switch_and_clip_thresholds_bite(synthetic: dict[str, Any]) -> None:
    """The hyper-parameters above are inside the weights' range, so the comparisons exercise
    the clipping / switching, not only the plain estimators."""
    data, target = synthetic["data"], synthetic["target"]
    w = target[np.arange(N), data.action] / data.pscore
    assert (w > 3.0).mean() > 0.01
    assert (w > 2.0).mean() > 0.05
    q = synthetic["q"]
    assert IPW(max_weight=3.0).estimate(data, target) != IPW().estimate(data, target)
    assert SwitchDR(tau=2.0).estimate(data, target, q) != DR().estimate(data, target, q)


def test_obp_defaults_differ_from_ours(obp_ope: ModuleType) -> None:
    """Documented above: same formulas, different default hyper-parameters."""
    assert obp_ope.SwitchDoublyRobust().lambda_ == np.inf and SwitchDR().tau == 100.0
    assert obp_ope.DoublyRobustWithShrinkage().lambda_ == 0.0 and DRos().lambda_ == 100.0
