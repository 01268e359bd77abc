"""The fitted click simulator: scoring users × copy, fitting the ensemble, saving and loading it,
and the bound fast path the env uses (see :mod:`copyloop.envs.clicksim`)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from copyloop.contract import LogValidationError, VariantsTable, atomic_path
from copyloop.envs.clicksim.calibration import Calibrator, logloss
from copyloop.envs.clicksim.config import ClickSimConfig, ClickSimError
from copyloop.envs.clicksim.data import ClickData, copy_inputs
from copyloop.envs.clicksim.model import TwoTower, embedding_pca, np_mlp, project
from copyloop.envs.world import sigmoid as _sigmoid

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "clicksim.json"
VARIANTS_FILE = "variants.parquet"
CONTEXTS_FILE = "contexts.npy"
METRICS_FILE = "metrics.json"
CONTEXT_SAMPLE = 4096
"""Context rows kept with the model, so :meth:`ClickSimulator.click_reward` can average over
realistic users of a segment."""

_F32 = npt.NDArray[np.float32]


@dataclass
class CTRPrediction:
    """Calibrated CTR predictions: ensemble mean and standard deviation (epistemic)."""

    mean: _F32
    std: _F32

    def pessimistic(self, penalty: float) -> _F32:
        """``mean − penalty · std``, floored at 0."""
        if penalty == 0:
            return self.mean
        return np.maximum(self.mean - np.float32(penalty) * self.std, 0.0).astype(np.float32)


class ClickSimulator:
    """A fitted click simulator (use :meth:`fit` or :meth:`load`; see the module docstring)."""

    def __init__(
        self,
        *,
        config: ClickSimConfig,
        members: list[TwoTower],
        calibrator: Calibrator,
        user_mean: _F32,
        user_scale: _F32,
        copy_mean: _F32,
        copy_scale: _F32,
        pca_mean: _F32,
        pca_components: _F32,
        campaign_ids: list[str],
        variants: VariantsTable,
        contexts: _F32,
        context_names: list[str] | None,
        base_rate: float,
        metrics: dict[str, Any],
    ) -> None:
        self.config = config
        self._members = members
        self.calibrator = calibrator
        self._user_mean, self._user_scale = user_mean, user_scale
        self._copy_mean, self._copy_scale = copy_mean, copy_scale
        self._pca_mean, self._pca_components = pca_mean, pca_components
        self.campaign_ids = campaign_ids
        self._campaign_index = {c: i for i, c in enumerate(campaign_ids)}
        self.variants = variants
        self.contexts = contexts
        self.context_names = context_names
        self.base_rate = base_rate
        self.metrics = metrics
        self.path: Path | None = None
        for m in members:
            m.eval()
        self._user_fns = [np_mlp(m.user) for m in members]
        self._copy_fns = [np_mlp(m.copy) for m in members]
        self._camp_w = [m.campaign.weight.detach().numpy().copy() for m in members]
        self._bias = np.array([float(m.bias.detach()) for m in members], np.float32)
        self._variant_copy = copy_inputs(variants.texts, variants.embeddings)
        camps, _, counts = variants.campaign_index()
        self._variant_campaign = np.repeat(
            [self._campaign_index[str(c)] for c in camps.to_pylist()], counts
        ).astype(np.int64)

    # ---- shapes ----------------------------------------------------------------------------
    @property
    def context_dim(self) -> int:
        return int(self._user_mean.size)

    @property
    def copy_dim(self) -> int:
        return int(self._copy_mean.size)

    def campaign_index(self, campaign: str | int) -> int:
        """Index of a campaign id (or pass an index through, range-checked)."""
        if isinstance(campaign, (int, np.integer)):
            if not 0 <= int(campaign) < len(self.campaign_ids):
                raise ClickSimError(
                    f"campaign index {campaign} is out of range [0, {len(self.campaign_ids)})"
                )
            return int(campaign)
        if campaign not in self._campaign_index:
            raise ClickSimError(
                f"campaign {campaign!r} was not in the simulator's training log — known "
                f"campaigns include {self.campaign_ids[:5]}"
            )
        return self._campaign_index[campaign]

    # ---- scoring ---------------------------------------------------------------------------
    def _check_context(self, context: npt.ArrayLike) -> _F32:
        u = np.asarray(context, np.float32)
        if u.ndim == 1:
            u = u[None, :]
        if u.ndim != 2 or u.shape[1] != self.context_dim:
            raise ClickSimError(
                f"context must have shape (n, {self.context_dim}) (the training log's context "
                f"width), got {np.shape(context)}"
            )
        if not np.all(np.isfinite(u)):
            raise ClickSimError("context has NaN or infinite values — clean the features")
        return u

    def _user_terms(self, context: _F32) -> list[_F32]:
        z = (context - self._user_mean) / self._user_scale
        return [f(z) for f in self._user_fns]

    def _copy_terms(self, copy: _F32, campaign: npt.NDArray[np.int64]) -> list[_F32]:
        x = project(np.asarray(copy, np.float32), self._pca_mean, self._pca_components)
        if x.shape[1] != self.copy_dim:
            raise ClickSimError(
                f"copy inputs have {x.shape[1]} features after projection, the model reads "
                f"{self.copy_dim} — embed texts with the encoder the simulator was fit with"
            )
        z = (x - self._copy_mean) / self._copy_scale
        return [f(z) + w[campaign] for f, w in zip(self._copy_fns, self._camp_w, strict=True)]

    def _combine(self, logits: list[_F32]) -> CTRPrediction:
        probs = np.stack([self.calibrator(z) for z in logits])
        return CTRPrediction(probs.mean(0), probs.std(0))

    def predict_pairs(
        self,
        context: npt.ArrayLike,
        copy: npt.ArrayLike,
        campaign: npt.ArrayLike,
    ) -> CTRPrediction:
        """CTR of row ``i``'s user ``context[i]`` seeing copy input ``copy[i]`` (see
        :func:`copy_inputs`) in campaign index ``campaign[i]``."""
        u = self._check_context(context)
        c = np.asarray(campaign, np.int64)
        vt = self._copy_terms(np.asarray(copy, np.float32), c)
        ut = self._user_terms(u)
        logits = [
            b + uu[:, 0] + vv[:, 0] + np.einsum("nf,nf->n", uu[:, 1:], vv[:, 1:])
            for b, uu, vv in zip(self._bias, ut, vt, strict=True)
        ]
        return self._combine(logits)

    def predict_variants(self, context: npt.ArrayLike, variant: npt.ArrayLike) -> CTRPrediction:
        """CTR of users ``context`` ``(n, du)`` seeing the simulator's own variants (rows of
        :attr:`variants`) ``variant`` ``(n,)``."""
        v = np.asarray(variant, np.int64)
        return self.predict_pairs(context, self._variant_copy[v], self._variant_campaign[v])

    def predict_texts(
        self,
        context: npt.ArrayLike,
        texts: Sequence[str],
        campaign: str | int,
        *,
        embeddings: _F32 | None = None,
    ) -> CTRPrediction:
        """CTR matrix ``(n users, len(texts))`` of arbitrary copy shown in ``campaign``."""
        u = self._check_context(context)
        if len(texts) == 0:
            raise ClickSimError("`texts` is empty — pass at least one text to score")
        c = self.campaign_index(campaign)
        copy = copy_inputs(texts, embeddings)
        return self.bind(copy, np.full(len(texts), c, np.int64)).predict(
            u, np.arange(len(texts))[None, :].repeat(u.shape[0], 0)
        )

    def bind(self, copy: _F32, campaign: npt.NDArray[np.int64]) -> BoundSimulator:
        """Precompute the copy towers of a fixed set of variants (e.g. the env's catalog)."""
        return BoundSimulator(self, self._copy_terms(copy, np.asarray(campaign, np.int64)))

    def bind_catalog(self, catalog: Any) -> BoundSimulator:
        """Bind to a :class:`~copyloop.envs.catalog.Catalog` (campaigns matched by id;
        campaigns the log never showed get the unknown-campaign term)."""
        unknown = len(self.campaign_ids)
        camp = np.array(
            [self._campaign_index.get(cid, unknown) for cid in catalog.campaign_ids], np.int64
        )
        copy = copy_inputs(catalog.variants.texts, catalog.embeddings)
        return self.bind(copy, camp[catalog.variant_campaign])

    def segment_contexts(self, segment: str | int) -> _F32:
        """The stored context rows of one segment (a one-hot context feature ``segment=NAME``)."""
        names = self.context_names
        if not names:
            raise ClickSimError(
                "the training log did not name its context features, so segments are unknown — "
                "pass `users=` (a context matrix) instead of `segment=`"
            )
        seg_cols = [i for i, n in enumerate(names) if n.startswith("segment=")]
        seg_names = [names[i].split("=", 1)[1] for i in seg_cols]
        if isinstance(segment, (int, np.integer)):
            if not 0 <= int(segment) < len(seg_cols):
                raise ClickSimError(f"segment index {segment} out of range [0, {len(seg_cols)})")
            col = seg_cols[int(segment)]
        elif segment in seg_names:
            col = seg_cols[seg_names.index(segment)]
        else:
            raise ClickSimError(f"unknown segment {segment!r}; known segments: {seg_names}")
        rows = self.contexts[self.contexts[:, col] > 0.5]
        if rows.shape[0] == 0:
            raise ClickSimError(f"no stored users of segment {segment!r} to average over")
        return rows

    def click_reward(
        self,
        texts: Sequence[str],
        *,
        campaign: str | int,
        segment: str | int | None = None,
        users: npt.ArrayLike | None = None,
        pessimism: float = 0.0,
        embeddings: _F32 | None = None,
    ) -> list[float]:
        """Expected CTR of each text in ``campaign`` for ``users`` (a context matrix) or for the
        stored users of ``segment`` (default: all stored users) — the generator's reward.

        ``pessimism`` subtracts that many ensemble standard deviations (floored at 0), so a text
        the members disagree on is not rewarded for the simulator's error.
        """
        if users is not None and segment is not None:
            raise ClickSimError("pass `segment` or `users`, not both")
        if users is not None:
            u = self._check_context(users)
        elif segment is not None:
            u = self.segment_contexts(segment)
        else:
            u = self.contexts
        pred = self.predict_texts(u, texts, campaign, embeddings=embeddings)
        return [float(x) for x in pred.pessimistic(pessimism).mean(0)]

    # ---- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        data: ClickData,
        config: ClickSimConfig | None = None,
        *,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> ClickSimulator:
        """Fit the ensemble on ``data`` (see :class:`ClickSimConfig`).

        ``progress(done, total, what)`` is called after every epoch of every member.
        """
        cfg = config or ClickSimConfig()
        n = data.n_rows
        if n < 100:
            raise ClickSimError(f"the log has {n} rows; fit a click simulator on at least 100")
        clicks = float(data.reward.sum())
        if clicks < 1 or clicks > n - 1:
            raise ClickSimError(
                f"the log has {clicks:g} clicks in {n} rows — a CTR model needs both clicks and "
                "non-clicks"
            )
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, 2718])
        perm = rng.permutation(n)
        n_val = max(round(cfg.holdout * n), 50)
        val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        weights = (
            data.ipw_weights(cfg.max_weight, cfg.weight_power)
            if cfg.weighting != "none"
            else np.ones(n, np.float64)
        )
        # "ipw-select": the likelihood stays unweighted (the conditional CTR is what the logger
        # does not bias); the weights re-target early stopping and calibration.
        fit_weights = weights if cfg.weighting == "ipw" else np.ones(n, np.float64)
        u_all = data.context
        user_mean = u_all[train].mean(0).astype(np.float32)
        user_scale = np.maximum(u_all[train].std(0), 1e-3).astype(np.float32)
        pca_mean, pca_comp = embedding_pca(data.copy, cfg.embedding_pca)
        copy_x = project(data.copy, pca_mean, pca_comp)
        copy_used = copy_x[data.variant[train]]
        copy_mean = copy_used.mean(0).astype(np.float32)
        copy_scale = np.maximum(copy_used.std(0), 1e-3).astype(np.float32)
        uz = torch.from_numpy((u_all - user_mean) / user_scale)
        vz = torch.from_numpy((copy_x - copy_mean) / copy_scale)
        var_t = torch.from_numpy(data.variant)
        camp_t = torch.from_numpy(data.campaign)
        y_t = torch.from_numpy(data.reward.astype(np.float32))
        n_camp = len(data.campaign_ids)
        total = cfg.members * cfg.epochs
        done = 0
        members: list[TwoTower] = []
        member_epochs: list[int] = []
        val_t = torch.from_numpy(val)
        train_t = torch.from_numpy(train)
        w_val = weights[val]
        for m in range(cfg.members):
            boot = (
                rng.poisson(1.0, size=train.size).astype(np.float64)
                if cfg.bootstrap and cfg.members > 1
                else np.ones(train.size)
            )
            w_train = torch.from_numpy((fit_weights[train] * boot).astype(np.float32))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**31)))
                net = TwoTower(u_all.shape[1], copy_x.shape[1], n_camp, cfg.hidden, cfg.factors)
            # Start from the base rate so early epochs are not spent learning the intercept.
            with torch.no_grad():
                base = float(np.average(data.reward[train], weights=fit_weights[train]))
                net.bias.fill_(math.log(base / (1 - base)))
            opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            best, best_state, stale, epochs = math.inf, None, 0, 0
            for _epoch in range(cfg.epochs):
                net.train()
                pos = torch.from_numpy(rng.permutation(train.size))
                for s in range(0, train.size, cfg.batch_size):
                    idx_local = pos[s : s + cfg.batch_size]
                    idx = train_t[idx_local]
                    logit = net(uz[idx], vz[var_t[idx]], camp_t[idx])
                    loss = nn.functional.binary_cross_entropy_with_logits(
                        logit, y_t[idx], weight=w_train[idx_local], reduction="sum"
                    ) / w_train[idx_local].sum().clamp_min(1e-6)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                epochs += 1
                net.eval()
                with torch.no_grad():
                    z = net(uz[val_t], vz[var_t[val_t]], camp_t[val_t]).numpy()
                vl = logloss(_sigmoid(z), data.reward[val], w_val)
                done += 1
                if progress is not None:
                    progress(done, total, f"member {m + 1}/{cfg.members} val log-loss {vl:.5f}")
                if vl < best - 1e-6:
                    best, stale = vl, 0
                    best_state = {k: v.clone() for k, v in net.state_dict().items()}
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        break
            done += cfg.epochs - epochs
            if progress is not None:
                progress(done, total, f"member {m + 1}/{cfg.members} done")
            assert best_state is not None
            net.load_state_dict(best_state)
            net.eval()
            members.append(net)
            member_epochs.append(epochs)
        # Calibrate the ensemble's mean logit on the held-out rows.
        with torch.no_grad():
            zs = np.stack(
                [mm(uz[val_t], vz[var_t[val_t]], camp_t[val_t]).numpy() for mm in members]
            )
        calib = Calibrator.fit(cfg.calibration, zs.mean(0), data.reward[val], w_val)
        raw_ll = logloss(_sigmoid(zs.mean(0)), data.reward[val], w_val)
        cal_ll = logloss(np.mean([calib(z) for z in zs], 0), data.reward[val], w_val)
        base_rate = float(data.reward[train].mean())
        rs = np.random.default_rng([cfg.seed, 31337])
        keep = rs.choice(n, size=min(CONTEXT_SAMPLE, n), replace=False)
        variants = VariantsTable.from_records(
            [
                {
                    "variant_id": vid,
                    "campaign_id": data.campaign_ids[int(c)],
                    "text": t,
                    "embedding": None if data.embeddings is None else data.embeddings[i],
                    "origin": "clicksim-training-log",
                }
                for i, (vid, c, t) in enumerate(
                    zip(data.variant_ids, data.variant_campaign, data.texts, strict=True)
                )
            ]
        )
        metrics = {
            "rows": n,
            "train_rows": int(train.size),
            "holdout_rows": int(val.size),
            "clicks": clicks,
            "base_rate": base_rate,
            "holdout_logloss_raw": raw_ll,
            "holdout_logloss_calibrated": cal_ll,
            "holdout_logloss_base_rate": logloss(
                np.full(val.size, base_rate), data.reward[val], w_val
            ),
            "member_epochs": member_epochs,
            "fit_seconds": time.perf_counter() - t0,
            "torch_threads": torch.get_num_threads(),
        }
        return cls(
            config=cfg,
            members=members,
            calibrator=calib,
            user_mean=user_mean,
            user_scale=user_scale,
            copy_mean=copy_mean,
            copy_scale=copy_scale,
            pca_mean=pca_mean,
            pca_components=pca_comp,
            campaign_ids=list(data.campaign_ids),
            variants=variants,
            contexts=data.context[np.sort(keep)].copy(),
            context_names=data.context_names,
            base_rate=base_rate,
            metrics=metrics,
        )

    # ---- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write weights, config, variants, stored contexts and metrics to ``directory``
        (each file atomically; a sha256 of the weights guards against corruption)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {
            f"member{i}.{k}": v
            for i, m in enumerate(self._members)
            for k, v in m.state_dict().items()
        }
        with atomic_path(d / WEIGHTS_FILE) as tmp:
            torch.save(state, tmp)
        digest = hashlib.sha256((d / WEIGHTS_FILE).read_bytes()).hexdigest()
        with atomic_path(d / CONTEXTS_FILE) as tmp, open(tmp, "wb") as f:
            np.save(f, self.contexts)
        self.variants.write(d / VARIANTS_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "copyloop.ClickSimulator",
            "config": asdict(self.config),
            "context_dim": self.context_dim,
            "copy_dim": self.copy_dim,
            "campaign_ids": self.campaign_ids,
            "context_names": self.context_names,
            "base_rate": self.base_rate,
            "calibrator": asdict(self.calibrator),
            "user_mean": self._user_mean.tolist(),
            "user_scale": self._user_scale.tolist(),
            "copy_mean": self._copy_mean.tolist(),
            "copy_scale": self._copy_scale.tolist(),
            "pca_mean": self._pca_mean.tolist(),
            "pca_components": self._pca_components.tolist(),
            "weights_sha256": digest,
        }
        for name, obj in ((CONFIG_FILE, meta), (METRICS_FILE, self.metrics)):
            with atomic_path(d / name) as tmp:
                tmp.write_text(json.dumps(obj, indent=1))
        self.path = d
        return d

    @classmethod
    def load(cls, directory: str | Path) -> ClickSimulator:
        """Restore a simulator saved with :meth:`save` (exactly: same predictions)."""
        d = Path(directory)
        if not d.is_dir():
            raise ClickSimError(
                f"click simulator directory {d} does not exist — fit one with "
                "`copyloop clicksim fit --logs LOGS --out DIR`"
            )
        missing = [
            f
            for f in (CONFIG_FILE, WEIGHTS_FILE, VARIANTS_FILE, CONTEXTS_FILE)
            if not (d / f).is_file()
        ]
        if missing:
            raise ClickSimError(
                f"{d} is not a complete click simulator: missing {missing} — refit it with "
                "`copyloop clicksim fit`"
            )
        try:
            meta = json.loads((d / CONFIG_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ClickSimError(
                f"{d / CONFIG_FILE} is corrupted ({e}) — refit the simulator"
            ) from e
        if not isinstance(meta, dict) or meta.get("kind") != "copyloop.ClickSimulator":
            raise ClickSimError(f"{d / CONFIG_FILE} does not describe a copyloop click simulator")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ClickSimError(
                f"{d} has format version {meta.get('format_version')}; this copyloop reads "
                f"version {FORMAT_VERSION} — refit the simulator"
            )
        raw = (d / WEIGHTS_FILE).read_bytes()
        if hashlib.sha256(raw).hexdigest() != meta.get("weights_sha256"):
            raise ClickSimError(
                f"{d / WEIGHTS_FILE} does not match its checksum in {CONFIG_FILE}: the file is "
                "corrupted or was replaced — refit the simulator"
            )
        try:
            cfg = ClickSimConfig.from_dict(meta["config"])
            state = torch.load(d / WEIGHTS_FILE, weights_only=True)
            n_camp = len(meta["campaign_ids"])
            members = []
            for i in range(cfg.members):
                net = TwoTower(
                    meta["context_dim"], meta["copy_dim"], n_camp, cfg.hidden, cfg.factors
                )
                prefix = f"member{i}."
                net.load_state_dict(
                    {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                )
                members.append(net)
            variants = VariantsTable.read(d / VARIANTS_FILE)
            contexts = np.load(d / CONTEXTS_FILE, allow_pickle=False)
            metrics = (
                json.loads((d / METRICS_FILE).read_text()) if (d / METRICS_FILE).is_file() else {}
            )
            sim = cls(
                config=cfg,
                members=members,
                calibrator=Calibrator(**meta["calibrator"]),
                user_mean=np.asarray(meta["user_mean"], np.float32),
                user_scale=np.asarray(meta["user_scale"], np.float32),
                copy_mean=np.asarray(meta["copy_mean"], np.float32),
                copy_scale=np.asarray(meta["copy_scale"], np.float32),
                pca_mean=np.asarray(meta["pca_mean"], np.float32),
                pca_components=np.asarray(meta["pca_components"], np.float32).reshape(
                    -1, len(meta["pca_mean"])
                ),
                campaign_ids=[str(c) for c in meta["campaign_ids"]],
                variants=variants,
                contexts=np.asarray(contexts, np.float32),
                context_names=meta.get("context_names"),
                base_rate=float(meta["base_rate"]),
                metrics=metrics,
            )
        except (KeyError, TypeError, RuntimeError, ValueError, LogValidationError) as e:
            if isinstance(e, ClickSimError):
                raise
            raise ClickSimError(f"{d} is corrupted or from another version ({e}) — refit it") from e
        sim.path = d
        return sim


class BoundSimulator:
    """A simulator with the copy towers of a fixed variant set precomputed: scoring a batch of
    users against their candidate slots is a few small matrix products (the env's fast path)."""

    def __init__(self, sim: ClickSimulator, copy_terms: list[_F32]) -> None:
        self.sim = sim
        self._copy_terms = copy_terms
        self.n_variants = int(copy_terms[0].shape[0])

    def predict(self, context: npt.ArrayLike, slots: npt.ArrayLike) -> CTRPrediction:
        """CTRs ``(n, K)`` of users ``context`` ``(n, du)`` for bound variants ``slots``
        ``(n, K)`` (−1 = unused slot, CTR 0)."""
        sim = self.sim
        u = sim._check_context(context)
        s = np.asarray(slots, np.int64)
        if s.ndim != 2 or s.shape[0] != u.shape[0]:
            raise ClickSimError(f"`slots` must have shape ({u.shape[0]}, K), got {s.shape}")
        if s.size and s.max() >= self.n_variants:
            raise ClickSimError(f"`slots` refer to variant {s.max()} of {self.n_variants} bound")
        used = s >= 0
        idx = np.where(used, s, 0)
        logits = []
        for b, uu, vt in zip(sim._bias, sim._user_terms(u), self._copy_terms, strict=True):
            vv = vt[idx]  # (n, K, f+1)
            z = b + uu[:, None, 0] + vv[..., 0] + np.einsum("nf,nkf->nk", uu[:, 1:], vv[..., 1:])
            logits.append(z.astype(np.float32))
        pred = sim._combine(logits)
        pred.mean[~used] = 0.0
        pred.std[~used] = 0.0
        return pred
