#!/usr/bin/env bash
# Installs the Debian packages the tests and the bench need beyond Node, PostgreSQL and NATS:
# nghttp2-client (h2load, the C load generator the bench drives its throughput rows with, over
# h2c and HTTP/1.1) and chromium (the real browser the hosted sign-in page is tested in, driven
# by playwright-core; never a downloaded browser). Idempotent: returns at once when everything is installed; runs
# `apt-get update` only when the package lists are missing (or too old to install from).
# Needs root (or sudo). `.ci/run` runs it before the tests.
set -euo pipefail

packages=(nghttp2-client chromium)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "system packages: all installed (${packages[*]})"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
install() { "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; }
if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
  "${sudo[@]}" apt-get update
  install
elif ! install; then
  # Stale lists name versions the mirror no longer has.
  "${sudo[@]}" apt-get update
  install
fi
