"""The Thompson-sampling family, plus LinUCB.

Propensities: Thompson sampling has no closed form for the probability that a candidate wins
(for K > 2), so every TS agent here draws ``n_draws`` posterior samples per decision batch, finds
each sample's winner, and reports the winners' frequencies as ``action_probs``; the action itself
is the winner of one of those samples picked uniformly at random. The logged propensity is
therefore *exactly* the probability with which the agent chose — the Monte-Carlo error
(standard error ≤ 0.5/√n_draws, 0.044 at the default 128) is only the distance to idealised TS,
never a mismatch between what was done and what was logged. Draws use the policy's per-call
generator, so a decision replays exactly from a saved policy. The Gaussian-head agents can stop
early (``min_draws``): a row whose first draws all agree acts on that slot with probability 1,
which is again exactly what is done; only the distance to idealised TS grows (see
:class:`LinearTSPolicy`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.linalg import cho_solve, cholesky, solve_triangular
from scipy.optimize import minimize
from scipy.special import expit

from copyloop.agents.base import Policy
from copyloop.agents.features import (
    FEATURE_MAPS,
    ArmsByVariant,
    VariantIndex,
    candidate_block,
    features,
)
from copyloop.agents.request import gaussian_win_probs, kernels


def choose_from_draws(
    scores: npt.NDArray[np.floating], mask: npt.NDArray[np.bool_], rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Winner frequencies over posterior draws, and one winner per row.

    Args:
        scores: sampled scores, (B, K, M) — M posterior draws.
        mask: valid slots, (B, K).
        rng: generator for the draw each row acts on.

    Returns:
        (actions (B,), probs (B, K)); ``probs[b]`` is the distribution ``actions[b]`` was drawn
        from.
    """
    s, probs = masked_win_frequencies(scores, mask)
    b, _, m = s.shape
    pick = rng.integers(0, m, size=b)
    return s[np.arange(b), :, pick].argmax(axis=1).astype(np.int64), probs


def masked_win_frequencies(
    scores: npt.NDArray[np.floating], mask: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.float64]]:
    """The scores with invalid slots at −inf (B, K, M), and how often each slot wins (B, K).

    A draw's winner is its first maximal slot (``argmax``), the same rule the chosen action
    uses, so the frequencies are exactly the distribution the action is drawn from, ties
    included.
    """
    b, k, m = scores.shape
    s = scores if mask.all() else np.where(mask[:, :, None], scores, -np.inf)
    top = s == s.max(axis=1, keepdims=True)
    # Every draw has at least one maximal slot, so B·M maxima in all means no draw has a tie:
    # count the maxima per slot directly (a uint8 reduction over the contiguous draw axis is
    # ~2x faster than summing bools, and ~15x faster than argmax over the slot axis).
    if np.count_nonzero(top) == b * m:
        acc = np.uint16 if m < 2**16 else np.int64
        return s, np.add.reduce(top.view(np.uint8), axis=2, dtype=acc) / m
    winners = s.argmax(axis=1)  # (B, M)
    flat = (np.arange(b)[:, None] * k + winners).ravel()
    return s, np.bincount(flat, minlength=b * k).reshape(b, k) / m


_ROW_HASH = np.random.default_rng(20261122).integers(1, 2**62, size=4096, dtype=np.int64) | 1


