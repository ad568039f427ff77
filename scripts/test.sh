#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, conformance and end-to-end tests.
# Installs what the tests need when it is missing (openssl; Chromium and Playwright for the web
# client's browser test), so a fresh Debian machine running as root needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the tests call besides cargo: the JWT tests generate RSA and Ed25519 keys with openssl.
if ! command -v openssl >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq openssl
    else
        echo "scripts/test.sh: openssl is required (apt-get install openssl)" >&2
        exit 1
    fi
fi
# The browser test (crates/lanes/tests/web.rs runs web/e2e/chat.test.mjs): headless Chromium from
# Debian, and playwright-core from the npm registry at the version pinned in web/e2e's lockfile.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq chromium chromium-driver fonts-noto-color-emoji
    else
        echo "scripts/test.sh: /usr/bin/chromium is required (apt-get install chromium chromium-driver)" >&2
        exit 1
    fi
fi
if ! command -v node >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq nodejs npm
    else
        echo "scripts/test.sh: node and npm are required (apt-get install nodejs npm)" >&2
        exit 1
    fi
fi
if [ ! -d web/e2e/node_modules/playwright-core ]; then
    npm ci --prefix web/e2e --no-audit --no-fund
fi
export LANES_TEST_REQUIRE_BROWSER=1
# A clean clone gains nothing from incremental compilation and it wrote ~1 GB more to a CI disk
# that has run out of space once; export CARGO_INCREMENTAL=1 to keep it for repeated local runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
cargo test --workspace --locked
