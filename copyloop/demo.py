"""The experiment ``copyloop demo`` closes with, as data (the CLI prints; anything can run it)."""

from __future__ import annotations

from typing import Any


def demo_experiment(market: Any, *, seed: int = 0, rounds: int = 30_000) -> Any:
    """Four agents — uniform, UCB1, per-segment Bernoulli TS and linear TS — on ``market`` for
    ``rounds`` impressions × 2 seeds: the comparison that shows the contextual agent winning.

    Returns:
        A :class:`copyloop.experiments.ExperimentConfig` for :func:`run_experiment`.
    """
    from copyloop.experiments import ExperimentConfig

    return ExperimentConfig.from_dict(
        {
            "name": "demo",
            "description": "A short comparison on the demo market (copyloop demo).",
            "seeds": [seed, seed + 1],
            "rounds": rounds,
            "batch_size": 500,
            "eval_every": max(rounds // 20, 500),
            "market": {"world": {"version": market.config.world.version}},
            "agents": [
                {"name": "uniform", "policy": "uniform"},
                {"name": "ucb1", "policy": "ucb1", "params": {"c": 0.2}},
                {
                    "name": "bernoulli_ts",
                    "policy": "bernoulli_ts",
                    "params": {"segment_columns": [0, market.population.n_segments]},
                },
                {"name": "linear_ts", "policy": "linear_ts"},
            ],
        }
    )
