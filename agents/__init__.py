"""Policies that choose copy variants and report the probability of every choice."""

from __future__ import annotations

from copyloop.agents.base import Decision, Policy, batch_mask
from copyloop.agents.baselines import UniformPolicy

POLICIES: dict[str, type[Policy]] = {"uniform": UniformPolicy}
"""Policies available to ``copyloop simulate --policy``."""

__all__ = ["POLICIES", "Decision", "Policy", "UniformPolicy", "batch_mask"]
