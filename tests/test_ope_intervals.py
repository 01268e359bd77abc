"""OPE intervals: the bootstrap on sufficient statistics against brute-force resampling, the
studentised bootstrap's bounds, and coverage on skewed rare-click logs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from copyloop.ope import DR, IPW, MIPS, SNDR, SNIPW, BanditFeedback, Estimator
from copyloop.ope.estimators import INTERVAL_METHODS, DRos, SwitchDR
from copyloop.ope.resample import Resamples, gradient, resample, studentized_bounds


def rare_click_log(
    n: int, k: int = 6, ctr: float = 0.03, seed: int = 0
) -> tuple[BanditFeedback, np.ndarray, np.ndarray]:
    """Uniform logging over k slots, Bernoulli rewards with CTRs around ``ctr``, a softmax
    target and a noisy reward model."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    beta = np.linspace(-0.6, 0.6, k)
    p_click = ctr * np.exp(np.outer(x[:, 0], beta) * 0.5 + beta)
    a = rng.integers(0, k, n)
    r = (rng.random(n) < p_click[np.arange(n), a]).astype(float)
    score = np.outer(x[:, 1], beta) + 1.5 * beta
    target = np.exp(score - score.max(1, keepdims=True))
    target /= target.sum(1, keepdims=True)
    q = np.clip(p_click * rng.uniform(0.7, 1.3, (n, k)), 0, 1)
    data = BanditFeedback(
        context=x,
        mask=np.ones((n, k), bool),
        action=a,
        reward=r,
        pscore=np.full(n, 1.0 / k),
        logging_probs=np.full((n, k), 1.0 / k),
        candidate_features=np.repeat(np.eye(k, dtype=np.float32)[None], n, axis=0),
    )
    return data, target, q


ALL: list[Estimator] = [IPW(), IPW(max_weight=3.0), SNIPW(), DR(), SNDR(), SwitchDR(tau=2.0)]


@pytest.mark.parametrize("est", ALL, ids=lambda e: repr(e))
def test_bootstrap_on_sufficient_statistics_equals_brute_force(est: Estimator) -> None:
    """Up to ``blocks`` rows every resample is an exact row resample: its estimate and its
    delta-method SE from moment sums equal re-running the estimator (and its CLT SE) on the
    resampled rows, with the same index draws."""
    data, target, q = rare_click_log(300, seed=1)
    qq = q if est.needs_reward_model else None
    parts = est.parts(data, target, qq)
    b = 40
    r = resample(parts, est.combine, n_boot=b, rng=np.random.default_rng(5), studentize=True)
    rng = np.random.default_rng(5)
    z = norm.ppf(0.975)
    for i in range(b):
        idx = rng.integers(0, data.n_rows, data.n_rows)
        sub = data.take(idx)
        iv = est.interval(sub, target[idx], None if qq is None else qq[idx], method="clt")
        assert r.stats[i] == pytest.approx(iv.estimate, rel=1e-10, abs=1e-14)
        assert r.ses is not None
        assert r.ses[i] == pytest.approx((iv.upper - iv.lower) / (2 * z), rel=1e-8, abs=1e-14)
    full = est.interval(data, target, qq, method="clt")
    assert r.point == pytest.approx(full.estimate, rel=1e-12)
    assert r.se == pytest.approx((full.upper - full.lower) / (2 * z), rel=1e-8)


def test_gradient_is_exact_for_sndr() -> None:
    mu = np.array([0.02, 0.01, 1.1])
    g = gradient(SNDR.combine, mu)
    np.testing.assert_allclose(g, [1.0, 1 / 1.1, -0.01 / 1.1**2], rtol=1e-14)


def test_studentized_bounds_hand_computed() -> None:
    # t* = (θ* − θ̂)/se* = (−3, −2, ..., 5) over B = 9 resamples; α = 0.2 → k = ⌊10·0.1⌋ = 1:
    # t_lo = −3, t_hi = 5; interval [θ̂ − 5 se, θ̂ + 3 se] with θ̂ = 1, se = 0.1.
    t = np.arange(-3.0, 6.0)
    r = Resamples(point=1.0, se=0.1, stats=1.0 + t * 0.5, ses=np.full(9, 0.5))
    lo, hi = studentized_bounds(r, alpha=0.2)
    assert lo == pytest.approx(0.5) and hi == pytest.approx(1.3)


