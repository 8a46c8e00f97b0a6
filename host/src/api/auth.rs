//! Bearer tokens and their scopes.
//!
//! A token file (or `WASMQ_TOKENS`) holds one token per line or `;`-separated entry:
//! `name:secret:scope[,scope…]` with scopes `enqueue`, `upload` and `admin` (`admin` implies the
//! others). Any valid token may read. Secrets are kept only as SHA-256 digests and never logged;
//! logs name the token by its `name`.

use std::collections::HashMap;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Any valid token.
    Read,
    /// Enqueue and cancel jobs.
    Enqueue,
    /// Upload modules.
    Upload,
    /// Delete modules, retry and delete dead jobs; implies every other scope.
    Admin,
}

impl Scope {
    fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "enqueue" => Scope::Enqueue,
            "upload" => Scope::Upload,
            "admin" => Scope::Admin,
            _ => return None,
        })
    }

    /// The name used in token files and errors.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Enqueue => "enqueue",
            Scope::Upload => "upload",
            Scope::Admin => "admin",
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    name: String,
    scopes: Vec<Scope>,
}

/// The accepted tokens, or none needed (`--insecure-no-auth`).
#[derive(Clone, Debug)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Token>,
    open: bool,
}

impl Tokens {
    /// Parses token entries (see the module docs).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut by_digest = HashMap::new();
        for (n, entry) in text
            .split(['\n', ';'])
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .enumerate()
        {
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(secret), Some(scopes)) =
                (parts.next(), parts.next(), parts.next())
            else {
                anyhow::bail!("token entry {} must be `name:secret:scope[,scope…]`", n + 1);
            };
            anyhow::ensure!(
                secret.len() >= 16,
                "token `{name}`: the secret must be at least 16 characters"
            );
            let scopes = scopes
                .split(',')
                .map(|s| {
                    Scope::parse(s.trim()).ok_or_else(|| {
                        anyhow::anyhow!(
                            "token `{name}`: unknown scope `{}` (use enqueue, upload, admin)",
                            s.trim()
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            by_digest.insert(
                digest,
                Token {
                    name: name.to_owned(),
                    scopes,
                },
            );
        }
        anyhow::ensure!(!by_digest.is_empty(), "no tokens configured");
        Ok(Tokens {
            by_digest,
            open: false,
        })
    }

    /// Accepts every request: local development only.
    pub fn insecure_open() -> Self {
        Tokens {
            by_digest: HashMap::new(),
            open: true,
        }
    }

    /// Whether the request's bearer token may do what `scope` allows.
    pub fn check(&self, authorization: Option<&str>, scope: Scope) -> Result<(), ApiError> {
        if self.open {
            return Ok(());
        }
        let Some(secret) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing `Authorization: Bearer <token>` header",
            ));
        };
        // Looked up by digest: no secret is held or compared in the clear.
        let digest: [u8; 32] = Sha256::digest(secret.trim().as_bytes()).into();
        let Some(token) = self.by_digest.get(&digest) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown token",
            ));
        };
        let allowed = scope == Scope::Read
            || token.scopes.contains(&Scope::Admin)
            || token.scopes.contains(&scope);
        if !allowed {
            tracing::info!(token = %token.name, scope = scope.name(), "token lacks the scope");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token `{}` lacks the `{}` scope", token.name, scope.name()),
            ));
        }
        Ok(())
    }
}

/// Middleware: refuses requests whose token does not allow `scope`.
pub async fn require(
    tokens: std::sync::Arc<Tokens>,
    scope: Scope,
    req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match tokens.check(header, scope) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_refusals() {
        let tokens = Tokens::parse(
            "ci:0123456789abcdef-ci:enqueue\n# comment\nops:0123456789abcdef-ops:admin",
        )
        .unwrap();
        let ci = Some("Bearer 0123456789abcdef-ci");
        assert!(tokens.check(ci, Scope::Read).is_ok());
        assert!(tokens.check(ci, Scope::Enqueue).is_ok());
        assert_eq!(
            tokens.check(ci, Scope::Upload).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        let ops = Some("Bearer 0123456789abcdef-ops");
        assert!(tokens.check(ops, Scope::Upload).is_ok());
        assert_eq!(
            tokens.check(None, Scope::Read).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        let wrong = tokens.check(Some("Bearer nope"), Scope::Read).unwrap_err();
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(!wrong.message.contains("nope"), "the secret is not echoed");
        assert!(Tokens::insecure_open().check(None, Scope::Admin).is_ok());
    }

    #[test]
    fn bad_token_files_are_named() {
        for (text, want) in [
            ("ci:short:enqueue", "at least 16"),
            ("ci:0123456789abcdef:root", "unknown scope `root`"),
            ("justone", "must be `name:secret:scope"),
            ("", "no tokens"),
        ] {
            let err = Tokens::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
