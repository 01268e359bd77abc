"""The copy market: user profiles, the real ad corpus and catalog, text embeddings, the click
world and the Gymnasium envs (``copyloop/CopyMarket-v1`` on click world v2 and
``copyloop/CopyMarket-v0`` on world v1, single and natively vectorised)."""

from __future__ import annotations

import gymnasium as gym

from copyloop.envs.catalog import Catalog, CatalogConfig, build_catalog
from copyloop.envs.corpus import AssetMissingError, Product, load_products
from copyloop.envs.embed import TextEncoder
from copyloop.envs.market import CopyMarketEnv, Market, MarketConfig
from copyloop.envs.users import CATEGORIES, TONES, PopulationConfig, SegmentSpec, UserPopulation
from copyloop.envs.vector import CopyMarketVectorEnv
from copyloop.envs.world import ClickWorld, ReadingWeights, SegmentTaste, WorldConfig

ENV_ID = "copyloop/CopyMarket-v0"
"""The market env on click world v1 (word-list cues; earlier results reproduce on it)."""
ENV_ID_V1 = "copyloop/CopyMarket-v1"
"""The market env on click world v2 (copy read against its own product)."""

for _id, _world in ((ENV_ID, "v1"), (ENV_ID_V1, "v2")):
    if _id not in gym.registry:
        gym.register(
            id=_id,
            entry_point="copyloop.envs.market:CopyMarketEnv",
            vector_entry_point="copyloop.envs.vector:CopyMarketVectorEnv",
            kwargs={"world": _world},
        )

__all__ = [
    "CATEGORIES",
    "ENV_ID",
    "ENV_ID_V1",
    "TONES",
    "AssetMissingError",
    "Catalog",
    "CatalogConfig",
    "ClickWorld",
    "CopyMarketEnv",
    "CopyMarketVectorEnv",
    "Market",
    "MarketConfig",
    "PopulationConfig",
    "Product",
    "ReadingWeights",
    "SegmentSpec",
    "SegmentTaste",
    "TextEncoder",
    "UserPopulation",
    "WorldConfig",
    "build_catalog",
    "load_products",
]
