"""The compiled per-request step of LinearTS's projected posterior (see
:meth:`copyloop.agents.LinearTSPolicy.project`): a request's scores' mean and covariance from
tables precomputed for its candidate list, instead of a pass over the d×d posterior.

Kept apart from :mod:`copyloop.agents._kernels` so that each compiled module stays small; numba
compiles it on first use and caches the machine code beside it (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt


@numba.njit(cache=True, nogil=True)
def projected_moments(  # pragma: no cover - compiled; tested through LinearTSPolicy.decide
    w: npt.NDArray[np.float32],
    cm: npt.NDArray[np.float64],
    u1: npt.NDArray[np.float32],
    out_mean: npt.NDArray[np.float64],
    out_cov: npt.NDArray[np.float64],
) -> None:
    """Mean (K,) and covariance (K, K) of the scores ``(u1 ⊗ c1_k)·θ`` into ``out_mean`` and
    ``out_cov`` from ``w[a, c, k, l] = c1_k Σ_ac c1_lᵀ`` and ``cm[a, k] = c1_k · μ_a``.

    Only the user's nonzeros enter (a request's ``[1, u]`` is mostly one-hot segments), and
    ``w[c, a] = w[a, c]ᵀ``: with S = Σ_a u_a²/2 W_aa + Σ_{a<c} u_a u_c W_ac the covariance
    is S + Sᵀ, exactly symmetric, from the upper blocks alone (~17²/2 blocks of K×K on the
    default market: ~30 KB read against ~1.2 MB of Σ). The blocks of one ``a`` lie one after
    another (the [a, c, k, l] layout), so a request reads ~17 runs of memory, not ~150
    scattered blocks — measured under load, scattered blocks cost ~60 µs a request in cache
    misses alone. Sums in float64.

    Args:
        w: (du1, du1, K, K) float32.
        cm: (du1, K) float64.
        u1: (du1,) the request's ``[1, u]``.
        out_mean: (K,) output.
        out_cov: (K, K) output.
    """
    du1, k = cm.shape
    nz = np.empty(du1, np.int64)
    n = 0
    for a in range(du1):
        if u1[a] != 0.0:
            nz[n] = a
            n += 1
    for kk in range(k):
        m = 0.0
        for p in range(n):
            a = nz[p]
            m += np.float64(u1[a]) * cm[a, kk]
        out_mean[kk] = m
    s = np.zeros((k, k))
    for p in range(n):
        a = nz[p]
        ua = np.float64(u1[a])
        for q in range(p, n):
            c = nz[q]
            coef = ua * np.float64(u1[c]) * (0.5 if q == p else 1.0)
            blk = w[a, c]
            for kk in range(k):
                row = blk[kk]
                sk = s[kk]
                for ll in range(k):
                    sk[ll] += coef * np.float64(row[ll])
    for kk in range(k):
        for ll in range(k):
            out_cov[kk, ll] = s[kk, ll] + s[ll, kk]
