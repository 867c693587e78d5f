#!/usr/bin/env bash
# End-to-end tests of the chat page and the dashboard in a real headless Chromium. Installs what
# they need when missing and allowed: Debian's chromium (as root, like CI) and playwright-core
# (npm, pinned by package-lock.json; it drives the system Chromium and downloads no browser).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "chromium is missing and cannot be installed here (not root or no apt-get)" >&2
    exit 1
  fi
fi
npm ci --no-audit --no-fund --loglevel=error
# The binary as `cargo test` builds it (same features, so nothing is rebuilt after `cargo test`).
(cd ../.. && cargo test --locked --no-run --test chat >/dev/null 2>&1 || cargo test --locked --no-run --test chat)
E2E_ROOMLOG_BIN="$(cd ../.. && pwd)/target/debug/roomlog" timeout 600 node --test --test-concurrency=1 pages.test.mjs
