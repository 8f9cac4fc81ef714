#!/usr/bin/env bash
# Install Debian's Chromium for the access-review report's browser test (tests/test_people_report.py
# renders the report in headless Chromium, reads the DOM back and takes a screenshot).
#
# Idempotent: does nothing when a chromium binary is on PATH. Installs non-interactively and runs
# `apt-get update` only if the first attempt fails.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install "${APT_OPTS[@]}" chromium fonts-dejavu-core; then
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install "${APT_OPTS[@]}" chromium fonts-dejavu-core
fi
command -v chromium >/dev/null 2>&1
echo "chromium installed: $(chromium --version 2>/dev/null | head -n 1)"
