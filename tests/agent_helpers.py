"""Helpers shared by the per-request agent test modules: uniform market traffic to train on,
and the float64 reference of LinearTS's per-request score moments."""

from __future__ import annotations

import numpy as np

from copyloop.envs.vector import CopyMarketVectorEnv


def uniform_traffic(market, seed: int, batches: int):  # type: ignore[no-untyped-def]
    """``batches`` batches of 512 uniform impressions (obs, actions, rewards, with ~10 % extra
    clicks so every variant has some) and the next observation."""
    env = CopyMarketVectorEnv(512, market=market)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        a = np.array([rng.choice(np.flatnonzero(m)) for m in obs["action_mask"]])
        nxt, r, _, _, _ = env.step(a)
        out.append((obs, a, np.maximum(r, (rng.random(512) < 0.1).astype(float))))
        obs = nxt
    return out, obs


def moments_reference(srv, u: np.ndarray, cand: np.ndarray):  # type: ignore[no-untyped-def]
    """The scores' mean and covariance from the float32 posterior, contracted in float64, and a
    bound on float32 rounding: ε·(|C₁| |M| |C₁|ᵀ) with |M| the contraction of |Σ| by |u|."""
    u1 = np.concatenate([[1.0], u.astype(np.float64)])
    c1 = np.concatenate([np.ones((cand.shape[0], 1)), cand.astype(np.float64)], axis=1)
    du1, dc1 = u1.size, c1.shape[1]
    cov = srv.cov.astype(np.float64).reshape(du1, dc1, du1, dc1)
    m = np.einsum("a,aicj,c->ij", u1, cov, u1)
    scale = np.abs(c1) @ np.einsum("a,aicj,c->ij", abs(u1), abs(cov), abs(u1)) @ np.abs(c1).T
    mean = (u1 @ srv.mean.astype(np.float64).reshape(du1, dc1)) @ c1.T
    return mean, c1 @ m @ c1.T, float(np.finfo(np.float32).eps) * scale
