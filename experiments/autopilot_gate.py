"""The autopilot's gate on simulated logs: how often it promotes a candidate that is no better
(its stated risk), and how often one that is better (its power).

Each run is a campaign's log: 4 active variants at 5 % CTR served with probability
``1 − share``, one candidate served with ``share`` at CTR ``p``; the logged propensities are
exact. The autopilot's looks (``min_impressions · 2^k`` candidate impressions up to
``max_impressions``) are taken in turn on the rows up to each, with the model-free gate
(candidate "serve it wherever it was offered" against what was served), until a verdict. The
signal is simulated clicks; the truth that judges each verdict is the simulated CTRs.

Run: ``.venv/bin/python -m copyloop.experiments.autopilot_gate`` (about 2 minutes here);
writes docs/results/autopilot_gate.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from copyloop.ope.data import BanditFeedback
from copyloop.serve.autopilot import GateSettings, judge_rows


def synthetic_log(
    seed: int, p_candidate: float, n: int = 12_000, share: float = 0.15, p_active: float = 0.05
) -> BanditFeedback:
    """One simulated campaign log (slot 4 is the candidate)."""
    rng = np.random.default_rng(seed)
    k = 5
    probs = np.array([(1 - share) / (k - 1)] * (k - 1) + [share])
    action = rng.choice(k, size=n, p=probs)
    ctr = np.array([p_active] * (k - 1) + [p_candidate])
    return BanditFeedback(
        context=rng.normal(size=(n, 2)),
        mask=np.ones((n, k), bool),
        action=action,
        reward=(rng.random(n) < ctr[action]).astype(np.float64),
        pscore=probs[action],
        logging_probs=np.tile(probs, (n, 1)),
        variant=np.tile(np.arange(k), (n, 1)),
    )


def procedure(data: BanditFeedback, settings: GateSettings) -> str:
    """What the autopilot ends with: each look in turn on the rows up to it, until a verdict."""
    shown = np.flatnonzero(data.action == 4)
    for m in settings.looks:
        if m > shown.size:
            break
        v = judge_rows(data.take(np.arange(shown[m - 1] + 1)), "c", "new", 4, settings)
        if v.action != "wait":
            return v.action
    return "wait"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--null-runs", type=int, default=200)
    ap.add_argument("--power-runs", type=int, default=100)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--out", default="docs/results/autopilot_gate.json")
    args = ap.parse_args(argv)
    settings = GateSettings(alpha=args.alpha, min_impressions=200, max_impressions=1600)
    t0 = time.perf_counter()
    cases = {"null (candidate 5 %, incumbent 5 %)": (0.05, args.null_runs, 0)}
    cases["worse (candidate 3 %)"] = (0.03, args.power_runs, 500_000)
    cases["better (candidate 7.5 %)"] = (0.075, args.power_runs, 1_000_000)
    cases["better (candidate 10 %)"] = (0.10, args.power_runs, 2_000_000)
    out = {}
    for name, (p, runs, base) in cases.items():
        ends = [procedure(synthetic_log(base + s, p), settings) for s in range(runs)]
        promoted = ends.count("promote")
        out[name] = {
            "candidate_ctr": p,
            "runs": runs,
            "promoted": promoted,
            "rejected": ends.count("reject"),
            "share_promoted": promoted / runs,
        }
        print(f"{name}: promoted {promoted} of {runs}")
    report = {
        "experiment": "autopilot_gate",
        "command": "python -m copyloop.experiments.autopilot_gate",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "settings": {
            "alpha": settings.alpha,
            "looks": settings.looks,
            "alpha_per_look": settings.alpha / len(settings.looks),
        },
        "signal": "simulated clicks (Bernoulli draws at the simulated CTRs)",
        "judge": "the simulated CTRs: a promotion is wrong when the candidate is not better",
        "cases": out,
        "seconds": time.perf_counter() - t0,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
