"""Experiments: agents × seeds × market variants on the copy market, from one TOML file each.

``run_experiment("smoke", "runs/smoke")`` runs a shipped config (``configs/*.toml``) or any
TOML file and writes metrics, summaries, plots and the resolved config to one folder; see
:mod:`copyloop.experiments.runner`.
"""

from __future__ import annotations

from copyloop.experiments.runner import (
    CONFIG_DIR,
    AgentSpec,
    EnvSpec,
    ExperimentConfig,
    ExperimentResult,
    config_path,
    run_experiment,
    summary_text,
    winner,
)

__all__ = [
    "CONFIG_DIR",
    "AgentSpec",
    "EnvSpec",
    "ExperimentConfig",
    "ExperimentResult",
    "config_path",
    "run_experiment",
    "summary_text",
    "winner",
]
