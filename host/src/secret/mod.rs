//! Secrets at rest and in a run's output.
//!
//! A secret's value is sealed with ChaCha20-Poly1305 under the operator's key
//! (`WASMQ_SECRET_KEY`: 32 bytes as 64 hex digits) before it reaches the broker, with a fresh
//! random nonce and the secret's name as associated data, so a sealed value cannot be moved to
//! another name; the broker only ever holds `nonce ‖ ciphertext`. A guest reads a secret its
//! module is granted through the `host.secret` import; every value a run read is then
//! [`redact`]ed from what the run leaves behind (output, logs, result, errors).

use std::fmt;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Shortest value accepted: a shorter one would redact ordinary words from a job's output.
pub const MIN_VALUE_BYTES: usize = 8;

/// Longest value accepted.
pub const MAX_VALUE_BYTES: usize = 64 << 10;

/// Most secrets one broker holds.
pub const MAX_SECRETS: usize = 10_000;

const NONCE_BYTES: usize = 12;

/// The operator's key. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SecretKey(Key);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

/// Why a secret could not be sealed or opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The key is not 64 hex digits.
    #[error(
        "WASMQ_SECRET_KEY must be 32 bytes written as 64 hex digits (make one with `wasmq secret new-key`)"
    )]
    BadKey,
    /// No key was given to a process that needs one.
    #[error("no secret key: set WASMQ_SECRET_KEY (make one with `wasmq secret new-key`)")]
    NoKey,
    /// The value is too short, too long or not UTF-8.
    #[error("{0}")]
    BadValue(String),
    /// The stored value does not open under this key and name: another key, or damaged.
    #[error(
        "secret `{0}` does not open with this WASMQ_SECRET_KEY (sealed with another key, or damaged)"
    )]
    Sealed(String),
}

impl SecretKey {
    /// Parses 64 hex digits.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let bytes = hex::decode(text.trim()).map_err(|_| SecretError::BadKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| SecretError::BadKey)?;
        Ok(SecretKey(bytes.into()))
    }

    /// A fresh random key, as 64 hex digits.
    pub fn generate() -> String {
        hex::encode(ChaCha20Poly1305::generate_key(&mut OsRng))
    }

    /// Seals `value` for `name`: `nonce ‖ ciphertext`.
    pub fn seal(&self, name: &str, value: &str) -> Result<Vec<u8>, SecretError> {
        check_value(value)?;
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = ChaCha20Poly1305::new(&self.0)
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SecretError::BadValue("the value could not be sealed".into()))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    /// Opens what [`SecretKey::seal`] made for `name`.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<String, SecretError> {
        if sealed.len() < NONCE_BYTES {
            return Err(SecretError::Sealed(name.to_owned()));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let plain = ChaCha20Poly1305::new(&self.0)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Sealed(name.to_owned()))?;
        String::from_utf8(plain).map_err(|_| SecretError::Sealed(name.to_owned()))
    }
}

/// Checks a value's size and encoding.
pub fn check_value(value: &str) -> Result<(), SecretError> {
    if value.len() < MIN_VALUE_BYTES || value.len() > MAX_VALUE_BYTES {
        return Err(SecretError::BadValue(format!(
            "a secret's value must be {MIN_VALUE_BYTES} bytes to 64 KiB ({} given): shorter values would be redacted from ordinary output",
            value.len()
        )));
    }
    Ok(())
}

/// Replaces every occurrence of each `(name, value)`'s value in `text` — as written, and as it
/// appears inside a JSON string — with `[redacted:NAME]`. Longer values first, so a value that
/// contains another is replaced whole.
pub fn redact(text: &str, secrets: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = secrets.iter().collect();
    sorted.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    let mut out = text.to_owned();
    for (name, value) in sorted {
        let mark = format!("[redacted:{name}]");
        if out.contains(value.as_str()) {
            out = out.replace(value.as_str(), &mark);
        }
        let escaped = serde_json::to_string(value).expect("a string serialises");
        let escaped = &escaped[1..escaped.len() - 1];
        if escaped != value && out.contains(escaped) {
            out = out.replace(escaped, &mark);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::parse(&SecretKey::generate()).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_name() {
        let k = key();
        let sealed = k.seal("SINK_TOKEN", "s3cr3t-t0ken-value").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"s3cr3t"));
        assert_eq!(k.open("SINK_TOKEN", &sealed).unwrap(), "s3cr3t-t0ken-value");
        assert_eq!(
            k.open("OTHER", &sealed),
            Err(SecretError::Sealed("OTHER".into()))
        );
        assert!(key().open("SINK_TOKEN", &sealed).is_err());
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(k.open("SINK_TOKEN", &damaged).is_err());
        assert!(k.open("SINK_TOKEN", &sealed[..5]).is_err());
        // A fresh nonce each time.
        assert_ne!(sealed, k.seal("SINK_TOKEN", "s3cr3t-t0ken-value").unwrap());
    }

    #[test]
    fn keys_and_values_are_checked() {
        assert_eq!(SecretKey::parse("abc").unwrap_err(), SecretError::BadKey);
        assert_eq!(
            SecretKey::parse(&"0".repeat(62)).unwrap_err(),
            SecretError::BadKey
        );
        assert!(SecretKey::parse(&"0".repeat(64)).is_ok());
        assert!(key().seal("X", "short").is_err());
        assert!(key().seal("X", &"x".repeat(MAX_VALUE_BYTES + 1)).is_err());
        assert!(format!("{:?}", key()).contains('…'));
    }

    #[test]
    fn values_are_redacted_as_written_and_inside_json() {
        let secrets = vec![
            ("TOKEN".to_owned(), "abc\"def-123".to_owned()),
            ("LONG".to_owned(), "abc\"def-123-and-more".to_owned()),
        ];
        assert_eq!(
            redact("token=abc\"def-123-and-more; t=abc\"def-123", &secrets),
            "token=[redacted:LONG]; t=[redacted:TOKEN]"
        );
        let json = serde_json::json!({ "echo": "abc\"def-123" }).to_string();
        assert_eq!(redact(&json, &secrets), r#"{"echo":"[redacted:TOKEN]"}"#);
        assert_eq!(redact("nothing here", &secrets), "nothing here");
    }
}