def unique_rows(
    key: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
    """``np.unique(key, axis=0, return_inverse=True)`` via a 64-bit row hash (a 1-D sort instead
    of a lexicographic one); verified against the rows, with the exact method as fallback."""
    w = key.shape[1]
    if w <= _ROW_HASH.size:
        with np.errstate(over="ignore"):
            h = (key * _ROW_HASH[:w]).sum(axis=1)
        _, first, inv = np.unique(h, return_index=True, return_inverse=True)
        uniq = key[first]
        if np.array_equal(uniq[inv], key):  # no hash collision
            return uniq, inv.ravel()
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    return uniq, inv.ravel()


def _with_one(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``[1, x]`` along the last axis (the intercept of the feature maps), float32."""
    out = np.empty((*x.shape[:-1], x.shape[-1] + 1), np.float32)
    out[..., 0] = 1.0
    out[..., 1:] = x
    return out


def _check_draws(n_draws: int) -> None:
    if n_draws < 1:
        raise ValueError(f"`n_draws` must be >= 1, got {n_draws}")


class BernoulliTSPolicy(ArmsByVariant, Policy):
    """Beta-Bernoulli Thompson sampling per variant (by variant id where the request or log row
    names it, else by its features), optionally per user segment.

    Args:
        alpha: prior clicks (Beta α).
        beta: prior non-clicks (Beta β); the default prior mean is 1/51 ≈ 2 % CTR.
        discount: multiply all counts by this before each update (< 1 forgets old clicks,
            for drifting markets); 1 = no forgetting.
        segment_columns: ``(start, stop)`` of a one-hot segment block in the user features
            (``(0, 5)`` in the default market) to keep separate statistics per segment.
        n_draws: posterior draws per decision batch (see module docstring).

    Example:
        >>> pol = BernoulliTSPolicy(seed=0, segment_columns=(0, 5))
    """

    policy_id = "bernoulli_ts"

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 50.0,
        discount: float = 1.0,
        segment_columns: tuple[int, int] | list[int] | None = None,
        n_draws: int = 128,
        *,
        seed: int | None = None,
        exploration_floor: float = 0.0,
    ) -> None:
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"`alpha` and `beta` must be > 0, got {alpha}, {beta}")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"`discount` must be in (0, 1], got {discount}")
        _check_draws(n_draws)
        super().__init__(seed=seed, exploration_floor=exploration_floor)
        self.alpha = alpha
        self.beta = beta
        self.discount = discount
        self.segment_columns = None if segment_columns is None else tuple(segment_columns)
        self.n_draws = n_draws
        self._index = VariantIndex()
        self._clicks = np.zeros((1, 0))
        self._shows = np.zeros((1, 0))

    def _keys(
        self, obs: dict[str, npt.NDArray[Any]], mask: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        ids = self._arm_ids(obs, mask)
        if self.segment_columns is None:
            seg = np.zeros(mask.shape[0], np.int64)
        else:
            a, b = self.segment_columns
            seg = np.asarray(obs["user"])[:, a:b].argmax(axis=1).astype(np.int64)
        n_seg = (
            1 if self.segment_columns is None else self.segment_columns[1] - self.segment_columns[0]
        )
        n_var = len(self._index)
        if self._clicks.shape != (n_seg, n_var):
            grow = np.zeros((n_seg, n_var))
            old = self._clicks.shape
            grow[: old[0], : old[1]] = self._clicks[:n_seg, :n_var]
            shows = np.zeros((n_seg, n_var))
            shows[: old[0], : old[1]] = self._shows[:n_seg, :n_var]
            self._clicks, self._shows = grow, shows
        return seg, ids

    def _decide(self, obs, mask, rng):  # type: ignore[no-untyped-def]
        seg, ids = self._keys(obs, mask)
        # Rows with the same segment and candidate set share one set of posterior draws.
        key = np.concatenate([seg[:, None], ids], axis=1)
        uniq, inv = unique_rows(key)
        useg, uids = uniq[:, 0], uniq[:, 1:]
        safe = np.maximum(uids, 0)
        a = self.alpha + self._clicks[useg[:, None], safe]
        b = self.beta + self._shows[useg[:, None], safe] - self._clicks[useg[:, None], safe]
        draws = rng.beta(a[:, :, None], b[:, :, None], size=(*uids.shape, self.n_draws))
        s, g_probs = masked_win_frequencies(draws, uids >= 0)
        # Each row acts on its own uniformly chosen draw of its group.
        pick = rng.integers(0, self.n_draws, size=inv.size)
        return s[inv, :, pick].argmax(axis=1).astype(np.int64), g_probs[inv]

    supports_weights = True

    def _learn(self, obs, actions, rewards):  # type: ignore[no-untyped-def]
        self._learn_weighted(obs, actions, rewards, np.ones(actions.size))

    def _learn_weighted(self, obs, actions, rewards, weights):  # type: ignore[no-untyped-def]
        mask = obs["action_mask"].astype(bool)
        seg, ids = self._keys(obs, mask)
        chosen = ids[np.arange(actions.size), actions]
        if self.discount < 1.0:
            self._clicks *= self.discount
            self._shows *= self.discount
        np.add.at(self._clicks, (seg, chosen), weights * rewards)
        np.add.at(self._shows, (seg, chosen), weights)

    def _get_state(self) -> dict[str, npt.NDArray[Any]]:
        return {"clicks": self._clicks, "shows": self._shows, **self._index.state()}

    def _set_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        self._clicks = np.asarray(state["clicks"], float)
        self._shows = np.asarray(state["shows"], float)
        self._index.load_state(state)


class _GaussianHeadTS(Policy):
    """Shared machinery: a Gaussian posterior over a linear head on features φ (B, K, d)."""

    def __init__(
        self,
        features: str = "interaction",
        n_draws: int = 128,
        min_draws: int | None = None,
        *,
        seed: int | None = None,
        exploration_floor: float = 0.0,
    ) -> None:
        if features not in FEATURE_MAPS:
            raise ValueError(f"`features` must be one of {FEATURE_MAPS}, got {features!r}")
        _check_draws(n_draws)
        if min_draws is not None and not 1 <= min_draws <= n_draws:
            raise ValueError(f"`min_draws` must be in [1, n_draws={n_draws}], got {min_draws}")
        super().__init__(seed=seed, exploration_floor=exploration_floor)
        self.features = features
        self.n_draws = n_draws
        self.min_draws = min_draws

    def _phi(self, obs: dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
        return features(obs, self.features)

    def _draw_heads(self, d: int, m: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
        """(m, d) posterior draws of the head's weights."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _draw_heads (its posterior draws)"
        )

    def _scorer(
        self, obs: dict[str, npt.NDArray[Any]]
    ) -> tuple[int, Callable[[npt.NDArray[np.float32], Any], npt.NDArray[np.float32]]]:
        """(head width d, ``score(theta (M, d), rows)`` → sampled scores (R, K, M) of ``rows``)."""
        if type(self)._phi is not _GaussianHeadTS._phi:  # a learned representation
            phi = self._phi(obs)
            k, d = phi.shape[1:]

            def score_phi(theta: npt.NDArray[np.float32], rows: Any) -> npt.NDArray[np.float32]:
                p = phi[rows]
                return (p.reshape(-1, d) @ theta.T).reshape(p.shape[0], k, theta.shape[0])

            return d, score_phi
        c1 = _with_one(candidate_block(obs))  # (B, K, dc + 1)
        k, dc1 = c1.shape[1:]
        if self.features == "candidate":

            def score_c(theta: npt.NDArray[np.float32], rows: Any) -> npt.NDArray[np.float32]:
                c = c1[rows]
                return (c.reshape(-1, dc1) @ theta.T).reshape(c.shape[0], k, theta.shape[0])

            return dc1, score_c
        u1 = _with_one(np.asarray(obs["user"], np.float32))  # (B, du + 1)
        du1 = u1.shape[1]
        # One candidate set for the whole batch (e.g. a batch of one campaign's traffic)?
        shared = bool((c1 == c1[:1]).all())

        def score_uc(theta: npt.NDArray[np.float32], rows: Any) -> npt.NDArray[np.float32]:
            # φ = u1 ⊗ c1, so φ·θ = u1ᵀ Θ c1 with Θ = θ as (du+1, dc+1): never build φ
            # (B, K, d). ~K·du/(du + K) fewer flops (5x at K = du = 10) than scoring φ.
            m = theta.shape[0]
            u = u1[rows]
            r = u.shape[0]
            if shared:  # contract Θ with the candidates once: (du+1, K, M), then one gemm
                h = np.einsum("mij,kj->ikm", theta.reshape(m, du1, dc1), c1[0])
                return (u @ h.reshape(du1, k * m)).reshape(r, k, m)
            # else contract the user side per row and draw (R, M, dc+1), then the candidates
            w = theta.reshape(m, du1, dc1).transpose(1, 0, 2).reshape(du1, m * dc1)
            g = (u @ w).reshape(r, m, dc1)
            return np.matmul(c1[rows], g.transpose(0, 2, 1))  # (R, K, M)

        return du1 * dc1, score_uc

    def _decide(self, obs, mask, rng):  # type: ignore[no-untyped-def]
        d, score = self._scorer(obs)
        theta = self._draw_heads(d, self.n_draws, rng).astype(np.float32)  # (M, d)
        m0 = self.min_draws
        if m0 is None or m0 >= self.n_draws:
            return choose_from_draws(score(theta, slice(None)), mask, rng)
        # Early stop: rows whose first m0 draws all pick one slot act on it (probability 1:
        # exactly what is done); the others are scored on all n_draws draws.
        s0, probs = masked_win_frequencies(score(theta[:m0], slice(None)), mask)
        actions = probs.argmax(axis=1)
        open_rows = np.flatnonzero(probs.max(axis=1) < 1.0)
        if open_rows.size:
            full = np.concatenate([s0[open_rows], score(theta[m0:], open_rows)], axis=2)
            a_open, p_open = choose_from_draws(full, mask[open_rows], rng)
            actions[open_rows] = a_open
            probs[open_rows] = p_open
        return actions.astype(np.int64), probs

    def _chosen_phi(
        self, obs: dict[str, npt.NDArray[Any]], actions: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """φ of the chosen candidates only, (B, d) — learning needs no other slot."""
        b = actions.size
        chosen = candidate_block(obs)[np.arange(b), actions]
        sub = {"user": obs["user"], "candidates": chosen, "action_mask": np.ones((b, 1), np.int8)}
        return self._phi(sub)[:, 0].astype(np.float64)


class LinearTSPolicy(_GaussianHeadTS):
    """Linear Thompson sampling (Agrawal & Goyal 2013) on ``φ(user, candidate)``.

    Posterior ``θ ~ N(A⁻¹b, v² A⁻¹)`` with ``A = λI + Σ φφᵀ``, ``b = Σ r φ``; one model shared
    by all variants, so what is learned about a kind of copy transfers to new copy.

    Args:
        noise: ``v``, the posterior scale (exploration); clicks at a few % have a residual
            standard deviation of ~0.15.
        reg: ``λ``, the ridge prior precision.
        features: ``"interaction"`` (user × copy) or ``"candidate"``.
        n_draws: posterior draws per decision batch.
        min_draws: early stop (None = off): every row is first scored on this many draws;
            rows whose draws all pick one slot act on it with probability 1 (exactly what is
            done), only the others are scored on all ``n_draws``. Cheaper when the posterior
            is concentrated; the distance to idealised TS for a stopped row is then one-sided:
            with 95 % confidence its slot's TS probability is ≥ 0.05^(1/min_draws) (0.91 at
            32, 0.95 at 64), against a standard error ≤ 0.5/√n_draws for the others.
    """

    policy_id = "linear_ts"

    def __init__(
        self,
        noise: float = 0.15,
        reg: float = 1.0,
        features: str = "interaction",
        n_draws: int = 128,
        min_draws: int | None = None,
        *,
        seed: int | None = None,
        exploration_floor: float = 0.0,
    ) -> None:
        if noise <= 0 or reg <= 0:
            raise ValueError(f"`noise` and `reg` must be > 0, got {noise}, {reg}")
        super().__init__(
            features, n_draws, min_draws, seed=seed, exploration_floor=exploration_floor
        )
        self.noise = noise
        self.reg = reg
        self._A: npt.NDArray[np.float64] | None = None
        self._b: npt.NDArray[np.float64] | None = None
        self._chol: npt.NDArray[np.float64] | None = None
        self._mean: npt.NDArray[np.float64] | None = None
        self._srv: _Serving | None = None
        self._srv_lock = threading.Lock()
        self._pending: list[npt.NDArray[np.float64]] = []

    def _init(self, d: int) -> None:
        if self._A is None:
            self._A = self.reg * np.eye(d)
            self._b = np.zeros(d)

    def _fold(self) -> None:
        """Add the buffered one-row updates to A (one rank-k product)."""
        if self._pending and self._A is not None:
            p = np.vstack(self._pending)
            self._A += p.T @ p
        self._pending = []

    def _posterior(self, d: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        # Re-factorised once per update, not updated in place: a rank-k Cholesky update costs
        # ~k·d² flops against d³/3 for a fresh factorisation, so with batches of k ≥ d/3 rows
        # (512 rows, d = 121 here: 7.5M against 0.6M flops) refactorising is the cheaper one.
        self._init(d)
        self._fold()
        assert self._A is not None and self._b is not None
        if self._chol is None or self._mean is None:
            self._chol = cholesky(self._A, lower=True, check_finite=False)
            self._mean = cho_solve((self._chol, True), self._b, check_finite=False)
        return self._mean, self._chol

    def _draw_heads(self, d, m, rng):  # type: ignore[no-untyped-def]
        mean, chol = self._posterior(d)
        eps = rng.standard_normal((d, m))
        # L Lᵀ = A  ⇒  L⁻ᵀ ε ~ N(0, A⁻¹)
        z = solve_triangular(chol, eps, lower=True, trans="T", check_finite=False)
        return mean[None, :] + self.noise * z.T

    supports_weights = True

    def _learn(self, obs, actions, rewards):  # type: ignore[no-untyped-def]
        self._learn_weighted(obs, actions, rewards, np.ones(actions.size))

    def _learn_weighted(self, obs, actions, rewards, weights):  # type: ignore[no-untyped-def]
        self._learn_x(self._chosen_phi(obs, actions), rewards, weights)

    def _learn_one(self, user, cand, variant_id, reward, weight):  # type: ignore[no-untyped-def]
        if type(self)._phi is not _GaussianHeadTS._phi:  # a learned representation
            super()._learn_one(user, cand, variant_id, reward, weight)
            return
        x = _row_phi(self.features, user, cand)
        w = None if weight is None else np.array([weight])
        self._learn_x(x[None, :], np.array([reward]), w)

    def _learn_x(
        self,
        x: npt.NDArray[np.float64],
        rewards: npt.NDArray[np.float64],
        weights: npt.NDArray[np.float64] | None,
    ) -> None:
        """The one learning step: rows φ (B, d) with rewards (B,) and weights (B,) or None (1)."""
        self._init(x.shape[1])
        assert self._A is not None and self._b is not None
        if weights is None:
            self._b += x.T @ rewards if x.shape[0] > 1 else rewards[0] * x[0]
        else:
            self._b += x.T @ (weights * rewards)
            if not np.all(weights == 1.0):
                x = x * np.sqrt(weights)[:, None]
                rewards = rewards * np.sqrt(weights)
        if self._srv is not None and x.shape[0] <= _RANK_ONE_ROWS:
            # A is the truth for saves and refactorisations; a handful of rows waits in a buffer
            # (a d×d pass per row would dominate a one-row update) and is folded in at once
            self._pending.append(x)
            if len(self._pending) >= _FOLD_EVERY:
                self._fold()
        else:
            self._fold()
            self._A += x.T @ x  # one operand transposed: BLAS syrk, half the flops of a gemm
        self._chol = self._mean = None
        # The per-request posterior follows a few rows by rank-one (Sherman-Morrison) updates,
        # O(d²) each; a big batch (or an old cache) is refactorised from A on the next decide.
        srv = self._srv
        if srv is not None and x.shape[0] <= _RANK_ONE_ROWS and srv.age < _REFRESH_EVERY:
            srv.rank_one(x, rewards, self.noise**2)
        elif srv is not None:
            # a big batch, or float32 drift to reset: refactorise now, in the update, so the
            # next decision never pays for it
            self._srv = None
            self._serving(x.shape[1])

    def _serving(self, d: int) -> _Serving:
        """The per-request posterior (mean, v²Σ in float32), from A and b when stale."""
        srv = self._srv
        if srv is not None:
            return srv
        with self._srv_lock:
            if self._srv is None:
                self._init(d)
                self._fold()
                assert self._A is not None and self._b is not None
                inv = _spd_inverse(self._A)
                mean = inv @ self._b
                inv *= self.noise**2
                cov = np.ascontiguousarray(inv, dtype=np.float32)  # C order:
                self._srv = _Serving(mean.astype(np.float32), cov, 0)  # decide reshapes views
            return self._srv

    def project(self, candidate_lists: Iterable[Sequence[str]], store: Any = None) -> int:
        """Precompute, for each candidate list, the tables a decision on it reads instead of
        the d×d posterior; returns how many lists got one.

        With interaction features a request's scores are ``(u ⊗ c_k)·θ``: their covariance is
        ``Σ_ac u_a u_c C₁ Σ_ac C₁ᵀ`` over the user's nonzeros, so ``C₁ Σ_ac C₁ᵀ`` (K×K per pair
        of user features) can be formed once per candidate list and posterior. A decision
        then reads ~30 KB of tables instead of ~1.2 MB of Σ: on the default market under
        load the moments took ~110 µs per request, memory-bound in a cache the HTTP stack and
        the store share. Forming the tables costs ~0.25 ms per list (30 ms for 120 campaigns,
        one BLAS thread) — a service's learner does it for every campaign's active list when it
        hands a model over (:func:`copyloop.serve.learner.prepared`), off the request path.

        Decisions with and without a table agree to float rounding (the sums run in another
        order); tables are dropped when the posterior moves (:meth:`learn_one`'s rank-one
        updates) and belong to this copy's posterior only. Lists of unknown ids raise as
        :meth:`decide`; other feature kinds or a learned representation: nothing to do (0).
        """
        st = store if store is not None else self._store
        if (
            st is None
            or self.features != "interaction"
            or type(self)._phi is not _GaussianHeadTS._phi
        ):
            return 0
        known = self._widths
        if known is None:
            return 0
        du1, dc1 = known["user"] + 1, known["candidate"] + 1
        d = du1 * dc1
        cands = [st.request(ids)[1] for ids in candidate_lists]  # unknown ids: raise
        c1s = [_with_one(cand) for cand in cands]
        srv = self._serving(d)
        with srv.lock:  # Σ[(a, i), x] as (dc1, du1, d): C₁ Σ_a· for many lists is one GEMM
            sig = np.ascontiguousarray(srv.cov.reshape(du1, dc1, d).transpose(1, 0, 2))
            mu = srv.mean.reshape(du1, dc1).astype(np.float64)
            stale = srv.projected
        tables = dict(stale)
        # [(list, k), a, (c, j)]: only c ≥ a is formed (the kernel reads the upper blocks),
        # half the work; the rest stays 0. One buffer for every chunk of ≤ 256 rows (~30 MB).
        most = min(max([256, *(c.shape[0] for c in c1s)]), sum(c.shape[0] for c in c1s))
        buf = np.zeros((most, du1, d), np.float32)
        start = 0
        while start < len(c1s):
            stop, rows = start, 0
            while stop < len(c1s) and (rows == 0 or rows + c1s[stop].shape[0] <= 256):
                rows += c1s[stop].shape[0]
                stop += 1
            chunk = np.concatenate(c1s[start:stop])
            t = buf[:rows]
            for a in range(du1):
                np.matmul(chunk, sig[:, a, a * dc1 :], out=t[:, a, a * dc1 :])
            off = 0
            for c1, cand in zip(c1s[start:stop], cands[start:stop], strict=True):
                k = c1.shape[0]
                w = t[off : off + k].reshape(k * du1 * du1, dc1) @ c1.T  # [k, a, c, l]
                # laid out [a, c, k, l]: a request's blocks (a, c ≥ a) are runs of memory
                w = np.ascontiguousarray(w.reshape(k, du1, du1, k).transpose(1, 2, 0, 3))
                tables[id(cand)] = _Projected(cand, w, mu @ c1.T.astype(np.float64))
                off += k
            start = stop
        n = len(c1s)
        with srv.lock:
            if srv.projected is stale:  # Σ did not move meanwhile (else the tables are stale)
                srv.projected = tables
            else:
                n = 0
        z = np.zeros(1)  # compiled (or loaded from numba's cache) here, not by a request
        _projected_kernel()(np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1)),
                            np.ones(1, np.float32), z, np.zeros((1, 1)))  # fmt: skip
        return n

    def _decide_request(self, user, cand, key, ids):  # type: ignore[no-untyped-def]
        if type(self)._phi is not _GaussianHeadTS._phi:  # a learned representation
            return super()._decide_request(user, cand, key, ids)
        mean, cov = _request_moments(self, self._serving, user, cand)
        return gaussian_win_probs(mean, cov)

    def _get_state(self) -> dict[str, npt.NDArray[Any]]:
        if self._A is None:
            return {}
        self._fold()
        state: dict[str, npt.NDArray[Any]] = {"A": self._A, "b": self._b}  # type: ignore[dict-item]
        srv = self._srv
        if srv is not None:  # the serving posterior too: a snapshot serves without inverting A
            with srv.lock:
                state.update(srv_mean=srv.mean.copy(), srv_cov=srv.cov.copy())
            state["srv_age"] = np.array(srv.age)
        return state

    def _set_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        if "A" in state:
            self._A, self._b = np.asarray(state["A"], float), np.asarray(state["b"], float)
            self._chol = self._mean = None
            self._srv = None
            self._pending = []
            if "srv_cov" in state:
                self._srv = _Serving(
                    np.asarray(state["srv_mean"], np.float32),
                    np.ascontiguousarray(state["srv_cov"], np.float32),
                    int(state["srv_age"]),
                )


class LogisticTSPolicy(_GaussianHeadTS):
    """Logistic Thompson sampling with a diagonal Laplace approximation, updated in batches
    (Chapelle & Li 2011, Algorithm 3).

    Each update finds the MAP weights under the current Gaussian prior ``N(m, diag(1/q))`` by
    L-BFGS, then sets ``m ← w`` and ``q ← q + Σ x² p(1 − p)``.

    Args:
        reg: prior precision of every weight before any data.
        alpha: scale of the posterior standard deviation when sampling (exploration).
        features: ``"interaction"`` (user × copy) or ``"candidate"``.
        n_draws: posterior draws per decision batch.
        max_iter: L-BFGS iterations per batch update.
        min_draws: early stop, as in :class:`LinearTSPolicy`.
    """

    policy_id = "logistic_ts"

    def __init__(
        self,
        reg: float = 1.0,
        alpha: float = 1.0,
        features: str = "interaction",
        n_draws: int = 128,
        max_iter: int = 20,
        min_draws: int | None = None,
        *,
        seed: int | None = None,
        exploration_floor: float = 0.0,
    ) -> None:
        if max_iter < 1:
            raise ValueError(f"`max_iter` must be >= 1, got {max_iter}")
        if reg <= 0 or alpha <= 0:
            raise ValueError(f"`reg` and `alpha` must be > 0, got {reg}, {alpha}")
        super().__init__(
            features, n_draws, min_draws, seed=seed, exploration_floor=exploration_floor
        )
        self.reg = reg
        self.alpha = alpha
        self.max_iter = max_iter
        self._m: npt.NDArray[np.float64] | None = None
        self._q: npt.NDArray[np.float64] | None = None
        self._lsrv: _Serving | None = None

    def _init(self, d: int) -> None:
        if self._m is None:
            self._m = np.zeros(d)
            self._q = np.full(d, self.reg)

    def _draw_heads(self, d, m, rng):  # type: ignore[no-untyped-def]
        self._init(d)
        assert self._m is not None and self._q is not None
        return self._m[None, :] + self.alpha * rng.standard_normal((m, d)) / np.sqrt(self._q)

    def _moments(self, d: int) -> _Serving:
        """The per-request posterior (mean, α²/q in float32), kept until the next update."""
        srv = self._lsrv
        if srv is None:
            self._init(d)
            m, q = self._m, self._q
            assert m is not None and q is not None
            srv = _Serving(m.astype(np.float32), (self.alpha**2 / q).astype(np.float32), 0)
            self._lsrv = srv
        return srv

    def _decide_request(self, user, cand, key, ids):  # type: ignore[no-untyped-def]
        mean, cov = _request_moments(self, self._moments, user, cand, diagonal=True)
        return gaussian_win_probs(mean, cov)

    def _learn_one(self, user, cand, variant_id, reward, weight):  # type: ignore[no-untyped-def]
        x = _row_phi(self.features, user, cand)
        self._init(x.shape[0])
        assert self._m is not None and self._q is not None
        self._m, self._q = _logistic_row_update(self._m, self._q, x, 1.0 if reward > 0.5 else -1.0)
        self._lsrv = None

    def _learn(self, obs, actions, rewards):  # type: ignore[no-untyped-def]
        x = self._chosen_phi(obs, actions)
        self._init(x.shape[1])
        self._lsrv = None
        m, q = self._m, self._q
        assert m is not None and q is not None
        y = 2.0 * (rewards > 0.5) - 1.0
        if x.shape[0] <= _RANK_ONE_ROWS:
            # Row by row the MAP is exact in one dimension: under the prior N(m, diag(1/q)) the
            # one-row optimum lies on m + s·x/q, so a few Newton steps on s replace L-BFGS.
            for xi, yi in zip(x, y, strict=True):
                m, q = _logistic_row_update(m, q, xi, float(yi))
            self._m, self._q = m, q
            self._lsrv = None
            return

        def loss(w: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
            z = y * (x @ w)
            nll = np.logaddexp(0.0, -z).sum()
            grad = q * (w - m) - x.T @ (y * expit(-z))
            return float(0.5 * np.sum(q * (w - m) ** 2) + nll), grad

        # A few quasi-Newton steps from the prior mean suffice for one batch (the prior is
        # already close); more buy little and cost linearly.
        w = minimize(loss, m, jac=True, method="L-BFGS-B", options={"maxiter": self.max_iter}).x
        p = expit(x @ w)
        self._m = w
        self._q = q + (x**2).T @ (p * (1.0 - p))
        self._lsrv = None

    def _get_state(self) -> dict[str, npt.NDArray[Any]]:
        return {} if self._m is None else {"m": self._m, "q": self._q}  # type: ignore[dict-item]

    def _set_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        if "m" in state:
            self._m, self._q = np.asarray(state["m"], float), np.asarray(state["q"], float)
            self._lsrv = None


class NeuralLinearTSPolicy(LinearTSPolicy):
    """Neural-linear Thompson sampling (Riquelme, Tucker & Snoek 2018).

    A small MLP learns a representation of (user, candidate) from all observed rewards; a
    Bayesian linear head on that representation carries the uncertainty and is sampled like
    :class:`LinearTSPolicy`. Every ``retrain_every`` updates the MLP is retrained on the buffer
    and the head's posterior is recomputed from the whole buffer in the new representation.

    Args:
        hidden: widths of the MLP's hidden layers; the last is the representation size.
        retrain_every: updates between retrainings.
        epochs: passes over the buffer per retraining.
        buffer_size: most recent observations kept.
        lr: Adam learning rate.
        noise, reg, n_draws, min_draws: as in :class:`LinearTSPolicy`.
    """

    policy_id = "neural_linear_ts"
    supports_weights = False

    def __init__(
        self,
        hidden: tuple[int, ...] | list[int] = (64, 32),
        retrain_every: int = 10,
        epochs: int = 2,
        buffer_size: int = 100_000,
        lr: float = 3e-3,
        noise: float = 0.15,
        reg: float = 1.0,
        n_draws: int = 128,
        min_draws: int | None = None,
        *,
        seed: int | None = None,
        exploration_floor: float = 0.0,
    ) -> None:
        if not hidden or min(hidden) < 1:
            raise ValueError(f"`hidden` must be positive layer widths, got {hidden}")
        if retrain_every < 1 or epochs < 1 or buffer_size < 1:
            raise ValueError("`retrain_every`, `epochs` and `buffer_size` must be >= 1")
        super().__init__(
            noise,
            reg,
            "candidate",
            n_draws,
            min_draws,
            seed=seed,
            exploration_floor=exploration_floor,
        )
        del self.features  # the representation is learned; not a constructor argument here
        self.hidden = tuple(hidden)
        self.retrain_every = retrain_every
        self.epochs = epochs
        self.buffer_size = buffer_size
        self.lr = lr
        self._net: Any = None
        self._buf_x = np.zeros((0, 0), np.float32)
        self._buf_r = np.zeros(0, np.float32)
        self._updates = 0

    def _raw(self, obs: dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
        c = candidate_block(obs)
        u = np.asarray(obs["user"], np.float32)
        return np.concatenate([np.broadcast_to(u[:, None, :], (*c.shape[:2], u.shape[1])), c], 2)

    def _build(self, n_in: int) -> Any:
        import torch

        torch.manual_seed(self._entropy % 2**31)
        layers: list[Any] = []
        width = n_in
        for h in self.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        body = torch.nn.Sequential(*layers)
        head = torch.nn.Linear(width, 1)
        return torch.nn.ModuleDict({"body": body, "head": head})

    def _repr(self, raw: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        import torch

        if self._net is None:
            self._net = self._build(raw.shape[-1])
        with torch.no_grad():
            z = self._net["body"](
                torch.from_numpy(np.ascontiguousarray(raw.reshape(-1, raw.shape[-1])))
            )
        z_np = z.numpy().reshape(*raw.shape[:-1], -1)
        ones = np.ones((*z_np.shape[:-1], 1), np.float32)
        return np.concatenate([ones, z_np], axis=-1)

    def _phi(self, obs: dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
        return self._repr(self._raw(obs))

    def _learn(self, obs, actions, rewards):  # type: ignore[no-untyped-def]
        raw = self._raw(obs)[np.arange(actions.size), actions]
        if self._buf_x.size == 0:
            self._buf_x = raw.copy()
            self._buf_r = rewards.astype(np.float32)
        else:
            self._buf_x = np.concatenate([self._buf_x, raw])[-self.buffer_size :]
            self._buf_r = np.concatenate([self._buf_r, rewards.astype(np.float32)])[
                -self.buffer_size :
            ]
        self._updates += 1
        if self._updates % self.retrain_every == 0:
            self._retrain()
            z = self._repr(self._buf_x).astype(np.float64)
            self._A = self.reg * np.eye(z.shape[1]) + z.T @ z
            self._b = z.T @ self._buf_r.astype(np.float64)
            self._chol = self._mean = None
        else:
            super()._learn(obs, actions, rewards)

    def _retrain(self) -> None:
        import torch

        if self._net is None:
            self._net = self._build(self._buf_x.shape[1])
        net = self._net
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        x = torch.from_numpy(self._buf_x)
        r = torch.from_numpy(self._buf_r)
        gen = torch.Generator().manual_seed(int(self._entropy % 2**31) + self._updates)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        for _ in range(self.epochs):
            perm = torch.randperm(x.shape[0], generator=gen)
            for i in range(0, x.shape[0], 512):
                idx = perm[i : i + 512]
                opt.zero_grad()
                logit = net["head"](net["body"](x[idx])).squeeze(-1)
                loss_fn(logit, r[idx]).backward()
                opt.step()

    def _get_state(self) -> dict[str, npt.NDArray[Any]]:
        state = dict(super()._get_state())
        state.update(
            {"buf_x": self._buf_x, "buf_r": self._buf_r, "updates": np.array(self._updates)}
        )
        if self._net is not None:
            state.update(
                {f"net.{k}": v.detach().numpy() for k, v in self._net.state_dict().items()}
            )
        return state

    def _set_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        import torch

        super()._set_state(state)
        self._buf_x = np.asarray(state["buf_x"], np.float32)
        self._buf_r = np.asarray(state["buf_r"], np.float32)
        self._updates = int(state["updates"])
        net_state = {
            k[4:]: torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith("net.")
        }
        if net_state:
            n_in = net_state["body.0.weight"].shape[1]
            self._net = self._build(int(n_in))
            self._net.load_state_dict(net_state)


class LinUCBPolicy(_GaussianHeadTS):
    """LinUCB (Li et al. 2010) on ``φ(user, candidate)`` with one shared model:
    score ``φ·θ̂ + α √(φᵀA⁻¹φ)``. Deterministic (ties split), so its propensities are 1 —
    use ``exploration_floor`` when its logs will feed off-policy evaluation.

    Args:
        alpha: width of the confidence bonus.
        reg: ridge prior precision.
        features: ``"interaction"`` or ``"candidate"``.
    """

    policy_id = "linucb"

    def __init__(
        self,
        alpha: float = 0.1,
        reg: float = 1.0,
        features: str = "interaction",
        *,
        seed: int | None = None,
        exploration_floor: float = 0.0,
    ) -> None:
        if alpha < 0 or reg <= 0:
            raise ValueError(f"`alpha` must be >= 0 and `reg` > 0, got {alpha}, {reg}")
        super().__init__(features, 1, seed=seed, exploration_floor=exploration_floor)
        del self.n_draws, self.min_draws
        self.alpha = alpha
        self.reg = reg
        self._lin = LinearTSPolicy(noise=1.0, reg=reg, features=features)
        self._inv: npt.NDArray[np.float64] | None = None

    def _decide(self, obs, mask, rng):  # type: ignore[no-untyped-def]
        phi = self._phi(obs)
        b, k, d = phi.shape
        mean, chol = self._lin._posterior(d)
        if self._inv is None:
            self._inv = cho_solve((chol, True), np.eye(d))
        flat = phi.reshape(b * k, d).astype(np.float64)
        width = np.sqrt(np.maximum(np.einsum("nd,nd->n", flat @ self._inv, flat), 0.0))
        score = np.where(mask, (flat @ mean + self.alpha * width).reshape(b, k), -np.inf)
        best = mask & (score >= score.max(axis=1, keepdims=True))
        probs = best / best.sum(axis=1, keepdims=True)
        from copyloop.agents.base import sample_from

        return sample_from(probs, rng), probs

    def _decide_request(self, user, cand, key, ids):  # type: ignore[no-untyped-def]
        mean, var = _request_moments(self, self._lin._serving, user, cand, only_diagonal=True)
        score = mean + self.alpha * np.sqrt(np.maximum(var, 0.0))
        best = score >= score.max()
        return best / best.sum()

    def _learn(self, obs, actions, rewards):  # type: ignore[no-untyped-def]
        self._lin._learn(obs, actions, rewards)
        self._inv = None

    def _learn_one(self, user, cand, variant_id, reward, weight):  # type: ignore[no-untyped-def]
        self._lin._learn_one(user, cand, variant_id, reward, weight)
        self._inv = None

    def _get_state(self) -> dict[str, npt.NDArray[Any]]:
        return self._lin._get_state()

    def _set_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        self._lin._set_state(state)
        self._inv = None


_RANK_ONE_ROWS = 4
"""Updates of at most this many rows keep the per-request posterior by rank-one updates."""
_REFRESH_EVERY = 2048
"""Rank-one updates before the float32 per-request posterior is recomputed from A (drift)."""
_FOLD_EVERY = 256
"""Buffered one-row updates folded into A together (one pass over A per 256 rows)."""


@dataclass
class _Serving:
    """A per-request posterior: mean (d,) and covariance (d, d) or its diagonal (d,), float32.

    Rank-one updates change ``mean`` and ``cov`` in place under ``lock``; a decision reads them
    under the same lock, so it sees one posterior whole (and the policy's version with it).
    """

    mean: npt.NDArray[np.float32]
    cov: npt.NDArray[np.float32]
    age: int
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    projected: dict[int, _Projected] = field(default_factory=dict, repr=False, compare=False)
    """Tables of :meth:`LinearTSPolicy.project`, by the id of the candidate array they are
    for; emptied whenever ``cov`` changes."""

    def rank_one(self, x: npt.NDArray[np.float64], r: npt.NDArray[np.float64], v2: float) -> None:
        """Recursive least squares, row by row, in place: C ← C − Cx xᵀC/(v² + xᵀCx),
        μ ← μ + k(r − xᵀμ) with C = v²Σ and k = Cx/(v² + xᵀCx). One compiled call
        (:func:`copyloop.agents._kernels.rls_rows`: two passes over C per row, no d×d
        temporaries, releasing the GIL)."""
        rls_rows = kernels().rls_rows
        with self.lock:
            rls_rows(self.cov, self.mean, x, r, v2)
            self.age += x.shape[0]
            self.projected = {}  # Σ moved: the tables are stale


@dataclass(frozen=True)
class _Projected:
    """One candidate list's view of a serving posterior (see :meth:`LinearTSPolicy.project`):
    ``w[a, c, k, l] = c1_k Σ_ac c1_lᵀ`` for c ≥ a, 0 below (du1, du1, K, K) float32, and
    ``cm[a, k] = c1_k · μ_a`` (du1, K) float64, for the candidate array ``cand`` (kept: the
    table is found by its id)."""

    cand: npt.NDArray[np.float32]
    w: npt.NDArray[np.float32]
    cm: npt.NDArray[np.float64]


_LAST_C1: tuple[npt.NDArray[np.float32] | None, npt.NDArray[np.float32] | None] = (None, None)


def _spd_inverse(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A⁻¹ of a symmetric positive-definite ``a`` (d, d), exactly symmetric, without holding
    the GIL (a service's learner thread builds the serving posterior while its event loop
    serves): Cholesky inversion in a compiled kernel
    (:func:`copyloop.agents._kernels.spd_inverse`: 28 ms against ``np.linalg.inv``'s 82 ms at
    d = 986, one BLAS thread); ``np.linalg.inv`` (LU, which releases the GIL too) where ``a``
    is not numerically positive definite."""
    inv = np.array(a, dtype=np.float64, order="C")
    if kernels().spd_inverse(inv) == 0:
        return inv
    inv = np.asarray(np.linalg.inv(a), np.float64)
    inv += inv.T  # LU leaves float asymmetry; Σ is symmetric
    inv *= 0.5
    return inv


_PROJECTED: Any = None


def _projected_kernel() -> Any:
    """:func:`copyloop.agents._projected.projected_moments`, imported (and compiled, or loaded
    from numba's cache) on first use."""
    global _PROJECTED
    if _PROJECTED is None:
        from copyloop.agents._projected import projected_moments

        _PROJECTED = projected_moments
    return _PROJECTED


def _request_c1(cand: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``[1, c]`` of a request's candidates; the store hands out one read-only array per
    candidate list, so the last one's is kept (one tuple, swapped whole: thread-safe)."""
    global _LAST_C1
    last, c1 = _LAST_C1
    if last is cand and c1 is not None:
        return c1
    c1 = _with_one(cand)
    if not cand.flags.writeable:
        c1.setflags(write=False)
        _LAST_C1 = (cand, c1)
    return c1


_DENSE_USER = (4, 5)
"""A user vector with more than this fraction (4/5) of nonzeros in ``[1, u]`` takes the dense
BLAS pass over Σ; fewer take :func:`copyloop.agents._kernels.request_moments`. At the default
market's d = 29 × 34 (1 BLAS thread; warm cache / Σ evicted): 18 nonzeros 45 / ~150 µs against
BLAS's 63 / ~190 µs, 24 nonzeros 63 / ~225 µs against 63 / ~228 µs, all 29 76 / ~240 µs
against 63 / ~180 µs."""


def _request_moments(
    pol: _GaussianHeadTS,
    serving: Callable[[int], _Serving],
    user: npt.NDArray[np.float32],
    cand: npt.NDArray[np.float32],
    *,
    diagonal: bool = False,
    only_diagonal: bool = False,
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Mean (K,) and covariance (K, K) — or variances (K,) — of the K candidates' scores
    φ_k·θ under the posterior, without building φ (K, d).

    With φ = [1, u] ⊗ [1, c] the covariance is C₁ M C₁ᵀ where M (dc+1, dc+1) contracts Σ with
    [1, u] on both user indices: O(d²), then K×K work. A user vector with few nonzeros (most
    requests: one-hot segments) takes the compiled kernel, which reads only the rows of Σ they
    select; a dense one a BLAS pass over all of Σ (see :data:`_DENSE_USER`).
    """
    c1 = _request_c1(cand)  # (K, dc1)
    dc1 = c1.shape[1]
    if pol.features == "candidate":
        srv = serving(dc1)
        with srv.lock:
            mean = c1 @ srv.mean
            cov = (c1 * srv.cov) @ c1.T if diagonal else c1 @ srv.cov @ c1.T
        return mean, (np.einsum("kk->k", cov) if only_diagonal else cov)
    u1 = _with_one(user)  # (du1,)
    du1 = u1.shape[0]
    srv = serving(du1 * dc1)
    if diagonal:  # diagonal Σ: Cov(s_k, s_l) = Σ_a c_ka c_la Σ_i u_i² σ²_ia
        mean = (u1 @ srv.mean.reshape(du1, dc1)) @ c1.T
        w = (u1 * u1) @ srv.cov.reshape(du1, dc1)
        cov = (c1 * w) @ c1.T
    elif (proj := srv.projected.get(id(cand))) is not None and proj.cand is cand:
        # a candidate list with precomputed tables (LinearTSPolicy.project)
        k = c1.shape[0]
        mean, cov = np.empty(k), np.empty((k, k))
        _projected_kernel()(proj.w, proj.cm, u1, mean, cov)
    elif np.count_nonzero(u1) * _DENSE_USER[1] <= du1 * _DENSE_USER[0]:
        # a sparse user: only Σ's rows it selects, half of each (see the kernel)
        moments = kernels().request_moments
        k = c1.shape[0]
        mean, cov = np.empty(k), np.empty((k, k))
        with srv.lock:  # the learner updates Σ in place: read mean and Σ together
            moments(srv.cov, srv.mean, u1, c1, mean, cov)
    else:  # a dense one: one pass over Σ by BLAS
        with srv.lock:
            mean = (u1 @ srv.mean.reshape(du1, dc1)) @ c1.T
            t = (u1 @ srv.cov.reshape(du1, -1)).reshape(dc1, du1, dc1)
        m = t.transpose(0, 2, 1) @ u1  # (dc1, dc1)
        if only_diagonal:
            return mean, np.einsum("ka,ab,kb->k", c1, m, c1)
        cov = c1 @ m @ c1.T
    return mean, (np.einsum("kk->k", cov) if only_diagonal else cov)


def _sigmoid(z: float) -> float:
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _logistic_row_update(
    m: npt.NDArray[np.float64], q: npt.NDArray[np.float64], x: npt.NDArray[np.float64], y: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """One row of Chapelle & Li's Laplace update, solved exactly: the MAP is m + s·x/q with s
    the root of s = y·σ(−y(a + g s)), a = x·m, g = Σ x²/q."""
    xq = x / q
    a = float(x @ m)
    g = float(x @ xq)
    s = 0.0
    for _ in range(30):  # Newton on f(s) = s − y σ(−y(a + g s)), f' = 1 + g σ(1−σ) > 0
        sig = _sigmoid(-y * (a + g * s))
        f = s - y * sig
        step = f / (1.0 + g * sig * (1.0 - sig))
        s -= step
        if abs(step) < 1e-12:
            break
    w = m + s * xq
    p = _sigmoid(float(x @ w))
    return w, q + (x * x) * (p * (1.0 - p))


def _row_phi(
    kind: str, user: npt.NDArray[np.float32], cand: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """φ(user, candidate) of one row, (d,) — :func:`features` without the batch, in the same
    float32 arithmetic, as float64."""
    c1 = np.empty(cand.shape[0] + 1, np.float32)
    c1[0] = 1.0
    c1[1:] = cand
    if kind == "candidate":
        return c1.astype(np.float64)
    u1 = np.empty(user.shape[0] + 1, np.float32)
    u1[0] = 1.0
    u1[1:] = user
    return np.multiply.outer(u1, c1).ravel().astype(np.float64)
