"""Learning live: the service on the default market under 200k replayed requests, then OPE on
its exported log, judged by the world.

1. ``copyloop serve --demo`` on a fresh store (120 campaigns sharing one LinearTS model, the
   learner on, defaults), on 127.0.0.1.
2. ``copyloop traffic`` (the library call): ``--requests`` simulated users, one reward per
   decision (a click drawn from the world's CTR of the variant served). The service learns
   from those clicks only; the curve reports the world's expected CTR of what it served, per
   window, against uniform and the per-request oracle on the same users.
3. ``copyloop serve export`` → a DecisionLog with the service's logged propensities, then
   off-policy estimates on it: ``copyloop ope`` of the uniform policy on the whole log, and
   ``copyloop agent eval`` of a snapshot the service saved mid-run, on the rows decided after
   it, beside the service itself on those rows (the logging baseline). Each estimate is
   checked against that policy's true value on the same rows: the world's expected CTR of
   its choices for the logged users. Signal (logged clicks) and judge (the world's expected
   CTR) differ.

Run: ``.venv/bin/python experiments/serve_live.py`` (~10 minutes here); writes
docs/results/serve_live.json and docs/results/serve_live.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from _common import host_info  # noqa: E402

from serve import env, free_port, stop, wait_healthy  # noqa: E402


def copyloop(*args: str, ok: tuple[int, ...] = (0,)) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "copyloop.cli", *args], capture_output=True, text=True, env=env()
    )
    if res.returncode not in ok:
        raise RuntimeError(f"copyloop {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
    return res.stdout


def true_value(market: Any, log: Any, probs: npt.NDArray[np.float64]) -> float:
    """The world's expected CTR of playing ``probs`` (n, K: the rows' candidate slots) for the
    logged users: ``mean_i Σ_k probs[i, k] · CTR(user_i, candidate_ik)``."""
    cat = market.catalog
    slot = {}
    for c in range(cat.n_campaigns):
        for k, v in enumerate(cat.slots[c]):
            if v >= 0:
                slot[cat.variant_ids[v]] = (c, k)
    users = np.array([int(str(u)[1:]) for u in log.column("user_id")], np.int64)
    cands = log.table.column("candidates").to_pylist()
    camps = np.array([slot[c[0]][0] for c in cands], np.int64)
    ctr = market.world.first_ctr(users, camps).astype(np.float64)
    n, k = probs.shape
    val = np.zeros(n)
    for i, cs in enumerate(cands):
        cols = [slot[c][1] for c in cs]
        val[i] = float(probs[i, : len(cols)] @ ctr[i, cols])
    return float(val.mean())


def ope(logs: Path, target: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        copyloop("ope", "--logs", str(logs), *target, "--estimators", "ipw,snipw,dr", "--json")
    )
    return out


def covers(est: dict[str, Any], truth: float) -> bool:
    return bool(est["lower"] <= truth <= est["upper"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--window", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "serve_live.json"))
    args = ap.parse_args()

    from copyloop.agents.offline import policy_probs
    from copyloop.contract import read_variants_for
    from copyloop.envs import Market
    from copyloop.serve.store import SQLiteStore
    from copyloop.serve.traffic import TrafficConfig, plot_curve, run_traffic

    t0 = time.perf_counter()
    market = Market.get()
    with tempfile.TemporaryDirectory(prefix="copyloop-serve-live-") as d:
        tmp = Path(d)
        db = tmp / "live.db"
        store = SQLiteStore(db)
        key = store.create_key("client", "experiment").result()
        store.close()
        port = free_port()
        cmd = [sys.executable, "-m", "copyloop.cli", "serve", "--demo",
               "--store", f"sqlite:///{db}", "--port", str(port)]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env(), stderr=subprocess.DEVNULL)
        try:
            wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
            cfg = TrafficConfig(
                url=f"http://127.0.0.1:{port}",
                key=key,
                requests=args.requests,
                concurrency=args.concurrency,
                window=args.window,
                seed=args.seed,
                max_seconds=3600,
            )
            rep = run_traffic(cfg, market)
        finally:
            stop(proc)  # SIGTERM: the service saves its last snapshot on the way out
        logs = tmp / "export.parquet"
        copyloop("serve", "export", "--store", f"sqlite:///{db}", "--out", str(logs))
        st = SQLiteStore(db)
        snaps = st.snapshots("market")
        st.close()

        from copyloop.agents.offline import load_fitted, read_log, split_log

        log = read_log(logs, read_variants_for(logs))
        # A snapshot from the middle of the run, judged on the rows decided after it (the
        # last snapshot learned from every row: scoring it on them would be in-sample).
        ts = log.table.column("ts").cast("int64").to_numpy() / 1e6
        mid = float(np.median(ts))
        snap = min(snaps, key=lambda x: abs(x.created - mid))
        split = float((ts <= snap.created).mean())
        held = split_log(log, split)[1]
        policy, _ = load_fitted(snap.path)
        ev = json.loads(
            copyloop("agent", "eval", "--logs", str(logs), "--policy", snap.path,
                     "--split", f"{split:.6f}", "--json", ok=(0, 1))
        )  # fmt: skip
        lens = np.array([len(c) for c in held.table.column("candidates").to_pylist()])
        k = int(lens.max())
        logged = np.zeros((held.n_rows, k))
        for i, p in enumerate(held.table.column("action_probs").to_pylist()):
            logged[i, : len(p)] = p
        uni_all_lens = np.array([len(c) for c in log.table.column("candidates").to_pylist()])
        ku = int(uni_all_lens.max())
        uni = (np.arange(ku)[None, :] < uni_all_lens[:, None]) / uni_all_lens[:, None]
        np.save(tmp / "uniform.npy", uni)
        results = {
            "uniform (whole log, copyloop ope --target-probs)": {
                "ope": ope(logs, ["--target-probs", str(tmp / "uniform.npy")])["estimates"],
                "true_value": true_value(market, log, uni),
            },
            "mid-run snapshot, on the rows after it (copyloop agent eval)": {
                "ope": ev["policy"]["estimates"],
                "true_value": true_value(market, held, policy_probs(policy, held)),
                "snapshot": {"version": snap.version, "model_version": snap.model_version,
                             "split": split, "held_out_rows": held.n_rows},
            },
            "the service itself on those rows (logging baseline of agent eval)": {
                "ope": ev["baseline"]["estimates"],
                "true_value": true_value(market, held, logged),
            },
        }  # fmt: skip
        served_truth = rep.served_ctr
    for r in results.values():
        r["covered"] = {e["estimator"]: covers(e, r["true_value"]) for e in r["ope"]}
    out = Path(args.out)
    report = {
        "host": host_info(),
        "args": vars(args),
        "signal": "clicks drawn from world v1's CTR of the served variant (the service's rewards)",
        "judge": "the world's expected CTR (never sent to the service)",
        "traffic": rep.to_dict(),
        "served_true_value": served_truth,
        "ope": results,
        "total_seconds": time.perf_counter() - t0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    plot_curve(rep, out.with_suffix(".png"), "copyloop serve --demo learning live (LinearTS)")
    first, last = rep.curve[0], rep.curve[-1]
    print(
        f"{rep.requests:,} requests at {rep.pairs_per_s:,.0f} pairs/s; served CTR "
        f"{first['served']:.4f} → {last['served']:.4f} (uniform {last['uniform']:.4f}, oracle "
        f"{last['oracle']:.4f}); wrote {out} and {out.with_suffix('.png')}"
    )
    for name, r in results.items():
        print(f"{name}: true {r['true_value']:.4f}, covered {r['covered']}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
