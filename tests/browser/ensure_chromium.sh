#!/bin/sh
# Make Debian's chromium available at /usr/bin/chromium for the browser tests (tests/test_review.py).
# Playwright's own browser download ("playwright install") does not work where only package registries
# are reachable, so the tests drive the distribution's chromium. Idempotent; needs root (or sudo) and apt.
# Exit status: 0 when /usr/bin/chromium is there afterwards, 1 otherwise.
set -u
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: apt-get not found; install chromium by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure_chromium: not root and no passwordless sudo; run: apt-get install -y chromium" >&2
        exit 1
    fi
fi
# other jobs may hold the dpkg lock: wait for it rather than fail
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -qq update >/dev/null || true
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -qq install -y --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
echo "ensure_chromium: $CHROMIUM is still missing after apt-get install chromium" >&2
exit 1
