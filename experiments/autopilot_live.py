"""The autopilot end to end on world v2: a service that puts new copy on trial against the
same service serving the catalog only, under the same replayed users.

1. Two ``copyloop serve --demo`` processes on world v2 (``--config``; 120 campaigns sharing one
   LinearTS model), fresh stores, on 127.0.0.1: **A** serves the catalog only; **B** gives
   ``--campaigns`` campaigns (all six categories) a protected control (their first catalog
   line), an exploration slice (``--share``) and new lines on trial — ``--good`` hand-written
   lines per campaign (the world audit's "good" templates: the product's name, a benefit
   from its description, a call to action; or, with ``--proposer generator``, lines the
   generator writes for the campaign's product, ``copyloop.generator.propose``) and ``--bad``
   lines from a deliberately bad generator (the same templates about a sibling product:
   off-product copy).
2. ``copyloop traffic`` (the library call) replays the same users to both in ``--chunks``
   chunks; clicks are Bernoulli draws from the world's CTR of what each served (new lines
   scored by ``world.ctr_of_texts``). After each chunk ``copyloop autopilot``'s round runs on
   B: the gate judges each candidate at its looks and settles the verdicts.
3. The result: served CTR (the world's expected CTR of what was served, never sent to the
   services) per chunk for A and B, their paired difference over chunks with a t-interval,
   and every verdict by kind (a bad line must never be promoted).

Signal: clicks drawn from the world. Judge: the world's expected CTR. They differ.

Run: ``.venv/bin/python experiments/autopilot_live.py --requests 1000000`` (the issue's
scale); writes docs/results/autopilot_live.{json,png}.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from _common import env, free_port, host_info, stop, wait_healthy  # noqa: E402

CONFIG = REPO / "docs" / "results" / "world_v2.toml"


def start(db: Path, log: Path) -> tuple[subprocess.Popen[bytes], str, str, str]:
    from copyloop.serve.store import SQLiteStore

    st = SQLiteStore(db)
    admin = st.create_key("admin", "experiment").result()
    client = st.create_key("client", "experiment").result()
    st.close()
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "copyloop.cli",
        "serve",
        "--demo",
        "--config",
        str(CONFIG),
        "--store",
        f"sqlite:///{db}",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, env=env(), stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(f"{url}/healthz", proc, seconds=600.0)
    return proc, url, admin, client


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1_000_000, help="per service")
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--campaigns", type=int, default=6)
    ap.add_argument("--good", type=int, default=2, help="good lines on trial per campaign")
    ap.add_argument(
        "--proposer",
        choices=("templates", "generator"),
        default="templates",
        help="who writes the --good lines: the audit's templates, or the generator "
        "(copyloop.generator.propose, --generator model)",
    )
    ap.add_argument("--generator", default=None, help="model folder (default: SmolLM2)")
    ap.add_argument("--bad", type=int, default=2, help="off-product lines per campaign")
    ap.add_argument("--share", type=float, default=0.15, help="exploration slice")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--min-impressions", type=int, default=250)
    ap.add_argument("--max-impressions", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "autopilot_live"))
    args = ap.parse_args(argv)

    from copyloop.cli_common import market as load_market
    from copyloop.envs.audit import audit_campaigns, audit_lines
    from copyloop.serve.autopilot import run_once
    from copyloop.serve.client import Client
    from copyloop.serve.traffic import TrafficConfig, run_traffic

    t0 = time.perf_counter()
    m = load_market(CONFIG)
    cat = m.catalog
    chosen = audit_campaigns(m, args.campaigns)
    ids = [cat.campaign_ids[c] for c in chosen.tolist()]
    lines = audit_lines(cat.products, chosen, seed=args.seed)
    trial: dict[str, tuple[str, str]] = {}
    kind_of: dict[str, str] = {}
    if args.proposer == "generator":
        from copyloop.generator.generate import CopyGenerator
        from copyloop.generator.models import load_model
        from copyloop.generator.propose import propose

        gen = CopyGenerator(load_model(args.generator), m)
        for line in propose(gen, ids, args.good, seed=args.seed):
            trial[line.variant_id] = (line.campaign_id, line.text)
            kind_of[line.variant_id] = "generated"
    for n, (c, cid) in enumerate(zip(chosen.tolist(), ids, strict=True)):
        kinds = [("off_product", args.bad)]
        if args.proposer == "templates":
            kinds.insert(0, ("good", args.good))
        for kind, count in kinds:
            for k, text in enumerate(lines[kind][n][:count]):
                vid = f"{cid}~{kind}{k}"
                trial[vid] = (cid, text)
                kind_of[vid] = kind
        del c
    report: dict[str, Any] = {
        "experiment": "autopilot_live",
        "command": "python experiments/autopilot_live.py " + " ".join(argv or sys.argv[1:]),
        "host": host_info(),
        "args": vars(args),
        "signal": "clicks drawn from world v2 (Bernoulli at the world's CTR of what was served)",
        "judge": "world v2's expected CTR of what was served (never sent to the services)",
        "campaigns": ids,
        "candidates": {
            v: {"campaign": c, "kind": kind_of[v], "text": t} for v, (c, t) in trial.items()
        },
    }
    procs = []
    with tempfile.TemporaryDirectory(prefix="copyloop-autopilot-live-") as d:
        tmp = Path(d)
        try:
            pa, url_a, _, key_a = start(tmp / "a.db", tmp / "a.log")
            procs.append(pa)
            pb, url_b, admin_b, key_b = start(tmp / "b.db", tmp / "b.log")
            procs.append(pb)
            with Client(url_b, admin_b, timeout=900.0) as admin:
                camps = {c.campaign_id: c for c in admin.campaigns()}
                for cid in ids:
                    admin.update_campaign(
                        cid, control=camps[cid].active_variants[0], explore_share=args.share
                    )
                    mine = {v: t for v, (c, t) in trial.items() if c == cid}
                    admin.add_candidates(cid, mine)
                per = args.requests // args.chunks
                chunks, verdicts = [], []
                for k in range(args.chunks):
                    common = {
                        "requests": per,
                        "concurrency": args.concurrency,
                        "seed": 1000 * args.seed + k,
                        "campaigns": tuple(ids),
                    }
                    ra = run_traffic(TrafficConfig(url=url_a, key=key_a, **common), m)
                    rb = run_traffic(
                        TrafficConfig(url=url_b, key=key_b, extra_copy=trial, **common), m
                    )

                    def judge(cid: str, admin: Client = admin) -> list[Any]:
                        return admin.judge(
                            cid,
                            alpha=args.alpha,
                            min_impressions=args.min_impressions,
                            max_impressions=args.max_impressions,
                        )

                    pending = [c.campaign_id for c in admin.campaigns() if c.candidates]
                    settled = [
                        v
                        for v in run_once(judge, admin.settle_candidate, pending)
                        if v.action != "wait"
                    ]
                    for v in settled:
                        verdicts.append(
                            {
                                "chunk": k,
                                "variant": v.variant_id,
                                "kind": kind_of[v.variant_id],
                                "action": v.action,
                                "impressions": v.impressions,
                                "reason": v.reason,
                            }
                        )
                    chunks.append(
                        {
                            "requests": (k + 1) * per,
                            "a": ra.served_ctr,
                            "b": rb.served_ctr,
                            "uniform": ra.uniform_ctr,
                            "oracle": ra.oracle_ctr,
                            "errors_a": ra.errors,
                            "errors_b": rb.errors,
                            "promoted": [v.variant_id for v in settled if v.action == "promote"],
                        }
                    )
                    print(
                        f"chunk {k + 1}/{args.chunks}: A {ra.served_ctr:.4f} B "
                        f"{rb.served_ctr:.4f}; settled "
                        f"{[(v.variant_id, v.action) for v in settled]}",
                        flush=True,
                    )
                    if len(chunks) >= 4:  # a long run leaves its evidence so far behind it
                        summarise(report, chunks, verdicts, t0, Path(args.out), complete=False)
        finally:
            for p in procs:
                stop(p)
    out = Path(args.out)
    summarise(report, chunks, verdicts, t0, out, complete=True)
    plot(report, out.with_suffix(".png"))
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("difference", "served_ctr", "promoted_by_kind", "rejected_by_kind")
            },
            indent=2,
        )
    )
    print(f"wrote {out}.json and .png in {report['seconds']:.0f} s")


def summarise(
    report: dict[str, Any],
    chunks: list[dict[str, Any]],
    verdicts: list[dict[str, Any]],
    t0: float,
    out: Path,
    *,
    complete: bool,
) -> None:
    """Fold the chunks so far into the report and write it: ``OUT.json`` when the run is
    complete, ``OUT.partial.json`` after each chunk before that (atomically replaced, so a
    stopped run leaves its evidence so far)."""
    diff = np.array([c["b"] - c["a"] for c in chunks])
    from scipy.stats import t as student

    half = float(student.ppf(0.975, diff.size - 1) * diff.std(ddof=1) / np.sqrt(diff.size))
    last = diff[len(diff) // 2 :]
    half_last = float(student.ppf(0.975, last.size - 1) * last.std(ddof=1) / np.sqrt(last.size))
    promoted = [v for v in verdicts if v["action"] == "promote"]
    report.update(
        chunks=chunks,
        verdicts=verdicts,
        difference={
            "mean_b_minus_a": float(diff.mean()),
            "ci95": [float(diff.mean() - half), float(diff.mean() + half)],
            "second_half_mean": float(last.mean()),
            "second_half_ci95": [float(last.mean() - half_last), float(last.mean() + half_last)],
            "interval": "t over paired chunks (same users and click draws in A and B)",
        },
        served_ctr={
            "a": float(np.mean([c["a"] for c in chunks])),
            "b": float(np.mean([c["b"] for c in chunks])),
        },
        promoted_by_kind={
            k: sum(v["kind"] == k for v in promoted) for k in ("good", "generated", "off_product")
        },
        rejected_by_kind={
            k: sum(v["kind"] == k and v["action"] == "reject" for v in verdicts)
            for k in ("good", "generated", "off_product")
        },
        seconds=time.perf_counter() - t0,
    )
    report["complete"] = complete
    path = out.with_suffix(".json") if complete else out.with_suffix(".partial.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    if complete:
        out.with_suffix(".partial.json").unlink(missing_ok=True)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ch = report["chunks"]
    x = [c["requests"] for c in ch]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(x, [c["b"] for c in ch], label="B: autopilot (catalog + lines on trial)", lw=2)
    ax.plot(x, [c["a"] for c in ch], label="A: catalog only", lw=2)
    ax.plot(x, [c["uniform"] for c in ch], label="uniform over the catalog", ls=":")
    ax.plot(x, [c["oracle"] for c in ch], label="oracle over the catalog", ls="--")
    for c in ch:
        if c["promoted"]:
            ax.axvline(c["requests"], color="green", alpha=0.3)
    ax.set_xlabel("requests per service")
    ax.set_ylabel("world v2 expected CTR of what was served")
    ax.set_title("autopilot on world v2 (green: promotions)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
