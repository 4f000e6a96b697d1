#!/usr/bin/env bash
# Debian packages the test suite needs beyond Python: headless Chromium for the MLflow UI and plots
# page checks, npm for `make plots` (the Vega libraries from the npm registry).
# Installs them when run as root on Debian/Ubuntu; otherwise says what to install.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v npm >/dev/null || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "error: the tests need: ${missing[*]}. On Debian/Ubuntu: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
