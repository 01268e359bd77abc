"""The copy market: user profiles, the real ad corpus and catalog, text embeddings, the click
world and the Gymnasium envs (``copyloop/CopyMarket-v0``, single and natively vectorised)."""

from __future__ import annotations

import gymnasium as gym

from copyloop.envs.catalog import Catalog, CatalogConfig, build_catalog
from copyloop.envs.corpus import AssetMissingError, Product, load_products
from copyloop.envs.embed import TextEncoder
from copyloop.envs.market import CopyMarketEnv, Market, MarketConfig
from copyloop.envs.users import CATEGORIES, TONES, PopulationConfig, SegmentSpec, UserPopulation
from copyloop.envs.vector import CopyMarketVectorEnv
from copyloop.envs.world import ClickWorld, SegmentTaste, WorldConfig

ENV_ID = "copyloop/CopyMarket-v0"

if ENV_ID not in gym.registry:
    gym.register(
        id=ENV_ID,
        entry_point="copyloop.envs.market:CopyMarketEnv",
        vector_entry_point="copyloop.envs.vector:CopyMarketVectorEnv",
    )

__all__ = [
    "CATEGORIES",
    "ENV_ID",
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
    "SegmentSpec",
    "SegmentTaste",
    "TextEncoder",
    "UserPopulation",
    "WorldConfig",
    "build_catalog",
    "load_products",
]
