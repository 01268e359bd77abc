"""Off-policy evaluation: is a new policy (or new copy) better, before it touches traffic?

Estimators (:mod:`copyloop.ope.estimators`) read :class:`BanditFeedback` built from a
DecisionLog and a target policy's per-row distribution; reward models are cross-fitted
(:mod:`copyloop.ope.reward_models`); intervals come from influence terms (CLT) or a bootstrap
that can refit the reward model; :mod:`copyloop.ope.gate` turns that into promote / hold.
"""

from __future__ import annotations

from copyloop.ope.data import BanditFeedback, check_target, feedback_from_log, load_target
from copyloop.ope.estimators import (
    DM,
    DR,
    ESTIMATORS,
    IPW,
    MIPS,
    SNDR,
    SNIPW,
    DRos,
    Estimator,
    Interval,
    SwitchDR,
    get_estimator,
    importance_weights,
)
from copyloop.ope.reward_models import CrossFit, RewardModel, bootstrap_interval, fit_reward_model

__all__ = [
    "DM",
    "DR",
    "ESTIMATORS",
    "IPW",
    "MIPS",
    "SNDR",
    "SNIPW",
    "BanditFeedback",
    "CrossFit",
    "DRos",
    "Estimator",
    "Interval",
    "RewardModel",
    "SwitchDR",
    "bootstrap_interval",
    "check_target",
    "feedback_from_log",
    "fit_reward_model",
    "get_estimator",
    "importance_weights",
    "load_target",
]