def test_bootstrap_t_is_skew_aware_and_seeded() -> None:
    """On a rare-click log the bootstrap-t interval reaches further above the estimate than
    below (CLT intervals of positively skewed terms miss low); same seed, same interval."""
    data, target, _ = rare_click_log(2000, seed=2)
    a = IPW().interval(data, target, method="bootstrap-t", seed=3)
    b = IPW().interval(data, target, method="bootstrap-t", seed=3)
    assert a == b and a.method == "bootstrap-t"
    assert a.upper - a.estimate > a.estimate - a.lower > 0


@pytest.mark.parametrize("method", INTERVAL_METHODS)
def test_group_bootstrap_matches_clt_width_on_large_logs(method: str) -> None:
    """Beyond ``blocks`` rows (Poisson weights over random row groups) the bootstrap intervals
    of a large log agree with the CLT interval: at 200k rows (6k clicks) within 8% in width
    (the Monte-Carlo error of a 999-resample width is ~3%)."""
    data, target, q = rare_click_log(200_000, seed=4)
    for est in (SNIPW(), DR(), SNDR()):
        qq = q if est.needs_reward_model else None
        clt = est.interval(data, target, qq, method="clt")
        iv = est.interval(data, target, qq, method=method, blocks=5000)
        assert iv.estimate == pytest.approx(clt.estimate, rel=1e-9)
        assert iv.width == pytest.approx(clt.width, rel=0.08), (est.name, method)


def test_bad_interval_method() -> None:
    data, target, _ = rare_click_log(50)
    with pytest.raises(ValueError, match="`method` must be one of"):
        IPW().interval(data, target, method="wald")
    with pytest.raises(ValueError, match="`n_boot` must be >= 2"):
        IPW().interval(data, target, method="bootstrap", n_boot=1)


def test_bootstrap_t_coverage_on_rare_clicks() -> None:
    """Seeded coverage check (100 logs of 1500 rows, ~45 clicks each, true value by Monte
    Carlo on the same model): the bootstrap-t interval of IPW covers in >= 88 of 100
    (binomial: 95% nominal gives >= 90 with probability 0.97), and misses no more often low
    than the CLT interval does."""
    n, reps = 1500, 100
    big, t_big, _ = rare_click_log(400_000, seed=99)
    truth = IPW().estimate(big, t_big)  # SE ~ 0.0006, well below the intervals' half-widths
    cov_t = cov_c = low_t = low_c = 0
    for rep in range(reps):
        data, target, _ = rare_click_log(n, seed=1000 + rep)
        t = IPW().interval(data, target, method="bootstrap-t", n_boot=499, seed=rep)
        c = IPW().interval(data, target, method="clt")
        cov_t += t.covers(truth)
        cov_c += c.covers(truth)
        low_t += t.upper < truth
        low_c += c.upper < truth
    assert cov_t >= 88, (cov_t, cov_c)
    assert low_t <= low_c


def test_mips_exact_categories_equal_ipw_on_distinct_copy() -> None:
    data, target, _ = rare_click_log(500, seed=6)
    assert MIPS().estimate(data, target) == pytest.approx(IPW().estimate(data, target))
    assert MIPS(n_categories=1).estimate(data, target) == pytest.approx(data.reward.mean())


def test_dros_and_switch_use_raw_weights_for_diagnostics() -> None:
    data, target, q = rare_click_log(500, seed=7)
    a = DRos(lambda_=1.0).interval(data, target, q, method="clt")
    b = DR().interval(data, target, q, method="clt")
    assert a.ess == pytest.approx(b.ess) and a.max_weight == pytest.approx(b.max_weight)


def test_poisson1_sampler_has_the_poisson_law() -> None:
    """400k draws: each P(X = k), k <= 5, within 5 SE of e^-1/k!; mean and variance 1."""
    import math

    from copyloop.ope.resample import poisson1

    x = poisson1(np.random.default_rng(0), (400, 1000))
    assert x.dtype == np.uint8
    for k in range(6):
        p = math.exp(-1) / math.factorial(k)
        assert abs((x == k).mean() - p) < 5 * math.sqrt(p * (1 - p) / x.size), k
    assert abs(x.mean() - 1) < 0.01 and abs(x.var() - 1) < 0.02


def test_group_sums_by_position() -> None:
    """Row i joins group i mod blocks, including the rows of an incomplete last round."""
    from copyloop.ope.resample import _group_sum

    c = np.random.default_rng(0).random(10_007)
    full = 10_007 // 100 * 100
    expected = np.bincount(np.arange(10_007) % 100, weights=c, minlength=100)
    np.testing.assert_allclose(_group_sum(c, 100, full), expected, rtol=1e-12)
