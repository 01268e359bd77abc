#!/usr/bin/env bash
# The test command: set up (idempotent), then lint, type-check and run the fast test suite.
# Pass pytest arguments through, e.g. `bash scripts/test.sh -m slow` for the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# mypy cannot follow the editable import hook that maps envs/ -> copyloop.envs, so it checks a
# regular (non-editable) install of the package in .typecheck/.
rm -rf .typecheck build
.venv/bin/python -m pip install -q --no-deps --no-build-isolation --target .typecheck . 2>&1 \
  | grep -v -e "^WARNING: Location" -e "BuildBackendWarning" || true
(cd .typecheck && ../.venv/bin/mypy --config-file ../pyproject.toml -p copyloop)
rm -rf build
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
.venv/bin/python -m pytest -q "$@"
