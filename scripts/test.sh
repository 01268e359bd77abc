#!/usr/bin/env bash
# The test command: set up (idempotent) with the peer libraries, then lint, type-check and run the
# test suite: every fast test plus the slow tests listed in tests/conftest.py CI_SLOW (about a
# minute). Pass pytest arguments through, e.g. `bash scripts/test.sh -m slow` for all slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# obp, MABWiser, Vowpal Wabbit: tests/test_ope_obp.py checks our estimators against obp's, and
# with COPYLOOP_REQUIRE_PEERS=1 a missing peer fails those tests instead of skipping them.
bash scripts/setup_bench.sh
# Debian's Chromium for the dashboard test (root only; elsewhere that test skips unless required).
bash scripts/setup_system.sh
export COPYLOOP_REQUIRE_PEERS="${COPYLOOP_REQUIRE_PEERS:-1}"
.venv/bin/ruff check .
# mypy cannot follow the editable import hook that maps envs/ -> copyloop.envs, so it checks a
# regular (non-editable) install of the package in .typecheck/.
source scripts/pip_quiet.sh
rm -rf .typecheck build
pip_quiet .venv/bin/python -m pip install -q --no-deps --no-build-isolation --target .typecheck .
(cd .typecheck && ../.venv/bin/mypy --config-file ../pyproject.toml -p copyloop)
rm -rf build
if [ "$#" -eq 0 ]; then set -- -m "not slow or ci_slow"; fi
.venv/bin/python -m pytest -q "$@"
# The service's suites once more on PostgreSQL, when a cluster is given (.ci/run starts one with
# scripts/pg.sh): the same tests, every store a fresh database.
if [ -n "${COPYLOOP_TEST_PG_URL:-}" ]; then
  echo "== the serve suites on PostgreSQL ($COPYLOOP_TEST_PG_URL)"
  COPYLOOP_SERVE_ON_PG=1 .venv/bin/python -m pytest -q -m "not slow or ci_slow" tests/test_serve.py \
    tests/test_serve_replicas.py tests/test_serve_candidates.py tests/test_autopilot.py \
    tests/test_serve_crash.py
fi
