"""Reward models q̂(x, a) for the DM/DR family, fit with cross-fitting, and the bootstrap.

Cross-fitting (K folds): each row's predictions come from a model that never saw that row, so
the DR family's influence-term intervals stay honest. The bootstrap can refit the reward model
on every resample, so its intervals include the model's own uncertainty (obp's bootstrap holds
the model fixed).
"""

from __future__ import annotations

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
PREDICT_CELLS = 4_000_000
"""Design cells (rows × slots × features) per prediction block: bounds the memory of a fit."""


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
        max_train_rows: each fold's model trains on at most this many rows (a seeded subsample
            of the other folds); every row still gets an out-of-fold prediction. None: all.
    """

    kind: str = "logistic"
    folds: int = 5
    c: float | None = None
    embedding_dim: int = 8
    seed: int = 0
    max_train_rows: int | None = 200_000

    def __post_init__(self) -> None:
        if self.kind not in MODELS:
            raise ValueError(f"`kind` must be one of {MODELS}, got {self.kind!r}")
        if self.folds < 2:
            raise ValueError(f"`folds` must be >= 2 for cross-fitting, got {self.folds}")
        if self.max_train_rows is not None and self.max_train_rows < 1:
            raise ValueError(f"`max_train_rows` must be >= 1 or None, got {self.max_train_rows}")
        if self.c is not None and self.c <= 0:
            raise ValueError(f"`c` must be > 0 or None (choose by cross-validation), got {self.c}")


@dataclass(frozen=True)
class CrossFit:
    """Out-of-fold predictions and their quality."""

    q: Array  # (n, K)
    oof_logloss: float | None
    base_logloss: float | None
    c: float | None = None  # the regularisation used (chosen by cross-validation when auto)


@dataclass(frozen=True)
class Design:
    """φ(x, a) = [1, x] ⊗ [1, action features] (+ position one-hot), built block by block.

    Fitted once on a log (context standardisation, the PCA of the candidates' embeddings), then
    evaluated on any rows: :meth:`rows` gives (m, K, p) for prediction, :meth:`logged` (m, p)
    at the logged slot for training — so a large log never holds its (n, K, p) design. Action
    features are the first ``dim`` principal components of the candidates' embeddings (per
    row and slot, or from ``variant`` + ``variant_embeddings`` weighted by how often each
    variant is a candidate), scaled to unit variance; without embeddings, a slot one-hot.
    """

    x_mean: Array
    x_std: Array
    k: int
    source: str  # "features", "variant" or "slot"
    center: Array | None = None  # embedding mean (e,)
    basis: Array | None = None  # (e, a) principal directions
    scale: Array | None = None  # (a,)
    table: Array | None = None  # (V, a) scaled components of each variant ("variant")
    n_pos: int = 0

    @staticmethod
    def fit(data: BanditFeedback, dim: int) -> Design:
        x = data.context
        k = data.mask.shape[1]
        n_pos = 0
        if data.position is not None and data.position.max() > 0:
            n_pos = int(data.position.max()) + 1
        base = {"x_mean": x.mean(0), "x_std": x.std(0) + 1e-9, "k": k, "n_pos": n_pos}
        if data.candidate_features is not None and dim > 0:
            valid = data.candidate_features[data.mask].astype(np.float64)
            center = valid.mean(0)
            _, _, vt = np.linalg.svd(valid - center, full_matrices=False)
            basis = vt[: min(dim, vt.shape[0])].T
            scale = ((valid - center) @ basis).std(0) + 1e-9
            return Design(**base, source="features", center=center, basis=basis, scale=scale)
        if data.variant is not None and data.variant_embeddings is not None and dim > 0:
            emb = data.variant_embeddings.astype(np.float64)
            cnt = np.bincount(data.variant[data.mask], minlength=emb.shape[0]).astype(np.float64)
            center = cnt @ emb / cnt.sum()
            dev = emb - center
            cov = (dev * cnt[:, None]).T @ dev / cnt.sum()
            vecs = np.linalg.eigh(cov)[1]
            basis = vecs[:, ::-1][:, : min(dim, emb.shape[1])]
            comp = dev @ basis
            scale = np.sqrt(cnt @ comp**2 / cnt.sum()) + 1e-9
            table = np.vstack([comp / scale, np.zeros((1, basis.shape[1]))])  # row -1: unused
            return Design(**base, source="variant", table=table)
        return Design(**base, source="slot")

    def _actions(self, data: BanditFeedback, rows: npt.NDArray[np.intp]) -> Array:
        """[1, action features] per row and slot, (m, K, 1 + a); zeros on unused slots."""
        m, k = rows.size, self.k
        if self.source == "features":
            assert data.candidate_features is not None and self.basis is not None
            assert self.center is not None and self.scale is not None
            comp = (data.candidate_features[rows].astype(np.float64) - self.center) @ self.basis
            a = comp / self.scale
        elif self.source == "variant":
            assert data.variant is not None and self.table is not None
            a = self.table[data.variant[rows]]
        else:
            a = np.broadcast_to(np.eye(k), (m, k, k))
        a = np.where(data.mask[rows][..., None], a, 0.0)
        return np.concatenate([np.ones((m, k, 1)), a], axis=2)

    def _x1(self, data: BanditFeedback, rows: npt.NDArray[np.intp]) -> Array:
        x = (data.context[rows] - self.x_mean) / self.x_std
        return np.concatenate([np.ones((rows.size, 1)), x], axis=1)

    def _pos(self, data: BanditFeedback, rows: npt.NDArray[np.intp]) -> Array | None:
        if self.n_pos == 0 or data.position is None:
            return None
        return np.eye(self.n_pos)[np.minimum(data.position[rows], self.n_pos - 1)]

    def rows(self, data: BanditFeedback, rows: npt.NDArray[np.intp]) -> Array:
        """φ for every slot of ``rows``, (m, K, p)."""
        x1, a1 = self._x1(data, rows), self._actions(data, rows)
        phi = (x1[:, None, :, None] * a1[:, :, None, :]).reshape(rows.size, self.k, -1)
        pos = self._pos(data, rows)
        if pos is not None:
            phi = np.concatenate(
                [phi, np.broadcast_to(pos[:, None, :], (rows.size, self.k, self.n_pos))], 2
            )
        return phi

    def _logged_actions(self, data: BanditFeedback, rows: npt.NDArray[np.intp]) -> Array:
        """[1, action features] at the logged slot of ``rows``, (m, 1 + a)."""
        slot = data.action[rows]
        if self.source == "features":
            assert data.candidate_features is not None and self.basis is not None
            assert self.center is not None and self.scale is not None
            f = data.candidate_features[rows, slot].astype(np.float64)
            a = (f - self.center) @ self.basis / self.scale
        elif self.source == "variant":
            assert data.variant is not None and self.table is not None
            a = self.table[data.variant[rows, slot]]
        else:
            a = np.eye(self.k)[slot]
        return np.concatenate([np.ones((rows.size, 1)), a], axis=1)

    def logged(self, data: BanditFeedback, rows: npt.NDArray[np.intp]) -> Array:
        """φ at the logged slot of ``rows``, (m, p)."""
        x1 = self._x1(data, rows)
        a1 = self._logged_actions(data, rows)
        phi = (x1[:, :, None] * a1[:, None, :]).reshape(rows.size, -1)
        pos = self._pos(data, rows)
        return phi if pos is None else np.concatenate([phi, pos], axis=1)

    def linear(self, data: BanditFeedback, rows: npt.NDArray[np.intp], coef: Array) -> Array:
        """``φ(x, a)·coef`` for every slot of ``rows``, (m, K), without building φ: with
        ``W = coef[:(1+d)(1+a)]`` reshaped (1+d, 1+a), ``φ·coef = (x1 W)·a1`` (+ position)."""
        x1, a1 = self._x1(data, rows), self._actions(data, rows)
        w = coef[: x1.shape[1] * a1.shape[2]].reshape(x1.shape[1], a1.shape[2])
        z = np.einsum("mj,mkj->mk", x1 @ w, a1)
        pos = self._pos(data, rows)
        if pos is not None:
            z += (pos @ coef[x1.shape[1] * a1.shape[2] :])[:, None]
        return z


def design(data: BanditFeedback, dim: int) -> Array:
    """The whole design (n, K, p) of a (small) log; see :class:`Design`."""
    return Design.fit(data, dim).rows(data, np.arange(data.n_rows))


Predictor = Callable[[Array], Array]


@dataclass(frozen=True)
class _Linear:
    """A fitted linear predictor ``link(x·coef + intercept)`` (logistic, ridge): evaluated per
    slot through :meth:`Design.linear`, never through an (n, K, p) design."""

    coef: Array
    intercept: float
    logistic: bool

    def link(self, z: Array) -> Array:
        return 1.0 / (1.0 + np.exp(-z)) if self.logistic else z

    def __call__(self, x: Array) -> Array:
        return self.link(x @ self.coef + self.intercept)


def _fit(model: RewardModel, x_train: Array, y: Array) -> Predictor:
    """Fit on (x_train, y); return a function predicting q̂ for rows of features."""
    c = 1.0 if model.c is None else model.c
    binary = bool(np.isin(y, (0.0, 1.0)).all())
    if (model.kind == "logistic" or (model.kind == "gbm" and binary)) and np.unique(y).size < 2:
        const = float(y.mean())
        return lambda x: np.full(x.shape[0], const)
    if model.kind == "logistic":
        if not binary:
            raise ValueError("the logistic reward model needs 0/1 rewards — use kind='ridge'")
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=c, max_iter=300).fit(x_train, y)
        return _Linear(clf.coef_[0].astype(np.float64), float(clf.intercept_[0]), True)
    if model.kind == "ridge":
        from sklearn.linear_model import Ridge

        rg = Ridge(alpha=1.0 / c).fit(x_train, y)
        return _Linear(np.asarray(rg.coef_, np.float64), float(rg.intercept_), False)
    if model.kind == "gbm":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        if binary:
            g = HistGradientBoostingClassifier(
                max_iter=100,
                learning_rate=0.05,
                min_samples_leaf=100,
                l2_regularization=1.0,
                random_state=model.seed,
            ).fit(x_train, y)
            return lambda x: g.predict_proba(x)[:, 1]
        return (
            HistGradientBoostingRegressor(max_iter=100, random_state=model.seed)
            .fit(x_train, y)
            .predict
        )
    return _mlp(model, x_train, y, binary)


def _mlp(model: RewardModel, x_train: Array, y: Array, binary: bool) -> Predictor:
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

    def predict(x: Array) -> Array:
        with torch.no_grad():
            out = net(torch.from_numpy(x.astype(np.float32))).squeeze(-1)
            out = torch.sigmoid(out) if binary else out
        return out.numpy().astype(np.float64)

    return predict


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
    des = Design.fit(data, m.embedding_dim)
    n, k = data.mask.shape
    if fold is None:
        fold = np.random.default_rng(m.seed).permutation(n) % m.folds
    q = np.zeros((n, k))
    rng = np.random.default_rng([m.seed, 1])
    for f in range(m.folds):
        test = np.flatnonzero(fold == f)
        train = np.flatnonzero(fold != f)
        if m.max_train_rows is not None and train.size > m.max_train_rows:
            train = np.sort(rng.choice(train, m.max_train_rows, replace=False))
        predict = _fit(m, des.logged(data, train), data.reward[train])
        p = des.logged(data, train[:1]).shape[1]
        step = max(1, PREDICT_CELLS // (k * p))
        for s in range(0, test.size, step):
            rows = test[s : s + step]
            if isinstance(predict, _Linear):
                q[rows] = predict.link(des.linear(data, rows, predict.coef) + predict.intercept)
            else:
                q[rows] = predict(des.rows(data, rows).reshape(-1, p)).reshape(-1, k)
    q = np.where(data.mask, q, 0.0)
    r = data.reward
    oof = base = None
    if np.isin(r, (0.0, 1.0)).all():
        qa = np.clip(q[np.arange(n), data.action], 1e-6, 1 - 1e-6)
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

    Without refitting this is ``estimator.interval(method="bootstrap")``: resampling on per-row
    sufficient statistics (:mod:`copyloop.ope.resample`; rows up to ``blocks``, Poisson weights
    over ``blocks`` random row groups beyond), no resampled copy of the data is built. For the
    studentised bootstrap with the model fixed use ``estimator.interval(method="bootstrap-t")``.
    """
    if n_boot < 2:
        raise ValueError(f"`n_boot` must be >= 2, got {n_boot}")
    if estimator.needs_reward_model and (q is None or refit):
        first = fit_reward_model(data, model)
        q = first.q if q is None else q
        # Resamples reuse the regularisation chosen on the full data (choosing it again on
        # every resample would multiply the cost by the grid size).
        model = replace(model or RewardModel(), c=first.c)
    if not (refit and estimator.needs_reward_model):
        return estimator.interval(
            data, target, q, alpha, method="bootstrap", n_boot=n_boot, seed=seed, blocks=blocks
        )
    rng = np.random.default_rng(seed)
    n = data.n_rows
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
