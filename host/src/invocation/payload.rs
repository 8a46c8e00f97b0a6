//! The payload encoding: how `args` and results travel as JSON.
//!
//! `args` is any JSON value, handed to the job's `run` as its compact UTF-8 bytes, or
//! `{"$bytes": "<base64>"}` for raw bytes. Results come back the same way: bytes that parse as
//! JSON are shown as that JSON, anything else as `{"$bytes": "<base64>"}`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

/// The key that marks raw bytes in a JSON payload.
pub const BYTES_KEY: &str = "$bytes";

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    /// `{"$bytes": …}` whose value is not a base64 string.
    #[error("`args.$bytes` must be a base64 string: {0}")]
    BadBase64(String),
}

/// The bytes a job receives for the JSON `args`.
pub fn args_to_bytes(args: &Value) -> Result<Vec<u8>, PayloadError> {
    if let Value::Object(map) = args
        && map.len() == 1
        && let Some(raw) = map.get(BYTES_KEY)
    {
        let Value::String(b64) = raw else {
            return Err(PayloadError::BadBase64(format!("found {}", type_name(raw))));
        };
        return BASE64
            .decode(b64)
            .map_err(|e| PayloadError::BadBase64(e.to_string()));
    }
    Ok(serde_json::to_vec(args).expect("a JSON value always serialises"))
}

/// The length of `value` as compact JSON (as it is stored), counted without building the text.
pub fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("a JSON value always serialises");
    count.0
}

/// The JSON shown for result (or argument) bytes.
pub fn bytes_to_json(bytes: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => v,
        Err(_) => serde_json::json!({ BYTES_KEY: BASE64.encode(bytes) }),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_args_are_compact_utf8() {
        assert_eq!(
            args_to_bytes(&json!({"a": [1, 2]})).unwrap(),
            br#"{"a":[1,2]}"#
        );
        assert_eq!(args_to_bytes(&Value::Null).unwrap(), b"null");
    }

    #[test]
    fn raw_bytes_round_trip() {
        let args = json!({"$bytes": "AAEC/w=="});
        assert_eq!(args_to_bytes(&args).unwrap(), vec![0, 1, 2, 255]);
        assert_eq!(bytes_to_json(&[0, 1, 2, 255]), args);
        assert_eq!(bytes_to_json(br#"{"ok":true}"#), json!({"ok": true}));
    }

    #[test]
    fn bad_base64_is_named() {
        let err = args_to_bytes(&json!({"$bytes": 5})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`args.$bytes` must be a base64 string: found a number"
        );
        assert!(args_to_bytes(&json!({"$bytes": "!!"})).is_err());
        // With other keys beside it, `$bytes` is ordinary JSON.
        assert!(args_to_bytes(&json!({"$bytes": 5, "x": 1})).is_ok());
    }
}
