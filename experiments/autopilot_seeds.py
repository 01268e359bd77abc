"""The autopilot's promotions over many seeded runs of the service, judged by world v2's truth:
does any promotion lower the served true CTR beyond the gate's stated risk, and is a bad
generator's off-product line ever promoted?

Each run (one seed) builds a fresh service in this process — the same ``Service`` (store,
group-commit writer, learner, exploration slice, gate) ``copyloop serve`` runs, without the
HTTP layer, so twenty runs fit in minutes — with one campaign of each of the 6 categories drawn
at random (LinearTS shared across them, as ``--demo``), a protected control, a 15 %
exploration slice and five lines on trial per campaign:

* ``good`` (2): the world audit's hand-written templates (the product's name, a real benefit,
  a call to action);
* ``off_product`` (2): the same templates about a sibling product (the deliberately bad
  generator);
* ``null`` (1): one of the campaign's own catalog lines with its end punctuation changed —
  as good as a line already active, so promoting it cannot be justified by a real gain.

Users are replayed in chunks (:class:`copyloop.serve.traffic` draws them, their contexts and the
world's CTR of every line for each); clicks are Bernoulli draws at that CTR (the signal). After
each chunk the learner joins and learns, and the gate (:func:`copyloop.serve.autopilot.
judge_campaign`) judges every candidate at its looks; verdicts are settled as the admin API
does. **The truth that judges each promotion** (never seen by the service): on 2,000 fresh
users of the campaign, the world's expected CTR of the agent choosing with the candidate minus
without it, at the moment of promotion. A promotion is *harmful* when that true gain is below
zero.

Run: ``.venv/bin/python experiments/autopilot_seeds.py --seeds 20`` (writes
docs/results/autopilot_seeds.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from _common import host_info  # noqa: E402

CONFIG = REPO / "docs" / "results" / "world_v2.toml"
KINDS = ("good", "off_product", "null")


def pick_campaigns(m: Any, rng: np.random.Generator) -> list[int]:
    """One campaign of each category, at random."""
    by_cat: dict[int, list[int]] = {}
    for c, p in enumerate(m.catalog.products):
        by_cat.setdefault(p.category, []).append(c)
    return sorted(int(rng.choice(v)) for _, v in sorted(by_cat.items()))


def null_line(text: str) -> str:
    """The same line with its end punctuation changed."""
    t = text.rstrip()
    return t[:-1] if t and t[-1] in ".!?" else t + "."


def build_service(m: Any, chosen: list[int], d: Path, seed: int) -> Any:
    from copyloop.serve.service import Service, ServiceConfig
    from copyloop.serve.store import CampaignConfig, SQLiteStore, VariantRecord

    cat = m.catalog
    db = d / f"s{seed}.db"
    st = SQLiteStore(db)
    camp_of = cat.variant_campaign.tolist()
    for c in chosen:
        cid = cat.campaign_ids[c]
        camp_cfg = CampaignConfig(
            campaign_id=cid,
            context_width=m.user_dim,
            agent="linear_ts",
            agent_params={"seed": seed},
            reward_wait_s=30.0,
            model_id="market",
        )
        rows = [v for v in range(cat.n_variants) if camp_of[v] == c]
        recs = [VariantRecord(cat.variant_ids[v], cid, cat.variants.texts[v], cat.embeddings[v])
                for v in rows]  # fmt: skip
        st.create_campaign(camp_cfg, recs, "experiment").result()
    st.close()
    cfg = ServiceConfig(
        store=f"sqlite:///{db}",
        featurizer=cat.featurizer,
        encoder=getattr(cat, "encoder", None),
        learn_interval_s=None,
        publish_interval_s=0.0,
        snapshot_interval_s=3600.0,
        synchronous="NORMAL",
    )
    svc = Service(cfg)
    svc.start()
    return svc


def replay(svc: Any, world: Any, n: int) -> tuple[float, int]:
    """Serve ``n`` requests of ``world`` in process: decide, store, click, reward; returns the
    mean true CTR of what was served and the clicks."""
    futs, served, events = [], np.zeros(n), []
    for i in range(n):
        rec, _ = svc.decide(
            world.campaign_ids[i], world.context[i].tolist(), None, [], None, False,
            f"u{world.users[i]}",
        )  # fmt: skip
        futs.append(svc.store.record_decision(rec))
        p = world.true_ctr(i, rec.action)
        served[i] = p
        events.append((rec.event_id, float(world.uniform[i] < p)))
    for f in futs:
        f.result()
    now = svc.clock()
    rf = [svc.store.record_reward(e, "click", v, now) for e, v in events]
    for f in rf:
        f.result()
    return float(served.mean()), int(sum(v for _, v in events))


def true_gain(
    svc: Any, m: Any, cid: str, vid: str, trial: dict[str, tuple[str, str]], seed: int, users: int
) -> dict[str, float]:
    """World truth: on ``users`` fresh users of campaign ``cid``, expected CTR of the agent
    choosing among the active lines with ``vid`` minus without it (``trial``: every line on
    trial, some maybe promoted into the active set already, for the world to score)."""
    from copyloop.serve.traffic import TrafficConfig, _World

    w = _World(
        m,
        TrafficConfig(
            url="http://in-process", key="-", requests=users, seed=seed, campaigns=(cid,),
            extra_copy={v: ct for v, ct in trial.items() if ct[0] == cid},
        ),
    )  # fmt: skip
    rt = svc.runtime(cid)
    active = list(rt.active)
    pol, store = rt.model.policy, rt.model.variants
    with_c, without = np.zeros(users), np.zeros(users)
    for i in range(users):
        ctx = w.context[i].astype(np.float32)
        ctr_a = np.array([w.true_ctr(i, v) for v in active])
        ctr_c = w.true_ctr(i, vid)
        eid = f"truth:{i}"
        p0 = pol.decide(ctx, active, event_id=eid, store=store).probs
        p1 = pol.decide(ctx, [*active, vid], event_id=eid, store=store).probs
        without[i] = float(p0 @ ctr_a)
        with_c[i] = float(p1[:-1] @ ctr_a + p1[-1] * ctr_c)
    d = with_c - without
    return {
        "with": float(with_c.mean()),
        "without": float(without.mean()),
        "gain": float(d.mean()),
        "gain_se": float(d.std(ddof=1) / np.sqrt(users)),
    }


def one_run(m: Any, seed: int, args: argparse.Namespace, d: Path) -> dict[str, Any]:
    from copyloop.envs.audit import audit_lines
    from copyloop.serve.autopilot import GateSettings, judge_campaign
    from copyloop.serve.traffic import TrafficConfig, _World

    t0 = time.perf_counter()
    cat = m.catalog
    rng = np.random.default_rng([seed, 17])
    chosen = pick_campaigns(m, rng)
    ids = [cat.campaign_ids[c] for c in chosen]
    lines = audit_lines(cat.products, np.asarray(chosen, np.int64), seed=seed)
    svc = build_service(m, chosen, d, seed)
    trial: dict[str, tuple[str, str]] = {}
    kind_of: dict[str, str] = {}
    try:
        for n, cid in enumerate(ids):
            rt = svc.runtime(cid)
            active = list(rt.active)
            own = {v: t for v, t in zip(cat.variant_ids, cat.variants.texts, strict=True)}
            mine = {
                **{f"{cid}~good{k}": t for k, t in enumerate(lines["good"][n][: args.good])},
                **{
                    f"{cid}~off_product{k}": t
                    for k, t in enumerate(lines["off_product"][n][: args.bad])
                },
                f"{cid}~null0": null_line(own[active[int(rng.integers(1, len(active)))]]),
            }
            for v, t in mine.items():
                trial[v] = (cid, t)
                kind_of[v] = v.split("~")[1].rstrip("0123456789")
            svc.update_campaign(
                cid, {"control": active[0], "explore_share": args.share}, "experiment"
            )
            svc.add_candidates(cid, list(mine.items()), "experiment")
        settings = GateSettings(args.alpha, args.min_impressions, args.max_impressions)
        per = args.requests // args.chunks
        served, promotions, rejections = [], [], []
        for k in range(args.chunks):
            world = _World(
                m,
                TrafficConfig(
                    url="http://in-process", key="-", requests=per, seed=10_000 * seed + k,
                    campaigns=tuple(ids), extra_copy=trial,
                ),
            )  # fmt: skip
            ctr, _ = replay(svc, world, per)
            served.append(ctr)
            svc.learner.step()
            for cid in ids:
                for vd in judge_campaign(svc, cid, settings):
                    if vd.action == "wait":
                        continue
                    rec: dict[str, Any] = {
                        "chunk": k,
                        "variant": vd.variant_id,
                        "kind": kind_of[vd.variant_id],
                        "impressions": vd.impressions,
                        "reason": vd.reason,
                    }
                    if vd.action == "promote":
                        rec["truth"] = true_gain(
                            svc, m, cid, vd.variant_id, trial,
                            seed=99_000 + 100 * seed + k, users=args.truth_users,
                        )  # fmt: skip
                        promotions.append(rec)
                    else:
                        rejections.append(rec)
                    svc.settle_candidate(
                        cid, vd.variant_id, vd.action == "promote", "experiment", vd.evidence()
                    )
        pending = sum(len(svc.runtime(c).cfg.candidates) for c in ids)
    finally:
        svc.close()
    return {
        "seed": seed,
        "campaigns": ids,
        "served_ctr_by_chunk": served,
        "promotions": promotions,
        "rejections": rejections,
        "still_on_trial": pending,
        "seconds": time.perf_counter() - t0,
    }


def summarise(runs: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """Promotions by kind; the gate's realised risk — promotions of candidates that cannot
    improve the policy (``null``: a copy of an active line; ``off_product``: worse) over those
    candidates settled, with a Clopper–Pearson 95 % interval; and every promotion whose true
    gain was below zero, with the largest such loss."""
    from scipy.stats import beta

    proms = [p for r in runs for p in r["promotions"]]
    by_kind = {
        k: {
            "promoted": sum(p["kind"] == k for p in proms),
            "rejected": sum(x["kind"] == k for r in runs for x in r["rejections"]),
        }
        for k in KINDS
    }
    harmful = [p for p in proms if p["truth"]["gain"] < 0]
    no_gain = ("null", "off_product")
    k = sum(by_kind[x]["promoted"] for x in no_gain)
    n = sum(by_kind[x]["promoted"] + by_kind[x]["rejected"] for x in no_gain)
    lo = float(beta.ppf(0.025, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(0.975, k + 1, n - k)) if k < n else 1.0
    settled = sum(v["promoted"] + v["rejected"] for v in by_kind.values())
    gains = [p["truth"]["gain"] for p in proms]
    return {
        "runs": len(runs),
        "candidates_settled": settled,
        "promotions": len(proms),
        "by_kind": by_kind,
        "no_gain_candidates_settled": n,
        "no_gain_promoted": k,
        "no_gain_promotion_rate": k / max(n, 1),
        "no_gain_promotion_rate_ci95": [lo, hi],
        "stated_risk_alpha": alpha,
        "off_product_promoted": by_kind["off_product"]["promoted"],
        "harmful_promotions": len(harmful),
        "harmful_rate_over_no_gain_candidates": len(harmful) / max(n, 1),
        "largest_true_loss": min(gains) if harmful else 0.0,
        "mean_true_gain_of_promotions": float(np.mean(gains)) if proms else None,
        "mean_true_gain_of_good_promotions": float(
            np.mean([p["truth"]["gain"] for p in proms if p["kind"] == "good"])
        )
        if any(p["kind"] == "good" for p in proms)
        else None,
        "harmful": harmful,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--requests", type=int, default=60_000, help="per run")
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--good", type=int, default=2)
    ap.add_argument("--bad", type=int, default=2)
    ap.add_argument("--share", type=float, default=0.15)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--min-impressions", type=int, default=250)
    ap.add_argument("--max-impressions", type=int, default=2000)
    ap.add_argument("--truth-users", type=int, default=2000)
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "autopilot_seeds.json"))
    ap.add_argument(
        "--resummarise", action="store_true", help="recompute the summary of --out and exit"
    )
    args = ap.parse_args(argv)

    from copyloop.contract import atomic_path

    if args.resummarise:
        out = Path(args.out)
        report = json.loads(out.read_text())
        report["summary"] = summarise(report["runs"], report["args"]["alpha"])
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps({k: v for k, v in report["summary"].items() if k != "harmful"}, indent=1))
        return

    from copyloop.cli_common import market as load_market

    m = load_market(CONFIG)
    runs = []
    with tempfile.TemporaryDirectory(prefix="copyloop-autopilot-seeds-") as d:
        for s in range(args.first_seed, args.first_seed + args.seeds):
            r = one_run(m, s, args, Path(d))
            runs.append(r)
            print(
                f"seed {s}: {len(r['promotions'])} promoted "
                f"{[(p['kind'], round(p['truth']['gain'], 4)) for p in r['promotions']]}, "
                f"{len(r['rejections'])} rejected, {r['still_on_trial']} on trial, "
                f"{r['seconds']:.0f} s",
                flush=True,
            )
    report = {
        "experiment": "autopilot_seeds",
        "command": "python experiments/autopilot_seeds.py " + " ".join(argv or sys.argv[1:]),
        "host": host_info(),
        "args": vars(args),
        "signal": "clicks drawn from world v2 (Bernoulli at the world's CTR of what was served)",
        "judge": "world v2's expected CTR on fresh users of the campaign: the agent with the "
        "promoted line minus without it, at the moment of promotion",
        "summary": summarise(runs, args.alpha),
        "runs": runs,
    }
    out = Path(args.out)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report["summary"].items() if k != "harmful"}, indent=1))


if __name__ == "__main__":
    main()
