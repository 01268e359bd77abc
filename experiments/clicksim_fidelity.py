"""How faithful is a click simulator learned from logs? Measured against the click world.

Setup (all seeded; the numbers of a run are in ``docs/clicksim.md``):

* **World**: the default market (``MarketConfig()``: 120 real products, 6–8 copy variants each,
  100k users), one impression per session.
* **Logs**: ``--rows`` impressions under uniform logging (the training log), the same number
  under uniform logging with another seed (the held-out log every fit is scored on), and
  ``--rows`` impressions logged by a linear Thompson-sampling policy that learns as it goes
  (skewed propensities: the "skewed logger").
* **Fits** (``ClickSimConfig`` defaults, 5-member ensembles): on the uniform log; on the skewed
  log naively; on the skewed log with propensity weighting (``weighting="ipw"``, also with
  flattened weights ``weight_power=0.5``, and ``"ipw-select"``: weights only in early stopping
  and calibration); the same four for a deliberately small model (4 hidden units, 1 factor,
  2 embedding components: misspecified, where weighting should pay); and, with
  ``--big-rows``, on a larger uniform log (how the gap to the world shrinks with data).
* **Fidelity** (:func:`copyloop.envs.clicksim_report.fidelity_report` on the held-out log):
  AUC beside the world's own (Bayes) AUC, ECE as a share of the CTR, per-segment Spearman rank
  agreement of the variants' CTRs, correlation of (segment, variant) CTRs, and the value gap of
  the simulator's greedy policy.
* **Ceiling** (``--ceiling``): a logistic regression on features that follow the world's own
  functional form (segment×device × copy features, log-interest × product category, cue
  crosses, campaign effects, evening), fit on the same uniform log: how close to the Bayes AUC
  a model that *knows the world's structure* gets from the same data.
* **Agents trained on the simulator, judged in the world**: for each seed, linear TS learns for
  ``--agent-rounds`` impressions (a) in the world, (b) in the env on the uniform-fit simulator,
  (c) the same with ``pessimism=1``; each is then frozen (no more updates) and run for
  ``--eval-rounds`` impressions in the world. Value = clicks per impression there; uniform and
  the true-CTR oracle are shown for scale.

Run: ``.venv/bin/python experiments/clicksim_fidelity.py --out docs/results/clicksim --ceiling
--big-rows 1000000`` (about 10 minutes on one core), then copy the table into
``docs/clicksim.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np


def _git() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fidelity_row(name: str, sim: Any, heldout: Any, market: Any) -> dict[str, Any]:
    from copyloop.envs.clicksim_report import fidelity_report

    rep = fidelity_report(sim, heldout, market=market)
    w = rep.world
    assert w is not None
    return {
        "fit": name,
        "train_rows": sim.metrics["rows"],
        "fit_seconds": sim.metrics["fit_seconds"],
        "auc": rep.auc,
        "bayes_auc": w.bayes_auc,
        "auc_gap": w.bayes_auc - rep.auc,
        "ece_over_base": rep.ece_over_base,
        "true_ece_over_base": w.true_ece / rep.base_rate,
        "cell_pearson": w.cell_ctr_pearson,
        "spearman": w.spearman_by_segment,
        "min_spearman": w.min_spearman,
        "within_campaign_spearman": w.within_campaign_spearman_by_segment,
        "value_gap": w.value_gap,
        "sim_policy_value": w.sim_policy_value,
        "best_value": w.best_value,
        "uniform_value": w.uniform_value,
    }


def _ceiling(market: Any, train: Any, heldout: Any) -> dict[str, float]:
    """AUC of a logistic regression on the world's own functional form (see module doc)."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from copyloop.envs.clicksim.model import embedding_pca, project

    mean, comp = embedding_pca(train.copy, 8)
    x_all = project(train.copy, mean, comp)
    category = np.array([p.category for p in market.catalog.products])
    names = train.context_names
    dev = [i for i, n in enumerate(names) if n.startswith("device=")]
    interest = [i for i, n in enumerate(names) if n.startswith("interest_")]
    tone = [i for i, n in enumerate(names) if n.startswith("tone=")]
    seg = [i for i, n in enumerate(names) if n.startswith("segment=")]
    ps, hs, hc = (names.index(n) for n in ("price_sensitivity", "hour_sin", "hour_cos"))
    n_tf = 17

    def feats(d: Any) -> Any:
        n, u = d.n_rows, d.context
        x = x_all[d.variant]
        sd = u[:, seg].argmax(1) * len(dev) + u[:, dev].argmax(1)
        crossed = np.zeros((n, len(seg) * len(dev), x.shape[1] + 1), np.float32)
        crossed[np.arange(n), sd, :-1] = x
        crossed[np.arange(n), sd, -1] = 1.0
        hour = (np.arctan2(u[:, hs], u[:, hc]) / (2 * np.pi) * 24) % 24
        evening = ((hour >= 19) & (hour < 23)).astype(np.float32)
        log_int = np.log(np.clip(6 * u[:, interest], 1e-3, None))
        cat = category[d.campaign]
        own = np.zeros((n, len(interest)), np.float32)
        own[np.arange(n), cat] = log_int[np.arange(n), cat]
        k = x.shape[1] - n_tf
        tf = x[:, k:]
        cues = np.c_[
            (u[:, interest][:, :, None] * tf[:, None, 8:14]).reshape(n, -1),
            u[:, ps] * tf[:, 7],
            (u[:, tone][:, :, None] * tf[:, None, :5]).reshape(n, -1),
        ]
        camp = sp.csr_matrix(
            (np.ones(n), (np.arange(n), d.campaign)), shape=(n, len(d.campaign_ids))
        )
        dense = np.c_[crossed.reshape(n, -1), evening, own, cues]
        return sp.hstack([sp.csr_matrix(dense), camp]).tocsr()

    lr = LogisticRegression(C=0.1, max_iter=1000).fit(feats(train), train.reward)
    z = lr.decision_function(feats(heldout))
    return {"ceiling_auc": float(roc_auc_score(heldout.reward, z))}


