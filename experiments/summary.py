"""Summaries of an experiment: final-``t`` metrics over seeds with t-intervals, the ranking by
regret, the winner and the one-line verdict (with a paired test of the lead)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

if TYPE_CHECKING:
    from copyloop.experiments.config import ExperimentConfig
    from copyloop.experiments.runner import ExperimentResult

SUMMARY_METRICS = ("clicks", "expected_clicks", "regret", "ctr")
"""Final-``t`` metrics summarised over seeds in ``summary.csv``."""

CI_LEVEL = 0.95


def ci_halfwidth(x: Sequence[float] | np.ndarray, level: float = CI_LEVEL) -> float:
    """Half-width of the t-interval of the mean of ``x`` (NaN for fewer than 2 values)."""
    a = np.asarray(x, np.float64)
    if a.size < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))


def summarize(metrics: pd.DataFrame, config: ExperimentConfig) -> pd.DataFrame:
    """Per (env, agent): mean and 95 % CI half-width over seeds of the final metrics, and the
    rank by mean regret within the env (1 = least regret). Rows in config order."""
    final = metrics[metrics["t"] == config.rounds]
    rows = []
    policy = {a.name: a.policy for a in config.agents}
    for env in config.env_specs:
        for agent in config.agents:
            g = final[(final["env"] == env.name) & (final["agent"] == agent.name)]
            row: dict[str, Any] = {
                "env": env.name,
                "agent": agent.name,
                "policy": policy[agent.name],
                "seeds": len(g),
                "rounds": config.rounds,
            }
            for m in SUMMARY_METRICS:
                row[f"{m}_mean"] = float(g[m].mean())
                row[f"{m}_ci"] = ci_halfwidth(g[m].to_numpy())
            rows.append(row)
    df = pd.DataFrame(rows)
    df["rank"] = df.groupby("env", sort=False)["regret_mean"].rank(method="min").astype(np.int64)
    return df


def winner(result: ExperimentResult) -> str:
    """The best agent: least mean regret (averaged rank over envs when there are several,
    total regret breaking ties)."""
    s = result.summary
    score = s.groupby("agent", sort=False).agg(rank=("rank", "mean"), regret=("regret_mean", "sum"))
    return str(score.sort_values(["rank", "regret"], kind="stable").index[0])


def summary_text(result: ExperimentResult, env: str | None = None) -> str:
    """One line per env: ``"linear_ts wins: regret 812 ± 40 vs ucb1 950 ± 31, uniform …"``,
    noting when the winner's lead over the runner-up is not significant (one-sided paired
    t-test over seeds, which share their traffic). Envs are prefixed when there are several."""
    s = result.summary
    envs = [env] if env is not None else list(dict.fromkeys(s["env"]))
    lines = []
    for e in envs:
        g = s[s["env"] == e].sort_values(["rank", "regret_mean"], kind="stable")
        if g.empty:
            raise ValueError(f"no env {e!r} in the result; envs: {sorted(set(s['env']))}")
        best = g.iloc[0]
        line = f"{best['agent']} wins: regret {_pm(best['regret_mean'], best['regret_ci'])}"
        if len(g) > 1:
            line += " vs " + ", ".join(
                f"{r.agent} {_pm(r.regret_mean, r.regret_ci)}" for r in g.iloc[1:].itertuples()
            )
            second = str(g.iloc[1]["agent"])
            p = _paired_p(result.metrics, e, str(best["agent"]), second, result.config.rounds)
            if not p < 0.05:
                line += f" (lead over {second} not significant: paired p = {p:.2g})"
        lines.append(f"[{e}] {line}" if env is None and len(envs) > 1 else line)
    return "\n".join(lines)


def _paired_p(metrics: pd.DataFrame, env: str, a: str, b: str, t: int) -> float:
    final = metrics[(metrics["env"] == env) & (metrics["t"] == t)]
    ra = final[final["agent"] == a].set_index("seed")["regret"]
    rb = final[final["agent"] == b].set_index("seed")["regret"]
    d = (rb - ra).dropna()
    if d.size < 2:
        return math.nan
    if np.allclose(d, d.iloc[0]):
        return 0.0 if d.iloc[0] > 0 else 1.0
    return float(stats.ttest_1samp(d, 0.0, alternative="greater").pvalue)


def _pm(mean: Any, ci: Any, digits: int = 1) -> str:
    """``"812.0 ± 40.2"`` (just the mean when the CI is undefined)."""
    mean, ci = float(mean), float(ci)
    if math.isnan(ci):
        return f"{mean:,.{digits}f}"
    return f"{mean:,.{digits}f} ± {ci:,.{digits}f}"


def summary_md(result: ExperimentResult) -> str:
    """``summary.md``: per env, the ranked table of final metrics and the summary line."""
    cfg, s = result.config, result.summary
    out = [f"# {cfg.name}", ""]
    if cfg.description:
        out += [cfg.description.strip(), ""]
    out += [
        f"{cfg.rounds:,} impressions per run · {len(cfg.seeds)} seeds {list(cfg.seeds)} · "
        f"batch {cfg.batch_size} · mean ± {CI_LEVEL:.0%} CI over seeds (t-interval) at "
        f"t = {cfg.rounds:,}; regret = oracle's expected clicks − the agent's; rank by regret.",
        "",
    ]
    for env in cfg.env_specs:
        g = s[s["env"] == env.name].sort_values(["rank", "regret_mean"], kind="stable")
        sl = cfg.market_config(env).session_length
        over = f" — overrides {json.dumps(env.overrides)}" if env.overrides else ""
        out += [
            f"## env `{env.name}` (session_length {sl}){over}",
            "",
            "| rank | agent | policy | clicks | expected clicks | regret | CTR |",
            "|---:|---|---|---:|---:|---:|---:|",
        ]
        for r in g.itertuples():
            out.append(
                f"| {r.rank} | {r.agent} | {r.policy} | {_pm(r.clicks_mean, r.clicks_ci)} | "
                f"{_pm(r.expected_clicks_mean, r.expected_clicks_ci)} | "
                f"{_pm(r.regret_mean, r.regret_ci)} | {_pm(r.ctr_mean, r.ctr_ci, 4)} |"
            )
        out += ["", summary_text(result, env.name), ""]
    return "\n".join(out)
