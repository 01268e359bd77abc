#!/usr/bin/env bash
# System packages some tests need, from the distribution (Debian): Chromium renders the service's
# dashboard headless (tests/test_dashboard.py). Idempotent; installs only what is missing, and
# only as root (elsewhere it says what to install and leaves it to you).
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_system: missing ${need[*]} — install them with your package manager" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
  apt-get update -q >/dev/null 2>&1
  apt-get install -y -q "${need[@]}" >/dev/null
}
