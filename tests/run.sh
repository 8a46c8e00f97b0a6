#!/usr/bin/env bash
# The test command (README): installs what the tests need when it is missing — the wasm32-wasip2
# target (the sample jobs), redis-server (the broker, worker, CLI, API and fault tests each start
# their own Redis or Redis Cluster), openssl (the TLS test's certificates), Python 3 with `redis`,
# Node and curl (the client tests), npm, Chromium and playwright-core (the dashboard's browser
# test) — then runs every test in the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/toolchain.sh
source scripts/apt.sh

if ! command -v redis-server >/dev/null; then
  apt_install redis-server
  # The package may start a system-wide server; the tests never use it.
  ($SUDO service redis-server stop || $SUDO systemctl stop redis-server) >/dev/null 2>&1 || true
fi
# The client tests (tests/clients.rs): Python 3 with the `redis` package, Node >= 18, curl; the
# dashboard's browser test (tests/dashboard.rs) also needs npm, Debian's Chromium and playwright-core.
command -v python3 >/dev/null || apt_install python3
# The TLS test (tests/cli.rs) makes its certificate authority with openssl.
command -v openssl >/dev/null || apt_install openssl
command -v curl >/dev/null || apt_install curl
if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 18 ]; then
  apt_install nodejs
fi
command -v npm >/dev/null || apt_install npm
[ -x /usr/bin/chromium ] || apt_install chromium
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi
if ! python3 -c 'import redis' 2>/dev/null; then
  python3 -m pip install --quiet redis 2>/dev/null || apt_install python3-redis
fi

cargo test --workspace "$@"
