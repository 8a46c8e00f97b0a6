//! `wasmq grant`, `wasmq grants` and `wasmq revoke`: what the operator lets a module reach.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use crate::broker::ApiBroker;
use crate::grant::{Grant, HttpRule};
use crate::modules::ModuleHash;

/// What to grant or revoke.
#[derive(Debug, Args)]
pub(crate) struct GrantArgs {
    /// The module (`sha256:…`).
    module: ModuleHash,
    /// An HTTP destination: `https://api.example`, `https://*.cdn.example:8443`,
    /// `http://10.0.0.7:8080` or `http://10.0.0.0/8` (repeatable).
    #[arg(long = "http", value_name = "DESTINATION")]
    http: Vec<HttpRule>,
    /// A secret the module may read (repeatable).
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
}

impl GrantArgs {
    fn grant(&self) -> Grant {
        Grant {
            http: self.http.clone(),
            secrets: self.secrets.clone(),
        }
    }
}

/// Flags of `wasmq revoke`.
#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    what: GrantArgs,
    /// Revoke the whole grant.
    #[arg(long, conflicts_with_all = ["http", "secrets"])]
    all: bool,
}

/// Flags of `wasmq grants`.
#[derive(Debug, Args)]
pub(crate) struct GrantsArgs {
    /// Only this module's grant.
    module: Option<ModuleHash>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn grant(broker: &dyn ApiBroker, args: GrantArgs) -> anyhow::Result<ExitCode> {
    let whole = broker.extend_grant(args.module, &args.grant()).await?;
    print_grant(args.module, &whole);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn revoke(broker: &dyn ApiBroker, args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let what = args.what.grant();
    if what.is_empty() && !args.all {
        bail!("name what to revoke (`--http`, `--secret`), or `--all` for the whole grant");
    }
    let left = broker.remove_grant(args.what.module, &what).await?;
    print_grant(args.what.module, &left);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn grants(broker: &dyn ApiBroker, args: GrantsArgs) -> anyhow::Result<ExitCode> {
    let all = match args.module {
        Some(m) => vec![(m, broker.grant(m).await?)],
        None => broker.grants().await?,
    };
    if args.json {
        let list: Vec<_> = all
            .iter()
            .map(|(m, g)| serde_json::json!({ "module": m, "http": g.http, "secrets": g.secrets }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if all.is_empty() {
        println!("no module has a grant");
    } else {
        for (m, g) in &all {
            print_grant(*m, g);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_grant(module: ModuleHash, grant: &Grant) {
    if grant.is_empty() {
        println!("{module}: nothing granted");
        return;
    }
    println!("{module}:");
    for rule in &grant.http {
        println!("  http    {rule}");
    }
    for secret in &grant.secrets {
        println!("  secret  {secret}");
    }
}
