from __future__ import annotations

import os

import pytest

# One BLAS thread: the suite's matrices are small, and on a shared 2-core machine threaded
# BLAS is up to 50x slower (and thread counts must not change results).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_config():
    from copyloop.envs import CatalogConfig, MarketConfig, PopulationConfig

    return MarketConfig(
        catalog=CatalogConfig(n_campaigns=24, seed=3),
        population=PopulationConfig(n_users=4000),
        seed=1,
    )


@pytest.fixture(scope="session")
def market(small_config):
    """A small market built from the real corpus and the real MiniLM (cached on disk)."""
    from copyloop.envs import Market

    return Market.get(small_config)
