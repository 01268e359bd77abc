"""Plots of an experiment's metrics against impressions (matplotlib, no pyplot state)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from copyloop.experiments.summary import ci_halfwidth


def plot_metric(
    metrics: pd.DataFrame, metric: str, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Mean over seeds against ``t`` with its 95 % CI band, one line per agent, one panel per
    env (matplotlib's Agg canvas, no pyplot state). For ``ctr`` the oracle's CTR is dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    envs = list(dict.fromkeys(metrics["env"]))
    fig = Figure(figsize=(5.5 * len(envs), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(envs), squeeze=False)[0]
    for ax, env in zip(axes, envs, strict=True):
        m = metrics[metrics["env"] == env]
        for agent, g in m.groupby("agent", sort=False):
            by_t = g.groupby("t")[metric]
            mean = by_t.mean()
            half = by_t.agg(ci_halfwidth).fillna(0.0)
            (line,) = ax.plot(mean.index, mean.to_numpy(), label=str(agent), lw=1.5)
            ax.fill_between(
                mean.index, mean - half, mean + half, color=line.get_color(), alpha=0.2, lw=0
            )
        if metric == "ctr":
            oracle = m.groupby("t")["oracle_clicks"].mean()
            ax.plot(
                oracle.index,
                oracle.to_numpy() / oracle.index.to_numpy(),
                "k--",
                lw=1,
                label="oracle",
            )
        ax.set_title(f"env {env}")
        ax.set_xlabel("impressions t")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return Path(path)
