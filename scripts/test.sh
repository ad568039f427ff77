#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, conformance and end-to-end tests.
# Installs nothing that is not needed yet; later suites (PostgreSQL, browser) add their setup here.
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
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
cargo test --workspace --locked
