# Sourced by tests/run.sh, sample-jobs/build.sh and .ci/run: installs the Rust toolchain that
# rust-toolchain.toml pins — with the wasm32-wasip2 target (the sample jobs), clippy and rustfmt —
# when it is missing. rustup does not install it on first use when RUSTUP_AUTO_INSTALL=0.
toolchain_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
toolchain_channel="$(sed -n 's/^channel = "\(.*\)"$/\1/p' "$toolchain_root/rust-toolchain.toml")"
if ! rustup toolchain list | grep -q "^$toolchain_channel-"; then
  rustup toolchain install "$toolchain_channel" --profile minimal \
    --component clippy --component rustfmt --target wasm32-wasip2
fi
if ! rustup target list --toolchain "$toolchain_channel" --installed | grep -qx wasm32-wasip2; then
  rustup target add --toolchain "$toolchain_channel" wasm32-wasip2
fi
for component in clippy rustfmt; do
  rustup component list --toolchain "$toolchain_channel" --installed | grep -q "^$component" \
    || rustup component add --toolchain "$toolchain_channel" "$component"
done
