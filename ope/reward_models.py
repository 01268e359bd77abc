"""Reward models q̂(x, a) for the DM/DR family, fit with cross-fitting, and the bootstrap.

Cross-fitting (K folds): each row's predictions come from a model that never saw that row, so
the DR family's influence-term intervals stay honest. The bootstrap can refit the reward model
on every resample, so its intervals include the model's own uncertainty (obp's bootstrap holds
the model fixed).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from copyloop.ope.data import BanditFeedback
from copyloop.ope.estimators import Estimator, Interval, importance_weights, weight_diagnostics

Array = npt.NDArray[np.float64]
MODELS = ("logistic", "ridge", "gbm", "mlp")
C_GRID = (1e-3, 1e-2, 1e-1, 1.0)
SELECT_ROWS = 20_000


@dataclass(frozen=True)
class RewardModel:
    """How to fit q̂(x, a).

    Attributes:
        kind: ``"logistic"`` (binary rewards; default), ``"ridge"`` (any reward),
            ``"gbm"`` (histogram gradient boosting) or ``"mlp"`` (a small torch MLP).
        folds: cross-fitting folds (>= 2).
        c: inverse regularisation strength (logistic) / ``1/alpha`` (ridge); None chooses it
            from :data:`C_GRID` by out-of-fold log-loss (clicks are rare: an unregularised
            model with user × copy features is worse than the base rate).
        embedding_dim: PCA components of the candidates' embeddings used as action features.
        seed: fold assignment and model seeds.
    """

    kind: str = "logistic"
    folds: int = 5
    c: float | None = None
    embedding_dim: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MODELS:
            raise ValueError(f"`kind` must be one of {MODELS}, got {self.kind!r}")
        if self.folds < 2:
            raise ValueError(f"`folds` must be >= 2 for cross-fitting, got {self.folds}")
        if self.c is not None and self.c <= 0:
            raise ValueError(f"`c` must be > 0 or None (choose by cross-validation), got {self.c}")


@dataclass(frozen=True)
class CrossFit:
    """Out-of-fold predictions and their quality."""

    q: Array  # (n, K)
    oof_logloss: float | None
    base_logloss: float | None
    c: float | None = None  # the regularisation used (chosen by cross-validation when auto)


def _action_features(data: BanditFeedback, dim: int) -> npt.NDArray[np.float64]:
    """Per row and slot, features of the candidate: PCA of its embedding, else a slot one-hot."""
    n, k = data.mask.shape
    if data.candidate_features is not None and dim > 0:
        feats = data.candidate_features.astype(np.float64)
        valid = feats[data.mask]
        mean = valid.mean(0)
        _, _, vt = np.linalg.svd(valid - mean, full_matrices=False)
        comp = (feats - mean) @ vt[: min(dim, vt.shape[0])].T
        comp = comp / (comp[data.mask].std(0) + 1e-9)
        return np.where(data.mask[..., None], comp, 0.0)
    return np.broadcast_to(np.eye(k), (n, k, k)).astype(np.float64)


def design(data: BanditFeedback, dim: int) -> npt.NDArray[np.float64]:
    """φ(x, a) = [1, x] ⊗ [1, action features] (+ position one-hot), shape (n, K, p)."""
    n, k = data.mask.shape
    x = data.context
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    x1 = np.concatenate([np.ones((n, 1)), x], axis=1)
    a = _action_features(data, dim)
    a1 = np.concatenate([np.ones((n, k, 1)), a], axis=2)
    phi = (x1[:, None, :, None] * a1[:, :, None, :]).reshape(n, k, -1)
    if data.position is not None and data.position.max() > 0:
        pos = np.eye(int(data.position.max()) + 1)[data.position]
        phi = np.concatenate([phi, np.broadcast_to(pos[:, None, :], (n, k, pos.shape[1]))], 2)
    return phi


def _fit_predict(model: RewardModel, x_train: Array, y: Array, x_pred: Array) -> Array:
    c = 1.0 if model.c is None else model.c
    binary = bool(np.isin(y, (0.0, 1.0)).all())
    if (model.kind == "logistic" or (model.kind == "gbm" and binary)) and np.unique(y).size < 2:
        return np.full(x_pred.shape[0], float(y.mean()))
    if model.kind == "logistic":
        if not binary:
            raise ValueError("the logistic reward model needs 0/1 rewards — use kind='ridge'")
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=c, max_iter=300)
        return clf.fit(x_train, y).predict_proba(x_pred)[:, 1]
    if model.kind == "ridge":
        from sklearn.linear_model import Ridge

        return Ridge(alpha=1.0 / c).fit(x_train, y).predict(x_pred)
    if model.kind == "gbm":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        if binary:
            g = HistGradientBoostingClassifier(
                max_iter=100,
                learning_rate=0.05,
                min_samples_leaf=100,
                l2_regularization=1.0,
                random_state=model.seed,
            )
            return g.fit(x_train, y).predict_proba(x_pred)[:, 1]
        return (
            HistGradientBoostingRegressor(max_iter=100, random_state=model.seed)
            .fit(x_train, y)
            .predict(x_pred)
        )
    return _mlp(model, x_train, y, x_pred, binary)


def _mlp(model: RewardModel, x_train: Array, y: Array, x_pred: Array, binary: bool) -> Array:
    import torch

    gen = torch.Generator().manual_seed(model.seed)
    torch.manual_seed(model.seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(x_train.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
    )
    opt = torch.optim.Adam(
        net.parameters(), lr=3e-3, weight_decay=1e-2 if model.c is None else 1e-4 / model.c
    )
    xt = torch.from_numpy(x_train.astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    loss_fn = torch.nn.BCEWithLogitsLoss() if binary else torch.nn.MSELoss()
    for _ in range(5):
        perm = torch.randperm(xt.shape[0], generator=gen)
        for i in range(0, xt.shape[0], 512):
            idx = perm[i : i + 512]
            opt.zero_grad()
            loss_fn(net(xt[idx]).squeeze(-1), yt[idx]).backward()
            opt.step()
    with torch.no_grad():
        out = net(torch.from_numpy(x_pred.astype(np.float32))).squeeze(-1)
        out = torch.sigmoid(out) if binary else out
    return out.numpy().astype(np.float64)


def fit_reward_model(
    data: BanditFeedback,
    model: RewardModel | None = None,
    *,
    fold: npt.NDArray[np.int64] | None = None,
) -> CrossFit:
    """Cross-fitted q̂ for every row and slot, plus out-of-fold log-loss vs the base rate.

    With ``model.c`` None (logistic/ridge), each value of :data:`C_GRID` is cross-fitted and the
    one with the lowest out-of-fold loss is kept. ``fold`` (n,) assigns rows to folds (default:
    a seeded random split); a bootstrap passes its rows' original folds so copies of one row
    never sit on both sides of a split.
    """
    m = model or RewardModel()
    if m.c is None and m.kind in ("logistic", "ridge"):
        # Choose c on at most SELECT_ROWS rows (a seeded subsample), then fit on everything.
        sel = data
        if data.n_rows > SELECT_ROWS:
            idx = np.random.default_rng(m.seed).choice(data.n_rows, SELECT_ROWS, replace=False)
            sel = data.take(np.sort(idx))

        def score(c: float) -> float:
            f = _cross_fit(sel, replace(m, c=c))
            if f.oof_logloss is not None:
                return f.oof_logloss
            qa = f.q[np.arange(sel.n_rows), sel.action]
            return float(np.mean((sel.reward - qa) ** 2))

        best = min(C_GRID, key=score)
        return _cross_fit(data, replace(m, c=best), fold)
    return _cross_fit(data, m, fold)


def _cross_fit(
    data: BanditFeedback, m: RewardModel, fold: npt.NDArray[np.int64] | None = None
) -> CrossFit:
    from threadpoolctl import threadpool_limits

    # Each fit is a small dense problem: one BLAS thread is fastest (threads only contend).
    with threadpool_limits(limits=1, user_api="blas"):
        return _cross_fit_1(data, m, fold)


def _cross_fit_1(
    data: BanditFeedback, m: RewardModel, fold: npt.NDArray[np.int64] | None
) -> CrossFit:
    phi = design(data, m.embedding_dim)
    n, k, p = phi.shape
    if fold is None:
        fold = np.random.default_rng(m.seed).permutation(n) % m.folds
    q = np.zeros((n, k))
    rows = np.arange(n)
    for f in range(m.folds):
        test = fold == f
        train = ~test
        xa = phi[rows[train], data.action[train]]
        flat_pred = phi[test].reshape(-1, p)
        q[test] = _fit_predict(m, xa, data.reward[train], flat_pred).reshape(-1, k)
    q = np.where(data.mask, q, 0.0)
    r = data.reward
    oof = base = None
    if np.isin(r, (0.0, 1.0)).all():
        qa = np.clip(q[rows, data.action], 1e-6, 1 - 1e-6)
        oof = float(-np.mean(r * np.log(qa) + (1 - r) * np.log(1 - qa)))
        pbar = np.clip(r.mean(), 1e-6, 1 - 1e-6)
        base = float(-np.mean(r * np.log(pbar) + (1 - r) * np.log(1 - pbar)))
    return CrossFit(q, oof, base, m.c)


def bootstrap_interval(
    estimator: Estimator,
    data: BanditFeedback,
    target: Array,
    *,
    alpha: float = 0.05,
    n_boot: int = 200,
    model: RewardModel | None = None,
    q: Array | None = None,
    refit: bool = True,
    seed: int = 0,
    blocks: int = 10_000,
    progress: Callable[[int], None] | None = None,
) -> Interval:
    """Percentile bootstrap interval over resampled rows.

    For model-based estimators, ``refit=True`` refits the cross-fitted reward model on every
    resample (so the interval includes the model's uncertainty); ``refit=False`` reuses ``q``.

    Without refitting, resampling works on per-row sufficient statistics
    (:meth:`Estimator.parts`) with the Poisson bootstrap (each row, or group, enters a resample
    Poisson(1) times — the large-sample equivalent of multinomial resampling), so no resampled
    copy of the data is ever built. Logs larger than ``blocks`` rows are resampled in
    ``blocks`` random groups of rows (iid rows make the groups iid, so the bootstrap's limit is
    the same); smaller logs are resampled row by row, the textbook bootstrap.
    """
    if n_boot < 2:
        raise ValueError(f"`n_boot` must be >= 2, got {n_boot}")
    if estimator.needs_reward_model and (q is None or refit):
        first = fit_reward_model(data, model)
        q = first.q if q is None else q
        # Resamples reuse the regularisation chosen on the full data (choosing it again on
        # every resample would multiply the cost by the grid size).
        model = replace(model or RewardModel(), c=first.c)
    rng = np.random.default_rng(seed)
    n = data.n_rows
    if not (refit and estimator.needs_reward_model):
        return _resample_sums(estimator, data, target, q, alpha, n_boot, blocks, rng, progress)
    point = estimator.estimate(data, target, q)
    m = model or RewardModel()
    base_fold = np.random.default_rng(m.seed).permutation(n) % m.folds
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        sub = data.take(idx)
        qb = None
        if estimator.needs_reward_model:
            qb = fit_reward_model(sub, model, fold=base_fold[idx]).q if refit else q[idx]  # type: ignore[index,unused-ignore]
        stats[b] = estimator.estimate(sub, target[idx], qb)
        if progress is not None:
            progress(b + 1)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    ess = wmax = None
    if estimator.uses_weights:
        ess, wmax = weight_diagnostics(importance_weights(data, target))
    method = "bootstrap-refit" if (refit and estimator.needs_reward_model) else "bootstrap"
    return Interval(estimator.name, point, float(lo), float(hi), alpha, method, n, ess, wmax)


def _resample_sums(
    estimator: Estimator,
    data: BanditFeedback,
    target: Array,
    q: Array | None,
    alpha: float,
    n_boot: int,
    blocks: int,
    rng: np.random.Generator,
    progress: Callable[[int], None] | None,
) -> Interval:
    parts = estimator.parts(data, target, q)  # (n, p)
    n = data.n_rows
    point = float(estimator.combine(parts.sum(axis=0), np.asarray(float(n))))
    if blocks < 1:
        raise ValueError(f"`blocks` must be >= 1, got {blocks}")
    stats = np.empty(n_boot)
    if n <= blocks:
        # Small logs: the textbook row bootstrap, exactly (n rows drawn with replacement).
        for b in range(n_boot):
            idx = rng.integers(0, n, size=n)
            stats[b] = estimator.combine(parts[idx].sum(axis=0), np.asarray(float(n)))
            if progress is not None:
                progress(b + 1)
    else:
        # Large logs: Poisson bootstrap over random groups of rows (sufficient statistics).
        group = rng.integers(0, blocks, size=n)
        group_sums = np.column_stack(
            [
                np.bincount(group, weights=parts[:, j], minlength=blocks)
                for j in range(parts.shape[1])
            ]
        )
        sizes = np.bincount(group, minlength=blocks).astype(np.float64)
        chunk = max(1, 2_000_000 // blocks)  # bound the (resamples × groups) count matrix
        for start in range(0, n_boot, chunk):
            m = min(chunk, n_boot - start)
            counts = rng.poisson(1.0, size=(m, blocks)).astype(np.float64)
            stats[start : start + m] = estimator.combine(counts @ group_sums, counts @ sizes)
            if progress is not None:
                progress(start + m)
    if np.isnan(stats).any():
        warnings.warn(
            f"{estimator.name}: {int(np.isnan(stats).sum())} of {n_boot} resamples had no "
            "weight (0/0) and were dropped — the log is too small for this estimator",
            stacklevel=3,
        )
    lo, hi = np.nanquantile(stats, [alpha / 2, 1 - alpha / 2])
    ess = wmax = None
    if estimator.uses_weights:
        ess, wmax = weight_diagnostics(importance_weights(data, target))
    return Interval(estimator.name, point, float(lo), float(hi), alpha, "bootstrap", n, ess, wmax)
