"""Several API replicas and one learner on one store, under ``copyloop traffic``.

Starts on 127.0.0.1, and stops at the end: one ``copyloop serve --role learner --demo`` (the
default market's 120 campaigns, one LinearTS model) and ``--replicas`` ``copyloop serve --role
api`` processes on the same store (SQLite WAL by default; ``--store postgresql://…`` for an
empty PostgreSQL database). Then, alternating, ``--repeats`` times:

1. traffic against **one** replica (the learner joins, learns and hands out snapshots);
2. traffic against **all** replicas: request ``i`` ranks on replica ``i mod R`` and posts its
   reward to the next one, so every reward joins a decision another process took.

Reports pairs/s of each and their ratio, HTTP p99, CPU per pair of every process (the box's
cores are shared by the replicas, the learner and the load generator, so the CPU a pair costs
each process says what more cores would buy), each replica's snapshot pickup (learner
records a snapshot → replica serves it), and the store after the run: decisions vs distinct
event ids, rewarded decisions not joined.

Run: ``.venv/bin/python bench/serve_replicas.py`` (about 2 minutes); writes
bench/results/serve_replicas.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REPO_ROOT,
    cpu_seconds,
    env,
    free_port,
    host_info,
    stop,
    wait_healthy,
    write_results,
)

GOALS = {"pickup_s": 1.0}


def start(store: str, role: str, snapshots: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "copyloop.cli", "serve", *(["--demo"] if role != "api" else []),
        "--role", role, "--store", store, "--port", str(port), "--snapshot-dir", str(snapshots),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env(), stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(f"{url}/healthz", proc, seconds=300.0)
    return proc, url


def store_check(store: str) -> dict[str, int]:
    """Decisions, distinct event ids, rewarded decisions and the rewarded ones not joined."""
    from copyloop.serve.store import open_store

    st = open_store(store)
    try:
        out: dict[str, int] = {}
        for cid in [c.campaign_id for c in st.campaigns()]:
            for k, v in st.stats(cid).items():
                if isinstance(v, int | float):
                    out[k] = out.get(k, 0) + int(v)
        return out
    finally:
        st.close()


def run(
    urls: list[str], procs: list[subprocess.Popen[bytes]], market: Any, key: str, requests: int,
    concurrency: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    from copyloop.serve.traffic import TrafficConfig, run_traffic

    cfg = TrafficConfig(
        url=urls[0], replicas=tuple(urls[1:]), key=key, requests=requests,
        concurrency=concurrency, seed=seed,
    )  # fmt: skip
    c0 = [cpu_seconds(p.pid) for p in procs]
    me0 = cpu_seconds(os.getpid())
    rep = run_traffic(cfg, market)
    cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, c0, strict=True)]
    pairs = max(rep.rewards, 1)
    servers = rep.replica_servers or [rep.server]
    return {
        "replicas": len(urls),
        "pairs_per_s": rep.pairs_per_s,
        "rank_ms": rep.rank_ms,
        "reward_ms": rep.reward_ms,
        "http_p99_ms": max(rep.rank_ms["p99"], rep.reward_ms["p99"]),
        "errors": rep.errors,
        "cpu_us_per_pair": {
            "learner": cpu[0] / pairs * 1e6,
            **{f"replica {i + 1}": c / pairs * 1e6 for i, c in enumerate(cpu[1:])},
            "load generator": (cpu_seconds(os.getpid()) - me0) / pairs * 1e6,
        },
        "decisions_by_replica": [s.get("decisions", 0.0) for s in servers],
        "pickup_p99_le_s": [s.get("pickup_p99_le_s") for s in servers],
        "pickup_max_le_s": [s.get("pickup_max_le_s") for s in servers],
        "pickups": [s.get("pickup_count", 0.0) for s in servers],
        "served_ctr": rep.served_ctr,
        "acknowledged": rep.requests,
    }


def render(r: dict[str, Any]) -> str:
    h = r["host"]
    one, many = r["one"], r["many"]
    lines = [
        f"# bench/serve_replicas — {r['replicas']} API replicas + 1 learner on one store",
        "",
        f"`{r['command']}` · {h['date']} · commit {h['git_commit']} · {h['cpu_model']} "
        f"({h['cpu_count']} cores, shared by every process and the load generator) · store: "
        f"{r['store_kind']} · load average {r['load_start'][0]} → {r['load_end'][0]}",
        "",
        "| traffic to | pairs/s | HTTP p99 ms | CPU µs/pair: learner | replicas (each) | load "
        "generator | snapshot pickup p99 / max |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for name, x in (("one replica", one), (f"{r['replicas']} replicas", many)):
        cpu = x["cpu_us_per_pair"]
        reps = ", ".join(f"{v:,.0f}" for k, v in cpu.items() if k.startswith("replica"))
        pick = ", ".join(
            f"≤ {p} / ≤ {m} s"
            for p, m in zip(x["pickup_p99_le_s"], x["pickup_max_le_s"], strict=True)
        )
        lines.append(
            f"| {name} | {x['pairs_per_s']:,.0f} | {x['http_p99_ms']:.1f} | {cpu['learner']:,.0f} "
            f"| {reps} | {cpu['load generator']:,.0f} | {pick} |"
        )
    s = r["store_after"]
    lines += [
        "",
        f"Ratio, all replicas / one: **{r['ratio']:.2f}×** (medians of {r['args']['repeats']} "
        "alternating runs).",
        "",
        f"Store after the runs: {s.get('decisions', 0):,} decisions ({r['acknowledged']:,} "
        f"acknowledged), {s.get('rewards', 0):,} rewards, {r['not_joined']} decisions not "
        "joined.",
        "",
        "| goal | target | measured | passed |",
        "|---|---|---|---|",
    ]
    for g in r["goals"]:
        lines.append(f"| {g['goal']} | {g['target']} | {g['measured']} | {g['passed']} |")
    lines += ["", r["note"], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=None, help="store URL (default: a fresh SQLite file)")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--requests", type=int, default=10_000, help="rank calls per run")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    ap.add_argument("--name", default="serve_replicas", help="results file stem")
    args = ap.parse_args()
    from rich.console import Console

    from copyloop.envs import Market
    from copyloop.serve.store import open_store

    console = Console()
    t0 = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    market = Market.get()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="copyloop-bench-replicas-") as d:
        tmp = Path(d)
        store = args.store or f"sqlite:///{tmp / 'serve.db'}"
        st = open_store(store)
        if st.campaigns():
            st.close()
            raise SystemExit(f"{store} already holds campaigns — give an empty store")
        key = st.create_key("client", "bench").result()
        st.close()
        try:
            learner, _ = start(store, "learner", tmp / "snapshots", tmp / "learner.log")
            procs.append(learner)
            urls = []
            for i in range(args.replicas):
                p, u = start(store, "api", tmp / "snapshots", tmp / f"api{i}.log")
                procs.append(p)
                urls.append(u)
            warm = run(urls, procs, market, key, 1000, args.concurrency, 99)
            ones, manys = [], []
            for i in range(args.repeats):
                ones.append(
                    run(urls[:1], procs, market, key, args.requests, args.concurrency, 2 * i)
                )
                manys.append(
                    run(urls, procs, market, key, args.requests, args.concurrency, 2 * i + 1)
                )
                console.print(
                    f"run {i + 1}: one replica {ones[-1]['pairs_per_s']:,.0f} pairs/s, "
                    f"{args.replicas} replicas {manys[-1]['pairs_per_s']:,.0f} pairs/s"
                )
            after = store_check(store)
            deadline = time.perf_counter() + 30.0  # the learner's last joins
            while after.get("joined", 0) < after.get("decisions", 0):
                if time.perf_counter() > deadline:
                    break
                time.sleep(0.5)
                after = store_check(store)
        finally:
            for p in procs:
                stop(p)

    def med(runs: list[dict[str, Any]]) -> dict[str, Any]:
        best = sorted(runs, key=lambda x: x["pairs_per_s"])[len(runs) // 2]
        return {**best, "pairs_per_s_runs": [x["pairs_per_s"] for x in runs]}

    one, many = med(ones), med(manys)
    acked = sum(x["acknowledged"] for x in (warm, *ones, *manys))
    errors = [x["errors"] for x in (warm, *ones, *manys) if x["errors"]]
    not_joined = after.get("decisions", 0) - after.get("joined", 0)
    ratio = float(
        np.median([m["pairs_per_s"] for m in manys]) / np.median([o["pairs_per_s"] for o in ones])
    )
    worst_pickup = max(
        (p for x in (*ones, *manys) for p in x["pickup_max_le_s"] if p is not None), default=None
    )
    goals = [
        {
            "goal": "snapshot pickup, every replica, every run (histogram bucket bound)",
            "target": f"≤ {GOALS['pickup_s']:.0f} s",
            "measured": f"≤ {worst_pickup} s" if worst_pickup is not None else "none picked up",
            "passed": worst_pickup is not None and worst_pickup <= GOALS["pickup_s"],
        },
        {
            "goal": "decisions in the store = decisions acknowledged (none lost, none twice; "
            "an event id used twice would be a 409)",
            "target": f"{acked:,}, no errors",
            "measured": f"{after.get('decisions', 0):,}, errors {errors or 'none'}",
            "passed": after.get("decisions", 0) == acked and not errors,
        },
        {
            "goal": "every reward joined (each decision got one, through another replica)",
            "target": "0 decisions open",
            "measured": str(not_joined),
            "passed": not_joined == 0,
        },
    ]
    report = {
        "host": host_info(),
        "command": "python bench/serve_replicas.py " + " ".join(sys.argv[1:]),
        "args": vars(args),
        "store_kind": "PostgreSQL" if store.startswith("postgres") else "SQLite (WAL, FULL)",
        "replicas": args.replicas,
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "one": one,
        "many": many,
        "ratio": ratio,
        "store_after": after,
        "acknowledged": acked,
        "not_joined": not_joined,
        "goals": goals,
        "all_goals_passed": all(g["passed"] for g in goals),
        "note": (
            "All processes share this machine's cores with the load generator: the ratio is "
            "what a second replica buys on the same 2 cores, not on a second machine. The CPU "
            "per pair of a replica is the capacity figure that scales with cores "
            "(docs/scaling.md)."
        ),
        "total_seconds": time.perf_counter() - t0,
    }
    md = render(report)
    console.print(md)
    write_results(args.out, args.name, report, md, console)


if __name__ == "__main__":
    main()
