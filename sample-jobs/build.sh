#!/usr/bin/env bash
# Builds every sample job into a component: sample-jobs/target/wasm32-wasip2/release/<name>.wasm.
# Installs the `wasm32-wasip2` target when it is missing. Run from anywhere.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
# Always into sample-jobs/target, whatever CARGO_TARGET_DIR says: the demo and the tests look there.
CARGO_TARGET_DIR="$here/target" cargo build --manifest-path "$here/Cargo.toml" --release --target wasm32-wasip2 --workspace "$@"
