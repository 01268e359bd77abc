"""How far to trust a learned click simulator: its fidelity on held-out logs and, when the logs
were simulated, against the ground-truth click world.

Always (any held-out DecisionLog with rewards):

- AUC and log-loss of the simulator's CTRs, beside the base-rate model's log-loss;
- expected calibration error (equal-mass bins) and the reliability curve behind it.

When the world behind the log is known (logs written by ``copyloop simulate`` carry their market
config), also:

- the Bayes AUC: the AUC of the world's own CTRs on the same rows (no model can beat it);
- the calibration error against the true CTRs (noise-free);
- for every (segment, variant) cell, the predicted and the true mean CTR over users of the
  segment: their Pearson correlation, the Spearman rank agreement of variants per segment (over
  all variants, and within each campaign);
- the value gap: choosing each user's copy by the simulator's argmax instead of the true argmax
  loses this share of the true best policy's CTR.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from copyloop.envs.clicksim import ClickData, ClickSimError, ClickSimulator
from copyloop.envs.clicksim.calibration import logloss


@dataclass
class WorldFidelity:
    """Fidelity against the ground-truth world (see the module docstring)."""

    bayes_auc: float
    true_ece: float
    cell_ctr_pearson: float
    spearman_by_segment: dict[str, float]
    within_campaign_spearman_by_segment: dict[str, float]
    best_value: float
    sim_policy_value: float
    uniform_value: float
    value_gap: float
    users_per_segment: int

    @property
    def min_spearman(self) -> float:
        return min(self.spearman_by_segment.values())


@dataclass
class FidelityReport:
    """A simulator's fidelity on a held-out log (see the module docstring)."""

    rows: int
    clicks: float
    base_rate: float
    auc: float
    logloss: float
    logloss_base_rate: float
    ece: float
    reliability: list[dict[str, float]] = field(default_factory=list)
    world: WorldFidelity | None = None

    @property
    def ece_over_base(self) -> float:
        """ECE as a share of the held-out CTR."""
        return self.ece / max(self.base_rate, 1e-12)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ece_over_base"] = self.ece_over_base
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def expected_calibration_error(
    p: npt.NDArray[np.floating], y: npt.NDArray[np.floating], n_bins: int = 15
) -> tuple[float, list[dict[str, float]]]:
    """ECE over equal-mass bins of ``p``: Σ_b (n_b / n) · |mean p_b − mean y_b|, and the bins."""
    p = np.asarray(p, np.float64)
    y = np.asarray(y, np.float64)
    order = np.argsort(p, kind="stable")
    bins = np.array_split(order, n_bins)
    ece = 0.0
    curve = []
    for b in bins:
        if b.size == 0:
            continue
        mp, my = float(p[b].mean()), float(y[b].mean())
        ece += b.size / p.size * abs(mp - my)
        curve.append({"predicted": mp, "observed": my, "rows": int(b.size)})
    return ece, curve


def fidelity_report(
    sim: ClickSimulator,
    data: ClickData,
    *,
    market: Any = None,
    n_bins: int = 15,
    users_per_segment: int = 400,
    seed: int = 0,
) -> FidelityReport:
    """Score ``sim`` on held-out ``data``; with ``market`` (the world behind the log), also
    against the truth."""
    if data.n_rows == 0:
        raise ClickSimError("the held-out log is empty")
    if data.context.shape[1] != sim.context_dim:
        raise ClickSimError(
            f"the held-out log has {data.context.shape[1]} context features, the simulator reads "
            f"{sim.context_dim} — score it on a log of the same market"
        )
    unknown = len(sim.campaign_ids)
    camp = np.array([sim._campaign_index.get(c, unknown) for c in data.campaign_ids], np.int64)[
        data.campaign
    ]
    pred = sim.predict_pairs(data.context, data.copy[data.variant], camp).mean
    y = data.reward.astype(np.float64)
    if y.min() == y.max():
        raise ClickSimError("the held-out log has only one reward value; AUC needs both")
    base = float(y.mean())
    ece, curve = expected_calibration_error(pred, y, n_bins)
    rep = FidelityReport(
        rows=data.n_rows,
        clicks=float(y.sum()),
        base_rate=base,
        auc=float(roc_auc_score(y, pred)),
        logloss=logloss(pred, y),
        logloss_base_rate=logloss(np.full(y.size, sim.base_rate), y),
        ece=ece,
        reliability=curve,
    )
    if market is not None:
        rep.world = _world_fidelity(sim, data, pred, market, n_bins, users_per_segment, seed)
    return rep


