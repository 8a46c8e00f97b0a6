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
# machine. A Python or JavaScript job is rebuilt only when its sources, its SDK or wit/ changed.
# Flags: --quiet. Run from anywhere.
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
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
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

# build_guests LANGUAGE SDK-DIR BUILD-FUNCTION JOB-DIR…: for each job directory whose component is
# missing or older than its sources, the SDK or wit/, runs `BUILD-FUNCTION DIR OUTPUT` and moves
# the output into place only when the build succeeded.
build_guests() {
  local language="$1" sdk="$2" build="$3" dir name wasm
  shift 3
  for dir in "$@"; do
    name="$(basename "$dir")"
    wasm="$out/${name//-/_}.wasm"
    if stale "$wasm" "$dir" "$sdk" "$root/wit"; then
      say "building $name ($language)"
      mkdir -p "$out"
      "$build" "$dir" "$wasm.tmp"
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
  command -v python3 >/dev/null || apt_install python3
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  if [ ! -d "$tools/python/componentize_py-$COMPONENTIZE_PY_VERSION.dist-info" ]; then
    say "installing componentize-py $COMPONENTIZE_PY_VERSION into $tools/python"
    rm -rf "$tools/python"
    python3 -m pip install --quiet --disable-pip-version-check --target "$tools/python" \
      "componentize-py==$COMPONENTIZE_PY_VERSION"
  fi
  build_python() {
    componentize_py -d "$root/wit" -w job componentize app -p "$1" -p "$root/guest-sdk/python" \
      -o "$2" >/dev/null
  }
  build_guests Python "$root/guest-sdk/python" build_python "${python_jobs[@]}"
fi

# ---- JavaScript -------------------------------------------------------------------------------
js_jobs=("$here"/js-*/)
if [ -e "${js_jobs[0]}" ]; then
  command -v node >/dev/null || apt_install nodejs
  command -v npm >/dev/null || apt_install npm
  if stale "$here/node_modules/.package-lock.json" "$here/package-lock.json"; then
    say "installing componentize-js (npm ci in $here)"
    # `npm ci` installs exactly the lock and never rewrites it, so a build leaves `git status`
    # clean. The lock lists every platform's optional binaries (as `npm install` writes it on
    # npm ≥ 11), which `npm ci` needs in order to accept it.
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
  # From the repository root: componentize-js resolves the job's imports (the SDK) inside the
  # directory it runs in. Without `http` and `fetch-event` the component would import wasi:http,
  # which the host does not grant.
  build_js() {
    (cd "$root" && "$here/node_modules/.bin/componentize-js" "${1#"$root/"}job.js" -w wit -n job \
      -d http fetch-event -o "$2" >/dev/null)
  }
  build_guests JavaScript "$root/guest-sdk/js" build_js "${js_jobs[@]}"
fi
