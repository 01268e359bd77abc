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


# The `slow` tests CI runs as well (`scripts/test.sh` selects `not slow or ci_slow`), with their
# time on this project's shared 2-core machine. Budget: the sum stays under ~5 minutes; time a
# candidate with `pytest -m slow --durations=0` before adding it here.
CI_SLOW = {
    "tests/test_ppo.py::test_ppo_learns_with_fatigue": "36 s",
    "tests/test_generator.py::test_real_model_writes_segment_conditioned_copy": "13 s",
    "tests/test_agent_cli.py::test_simulated_journey_estimates_cover_the_true_value": "19 s",
    "tests/test_ray_backend.py::test_ray_sweep_equals_processes_one_market_per_worker": "17 s",
    "tests/test_ray_backend.py::test_cli_ray_backend_writes_the_same_summary": "12 s",
    # issue 14 (times measured at load average ~10 on the shared box; quieter runs are faster)
    "tests/test_serve_crash.py::test_client_against_a_real_server": "10 s",
    "tests/test_serve_crash.py::test_kill_9_under_load_loses_nothing_acknowledged": "28 s",
    "tests/test_serve_props.py::test_logged_propensities_are_true": "45 s (50k decisions)",
    "tests/test_serve_props.py::test_the_propensity_tests_reject_wrong_probabilities": "1 s",
    "tests/test_serve_fuzz.py::test_schemathesis_finds_no_server_error": "40 s",
    # issues 16 and 17
    "tests/test_serve_crash.py::test_replicas_and_learner_kill_9_under_load": "18 s",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    modules = {}
    for item in items:
        if item.nodeid in CI_SLOW:
            item.add_marker(pytest.mark.ci_slow)
        if isinstance(item, pytest.Function):
            modules[item.nodeid.split("::")[0]] = item.module
    gone = [
        t
        for t in CI_SLOW
        if (m := modules.get(t.split("::")[0])) is not None and not hasattr(m, t.split("::")[1])
    ]
    if gone:  # a renamed test would otherwise drop out of CI without a word
        raise pytest.UsageError(
            f"tests/conftest.py CI_SLOW names tests that no longer exist: {', '.join(gone)} — "
            "update the list"
        )


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


@pytest.fixture(autouse=True)
def _drop_test_databases():
    """The PostgreSQL run of the serve suites (COPYLOOP_TEST_PG_URL): drop the databases a test
    created (``test_serve.store_url``) when it ends."""
    yield
    url = os.environ.get("COPYLOOP_TEST_PG_URL")
    if not url:
        return
    import sys

    mod = sys.modules.get("test_serve")
    names = getattr(mod, "PG_DATABASES", set())
    if not names:
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        for name in sorted(names):
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    names.clear()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path):
    """A fresh, empty store's URL: a SQLite file, or a database of its own on the PostgreSQL
    server at ``COPYLOOP_TEST_PG_URL`` (dropped after the test). Without that server the
    postgres case skips — and fails under ``COPYLOOP_REQUIRE_PG=1`` (CI)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    base = os.environ.get("COPYLOOP_TEST_PG_URL", "")
    if not base:
        reason = "COPYLOOP_TEST_PG_URL is unset (bash scripts/pg.sh start prints one)"
        if os.environ.get("COPYLOOP_REQUIRE_PG") == "1":
            pytest.fail(f"COPYLOOP_REQUIRE_PG=1 but {reason}")
        pytest.skip(reason)
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(base, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
