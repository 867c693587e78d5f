#!/usr/bin/env bash
# End-to-end tests of the chat page and the dashboard in a real headless Chromium. Installs what
# they need when missing and allowed: Debian's chromium (as root, like CI) and playwright-core
# (npm, pinned by package-lock.json; it drives the system Chromium and downloads no browser).
set -euo pipefail
cd "$(dirname "$0")"
bash ../../.ci/need-deb "${CHROMIUM:-/usr/bin/chromium}" chromium
npm ci --no-audit --no-fund --loglevel=error
# The binary as `cargo test` builds it (same features, so nothing is rebuilt after `cargo test`).
(cd ../.. && cargo test --locked --no-run --test chat >/dev/null 2>&1 || cargo test --locked --no-run --test chat)
E2E_ROOMLOG_BIN="$(cd ../.. && pwd)/target/debug/roomlog" timeout 600 node --test --test-concurrency=1 pages.test.mjs
