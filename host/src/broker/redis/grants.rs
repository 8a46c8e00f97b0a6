//! The Redis broker's module grants: per module, a set of HTTP destinations and a set of secret
//! names (`SADD`/`SREM` make each addition and removal atomic), and an index of the modules that
//! have one.

use async_trait::async_trait;

use super::RedisBroker;
use crate::broker::{BrokerError, Grants};
use crate::grant::{Grant, HttpRule};
use crate::modules::ModuleHash;

impl RedisBroker {
    async fn read_grant(&self, module: ModuleHash) -> Result<Grant, BrokerError> {
        let [http, secrets] = self.keys.grant(module);
        let (rules, secrets): (Vec<String>, Vec<String>) = self
            .pipeline(
                redis::pipe()
                    .cmd("SMEMBERS")
                    .arg(&http)
                    .cmd("SMEMBERS")
                    .arg(&secrets),
            )
            .await?;
        let http_rules = rules
            .iter()
            .map(|r| {
                r.parse::<HttpRule>().map_err(|e| BrokerError::Corrupt {
                    what: http.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut grant = Grant {
            http: http_rules,
            secrets,
        };
        grant.sort();
        Ok(grant)
    }

    /// Keeps the index in step with the module's sets.
    async fn index_grant(&self, module: ModuleHash, grant: &Grant) -> Result<(), BrokerError> {
        let cmd = if grant.is_empty() { "SREM" } else { "SADD" };
        self.query(
            redis::cmd(cmd)
                .arg(self.keys.grant_index())
                .arg(module.hex())
                .clone(),
        )
        .await
    }
}

fn rule_texts(grant: &Grant) -> Vec<String> {
    grant.http.iter().map(|r| r.to_string()).collect()
}

#[async_trait]
impl Grants for RedisBroker {
    async fn grant(&self, module: ModuleHash) -> Result<Grant, BrokerError> {
        self.read_grant(module).await
    }

    async fn add_grant(&self, module: ModuleHash, grant: &Grant) -> Result<Grant, BrokerError> {
        let [http, secrets] = self.keys.grant(module);
        let mut pipe = redis::pipe();
        if !grant.http.is_empty() {
            pipe.cmd("SADD").arg(&http).arg(rule_texts(grant)).ignore();
        }
        if !grant.secrets.is_empty() {
            pipe.cmd("SADD").arg(&secrets).arg(&grant.secrets).ignore();
        }
        // The index first: a module whose sets exist is always listed.
        if !grant.is_empty() {
            self.index_grant(module, grant).await?;
            let () = self.pipeline(&pipe).await?;
        }
        self.read_grant(module).await
    }

    async fn remove_grant(&self, module: ModuleHash, grant: &Grant) -> Result<Grant, BrokerError> {
        let [http, secrets] = self.keys.grant(module);
        let mut pipe = redis::pipe();
        if grant.is_empty() {
            pipe.cmd("DEL").arg(&http).arg(&secrets).ignore();
        } else {
            if !grant.http.is_empty() {
                pipe.cmd("SREM").arg(&http).arg(rule_texts(grant)).ignore();
            }
            if !grant.secrets.is_empty() {
                pipe.cmd("SREM").arg(&secrets).arg(&grant.secrets).ignore();
            }
        }
        let () = self.pipeline(&pipe).await?;
        let left = self.read_grant(module).await?;
        if left.is_empty() {
            self.index_grant(module, &left).await?;
        }
        Ok(left)
    }

    async fn grants(&self) -> Result<Vec<(ModuleHash, Grant)>, BrokerError> {
        let mut hexes: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.keys.grant_index()).clone())
            .await?;
        hexes.sort();
        let mut all = Vec::with_capacity(hexes.len());
        for hex in hexes {
            let module: ModuleHash =
                format!("sha256:{hex}")
                    .parse()
                    .map_err(|e: crate::modules::HashParseError| BrokerError::Corrupt {
                        what: self.keys.grant_index(),
                        reason: e.to_string(),
                    })?;
            let grant = self.read_grant(module).await?;
            if !grant.is_empty() {
                all.push((module, grant));
            }
        }
        Ok(all)
    }
}