def _world_fidelity(
    sim: ClickSimulator,
    data: ClickData,
    pred: npt.NDArray[np.float32],
    market: Any,
    n_bins: int,
    users_per_segment: int,
    seed: int,
) -> WorldFidelity:
    cat, world, pop = market.catalog, market.world, market.population
    index = {c: i for i, c in enumerate(cat.campaign_ids)}
    missing = [c for c in data.campaign_ids if c not in index]
    if missing or data.user_id is None or any(u is None for u in data.user_id[:1]):
        raise ClickSimError(
            "the held-out log does not come from this market (campaigns "
            f"{missing[:3]} unknown or user ids missing) — drop --world or pass the right config"
        )
    try:
        users = np.array([int(str(u)[1:]) for u in data.user_id], np.int64)
    except ValueError as e:
        raise ClickSimError(
            "user ids are not the simulator's `u<index>` form — this log was not simulated"
        ) from e
    if users.max() >= len(pop.users.segment) or data.action_index is None:
        raise ClickSimError("the held-out log's users are not this market's population")
    camp = np.array([index[c] for c in data.campaign_ids], np.int64)[data.campaign]
    true = world.first_ctr(users, camp)[np.arange(users.size), data.action_index]
    y = data.reward.astype(np.float64)
    bayes = float(roc_auc_score(y, true))
    true_ece, _ = expected_calibration_error(pred, true, n_bins)
    # (segment, variant) cells: mean CTR over a sample of each segment's users.
    rng = np.random.default_rng([seed, 4242])
    bound = sim.bind_catalog(cat)
    feats = pop.all_features
    seg_of = pop.users.segment
    n_camp, k = cat.slots.shape
    true_cells, sim_cells = [], []
    best_v = sim_v = uni_v = 0.0
    n_pairs = 0
    spear, within = {}, {}
    for s, name in enumerate(pop.segment_names):
        members = np.flatnonzero(seg_of == s)
        if members.size == 0:
            continue
        pick = rng.choice(members, size=users_per_segment)
        u_rep = np.repeat(pick, n_camp)
        c_rep = np.tile(np.arange(n_camp), pick.size)
        t_ctr = world.first_ctr(u_rep, c_rep).astype(np.float64)  # (U·C, K)
        s_ctr = bound.predict(feats[u_rep], cat.slots[c_rep]).mean.astype(np.float64)
        mask = cat.slots[c_rep] >= 0
        # Policy values on these (user, campaign) pairs.
        rows = np.arange(u_rep.size)
        best_v += float(t_ctr.max(1).sum())
        sim_v += float(t_ctr[rows, np.where(mask, s_ctr, -1.0).argmax(1)].sum())
        uni_v += float(((t_ctr * mask).sum(1) / mask.sum(1)).sum())
        n_pairs += u_rep.size
        t_mean = t_ctr.reshape(pick.size, n_camp, k).mean(0)  # (C, K)
        s_mean = s_ctr.reshape(pick.size, n_camp, k).mean(0)
        used = cat.slots >= 0
        true_cells.append(t_mean[used])
        sim_cells.append(s_mean[used])
        spear[name] = float(spearmanr(t_mean[used], s_mean[used]).statistic)
        per_c = [
            spearmanr(t_mean[c, used[c]], s_mean[c, used[c]]).statistic
            for c in range(n_camp)
            if used[c].sum() > 2
        ]
        within[name] = float(np.nanmean(per_c))
    tc, sc = np.concatenate(true_cells), np.concatenate(sim_cells)
    return WorldFidelity(
        bayes_auc=bayes,
        true_ece=true_ece,
        cell_ctr_pearson=float(np.corrcoef(tc, sc)[0, 1]),
        spearman_by_segment=spear,
        within_campaign_spearman_by_segment=within,
        best_value=best_v / n_pairs,
        sim_policy_value=sim_v / n_pairs,
        uniform_value=uni_v / n_pairs,
        value_gap=1.0 - sim_v / best_v,
        users_per_segment=users_per_segment,
    )


def plot_fidelity(rep: FidelityReport, path: str | Path, cells: Any = None) -> Path:
    """Reliability diagram (predicted vs observed CTR per bin) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from copyloop.contract import atomic_path

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    p = [b["predicted"] for b in rep.reliability]
    o = [b["observed"] for b in rep.reliability]
    hi = max(max(p), max(o)) * 1.1
    ax.plot([0, hi], [0, hi], color="0.6", lw=1, ls="--", label="perfect calibration")
    ax.plot(p, o, "o-", label=f"observed (ECE {rep.ece:.4f})")
    ax.set_xlabel("predicted CTR (bin mean)")
    ax.set_ylabel("observed CTR")
    title = f"click simulator: AUC {rep.auc:.3f}"
    if rep.world is not None:
        title += f" (Bayes {rep.world.bayes_auc:.3f})"
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out


__all__ = [
    "FidelityReport",
    "WorldFidelity",
    "expected_calibration_error",
    "fidelity_report",
    "plot_fidelity",
]
