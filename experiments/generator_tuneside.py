"""Tune-side checks of a click-tuned generator: distinct-2, audit flags and sampled KL to the
base, on the campaigns the tuning trained on (the even ones) — never the judge's.

    python -m experiments.generator_tuneside --model base --out runs/gcx/ts/base.json
    python -m experiments.generator_tuneside --model runs/gcx/a/ck20 --out runs/gcx/ts/a20.json

Used by experiments/generator_clicks.sh's recipe choice (issue 15): a setting is picked on
these numbers alone, before the judge sees it. Every model samples the same requests with the
same seeds (common random numbers), so two settings differ by their weights, not by the draw.
The world's expected CTR on tune-half users is written too, as information only (it is the
same monitor the DPO run draws its curves with; the recipe choice does not read it).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    """Arguments.

    Attributes:
        model: 'base' or a model folder.
        out: JSON file written.
        campaigns: how many even campaigns (spread over the 60, all 6 categories).
        n: lines per (campaign, segment) request.
        kl_requests: requests (x 4 lines) of the sampled KL estimate.
        seed: sampling seed (the same for every model).
        config: market config (world v2).
    """

    model: str
    out: str
    campaigns: int = 30
    n: int = 4
    kl_requests: int = 20
    seed: int = 321
    config: str = "docs/results/world_v2.toml"


def parse() -> Args:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--campaigns", type=int, default=30)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--kl-requests", type=int, default=20)
    ap.add_argument("--seed", type=int, default=321)
    ap.add_argument("--config", default="docs/results/world_v2.toml")
    return Args(**vars(ap.parse_args()))


def main() -> None:
    a = parse()
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from copyloop.cli_common import market as load_market
    from copyloop.envs.audit import audit_flags, product_cosine
    from copyloop.generator.clicks import UserSplit
    from copyloop.generator.evaluate import evaluate, kl_between
    from copyloop.generator.models import load_model
    from copyloop.generator.prompts import CopyRequest
    from copyloop.generator.reward import WorldReward, session_encoder

    market = load_market(Path(a.config))
    even = list(range(0, market.catalog.n_campaigns, 2))
    step = max(1, len(even) // a.campaigns)
    camps = even[::step][: a.campaigns]
    segs = range(market.population.n_segments)
    reqs = [CopyRequest(c, s) for c in camps for s in segs]
    lm = load_model(None if a.model == "base" else a.model)
    monitor = WorldReward(
        market, users_per_segment=256, seed=1, pool=UserSplit(0).users(market, "tune")
    )
    ev = evaluate(lm, market, reqs, a.n, judge=monitor, seed=a.seed)
    assert ev.generation is not None
    texts: list[str] = []
    cs: list[int] = []
    for r in reqs:
        t = ev.generation.texts_for(r.campaign, r.segment)
        texts += t
        cs += [r.campaign] * len(t)
    prods = [market.catalog.products[c] for c in cs]
    cos = product_cosine(market, texts, cs, encoder=session_encoder())
    flags = audit_flags(texts, prods, cosine=cos)
    kl = None
    if a.model != "base":
        kl = kl_between(lm, load_model(None), market, reqs[: a.kl_requests], 4, seed=a.seed)
    out = {
        "model": f"{lm.name}@{lm.version}",
        "source": a.model,
        "campaigns": camps,
        "categories": sorted({int(market.catalog.products[c].category) for c in camps}),
        "n": a.n,
        "seed": a.seed,
        "kept": ev.valid,
        "distinct2": ev.distinct2,
        "lines": len(texts),
        "flags": {k: float(v.mean()) if v.size else 0.0 for k, v in flags.items()},
        "kl_to_base": kl,
        "monitor_ctr_info_only": ev.ctr,
        "per_request": [
            {
                "campaign": g.campaign,
                "segment": g.segment,
                "kept": g.kept,
                "d2": g.distinct2,
                "ctr": g.ctr if np.isfinite(g.ctr) else None,
            }
            for g in ev.groups
        ],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    share: dict[str, float] = out["flags"]  # type: ignore[assignment]
    print(
        f"{a.model}: kept {ev.valid:.0%} distinct-2 {ev.distinct2:.3f} flagged "
        f"{share['any']:.1%} KL {kl} (monitor CTR {ev.ctr:.5f}) -> {a.out}"
    )


if __name__ == "__main__":
    main()
