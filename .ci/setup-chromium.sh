#!/usr/bin/env bash
# Install Debian's Chromium and chromium-driver for the browser test (JupyterLab in
# headless Chromium), with apt-get, when they are missing. Idempotent: a machine that
# has both is left alone. Needs root (CI runs as root) or password-less sudo; without
# either it says what is missing and exits 0, and the browser test then fails under
# CI=true (it skips, with the reason, elsewhere).
set -euo pipefail

have() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }

if have; then
  echo "setup-chromium: chromium and chromedriver already installed" >&2
  exit 0
fi

if [ "$(id -u)" = 0 ]; then
  as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root() { sudo -n "$@"; }
else
  echo "setup-chromium: /usr/bin/chromium or /usr/bin/chromedriver missing, and not root:" \
    "install the Debian packages chromium and chromium-driver" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null

if ! have; then
  echo "setup-chromium: apt-get ran, but /usr/bin/chromium or /usr/bin/chromedriver is missing" >&2
  exit 1
fi
echo "setup-chromium: installed $(/usr/bin/chromium --version 2>/dev/null | head -1)" >&2
