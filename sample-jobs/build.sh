#!/usr/bin/env bash
# Builds every sample job, in every language, into a component:
# sample-jobs/target/wasm32-wasip2/release/<name>.wasm (dashes become underscores).
#
#   Rust        sample-jobs/<name>/           cargo, for wasm32-wasip2
#   Python      sample-jobs/python-<name>/    componentize-py (app.py, with guest-sdk/python)
#   JavaScript  sample-jobs/js-<name>/        componentize-js (job.js, with guest-sdk/js)
#
# Installs what is missing, from the registries only: the wasm32-wasip2 target (rustup),
# componentize-py (pip, pinned, into sample-jobs/target/toolchains/python), componentize-js (npm,
# from sample-jobs/package-lock.json), and python3/pip/node/npm themselves (apt-get) on a bare
# machine. A Python or JavaScript job is rebuilt only when its sources, its SDK or wit/ changed;
# a component built before from exactly the same sources, SDK, wit/ and toolchain is taken from
# the build cache ($WASMQ_BUILD_CACHE, default ~/.cache/wasmq/sample-jobs) instead of being built
# again — componentize-py and componentize-js do not build byte for byte the same twice, so without
# it every fresh checkout would hand the tests new modules to compile. The toolchains are
# installed only when something must be built. Flags: --quiet. Run from anywhere.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out="$here/target/wasm32-wasip2/release"
tools="$here/target/toolchains"
quiet=""
for arg in "$@"; do
  case "$arg" in
    --quiet) quiet="--quiet" ;;
    *) echo "build.sh: unknown flag $arg (only --quiet)" >&2; exit 2 ;;
  esac
done
say() { [ -n "$quiet" ] || echo "$@"; }
source "$root/scripts/apt.sh"

# ---- Rust -------------------------------------------------------------------------------------
source "$root/scripts/toolchain.sh"
# Always into sample-jobs/target, whatever CARGO_TARGET_DIR says: the demo and the tests look there.
CARGO_TARGET_DIR="$here/target" cargo build --manifest-path "$here/Cargo.toml" --release \
  --target wasm32-wasip2 --workspace $quiet

# Whether $1 is missing or older than any file under the other arguments.
stale() {
  local target="$1"
  shift
  [ -e "$target" ] || return 0
  [ -n "$(find "$@" -type f -newer "$target" -print -quit)" ]
}

cache="${WASMQ_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasmq/sample-jobs}"

