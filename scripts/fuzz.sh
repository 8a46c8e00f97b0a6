#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each (default 60), two at a time, with
# cargo-fuzz on a pinned nightly toolchain, both installed when missing. Each starts from its
# seed corpus in fuzz/corpus/<target> (read only: new inputs go to a scratch directory) and the
# run fails on the first crash, leaving the input in fuzz/artifacts/<target>. The build goes to
# ~/.cache/wasmq/fuzz-target, so that successive runs build incrementally.
#
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-60}"
nightly="nightly-2026-10-29"
if ! rustup toolchain list | grep -q "^$nightly-"; then
  rustup toolchain install "$nightly" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo "+$nightly" install cargo-fuzz --locked --version 0.13.2
fi
target_dir="${WASMQ_FUZZ_TARGET_DIR:-$HOME/.cache/wasmq/fuzz-target}"
cd fuzz
# No sanitizer: the targets exercise safe Rust (and wasmtime's own fuzzing covers wasmtime);
# assertions in the targets check what must hold.
cargo "+$nightly" fuzz build --sanitizer none --target-dir "$target_dir"
logs="$(mktemp -d)"
run() {
  local target="$1" scratch
  scratch="$(mktemp -d)"
  if cargo "+$nightly" fuzz run --sanitizer none --target-dir "$target_dir" "$target" \
      "$scratch" "corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1 \
      >"$logs/$target.log" 2>&1; then
    local runs
    runs="$(grep -o 'Done [0-9]* runs in [0-9]* second' "$logs/$target.log" | tail -1)"
    echo "fuzz $target: $runs(s), no crash; corpus $(ls "$scratch" | wc -l) new inputs"
  else
    echo "fuzz $target: FAILED — see fuzz/artifacts/$target" >&2
    tail -40 "$logs/$target.log" >&2
    return 1
  fi
}
status=0
targets=(invocation component_precheck artifact_cache api_request)
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run "${targets[i]}" & a=$!
  run "${targets[i + 1]}" & b=$!
  wait "$a" || status=1
  wait "$b" || status=1
done
exit "$status"
