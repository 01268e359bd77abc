from __future__ import annotations

import numpy as np
import pytest
from copyloop.agents import UniformPolicy


def test_uniform_frequencies_match_action_probs() -> None:
    """20k seeded draws: each slot's frequency is within 4 standard errors of its probability,
    masked slots are never chosen, and the reported propensity is the chosen slot's probability."""
    mask = np.tile(np.array([1, 1, 0, 1, 1, 0, 1, 0], np.int8), (20_000, 1))
    d = UniformPolicy(seed=0).act({"action_mask": mask})
    p = d.probs[0]
    freq = np.bincount(d.actions, minlength=8) / d.actions.size
    se = np.sqrt(p * (1 - p) / d.actions.size)
    assert (np.abs(freq - p) <= 4 * se + 1e-12).all()
    assert freq[mask[0] == 0].sum() == 0
    np.testing.assert_allclose(d.propensity, 0.2)


def test_same_seed_same_decisions_and_clone_is_fresh() -> None:
    mask = {"action_mask": np.ones((100, 6), np.int8)}
    a = UniformPolicy(seed=3)
    b = a.clone()
    assert repr(b) == "UniformPolicy(seed=3)"
    np.testing.assert_array_equal(a.act(mask).actions, b.act(mask).actions)


def test_empty_candidates_rejected() -> None:
    with pytest.raises(ValueError, match="no valid candidate"):
        UniformPolicy(seed=0).act({"action_mask": np.array([[1, 0], [0, 0]])})
