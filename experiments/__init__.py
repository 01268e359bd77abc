"""Experiments: agents × seeds × market variants on the copy market, from one TOML file each.

``run_experiment("smoke", "runs/smoke")`` runs a shipped config (``configs/*.toml``) or any
TOML file and writes metrics, summaries, plots and the resolved config to one folder.

Modules: :mod:`~copyloop.experiments.config` (the TOML config and its validation),
:mod:`~copyloop.experiments.runner` (one run, the whole experiment, its output folder),
:mod:`~copyloop.experiments.parallel` (worker processes), :mod:`~copyloop.experiments.summary`
(means, intervals, the winner), :mod:`~copyloop.experiments.plots`; ``python -m
copyloop.experiments`` is the script.
"""

from __future__ import annotations

from copyloop.experiments.config import (
    CONFIG_DIR,
    AgentSpec,
    EnvSpec,
    ExperimentConfig,
    RunSpec,
    config_path,
)
from copyloop.experiments.plots import plot_metric
from copyloop.experiments.runner import ExperimentResult, run_experiment, run_one
from copyloop.experiments.summary import summarize, summary_text, winner

__all__ = [
    "CONFIG_DIR",
    "AgentSpec",
    "EnvSpec",
    "ExperimentConfig",
    "ExperimentResult",
    "RunSpec",
    "config_path",
    "plot_metric",
    "run_experiment",
    "run_one",
    "summarize",
    "summary_text",
    "winner",
]
