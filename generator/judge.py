"""The honest judge of a tuned generator (issue 15, item 4).

    python -m copyloop.generator.judge sample --model base --out runs/gc/judge/base.json
    python -m copyloop.generator.judge sample --model runs/gc/s0/dpo --out runs/gc/judge/s0.json
    python -m copyloop.generator.judge report --base runs/gc/judge/base.json \\
        --tuned runs/gc/judge/s0.json runs/gc/judge/s1.json runs/gc/judge/s2.json \\
        --out docs/results/generator_clicks.json

What makes it honest:

- **The judge is world v2's expected CTR**, on campaigns no tuning round saw (by default the odd
  campaigns of the 120: 10 per category, all 6 categories; at least ``min_campaigns``), for 512
  users per segment **drawn without replacement from the judge half** of the tuning's
  :class:`~copyloop.generator.clicks.UserSplit` — disjoint from every reader whose clicks
  trained the model or whose CTR drew its monitoring curves.
- **It refuses** (:func:`~copyloop.generator.clicks.check_honest`) a model without training
  provenance, one whose any round trained on the world's expected CTR (unless ``--upper-bound``,
  and then every output says "upper bound (oracle signal)"), one whose readers came from another
  split, and one that trained on a judged campaign.
- **Seeds and campaigns both vary**: ``report`` takes one judged file per training seed and
  gives each seed's lift with a 95 % bootstrap over campaigns (a campaign's 5 segments resampled
  together), and the mean over seeds with a two-level bootstrap (seeds, then campaigns); the
  headline is the median over seeds.
- **The audit's flags** (:func:`copyloop.envs.audit.audit_flags`) on each model's own kept
  lines, against the base model's: a gain bought by claims, lists or shouting shows up here.

``sample`` does the slow part once per model (sampling ``n`` lines per request with the same
seeds for every model) and writes a JSON file; ``report`` only reads those files.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from copyloop.generator.clicks import UserSplit, check_honest, lineage

JUDGE_VERSION = 1


@dataclass(frozen=True)
class JudgeConfig:
    """How the judge samples and scores.

    Attributes:
        campaigns: the judged campaigns (none may have trained the model).
        n: lines sampled per (campaign, segment) request, the same seeds for every model.
        users_per_segment: judge users per segment, without replacement from the judge half.
        split: the user split of the tuning (its ``judge`` half is drawn from).
        user_seed: seed of the judge users' draw.
        seed: sampling seed.
        kl_requests: requests (× 4 lines) of the KL(model ‖ base) estimate.
        min_campaigns: fewest judged campaigns accepted; all 6 categories must be present
            when this is at least 6.
        upper_bound: accept a model trained on the world's expected CTR, labelled so.
    """

    campaigns: tuple[int, ...]
    n: int = 6
    users_per_segment: int = 512
    split: UserSplit = field(default_factory=UserSplit)
    user_seed: int = 1
    seed: int = 123
    kl_requests: int = 20
    min_campaigns: int = 60
    upper_bound: bool = False

    def __post_init__(self) -> None:
        if self.n < 1 or self.users_per_segment < 1 or self.kl_requests < 1:
            raise ValueError(
                "`n`, `users_per_segment` and `kl_requests` must be >= 1, got "
                f"{self.n}, {self.users_per_segment}, {self.kl_requests}"
            )
        if len(set(self.campaigns)) < self.min_campaigns:
            raise ValueError(
                f"the judge needs at least {self.min_campaigns} distinct never-seen campaigns, "
                f"got {len(set(self.campaigns))} — pass more (e.g. odd) or lower min_campaigns "
                "and say so"
            )


def check_categories(market: Any, campaigns: Sequence[int], min_campaigns: int) -> None:
    """All 6 product categories must be judged (when ``min_campaigns`` >= 6)."""
    from copyloop.envs.users import CATEGORIES

    cats = {market.catalog.products[c].category for c in campaigns}
    if min_campaigns >= len(CATEGORIES) and len(cats) < len(CATEGORIES):
        missing = [CATEGORIES[k] for k in range(len(CATEGORIES)) if k not in cats]
        raise ValueError(f"the judged campaigns miss categories {missing} — cover all six")


def judge_model(
    lm: Any, market: Any, cfg: JudgeConfig, *, base: Any = None, label: str | None = None
) -> dict[str, Any]:
    """Sample ``cfg.n`` lines per request from ``lm``, judge the kept ones, flag them, and
    (with ``base``) estimate KL(lm ‖ base). A model with no tuning behind it (version ``base``)
    is the reference; any other must pass :func:`~copyloop.generator.clicks.check_honest`.

    Returns a JSON-able dict: per request the kept lines, their judged CTRs, kept/total and
    distinct-2; the audit flags of the kept lines; KL; the label and lineage.
    """
    from copyloop.envs.audit import audit_flags, product_cosine
    from copyloop.generator.evaluate import evaluate, kl_between
    from copyloop.generator.prompts import CopyRequest
    from copyloop.generator.reward import WorldReward, session_encoder

    if market.world.config.version != "v2":
        raise ValueError(
            f"the honest judge is world v2; this market's world is {market.world.config.version}"
            " — pass --config docs/results/world_v2.toml"
        )
    check_categories(market, cfg.campaigns, cfg.min_campaigns)
    chain = lineage(lm)
    if label is None:
        if not chain and lm.version == "base":
            label = "base"
        else:
            label = check_honest(
                chain,
                judge_campaigns=cfg.campaigns,
                split=cfg.split,
                upper_bound=cfg.upper_bound,
                model=f"{lm.name}@{lm.version}",
            )
    judge = WorldReward(
        market,
        users_per_segment=cfg.users_per_segment,
        seed=cfg.user_seed,
        pool=cfg.split.users(market, "judge"),
        replace=False,
    )
    segs = range(market.population.n_segments)
    reqs = [CopyRequest(int(c), s) for c in cfg.campaigns for s in segs]
    ev = evaluate(lm, market, reqs, cfg.n, judge=judge, seed=cfg.seed)
    assert ev.generation is not None
    rows: list[dict[str, Any]] = []
    all_texts: list[str] = []
    all_camps: list[int] = []
    for r, g in zip(reqs, ev.groups, strict=True):
        texts = ev.generation.texts_for(r.campaign, r.segment)
        ctr = judge(texts, r.campaign, r.segment) if texts else np.zeros(0)
        rows.append(
            {
                "campaign": r.campaign,
                "segment": r.segment,
                "kept": g.kept,
                "total": g.total,
                "ctr": g.ctr if np.isfinite(g.ctr) else None,
                "distinct2": g.distinct2,
                "texts": texts,
                "line_ctr": [float(x) for x in ctr],
            }
        )
        all_texts += texts
        all_camps += [r.campaign] * len(texts)
    prods = [market.catalog.products[c] for c in all_camps]
    cos = product_cosine(market, all_texts, all_camps, encoder=session_encoder())
    flags = audit_flags(all_texts, prods, cosine=cos)
    kl = None
    if base is not None:
        kl = kl_between(lm, base, market, reqs[: cfg.kl_requests], 4, seed=cfg.seed)
    return {
        "judge_version": JUDGE_VERSION,
        "model": f"{lm.name}@{lm.version}",
        "label": label,
        "lineage": chain,
        "world": market.world.config.version,
        "config": {**asdict(cfg), "campaigns": list(cfg.campaigns)},
        "requests": rows,
        "ctr": ev.ctr,
        "kept": ev.valid,
        "distinct2": ev.distinct2,
        "lines_judged": len(all_texts),
        "flags": {k: float(v.mean()) if v.size else 0.0 for k, v in flags.items()},
        "flag_counts": {k: int(v.sum()) for k, v in flags.items()},
        "kl_to_base": kl,
    }


def _ctr_matrix(judged: dict[str, Any], keys: list[tuple[int, int]]) -> np.ndarray:
    by = {(r["campaign"], r["segment"]): r["ctr"] for r in judged["requests"]}
    return np.array([np.nan if by.get(k) is None else by[k] for k in keys], np.float64)


def lift_report(
    base: dict[str, Any], tuned: list[dict[str, Any]], *, n_boot: int = 4000, seed: int = 0
) -> dict[str, Any]:
    """Lifts of each tuned model over the base on the same requests, with intervals.

    Lift = mean over requests of the tuned model's mean judged CTR of kept lines / the base's
    − 1 (requests where either kept nothing are left out). Per seed: a 95 % bootstrap over
    campaigns (all of a campaign's segments resampled together). Over seeds: the median (the
    headline) and the mean with a two-level 95 % bootstrap — seeds resampled, then campaigns.
    """
    if not tuned:
        raise ValueError("`tuned` is empty — judge at least one tuned model")
    bcfg = base["config"]
    for t in tuned:
        for key in ("campaigns", "n", "users_per_segment", "user_seed", "seed", "split"):
            if t["config"][key] != bcfg[key]:
                raise ValueError(
                    f"{t['model']} was judged with {key}={t['config'][key]!r}, the base with "
                    f"{bcfg[key]!r} — judge every model with the same settings"
                )
    keys = [(r["campaign"], r["segment"]) for r in base["requests"]]
    camps = np.array([k[0] for k in keys])
    uc = np.unique(camps)
    b = _ctr_matrix(base, keys)
    ts = np.stack([_ctr_matrix(t, keys) for t in tuned])  # (S, R)
    ok = np.isfinite(b) & np.isfinite(ts).all(0)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero((camps == c) & ok) for c in uc]

    def lift(rows: np.ndarray, t: np.ndarray) -> float:
        return float(t[rows].mean() / b[rows].mean() - 1.0)

    all_rows = np.flatnonzero(ok)
    boots = np.empty((n_boot, len(tuned)))
    two_level = np.empty(n_boot)
    for i in range(n_boot):
        pick = rng.integers(0, uc.size, uc.size)
        rows = np.concatenate([members[j] for j in pick])
        boots[i] = [lift(rows, t) for t in ts]
        two_level[i] = boots[i, rng.integers(0, len(tuned), len(tuned))].mean()
    per_seed = []
    for s, t in enumerate(tuned):
        lo, hi = np.quantile(boots[:, s], [0.025, 0.975])
        per_seed.append(
            {
                "model": t["model"],
                "label": t["label"],
                "ctr": float(ts[s, all_rows].mean()),
                "lift": lift(all_rows, ts[s]),
                "lift_ci95_campaigns": [float(lo), float(hi)],
                "kept": t["kept"],
                "distinct2": t["distinct2"],
                "distinct2_ratio": t["distinct2"] / base["distinct2"],
                "kl_to_base": t["kl_to_base"],
                "flagged": t["flags"]["any"],
                "flags": t["flags"],
            }
        )
    lifts = np.array([p["lift"] for p in per_seed])
    lo2, hi2 = np.quantile(two_level, [0.025, 0.975])
    labels = sorted({t["label"] for t in tuned})
    return {
        "labels": labels,
        "requests": len(keys),
        "requests_compared": int(ok.sum()),
        "campaigns": int(uc.size),
        "base": {
            "model": base["model"],
            "ctr": float(b[all_rows].mean()),
            "kept": base["kept"],
            "distinct2": base["distinct2"],
            "flagged": base["flags"]["any"],
            "flags": base["flags"],
        },
        "per_seed": per_seed,
        "seeds": len(tuned),
        "median_lift": float(np.median(lifts)),
        "mean_lift": float(lifts.mean()),
        "mean_lift_ci95_seeds_campaigns": [float(lo2), float(hi2)],
        "distinct2_ratio_min": float(min(p["distinct2_ratio"] for p in per_seed)),
        "kl_to_base_max": max((p["kl_to_base"] or 0.0) for p in per_seed),
        "flagged_max": float(max(p["flagged"] for p in per_seed)),
        "n_boot": n_boot,
    }


def _sample_main(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    from copyloop.cli_common import market as load_market
    from copyloop.cli_generator import _ints
    from copyloop.generator.models import load_model

    market = load_market(Path(a.config) if a.config else None)
    cfg = JudgeConfig(
        campaigns=tuple(_ints(a.campaigns, market.catalog.n_campaigns, "--campaigns")),
        n=a.n,
        users_per_segment=a.judge_users,
        split=UserSplit(a.split_seed),
        user_seed=a.user_seed,
        seed=a.seed,
        min_campaigns=a.min_campaigns,
        upper_bound=a.upper_bound,
    )
    lm = load_model(None if a.model == "base" else a.model)
    base = None if a.model == "base" else load_model(a.base)
    out = judge_model(lm, market, cfg, base=base)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(
        f"{out['model']} [{out['label']}]: CTR {out['ctr']:.5f} kept {out['kept']:.0%} "
        f"distinct-2 {out['distinct2']:.3f} flagged {out['flags']['any']:.1%} "
        f"KL {out['kl_to_base']} → {a.out}"
    )


def _report_main(a: argparse.Namespace) -> None:
    base = json.loads(Path(a.base).read_text())
    tuned = [json.loads(Path(p).read_text()) for p in a.tuned]
    rep = lift_report(base, tuned)
    rep["inputs"] = {"base": a.base, "tuned": list(a.tuned)}
    rep["note"] = a.note
    rep["judge"] = {k: v for k, v in base["config"].items() if k != "campaigns"}
    rep["judged_campaigns"] = base["config"]["campaigns"]
    rep["lineage"] = {t["model"]: t["lineage"] for t in tuned}
    rep["examples"] = {
        t["model"]: {
            f"{r['campaign']}/{r['segment']}": r["texts"][:3] for r in t["requests"][:25:6]
        }
        for t in [base, *tuned]
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=2))
    for p in rep["per_seed"]:
        lo, hi = p["lift_ci95_campaigns"]
        print(
            f"{p['model']} [{p['label']}]: lift {p['lift']:+.1%} [{lo:+.1%}, {hi:+.1%}] "
            f"d2 {p['distinct2_ratio']:.2f}x KL {p['kl_to_base']:.2f} flagged {p['flagged']:.1%}"
        )
    lo, hi = rep["mean_lift_ci95_seeds_campaigns"]
    print(
        f"median lift {rep['median_lift']:+.1%}; mean {rep['mean_lift']:+.1%} [{lo:+.1%}, "
        f"{hi:+.1%}] over seeds and campaigns; base flagged {rep['base']['flagged']:.1%} → {a.out}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="sample and judge one model")
    s.add_argument("--model", required=True, help="'base' or a tuned version folder")
    s.add_argument("--base", default=None, help="the base for KL (default: embedded)")
    s.add_argument("--campaigns", default="odd", help="never-seen campaigns (default odd)")
    s.add_argument("--n", type=int, default=6, help="lines per request")
    s.add_argument("--judge-users", type=int, default=512, help="judge users per segment")
    s.add_argument("--split-seed", type=int, default=0, help="the tuning's user split seed")
    s.add_argument("--user-seed", type=int, default=1, help="seed of the judge users' draw")
    s.add_argument("--seed", type=int, default=123, help="sampling seed (same for all models)")
    s.add_argument("--min-campaigns", type=int, default=60, help="fewest judged campaigns")
    s.add_argument("--upper-bound", action="store_true", help="accept an oracle-trained model")
    s.add_argument("--config", default="docs/results/world_v2.toml", help="market config")
    s.add_argument("--out", required=True)
    r = sub.add_parser("report", help="lifts over seeds and campaigns from judged files")
    r.add_argument("--base", required=True)
    r.add_argument("--tuned", nargs="+", required=True)
    r.add_argument("--note", default="", help="what was run, in words (kept in the JSON)")
    r.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "sample":
        _sample_main(a)
    else:
        _report_main(a)


if __name__ == "__main__":
    main()