def _agents(
    market: Any, sim: Any, seeds: list[int], rounds: int, eval_rounds: int
) -> list[dict[str, Any]]:
    from copyloop.agents import LinearTSPolicy, UniformPolicy
    from copyloop.envs.simulate import simulate

    rows = []
    for seed in seeds:
        out: dict[str, Any] = {"seed": seed}
        for name, train_market in (
            ("world", market),
            ("simulator", market.with_click_model(sim)),
            ("simulator_pessimism1", market.with_click_model(sim, pessimism=1.0)),
        ):
            pol = LinearTSPolicy(seed=seed)
            simulate(train_market, pol, rounds, seed=100 + seed)
            ev = simulate(market, pol, eval_rounds, seed=900 + seed, learn=False)
            out[name] = ev.expected_clicks / ev.rounds
            out["oracle"] = ev.best_expected_clicks / ev.rounds
        uni = simulate(market, UniformPolicy(seed=seed), eval_rounds, seed=900 + seed, learn=False)
        out["uniform"] = uni.expected_clicks / uni.rounds
        rows.append(out)
        print(json.dumps(out), flush=True)
    return rows


def render(result: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    lines = [
        f"Click world {result.get('world', 'v1')}.",
        "",
        "| fit | rows | fit s | AUC | Bayes AUC | gap | ECE / CTR | ECE vs truth / CTR | "
        "cell r | min Spearman | value gap |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["fidelity"]:
        lines.append(
            f"| {r['fit']} | {r['train_rows']:,} | {r['fit_seconds']:.0f} | {r['auc']:.4f} | "
            f"{r['bayes_auc']:.4f} | {r['auc_gap']:.4f} | {100 * r['ece_over_base']:.1f} % | "
            f"{100 * r['true_ece_over_base']:.1f} % | {r['cell_pearson']:.3f} | "
            f"{r['min_spearman']:.3f} | {100 * r['value_gap']:.1f} % |"
        )
    segs = list(result["fidelity"][0]["spearman"])
    lines += ["", "| fit | " + " | ".join(segs) + " |", "|---|" + "---:|" * len(segs)]
    for r in result["fidelity"]:
        cells = [f"{r['spearman'][s]:.3f} ({r['within_campaign_spearman'][s]:.2f})" for s in segs]
        lines.append(f"| {r['fit']} | " + " | ".join(cells) + " |")
    if "ceiling" in result:
        lines += ["", f"Structure ceiling (200k rows): AUC {result['ceiling']['ceiling_auc']:.4f}"]
    ag = result.get("agents", [])
    if ag:
        keys = ["world", "simulator", "simulator_pessimism1", "uniform", "oracle"]
        lines += ["", "| trained in | " + " | ".join(f"seed {a['seed']}" for a in ag) + " | mean |"]
        lines.append("|---|" + "---:|" * (len(ag) + 1))
        for k in keys:
            vals = [a[k] for a in ag]
            lines.append(
                f"| {k} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {np.mean(vals):.4f} |"
            )
        ratio = [a["simulator"] / a["world"] for a in ag]
        lift = [(a["simulator"] - a["uniform"]) / (a["world"] - a["uniform"]) for a in ag]
        lines.append(
            f"\nSimulator-trained value / world-trained value: {np.mean(ratio):.3f} "
            f"(min {min(ratio):.3f}); share of the world-trained lift over uniform: "
            f"{np.mean(lift):.3f} (min {min(lift):.3f})"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import torch

    from copyloop.agents import LinearTSPolicy, UniformPolicy
    from copyloop.envs.clicksim import ClickData, ClickSimConfig, ClickSimulator
    from copyloop.envs.market import Market, MarketConfig
    from copyloop.envs.simulate import simulate

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--big-rows", type=int, default=0)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--ceiling", action="store_true")
    ap.add_argument("--agent-seeds", type=int, default=3)
    ap.add_argument("--agent-rounds", type=int, default=100_000)
    ap.add_argument("--eval-rounds", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--world",
        choices=("v1", "v2"),
        default="v1",
        help="click-world version (v1 = as before; the --ceiling's features follow v1's cues)",
    )
    ap.add_argument("--render-only", action="store_true", help="re-render OUT/results.json")
    ap.add_argument(
        "--reuse-agents", action="store_true", help="keep the agent runs of OUT/results.json"
    )
    a = ap.parse_args(argv)
    if a.render_only:
        res = json.loads((a.out / "results.json").read_text())
        (a.out / "results.md").write_text(render(res))
        print(render(res))
        return
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    logs = a.out / "logs"
    logs.mkdir(exist_ok=True)
    from copyloop.envs.world import WorldConfig

    market = Market.get(MarketConfig(world=WorldConfig(version=a.world)))
    t0 = time.perf_counter()

    def log(name: str, policy: Any, rows: int, seed: int) -> Any:
        path = logs / f"{name}.parquet"
        if not path.exists():
            simulate(market, policy, rows, seed=seed, out=path)
        return ClickData.from_files(path)

    uniform = log("uniform", UniformPolicy(seed=11), a.rows, 11)
    heldout = log("heldout", UniformPolicy(seed=12), a.rows, 12)
    skewed = log("skewed_ts", LinearTSPolicy(seed=13), a.rows, 13)
    pmin = float(skewed.propensity.min())
    print(f"logs ready ({time.perf_counter() - t0:.0f} s); skewed min propensity {pmin:.4f}")
    cfg = ClickSimConfig(members=a.members)
    fits: dict[str, Any] = {}
    rows = []
    plan = [
        ("uniform", uniform, cfg),
        ("skewed, naive", skewed, cfg),
        ("skewed, ipw", skewed, ClickSimConfig(members=a.members, weighting="ipw", weight_power=1)),
        (
            "skewed, ipw^0.5",
            skewed,
            ClickSimConfig(members=a.members, weighting="ipw", weight_power=0.5),
        ),
        ("skewed, ipw-select", skewed, ClickSimConfig(members=a.members, weighting="ipw-select")),
    ]
    # The same comparison for a deliberately small (misspecified) model: where weighting pays.
    small = {"hidden": 4, "factors": 1, "embedding_pca": 2, "members": a.members}
    plan += [
        ("small model: uniform", uniform, ClickSimConfig(**small)),
        ("small model: skewed, naive", skewed, ClickSimConfig(**small)),
        (
            "small model: skewed, ipw",
            skewed,
            ClickSimConfig(**small, weighting="ipw", weight_power=1),
        ),
        (
            "small model: skewed, ipw^0.5",
            skewed,
            ClickSimConfig(**small, weighting="ipw", weight_power=0.5),
        ),
    ]
    if a.big_rows:
        plan.append(
            ("uniform, big", log("uniform_big", UniformPolicy(seed=14), a.big_rows, 14), cfg)
        )
    for name, data, c in plan:
        sim = ClickSimulator.fit(data, c)
        fits[name] = sim
        row = _fidelity_row(name, sim, heldout, market)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}), flush=True)
    fits["uniform"].save(a.out / "sim_uniform")
    result: dict[str, Any] = {
        "world": a.world,
        "fidelity": rows,
        "skewed_min_propensity": pmin,
        "skewed_logged_ctr": float(skewed.reward.mean()),
        "uniform_logged_ctr": float(uniform.reward.mean()),
        "machine": {"python": platform.python_version(), "cpu": platform.processor()},
        "git": _git(),
        "torch_threads": a.threads,
        "args": {k: str(v) for k, v in vars(a).items()},
    }
    if a.ceiling:
        result["ceiling"] = _ceiling(market, uniform, heldout)
        print(json.dumps(result["ceiling"]), flush=True)
    old = a.out / "results.json"
    if a.reuse_agents and old.exists():
        result["agents"] = json.loads(old.read_text())["agents"]
    else:
        result["agents"] = _agents(
            market, fits["uniform"], list(range(a.agent_seeds)), a.agent_rounds, a.eval_rounds
        )
    result["seconds"] = time.perf_counter() - t0
    (a.out / "results.json").write_text(json.dumps(result, indent=1))
    (a.out / "results.md").write_text(render(result))
    print(render(result))
    print(f"wrote {a.out / 'results.json'} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
