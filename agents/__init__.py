"""Policies that choose copy variants and report the probability of every choice.

Every agent has the same interface (:class:`Policy`): ``act(obs) -> Decision`` (actions and
the full distribution they were drawn from), ``update(obs, actions, rewards)``, ``clone()``,
``save(path)`` / ``Policy.load(path)``.
"""

from __future__ import annotations

from copyloop.agents.base import Decision, Policy, batch_mask
from copyloop.agents.baselines import EpsilonGreedyPolicy, UCB1Policy, UniformPolicy
from copyloop.agents.ppo import PPOPolicy
from copyloop.agents.ts import (
    BernoulliTSPolicy,
    LinearTSPolicy,
    LinUCBPolicy,
    LogisticTSPolicy,
    NeuralLinearTSPolicy,
)
from copyloop.agents.warm import warm_start

POLICIES: dict[str, type[Policy]] = {
    cls.policy_id: cls
    for cls in (
        UniformPolicy,
        EpsilonGreedyPolicy,
        UCB1Policy,
        BernoulliTSPolicy,
        LinUCBPolicy,
        LinearTSPolicy,
        LogisticTSPolicy,
        NeuralLinearTSPolicy,
        PPOPolicy,
    )
}
"""Policies by name (``copyloop simulate --policy``, experiment configs)."""

__all__ = [
    "POLICIES",
    "BernoulliTSPolicy",
    "Decision",
    "EpsilonGreedyPolicy",
    "LinUCBPolicy",
    "LinearTSPolicy",
    "LogisticTSPolicy",
    "NeuralLinearTSPolicy",
    "PPOPolicy",
    "Policy",
    "UCB1Policy",
    "UniformPolicy",
    "batch_mask",
    "warm_start",
]
