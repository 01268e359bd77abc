"""One DPO run of the click recipe that also saves its weights at chosen steps, so several
"--steps N" settings are read off one trajectory (issue 15's recipe choice, tune side only).

    python -m experiments.generator_dpo_ckpt --pool runs/gc/s0/pool.parquet --lr 5e-5 \\
        --save-at 20 30 --out runs/gcx/lr5e-5/dpo

The run is ``copyloop generator tune --mode dpo`` with experiments/generator_clicks.sh's
settings (pairs, batch, β, eval every 10 steps, KL checks on 12 prompts, anchored at the base);
``--save-at`` steps must be multiples of 10 so a shorter run with ``--steps N`` follows the same
trajectory (the evaluations draw from the batch order's generator). A checkpoint folder loads
with ``load_model`` but carries no lineage: it is for the tune-side checks, not the judge.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Args:
    """Arguments.

    Attributes:
        pool: the click pool (``copyloop generator pool --signal clicks``).
        out: the run's folder (the final weights; checkpoints in ``<out>/../ck<step>``).
        lr: learning rate.
        kl_coef: DPO's beta.
        steps: optimiser steps.
        kl_budget: sampled-KL budget (nats per sequence) to the base.
        save_at: steps whose weights are saved as well.
        pairing: ``all`` (largest click ratios first; a prompt's best line can be the chosen
            side of several pairs) or ``extremes`` (i-th best against i-th worst: every chosen
            line distinct).
        seed: DPO seed.
        prefix: version names: ``<prefix><steps>st-s<seed>`` for the run and each checkpoint.
        config: market config (world v2).
    """

    pool: str
    out: str
    lr: float = 5e-5
    kl_coef: float = 0.1
    steps: int = 40
    kl_budget: float = 6.0
    save_at: tuple[int, ...] = (20, 30)
    pairing: str = "all"
    seed: int = 0
    prefix: str = "ck-"
    config: str = "docs/results/world_v2.toml"


def parse() -> Args:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pool", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--kl-coef", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--kl-budget", type=float, default=6.0)
    ap.add_argument("--save-at", type=int, nargs="*", default=[20, 30])
    ap.add_argument("--pairing", default="all", choices=["all", "extremes"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefix", default="ck-")
    ap.add_argument("--config", default="docs/results/world_v2.toml")
    ns = vars(ap.parse_args())
    ns["save_at"] = tuple(ns["save_at"])
    return Args(**ns)


def main() -> None:
    a = parse()
    import torch

    torch.set_num_threads(1)
    from copyloop.cli_common import market as load_market
    from copyloop.generator.jobs import TuneJob, run_tune
    from copyloop.generator.models import load_model, save_model
    from copyloop.generator.tune import TuneConfig

    bad = [s for s in a.save_at if s % 10]
    if bad:
        raise ValueError(f"--save-at steps must be multiples of 10 (the eval period), got {bad}")
    market = load_market(Path(a.config))
    cfg = TuneConfig(
        steps=a.steps,
        batch_size=16,
        lr=a.lr,
        kl_coef=a.kl_coef,
        kl_budget=a.kl_budget,
        seed=a.seed,
        eval_every=10,
    )
    job = TuneJob(
        mode="dpo",
        out=Path(a.out),
        config=cfg,
        pool=Path(a.pool),
        pairs_per_prompt=4,
        pairing=a.pairing,
        min_ratio=1.1,
        min_z=1.5,
        kl_anchor="base",
        kl_prompts=12,
        version=f"{a.prefix}{a.steps}st-s{a.seed}",
        campaigns=tuple(range(0, market.catalog.n_campaigns, 2)),
    )
    held: dict[str, Any] = {}

    def load(name: str | None) -> Any:
        lm = load_model(name)
        held.setdefault("lm", lm)  # the first load is the model being tuned
        return lm

    def tick(done: int, m: dict[str, float]) -> None:
        print(
            f"step {done}: "
            + " ".join(f"{k} {m[k]:.4g}" for k in ("reward", "distinct2", "kl_sampled") if k in m),
            flush=True,
        )
        if done in a.save_at:
            lm = held["lm"]
            save_model(
                lm,
                Path(a.out).parent / f"ck{done}",
                version=f"{a.prefix}{done}st-s{a.seed}",
                made_by="checkpoint of a DPO run (tune-side checks only)",
                extra={"kl_sampled": m.get("kl_sampled")},
            )

    res = run_tune(job, market, load=load, steps=tick)
    print(res.summary.get("kept_step"), res.summary.get("kl_sampled_kept"), flush=True)
    label_checkpoints(Path(a.out), a.save_at)


def label_checkpoints(run: Path, steps: tuple[int, ...]) -> None:
    """Give each checkpoint the run's lineage (the same pool, clicks and users trained every step
    of it) and its own step count, so the judge accepts it as what ``--steps N`` would have
    saved (the trajectory is the same: the evaluations, which draw from the batch order's
    generator, fall on the same steps)."""
    import json

    meta = json.loads((run / "copyloop_model.json").read_text())
    for n in steps:
        f = run.parent / f"ck{n}" / "copyloop_model.json"
        if not f.exists():
            continue
        ck = json.loads(f.read_text())
        ck["lineage"] = meta["lineage"]
        ck["tune"] = {**meta["tune"], "steps": n}
        ck["made_by"] = f"{meta['made_by']} (weights at step {n} of {meta['tune']['steps']})"
        f.write_text(json.dumps(ck, indent=2))


if __name__ == "__main__":
    main()
