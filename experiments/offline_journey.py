"""The offline journey, judged by the world: fit agents on a simulated log with
``copyloop agent fit --split``, estimate them off-policy with ``copyloop agent eval`` on the
held-out rows, and check each estimate's interval against the frozen policy's true value.

Setup (all seeded; the numbers of a run are in ``docs/offline.md``):

* **Log**: ``copyloop simulate --rounds 200000`` — uniform logging on the default market
  (120 real products, 6–8 copy variants each, 100k users, one impression per session).
* **Fit**: each agent on the first ``--split`` of the log by time (``agent fit --split 0.8``),
  with text features from the market's catalog featurizer (the log names its market).
* **Estimate**: ``agent eval --json`` on the remaining rows: IPW, SNIPW and DR with their
  default (bootstrap-t) 95 % intervals, beside the logging policy, and the gate's verdict.
* **Truth**: the frozen policy's expected CTR on the same held-out impressions,
  ``mean_i Σ_k π(k | row i) · CTR(user_i, candidate k)``: π is the distribution the policy
  gives each row (:func:`copyloop.agents.offline.policy_probs`, the call ``agent eval``
  makes), CTR the click world's first-impression CTR of that row's user and campaign — what
  running the frozen policy on those impressions earns on average.

Run: ``.venv/bin/python experiments/offline_journey.py`` (about 1.5 minutes on one core); it
writes ``docs/results/offline_journey.json``; copy the printed table into ``docs/offline.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class Args:
    rounds: int = 200_000
    """impressions of uniform logging to simulate"""
    split: float = 0.8
    """share of the log (by time) the agents are fit on; the rest is held out"""
    agents: str = "linear_ts,logistic_ts,bernoulli_ts"
    """agents to fit and evaluate, comma separated"""
    seed: int = 0
    """seed of the simulation and of the agents"""
    config: str | None = None
    """market TOML (default: the default market)"""
    out: str = "docs/results/offline_journey.json"
    """results file"""
    workdir: str = "runs/offline_journey"
    """folder for the log and the policies"""


def world_value(market: Any, log: Any, probs: npt.NDArray[np.float64]) -> float:
    """The true expected CTR of playing ``probs`` (n, K) on ``log``'s rows: the mean over rows
    of ``Σ_k probs[k] · CTR(user, candidate k)`` in ``market``'s click world.

    ``log`` must be simulated in ``market`` (user ids ``u<index>``, campaign-set candidates in
    the catalog's slot order), with its variants table attached.
    """
    cat = market.catalog
    if log.variants is None or log.variants.variant_ids != cat.variant_ids:
        raise ValueError("the log's variants are not this market's catalog — simulate it there")
    if log.table.column("candidates").null_count != log.n_rows:
        raise ValueError("the log must offer each campaign's full set (null `candidates`)")
    users = np.array([int(str(u)[1:]) for u in log.column("user_id")], np.int64)
    index = {c: i for i, c in enumerate(cat.campaign_ids)}
    camps = np.array([index[c] for c in log.column("campaign_id")], np.int64)
    ctr = market.world.first_ctr(users, camps).astype(np.float64)  # (n, K of the catalog)
    k = probs.shape[1]
    return float((probs * ctr[:, :k]).sum(axis=1).mean())


def true_values(policy_path: Path, logs: Path, split: float) -> dict[str, float]:
    """The world's value of the frozen policy, and of uniform, on the held-out rows."""
    from copyloop.agents.offline import (
        candidate_rows,
        load_fitted,
        policy_probs,
        read_log,
        split_log,
    )
    from copyloop.cli_clicksim import market_of_log
    from copyloop.contract import log_metadata, read_variants_for

    policy, _ = load_fitted(policy_path)
    held = split_log(read_log(logs, read_variants_for(logs)), split)[1]
    market = market_of_log(log_metadata(logs), "auto")
    valid = candidate_rows(held, policy.store) >= 0  # type: ignore[arg-type]
    return {
        "policy": world_value(market, held, policy_probs(policy, held)),
        "uniform": world_value(market, held, valid / valid.sum(axis=1, keepdims=True)),
    }


def copyloop(*args: str) -> tuple[int, str, float]:
    """Run a ``copyloop`` command in a fresh interpreter: (exit code, stdout, seconds)."""
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "copyloop.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    )
    if res.returncode not in (0, 1):
        raise RuntimeError(f"copyloop {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
    return res.returncode, res.stdout, time.perf_counter() - t0


def render(res: dict[str, Any]) -> str:
    """The markdown table of a results dict (the logger, uniform here, judged by uniform's true
    value on the same rows)."""
    lines = [
        "| policy | estimator | estimate | 95 % interval | true value | inside |",
        "|---|---|---|---|---|---|",
    ]

    def row(name: str, e: dict[str, Any], truth: float) -> str:
        inside = "yes" if e["lower"] <= truth <= e["upper"] else "**no**"
        return (
            f"| {name} | {e['estimator']} | {e['estimate']:.5f} | "
            f"[{e['lower']:.5f}, {e['upper']:.5f}] | {truth:.5f} | {inside} |"
        )

    for a in res["agents"]:
        lines += [row(a["agent"], e, a["true_value"]) for e in a["estimates"]]
    logger = res["agents"][0]["baseline"]
    lines += [row("logging (uniform)", e, res["uniform_true_value"]) for e in logger]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from copyloop.experiments.clicksim_fidelity import _git

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in fields(Args):
        kind = str if f.default is None else type(f.default)
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    args = Args(**vars(ap.parse_args(argv)))
    print(json.dumps(asdict(args)))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs.parquet"
    t0 = time.perf_counter()
    if not logs.exists():
        sim = ["simulate", "--rounds", str(args.rounds), "--seed", str(args.seed)]
        sim += ["--out", str(logs)] + (["--config", args.config] if args.config else [])
        copyloop(*sim)
    agents = []
    uniform = None
    for name in args.agents.split(","):
        out = work / f"{name}.npz"
        fit = ["agent", "fit", "--logs", str(logs), "--agent", name, "--split", str(args.split)]
        _, _, fit_s = copyloop(*fit, "--seed", str(args.seed), "--out", str(out), "--json")
        code, stdout, eval_s = copyloop(
            "agent", "eval", "--logs", str(logs), "--policy", str(out), "--json"
        )
        rep = json.loads(stdout)
        truth = true_values(out, logs, args.split)
        uniform = truth["uniform"]
        agents.append(
            {
                "agent": name,
                "fit_seconds": round(fit_s, 1),
                "eval_seconds": round(eval_s, 1),
                "true_value": truth["policy"],
                "verdict": rep["verdict"],
                "exit_code": code,
                "estimates": [
                    {
                        **{k: e[k] for k in ("estimator", "estimate", "lower", "upper", "ess")},
                        "covers": e["lower"] <= truth["policy"] <= e["upper"],
                    }
                    for e in rep["policy"]["estimates"]
                ],
                "baseline": rep["baseline"]["estimates"],
                "held_out_rows": rep["rows"],
            }
        )
        print(json.dumps(agents[-1]), flush=True)
    res = {
        "command": "python experiments/offline_journey.py " + " ".join(argv or sys.argv[1:]),
        "git": _git(),
        "python": platform.python_version(),
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "args": asdict(args),
        "uniform_true_value": uniform,
        "agents": agents,
    }
    from copyloop.contract import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(render(res))


if __name__ == "__main__":
    main()
