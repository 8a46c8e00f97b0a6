//! `wasmq secret`: secrets sealed with the operator's key (`WASMQ_SECRET_KEY`) and stored in
//! the broker. A value comes from stdin or a file, never from an argument (arguments show in
//! `ps` and shell history); listing shows names only.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::broker::ApiBroker;
use crate::grant::check_secret_name;
use crate::secret::{SecretError, SecretKey};

/// `wasmq secret …`
#[derive(Debug, Subcommand)]
pub(crate) enum SecretCommand {
    /// Print a fresh random key to put in WASMQ_SECRET_KEY (on every worker and wherever
    /// secrets are set).
    NewKey,
    /// Seal a secret's value (read from stdin, or `--file`; one trailing newline removed) with
    /// WASMQ_SECRET_KEY and store it, replacing any value it had.
    Set {
        /// The secret's name (letters, digits, `_`).
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List the secrets' names (never their values).
    List,
    /// Delete a secret.
    Delete {
        /// The secret's name.
        name: String,
    },
}

/// The operator's key from the environment: `None` when unset, an error when malformed.
pub(crate) fn key_from_env() -> anyhow::Result<Option<SecretKey>> {
    match std::env::var("WASMQ_SECRET_KEY") {
        Ok(text) if !text.trim().is_empty() => Ok(Some(SecretKey::parse(&text)?)),
        _ => Ok(None),
    }
}

/// `wasmq secret new-key`: needs no broker.
pub(crate) fn new_key() -> anyhow::Result<ExitCode> {
    println!("{}", SecretKey::generate());
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run(
    broker: &dyn ApiBroker,
    command: SecretCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        SecretCommand::NewKey => return new_key(),
        SecretCommand::Set { name, file } => {
            check_secret_name(&name)?;
            let key = key_from_env()?.ok_or(SecretError::NoKey)?;
            let mut text = String::new();
            match &file {
                Some(path) => {
                    text = std::fs::read_to_string(path)
                        .with_context(|| format!("failed to read `{}`", path.display()))?;
                }
                None => {
                    std::io::stdin()
                        .take((crate::secret::MAX_VALUE_BYTES + 2) as u64)
                        .read_to_string(&mut text)
                        .context("failed to read the value from stdin")?;
                }
            }
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            let sealed = key.seal(&name, value)?;
            broker.put_secret(&name, &sealed).await?;
            println!("secret `{name}` set ({} bytes, sealed)", value.len());
        }
        SecretCommand::List => {
            let names = broker.secret_names().await?;
            if names.is_empty() {
                println!("no secrets");
            }
            for name in names {
                println!("{name}");
            }
        }
        SecretCommand::Delete { name } => {
            if !broker.delete_secret(&name).await? {
                bail!("secret `{name}` is not set");
            }
            println!("secret `{name}` deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
