"""Helpers shared by the generator test modules: permissive filters and a reward a tiny random
model can climb in a few steps."""

from __future__ import annotations

import numpy as np

from copyloop.generator.filters import FilterConfig, clean
from copyloop.generator.generate import CopyGenerator, SamplingConfig, sample
from copyloop.generator.prompts import CopyRequest

OPEN = FilterConfig(min_words=1, max_words=1000, max_chars=100_000, require_name=False, banned=())
"""Filters that pass any non-empty line (a tiny random model never names the product)."""


def side_reward(lm):
    """A reward a tiny random model can climb in a few steps: the share of a line's tokens whose
    (tied) embedding has a positive first coordinate — one direction of the hidden state moves
    half the vocabulary at once."""
    side = (lm.model.get_input_embeddings().weight[:, 0] > 0).numpy().copy()

    def reward(texts, campaign, segment):
        out = []
        for t in texts:
            ids = lm.tokenizer(t, add_special_tokens=False)["input_ids"]
            out.append(float(side[ids].mean()) if ids else 0.0)
        return np.array(out)

    return reward


def mean_reward(lm, market, reward, seed=99):
    gen = CopyGenerator(lm, market, sampling=SamplingConfig(max_new_tokens=4), filters=OPEN)
    s = sample(
        lm, [gen.prompt(CopyRequest(c, 0)) for c in (0, 1)], 32, config=gen.sampling, seed=seed
    )
    return float(np.mean(reward([clean(t) for t in s.texts], 0, 0)))