# The SHA-256 of the files under the given directories (by path relative to the repository, then
# content) and of TOOLCHAIN: what a guest component is built from.
inputs_key() {
  local toolchain="$1"
  shift
  {
    echo "$toolchain"
    (cd "$root" && find "${@#"$root/"}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-64
}

# build_guests LANGUAGE SDK-DIR TOOLCHAIN BUILD-FUNCTION JOB-DIR…: for each job directory whose
# component is missing or older than its sources, the SDK or wit/, takes the component built from
# the same inputs out of the build cache, or runs `BUILD-FUNCTION DIR OUTPUT` (and keeps the
# result in the cache); the output is moved into place only when it is complete.
build_guests() {
  local language="$1" sdk="$2" toolchain="$3" build="$4" dir name wasm key
  shift 4
  for dir in "$@"; do
    name="$(basename "$dir")"
    wasm="$out/${name//-/_}.wasm"
    if stale "$wasm" "$dir" "$sdk" "$root/wit"; then
      mkdir -p "$out" "$cache"
      key="$(inputs_key "$toolchain" "${dir%/}" "$sdk" "$root/wit")"
      if [ -s "$cache/$name-$key.wasm" ]; then
        say "$name ($language): built before from the same inputs, from $cache"
        cp "$cache/$name-$key.wasm" "$wasm.tmp"
      else
        say "building $name ($language)"
        "$build" "$dir" "$wasm.tmp"
        cp "$wasm.tmp" "$cache/$name-$key.wasm.tmp" && mv "$cache/$name-$key.wasm.tmp" "$cache/$name-$key.wasm"
      fi
      mv "$wasm.tmp" "$wasm"
    fi
  done
}

# ---- Python -----------------------------------------------------------------------------------
COMPONENTIZE_PY_VERSION=0.25.1
componentize_py() {
  PYTHONPATH="$tools/python" python3 -c \
    'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' "$@"
}
python_jobs=("$here"/python-*/)
if [ -e "${python_jobs[0]}" ]; then
  install_componentize_py() {
    command -v python3 >/dev/null || apt_install python3
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    if [ ! -d "$tools/python/componentize_py-$COMPONENTIZE_PY_VERSION.dist-info" ]; then
      say "installing componentize-py $COMPONENTIZE_PY_VERSION into $tools/python"
      rm -rf "$tools/python"
      python3 -m pip install --quiet --disable-pip-version-check --target "$tools/python" \
        "componentize-py==$COMPONENTIZE_PY_VERSION"
    fi
  }
  # A job holding a file named `uses-http` is built for the `job-http` world
  # (guest-sdk/python/job-http.wit): `wit/`, that world, and the wasi:http WIT of the
  # wasmtime-wasi-http crate in Cargo.lock (from cargo's registry), so that host and job agree.
  wasi_http_version="$(awk '/^name = "wasmtime-wasi-http"$/ { getline; gsub(/[" ]/, "", $0); sub(/version=/, "", $0); print }' "$root/Cargo.lock")"
  http_wit_dir() {
    local dir="$here/target/wit-http" deps
    if [ ! -d "$dir/deps/http" ]; then
      cargo fetch --quiet --manifest-path "$root/Cargo.toml"
      deps="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"wasmtime-wasi-http-$wasi_http_version"/wit/deps | head -1)"
      rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/deps"
      for f in "$deps"/*.wit; do
        mkdir -p "$dir.tmp/deps/$(basename "$f" .wit)" && cp "$f" "$dir.tmp/deps/$(basename "$f" .wit)/"
      done
      rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    cp "$root"/wit/*.wit "$root/guest-sdk/python/job-http.wit" "$dir/"
    echo "$dir"
  }
  build_python() {
    install_componentize_py
    local wit="$root/wit" world=job
    if [ -e "$1/uses-http" ]; then
      wit="$(http_wit_dir)" world=job-http
    fi
    componentize_py -d "$wit" -w "$world" componentize app -p "$1" -p "$root/guest-sdk/python" \
      -o "$2" >/dev/null
  }
  build_guests Python "$root/guest-sdk/python" \
    "componentize-py $COMPONENTIZE_PY_VERSION, wasi:http from wasmtime-wasi-http $wasi_http_version" \
    build_python "${python_jobs[@]}"
fi

# ---- JavaScript -------------------------------------------------------------------------------
js_jobs=("$here"/js-*/)
if [ -e "${js_jobs[0]}" ]; then
  install_componentize_js() {
    command -v node >/dev/null || apt_install nodejs
    command -v npm >/dev/null || apt_install npm
    if stale "$here/node_modules/.package-lock.json" "$here/package-lock.json"; then
      say "installing componentize-js (npm ci in $here)"
      # `npm ci` installs exactly the lock and never rewrites it, so a build leaves `git status`
      # clean. The lock lists every platform's optional binaries (as `npm install` writes it on
      # npm ≥ 11), which `npm ci` needs in order to accept it.
      (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
  }
  # From the repository root: componentize-js resolves the job's imports (the SDK) inside the
  # directory it runs in. `http` (the `fetch` global, over wasi:http/outgoing-handler, which the
  # host links for every module and answers only as the module's grant allows) stays on;
  # `fetch-event` (serving incoming requests) is not a job's business.
  js_features="-d fetch-event"
  build_js() {
    install_componentize_js
    # shellcheck disable=SC2086
    (cd "$root" && "$here/node_modules/.bin/componentize-js" "${1#"$root/"}job.js" -w wit -n job \
      $js_features -o "$2" >/dev/null)
  }
  build_guests JavaScript "$root/guest-sdk/js" \
    "componentize-js $(sha256sum "$here/package-lock.json" | cut -c1-64) $js_features" \
    build_js "${js_jobs[@]}"
fi
