"""Baseline policies."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from copyloop.agents.base import Obs, Policy, batch_mask


class UniformPolicy(Policy):
    """Uniformly random over the valid candidates (the logging policy of ``copyloop simulate``).

    Example:
        >>> import numpy as np
        >>> p = UniformPolicy(seed=0)
        >>> p.action_probs({"action_mask": np.array([[1, 1, 0, 0]])}).tolist()
        [[0.5, 0.5, 0.0, 0.0]]
    """

    policy_id = "uniform"

    def action_probs(self, obs: Obs) -> npt.NDArray[np.float64]:
        mask = batch_mask(obs).astype(np.float64)
        return mask / mask.sum(axis=1, keepdims=True)
