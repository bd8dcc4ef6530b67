#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the review UI's browser test (no browser download by a
# test tool: the machine's package manager installs them). Idempotent.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null
command -v chromium && command -v chromedriver
