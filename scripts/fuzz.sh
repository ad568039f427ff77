#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each), growing fuzz/corpus/<target>/.
# cargo-fuzz needs nightly features: on the stable toolchain, RUSTC_BOOTSTRAP=1 enables them.
# Crashes are written to fuzz/artifacts/<target>/; fix them, then add the input to the corpus
# (the normal test suite replays it: crates/lanes-core/tests/parsers.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in client_frame http_body fields; do
    cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -timeout=10
done
