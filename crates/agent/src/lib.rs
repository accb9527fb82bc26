//! The agent: holds the targets' real credentials, opens and authenticates target
//! connections, and relays them to the gateway.
//!
//! `sluice gateway` runs an [`EmbeddedAgent`] in-process. Credentials are resolved here,
//! at connect time, and never leave this crate except toward the target.

mod secret;

use std::collections::HashMap;
use std::time::Duration;

use sluice_postgres::{
    upstream, CancelKey, Connector, TlsMode, Upstream, UpstreamError, UpstreamOptions,
};

pub use secret::{SecretError, SecretRef};

/// One PostgreSQL target as the agent knows it.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    pub address: String,
    pub database: String,
    pub user: String,
    pub password: Option<SecretRef>,
    pub tls: TlsMode,
    pub connect_timeout: Duration,
}

/// The in-process agent serving every connection configured with `agent: embedded`.
#[derive(Debug, Default)]
pub struct EmbeddedAgent {
    postgres: HashMap<String, PostgresTarget>,
}

impl EmbeddedAgent {
    pub fn new(postgres: HashMap<String, PostgresTarget>) -> EmbeddedAgent {
        EmbeddedAgent { postgres }
    }

    fn options(&self, connection: &str) -> Result<UpstreamOptions, UpstreamError> {
        let target = self
            .postgres
            .get(connection)
            .ok_or_else(|| UpstreamError::NoRoute(connection.to_owned()))?;
        // Resolved on every connect (so rotation works), but only needed if the target
        // asks for a password: a server that trusts the gateway needs none.
        let password = target
            .password
            .as_ref()
            .map(|secret| secret.resolve().map_err(|e| e.to_string()));
        Ok(UpstreamOptions {
            address: target.address.clone(),
            database: target.database.clone(),
            user: target.user.clone(),
            password,
            tls: target.tls.clone(),
            connect_timeout: target.connect_timeout,
        })
    }
}

impl Connector for EmbeddedAgent {
    async fn connect(
        &self,
        connection: &str,
        client_params: &[(String, String)],
    ) -> Result<Upstream, UpstreamError> {
        let opts = self.options(connection)?;
        upstream::connect(&opts, client_params).await
    }

    async fn cancel(&self, connection: &str, key: &CancelKey) -> Result<(), UpstreamError> {
        let opts = self.options(connection)?;
        upstream::send_cancel(&opts, key).await
    }
}
