"""Per-impression cost of click world v2 against v1, interleaved in one process.

The end-to-end ``bench/env_throughput.py`` runs (``run*/v1``, ``run*/v2`` beside this file)
moved by up to ±50 % between runs on the shared 2-core machine, more than any difference
between the worlds. This times the same work for both worlds in alternation — a batch of
sessions drawn (users, campaigns, true CTRs, observations: ``draw_sessions``) and one batched
env step — so load changes hit both alike, and reports the median ratio.

Run: ``.venv/bin/python docs/results/world_env_throughput/interleaved.py`` (writes
``interleaved.json`` beside itself; under a minute).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy starts its thread pool

import numpy as np

from copyloop.envs import CopyMarketVectorEnv, Market, MarketConfig
from copyloop.envs.market import draw_sessions

BATCH, ROUNDS, REPS = 1024, 60, 300


def main() -> None:
    v1 = Market.get(MarketConfig())
    markets = {"v1": v1, "v2": v1.with_world("v2")}
    envs = {k: CopyMarketVectorEnv(BATCH, market=m) for k, m in markets.items()}
    for e in envs.values():
        e.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 6, size=(REPS, BATCH))
    times: dict[str, dict[str, list[float]]] = {k: {"draw": [], "step": []} for k in markets}
    for r in range(ROUNDS):
        for k in ("v1", "v2") if r % 2 == 0 else ("v2", "v1"):
            rng = np.random.default_rng(r)
            t = time.perf_counter()
            for _ in range(REPS):
                draw_sessions(markets[k], BATCH, rng, 0.0)
            times[k]["draw"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for a in actions:
                envs[k].step(a)
            times[k]["step"].append(time.perf_counter() - t)
    out = {
        "batch": BATCH,
        "rounds": ROUNDS,
        "reps_per_round": REPS,
        "impressions_per_s": {
            k: {w: BATCH * REPS / statistics.median(v) for w, v in t.items()}
            for k, t in times.items()
        },
        "ratio_v2_over_v1": {
            w: statistics.median(a / b for a, b in zip(times["v1"][w], times["v2"][w], strict=True))
            for w in ("draw", "step")
        },
    }
    path = Path(__file__).with_name("interleaved.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
