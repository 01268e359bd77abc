#!/usr/bin/env bash
# Install the peer libraries of bench/agents.py into ./.venv (idempotent; safe to re-run).
# Run scripts/setup.sh first; scripts/test.sh runs both (tests/test_ope_obp.py checks copyloop's
# estimators against obp's). Installs:
#   - mabwiser (LinTS peer) and vowpalwabbit (the prebuilt cp311 wheel; --cb_explore_adf peer);
#   - ray 2.60.0 (the `ray` extra: `copyloop experiment run --backend ray`);
#   - obp 0.5.7 (BernoulliTS / LinTS peers). Its metadata says Python <3.11 and pins torch 1.12,
#     pandas 1.5.2, numpy 1.23.5, ..., none of which it needs at import on Python 3.11: it goes in
#     with --no-deps --ignore-requires-python, plus seaborn, the one module it imports that the
#     venv lacks. pandas is left as it is (obp 0.5.7 imports, and agrees with our estimators, on
#     pandas 3.1) unless `import obp.policy` fails because of pandas >= 3, in which case pandas<3
#     is installed and copyloop's import/contract tests are re-run.
# torch is never touched: it is checked to be the same version before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
[ -x "$PY" ] || { echo "no .venv here: run scripts/setup.sh first" >&2; exit 1; }
PIP=("$PY" -m pip --disable-pip-version-check)
source scripts/pip_quiet.sh
has() { "$PY" -c "import $1" >/dev/null 2>&1; }
torch_version() { "$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none; }

TORCH_BEFORE="$(torch_version)"

# mabwiser's and vowpalwabbit's dependencies (numpy, pandas, scikit-learn, joblib) are all
# in the venv already; pin the versions this benchmark was written against.
has mabwiser || pip_quiet "${PIP[@]}" install -q "mabwiser==2.7.4"
has vowpalwabbit || pip_quiet "${PIP[@]}" install -q --only-binary=:all: "vowpalwabbit==9.11.9"
has seaborn || pip_quiet "${PIP[@]}" install -q --no-deps "seaborn==0.13.2"
# Ray (the `ray` extra): tests/test_ray_backend.py runs the smoke experiment on local Ray.
has ray || pip_quiet "${PIP[@]}" install -q "ray==2.60.0"
if ! "${PIP[@]}" show obp >/dev/null 2>&1; then
  pip_quiet "${PIP[@]}" install -q --no-deps --ignore-requires-python "obp==0.5.7"
fi

if ! err="$("$PY" -c 'import obp.policy' 2>&1)"; then
  if grep -qi "pandas" <<<"$err"; then
    echo "obp does not import with pandas $("$PY" -c 'import pandas; print(pandas.__version__)'):"
    echo "$err" | tail -3
    echo "installing pandas<3 ..."
    pip_quiet "${PIP[@]}" install -q --no-deps "pandas<3"
    "$PY" -m pytest -q tests/test_contract.py tests/test_importing.py
  else
    echo "$err" >&2
    echo "setup_bench failed: obp.policy does not import" >&2
    exit 1
  fi
fi

"$PY" -c 'import obp.policy, mabwiser.mab, vowpalwabbit' \
  || { echo "setup_bench failed: a peer library does not import" >&2; exit 1; }
TORCH_AFTER="$(torch_version)"
if [ "$TORCH_BEFORE" != "$TORCH_AFTER" ]; then
  echo "setup_bench: torch changed from $TORCH_BEFORE to $TORCH_AFTER — reinstall torch==2.13.0" >&2
  exit 1
fi
"$PY" - <<'EOF'
from importlib.metadata import version
print("bench peers ready: " + ", ".join(
    f"{p} {version(p)}" for p in ("obp", "mabwiser", "vowpalwabbit", "ray", "pandas", "torch")))
EOF
