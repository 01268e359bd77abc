"""Compiled kernels of the one-request-at-a-time path: the quadrature behind
:func:`copyloop.agents.request.gaussian_win_probs` and the one-row update of the serving
posterior (:class:`copyloop.agents.ts._Serving`).

Kept in their own module so that numba is imported (~0.3 s) and the kernels loaded from
numba's cache (compiled once per machine, a few seconds, on the first call) only when a
policy first serves one request; importing :mod:`copyloop.agents` stays as cheap as it was.
Per request, numpy's per-call overhead (~1 µs a call, dozens of calls) was the cost, not the
arithmetic.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)


@numba.njit(cache=True, nogil=True)
def win_probs(  # pragma: no cover - compiled; tested through gaussian_win_probs
    mean: npt.NDArray[np.floating],
    cov: npt.NDArray[np.floating],
    max_rho: float,
    window: float,
    ratios: npt.NDArray[np.float64],
    counts: npt.NDArray[np.int64],
    nodes: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> bool:
    """P(k wins) for scores ~ N(mean, cov) into ``out`` (K,), by quadrature; False (``out``
    unspecified) where the scores are not near-independent up to a common shift, where their
    scales spread wider than ``ratios[-1]``, or where the rule fails its own check.

    Args:
        mean: (K,), K ≥ 3.
        cov: (K, K), symmetric.
        max_rho: the largest residual correlation taken (``NEAR_INDEPENDENT``).
        window: half-width of the window in standard deviations.
        ratios, counts: rule ``q`` (``counts[q]`` nodes) serves a spread of standard
            deviations up to ``ratios[q]``.
        nodes, weights: (len(ratios), max(counts)) Gauss–Legendre rules on [−1, 1], each
            row's first ``counts[q]`` entries.
        out: (K,) output.
    """
    k = mean.shape[0]
    # the common shift b: off-diagonals b_k + b_l fitted by least squares (closed form)
    rows = np.empty(k)
    total = 0.0
    dmax = 0.0
    for i in range(k):
        s = 0.0
        for j in range(k):
            if j != i:
                s += cov[i, j]
        rows[i] = s
        total += s
        dmax = max(dmax, float(cov[i, i]))
    shift = total / (2.0 * (k - 1))
    b = np.empty(k)
    sd = np.empty(k)
    for i in range(k):
        b[i] = (rows[i] - shift) / (k - 2)
        lam = cov[i, i] - 2.0 * b[i]
        if not lam > 1e-12 * dmax:  # (NaN fails too)
            return False
        sd[i] = math.sqrt(lam)
    # the window where the max lives, and the candidates that can reach it
    lo = -np.inf
    hi = -np.inf
    for i in range(k):
        lo = max(lo, mean[i] - window * sd[i])
        hi = max(hi, mean[i] + window * sd[i])
    live = np.empty(k, np.int64)
    n_live = 0
    for i in range(k):
        out[i] = 0.0
        if mean[i] + window * sd[i] >= lo:
            live[n_live] = i
            n_live += 1
    if n_live == 1:
        out[live[0]] = 1.0
        return True
    m = np.empty(n_live)
    s_ = np.empty(n_live)
    smin = np.inf
    smax = 0.0
    for a in range(n_live):
        m[a] = mean[live[a]]
        s_[a] = sd[live[a]]
        smin = min(smin, s_[a])
        smax = max(smax, s_[a])
    q = -1
    for r in range(ratios.shape[0]):
        if smax <= ratios[r] * smin:
            q = r
            break
    if q < 0:
        return False
    # what is left of the off-diagonals (between live candidates), and its largest correlation
    resid = np.zeros((n_live, n_live))
    rho = 0.0
    for a in range(n_live):
        i = live[a]
        for c in range(a + 1, n_live):
            j = live[c]
            r_ij = cov[i, j] - b[i] - b[j]
            resid[a, c] = r_ij
            resid[c, a] = r_ij
            rho = max(rho, abs(r_ij) / (s_[a] * s_[c]))
    if not rho <= max_rho:
        return False
    correct = rho > 0.0
    n = counts[q]
    half = 0.5 * (hi - lo)
    mid = lo + half
    probs = np.zeros(n_live)
    z = np.empty(n_live)
    h = np.empty(n_live)
    e = np.empty(n_live)
    for node in range(n):
        t = mid + half * nodes[q, node]
        g = 1.0  # Π Φ_l(t)
        big_h = 0.0  # Σ h_l
        for a in range(n_live):
            za = (t - m[a]) / s_[a]  # ≥ −window for a live candidate: Φ never underflows
            cdf = 0.5 * math.erfc(-za * _INV_SQRT_2)
            dens = math.exp(-0.5 * za * za) * _INV_SQRT_2PI / s_[a]
            z[a] = za
            h[a] = dens / cdf  # p_l / Φ_l
            g *= cdf
            big_h += h[a]
        wt = half * weights[q, node] * g
        if not correct:
            for a in range(n_live):
                probs[a] += wt * h[a]  # p_k Π_{l≠k} Φ_l
            continue
        # Price's theorem to first order in R: wins_k · (½ hᵀRh − H (Rh)_k + (R (h ∘ (a + h)))_k)
        # with a = (t − m)/σ²
        for a in range(n_live):
            e[a] = h[a] * (z[a] / s_[a] + h[a])
        quad = 0.0
        for a in range(n_live):
            rh = 0.0
            re = 0.0
            for c in range(n_live):
                rh += resid[a, c] * h[c]
                re += resid[a, c] * e[c]
            quad += h[a] * rh
            out[live[a]] = re - big_h * rh  # scratch: the k-dependent part
        for a in range(n_live):
            probs[a] += wt * h[a] * (1.0 + 0.5 * quad + out[live[a]])
    got = 0.0
    for a in range(n_live):
        got += probs[a]
    if not abs(got - 1.0) < 1e-3:  # a self-check on the rule: the caller uses the bank instead
        return False
    got = 0.0
    for a in range(n_live):
        probs[a] = max(probs[a], 0.0)  # (the correction can dip below 0 near 0)
        got += probs[a]
    for i in range(k):
        out[i] = 0.0
    for a in range(n_live):
        out[live[a]] = probs[a] / got
    return True


@numba.njit(cache=True, nogil=True)
def rls_rows(  # pragma: no cover - compiled; tested through LinearTSPolicy.learn_one
    cov: npt.NDArray[np.float32],
    mean: npt.NDArray[np.float32],
    xs: npt.NDArray[np.float64],
    rewards: npt.NDArray[np.float64],
    v2: float,
) -> None:
    """Recursive least squares over the rows of ``xs`` (B, d), in place on ``cov`` (d, d,
    symmetric) and ``mean`` (d,), float32: per row C ← C − Cx xᵀC/(v² + xᵀCx) and
    μ ← μ + Cx (r − xᵀμ)/(v² + xᵀCx). Cx is gathered over x's nonzeros only (an interaction
    row of one-hot arms has few); every loop runs along a contiguous row."""
    d = cov.shape[0]
    cx = np.empty(d, np.float32)
    for i in range(xs.shape[0]):
        cx[:] = 0.0
        xcx = 0.0
        xm = 0.0
        for j in range(d):
            xj = np.float32(xs[i, j])
            if xj != 0.0:
                row = cov[j]
                for m in range(d):
                    cx[m] += row[m] * xj
                xm += xj * mean[j]
        for j in range(d):
            xcx += np.float32(xs[i, j]) * cx[j]
        inv_den = 1.0 / (v2 + xcx)
        gain = np.float32((rewards[i] - xm) * inv_den)
        for j in range(d):
            mean[j] += cx[j] * gain
        for j in range(d):
            a = np.float32(cx[j] * inv_den)
            if a != 0.0:
                row = cov[j]
                for m in range(d):
                    row[m] -= a * cx[m]
