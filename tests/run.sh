#!/usr/bin/env bash
# The test command (README): installs what the tests need when it is missing — the wasm32-wasip2
# target (the sample jobs) and redis-server (the broker, worker, CLI and fault tests each start
# their own) — then runs every test in the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
if ! command -v redis-server >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y redis-server
  # The package may start a system-wide server; the tests never use it.
  ($SUDO service redis-server stop || $SUDO systemctl stop redis-server) >/dev/null 2>&1 || true
fi

cargo test --workspace "$@"
