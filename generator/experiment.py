"""Base vs tuned generator in the true click world, with reward-hacking checks.

    python -m copyloop.generator.experiment --tuned runs/gen/online --out docs/results/generator

In order (CleanRL style): parse → log the config → generate ``n`` variants per (campaign,
segment) on *held-out* campaigns with the base and the tuned model (same seeds) → judge every kept
variant with the true world on *held-out* users → KL(tuned ‖ base) → checks → write JSON + Markdown.

Checks that the gain is not reward hacking:

1. held out: campaigns the tuning never saw and users outside the reward's sample;
2. a second judge: the same variants judged by a proxy world (other hidden tastes) and, when a
   fitted click simulator is given, by the simulator — a gain that only one judge sees is suspect;
3. best-of-n transfer: among the base model's variants, pick the top quarter per request by a
   proxy reward (the proxy world / the simulator) and by the world's training-user sample, and
   judge both picks in the true world on held-out users — how much of a reward's optimum
   survives under the truth is what optimising against that reward can be expected to buy.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Args:
    """Arguments of the experiment."""

    tuned: str
    """tuned model version folder"""
    base: str | None = None
    """base model (default: embedded SmolLM2-135M-Instruct)"""
    campaigns: str = "odd"
    """held-out campaigns: odd = the ones `generator tune --campaigns even` never saw"""
    limit: int = 8
    """use at most this many of those campaigns"""
    n: int = 8
    """variants per (campaign, segment)"""
    judge_users: int = 512
    """held-out users per segment judging"""
    proxy_seed: int = 7
    """seed of the proxy world (a deliberately misspecified reward)"""
    clicksim: str | None = None
    """folder of a fitted click simulator to use as a second proxy"""
    seed: int = 123
    """sampling seed (same for both models)"""
    out: str = "docs/results/generator"
    """where the JSON and Markdown go"""


def _parse() -> Args:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    for name, f in Args.__dataclass_fields__.items():
        flag = "--" + name.replace("_", "-")
        if name == "tuned":
            ap.add_argument(flag, required=True)
        else:
            ap.add_argument(
                flag, type=type(f.default) if f.default is not None else str, default=f.default
            )
    return Args(**vars(ap.parse_args()))


def main() -> None:
    import torch

    torch.set_num_threads(1)
    args = _parse()
    print(json.dumps(asdict(args)))
    from copyloop.cli_generator import _ints
    from copyloop.envs import Market
    from copyloop.generator.evaluate import (
        evaluate,
        kl_between,
        paired_lift_interval,
        relative_lift,
    )
    from copyloop.generator.models import load_model
    from copyloop.generator.prompts import CopyRequest
    from copyloop.generator.reward import ClickSimReward, WorldReward, proxy_world

    market = Market.get()
    camps = _ints(args.campaigns, market.catalog.n_campaigns, "campaigns")[: args.limit]
    segs = range(market.population.n_segments)
    reqs = [CopyRequest(c, s) for c in camps for s in segs]
    judge = WorldReward(market, users_per_segment=args.judge_users, seed=args.seed + 1)
    train_users = WorldReward(market, users_per_segment=256, seed=0)  # the tuning reward's users
    proxy = WorldReward(
        market,
        users_per_segment=args.judge_users,
        seed=args.seed + 1,
        world=proxy_world(market, args.proxy_seed),
    )
    others: dict[str, Any] = {f"proxy world (seed {args.proxy_seed})": proxy}
    if args.clicksim:
        others[f"click simulator ({args.clicksim})"] = ClickSimReward(args.clicksim)

    base = load_model(args.base)
    tuned = load_model(args.tuned)
    ev_b = evaluate(base, market, reqs, args.n, judge=judge, seed=args.seed)
    print(f"base  {ev_b.model}: CTR {ev_b.ctr:.5f} kept {ev_b.valid:.0%} d2 {ev_b.distinct2:.3f}")
    ev_t = evaluate(tuned, market, reqs, args.n, judge=judge, seed=args.seed)
    print(f"tuned {ev_t.model}: CTR {ev_t.ctr:.5f} kept {ev_t.valid:.0%} d2 {ev_t.distinct2:.3f}")
    lift = relative_lift(ev_b, ev_t)
    lo, hi = paired_lift_interval(ev_b, ev_t)
    kl = kl_between(tuned, base, market, reqs[:20], 4, seed=args.seed)
    meta = tuned.meta()
    budget = meta.get("tune", {}).get("kl_budget")

    # 2. the same variants under other judges
    judged: dict[str, dict[str, float]] = {}
    for name, fn in {"true world (held-out users)": judge, **others}.items():
        vals = {}
        for tag, ev in (("base", ev_b), ("tuned", ev_t)):
            assert ev.generation is not None
            per = [
                float(np.mean(fn(t, r.campaign, r.segment)))
                for r in reqs
                if (t := ev.generation.texts_for(r.campaign, r.segment))
            ]
            vals[tag] = float(np.mean(per))
        vals["lift"] = vals["tuned"] / vals["base"] - 1.0
        judged[name] = vals
        print(
            f"judge {name}: base {vals['base']:.5f} tuned {vals['tuned']:.5f} {vals['lift']:+.1%}"
        )

    # 3. best-of-n transfer on the base model's variants
    transfer: dict[str, float] = {}
    pickers = {"world, training users": train_users, **others}
    assert ev_b.generation is not None
    for name, fn in {**pickers, "(random pick)": None}.items():
        picked, allv = [], []
        for r in reqs:
            texts = ev_b.generation.texts_for(r.campaign, r.segment)
            if len(texts) < 2:
                continue
            truth = judge(texts, r.campaign, r.segment)
            k = max(1, len(texts) // 4)
            if fn is None:
                order = np.random.default_rng(args.seed).permutation(len(texts))
            else:
                order = np.argsort(-np.asarray(fn(texts, r.campaign, r.segment)))
            picked.append(float(truth[order[:k]].mean()))
            allv.append(float(truth.mean()))
        transfer[name] = float(np.mean(picked) / np.mean(allv) - 1.0)
        print(f"best-of-n by {name}: true-world lift of the pick {transfer[name]:+.1%}")

    result = {
        "config": asdict(args),
        "campaigns": camps,
        "requests": len(reqs),
        "base": {
            "model": ev_b.model,
            "ctr": ev_b.ctr,
            "best_ctr": ev_b.best_ctr,
            "kept": ev_b.valid,
            "distinct2": ev_b.distinct2,
        },
        "tuned": {
            "model": ev_t.model,
            "ctr": ev_t.ctr,
            "best_ctr": ev_t.best_ctr,
            "kept": ev_t.valid,
            "distinct2": ev_t.distinct2,
        },
        "relative_ctr_lift": lift,
        "lift_ci95": [lo, hi],
        "distinct2_ratio": ev_t.distinct2 / ev_b.distinct2,
        "kl_tuned_base": kl,
        "kl_budget": budget,
        "judges": judged,
        "best_of_n_transfer": transfer,
        "tuned_meta": meta,
        "examples": {
            tag: {
                f"{market.catalog.campaign_ids[r.campaign]}/"
                f"{market.population.segment_names[r.segment]}": ev.generation.texts_for(
                    r.campaign, r.segment
                )[:4]
                for r in reqs[:10:3]
            }
            for tag, ev in (("base", ev_b), ("tuned", ev_t))
            if ev.generation is not None
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "base_vs_tuned.json").write_text(json.dumps(result, indent=2, default=str))
    print(
        f"lift {lift:+.1%} [{lo:+.1%}, {hi:+.1%}] · distinct-2 ratio "
        f"{result['distinct2_ratio']:.2f} · KL {kl:.2f} (budget {budget}) → {out}"
    )


if __name__ == "__main__":
    main()
