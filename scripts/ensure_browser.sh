#!/usr/bin/env bash
# What the dashboard's browser tests (tests/dashboard/test_browser.py) need: Debian's `chromium`, driven by
# Playwright through its executable path (Playwright's own browser downloads are not used).
# Installs it when missing and it can (root + apt-get); otherwise says how, and those tests are skipped.
set -euo pipefail

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then exit 0; fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "dashboard browser tests: installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
        || echo "dashboard browser tests: could not install chromium; they will be skipped until it is installed" >&2
else
    echo "dashboard browser tests: chromium is missing; install it (e.g. sudo apt-get install -y chromium)." \
         "Until then those tests are skipped." >&2
fi
