#!/usr/bin/env bash
# Runs every test: installs the pinned tansu broker if it is not cached yet, starts it on a free
# local port, runs `cargo test` against it, then Schemathesis against the release binary and
# the same broker (scripts/schemathesis.sh), and stops the broker. Extra arguments go to
# `cargo test`. Tests that need the broker are #[ignore]d so that plain `cargo test` passes
# without one; here they run too (`--include-ignored`), so none can pass by being skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/broker.sh
export OMNICHAT_TEST_BOOTSTRAP="$BROKER_ADDR"
cargo test --locked "$@" -- --include-ignored
bash scripts/schemathesis.sh
