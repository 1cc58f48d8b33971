#!/usr/bin/env bash
# Installs Debian's chromium for the headless-browser checks (the report layout test,
# scripts/screenshot_report.py, the service dashboard tests). Idempotent: does nothing when
# chromium is already on PATH. Playwright (Python) comes from requirements-dev.txt and is
# pointed at this browser, so nothing downloads a browser build of its own.
#   bash scripts/install_browser.sh      (also run by `make browser` and `make test`)
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install_browser.sh: chromium is missing and this user cannot apt-get install it;" \
         "run as root: apt-get install -y chromium" >&2
    exit 1
  fi
  SUDO=sudo
fi
echo "install_browser.sh: installing Debian's chromium"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
command -v chromium >/dev/null 2>&1
