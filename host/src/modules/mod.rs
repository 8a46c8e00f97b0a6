//! Job modules as bytes: their content address (`sha256:<64 hex>`), the first validation of
//! uploaded bytes (is it WebAssembly at all, and a component rather than a core module), and the
//! on-disk cache of compiled artifacts.
//!
//! This module never compiles or runs anything: compiling, checking a component against the
//! `job` world and loading a cached artifact are the sandbox's (`crate::sandbox`).

mod cache;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

pub use cache::{ArtifactCache, CacheLookup, DEFAULT_MAX_BYTES as DEFAULT_CACHE_MAX_BYTES};

/// The content address of a job module: the SHA-256 of its component bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleHash([u8; 32]);

impl ModuleHash {
    /// Hashes component bytes.
    pub fn of(bytes: &[u8]) -> Self {
        ModuleHash(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a module hash.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashParseError {
    /// The `sha256:` prefix is missing.
    #[error("module hash `{0}` must start with `sha256:`")]
    MissingPrefix(String),
    /// Not 64 hex digits after the prefix.
    #[error("module hash `{0}` must be `sha256:` followed by 64 lowercase hex digits")]
    BadDigits(String),
}

impl FromStr for ModuleHash {
    type Err = HashParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .strip_prefix("sha256:")
            .ok_or_else(|| HashParseError::MissingPrefix(s.to_owned()))?;
        let well_formed = digits.len() == 64
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(HashParseError::BadDigits(s.to_owned()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(digits, &mut out)
            .map_err(|_| HashParseError::BadDigits(s.to_owned()))?;
        Ok(ModuleHash(out))
    }
}

impl Serialize for ModuleHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ModuleHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why bytes were refused before compilation.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The bytes do not start with the WebAssembly magic number.
    #[error("not a WebAssembly binary: expected the `\\0asm` header, found {found}")]
    NotWasm {
        /// A short description of what the bytes start with.
        found: String,
    },
    /// A core module: jobs must be components.
    #[error(
        "a core WebAssembly module, not a component: build the job for `wasm32-wasip2` \
         (or wrap a core module with `wasm-tools component new`)"
    )]
    CoreModule,
    /// WebAssembly, but a binary version or layer this host does not know.
    #[error("unsupported WebAssembly binary version {version:#06x} (layer {layer})")]
    UnknownVersion {
        /// The version field of the header.
        version: u16,
        /// The layer field of the header.
        layer: u16,
    },
}

/// What kind of WebAssembly binary `bytes` is, judged from its 8-byte header.
pub fn check_component_header(bytes: &[u8]) -> Result<(), FormatError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let found = if bytes.is_empty() {
            "an empty file".to_owned()
        } else if bytes.starts_with(b"(component") || bytes.starts_with(b"(module") {
            "WebAssembly text (compile it to binary first)".to_owned()
        } else {
            let head = &bytes[..bytes.len().min(4)];
            format!(
                "bytes {}",
                head.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        return Err(FormatError::NotWasm { found });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
    match (layer, version) {
        (0, 1) => Err(FormatError::CoreModule),
        // Components are layer 1; 0x0d is the version every component toolchain emits today.
        (1, _) => Ok(()),
        _ => Err(FormatError::UnknownVersion { version, layer }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_and_rejects_bad_forms() {
        let h = ModuleHash::of(b"abc");
        assert_eq!(
            h.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.to_string().parse::<ModuleHash>().unwrap(), h);
        assert!(matches!(
            "ba78".parse::<ModuleHash>(),
            Err(HashParseError::MissingPrefix(_))
        ));
        assert!(matches!(
            "sha256:ba78".parse::<ModuleHash>(),
            Err(HashParseError::BadDigits(_))
        ));
        let upper = h.to_string().to_uppercase().replace("SHA256", "sha256");
        assert!(matches!(
            upper.parse::<ModuleHash>(),
            Err(HashParseError::BadDigits(_))
        ));
    }

    #[test]
    fn header_check_names_the_problem() {
        assert!(matches!(
            check_component_header(b""),
            Err(FormatError::NotWasm { .. })
        ));
        assert!(matches!(
            check_component_header(b"hello world"),
            Err(FormatError::NotWasm { .. })
        ));
        assert_eq!(
            check_component_header(b"\0asm\x01\0\0\0"),
            Err(FormatError::CoreModule)
        );
        assert_eq!(check_component_header(b"\0asm\x0d\0\x01\0"), Ok(()));
        let err = check_component_header(b"(component)")
            .unwrap_err()
            .to_string();
        assert!(err.contains("WebAssembly text"), "{err}");
    }
}
