//! What the two ends say to each other.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_agent::{PostgresTarget, SecretRef};
use sluice_postgres::{TlsMode, UpstreamOptions};

/// Agent → gateway, first message on a new tunnel.
#[derive(Serialize, Deserialize)]
pub struct Hello {
    pub key: String,
    pub version: String,
}

/// Gateway → agent, the answer to [`Hello`].
#[derive(Serialize, Deserialize)]
pub enum Welcome {
    Accepted { name: String },
    Refused { error: String },
}

/// Gateway → agent, first message on each stream.
#[derive(Serialize, Deserialize)]
pub enum Request {
    Connect {
        target: Target,
        client_params: Vec<(String, String)>,
    },
    Cancel {
        target: Target,
        pid: i32,
        key: Vec<u8>,
    },
    /// An API call (AWS, HTTP) the agent makes with the connection's credential. `call` is
    /// for the agent's [`crate::agent::CallService`]; the call's body and its answer follow
    /// on the stream in that service's framing.
    Call { call: serde_json::Value },
}

/// Agent → gateway, the answer on a stream.
#[derive(Serialize, Deserialize)]
pub enum Reply {
    /// The target connection is authenticated; the stream carries its bytes from here.
    Connected {
        startup_frames: Vec<u8>,
        pid: i32,
        key: Vec<u8>,
        txn_status: u8,
    },
    Failed {
        message: String,
    },
    Done,
}

/// A PostgreSQL target as the gateway describes it to the agent: the password only as
/// written in the configuration (`env:NAME`, `file:PATH`, or a literal), resolved by the
/// agent.
#[derive(Clone, Serialize, Deserialize)]
pub struct Target {
    pub address: String,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    /// `disable`, `prefer`, `require`, `verify-full`.
    pub tls: String,
    pub ca_pem: Option<Vec<u8>>,
    pub connect_timeout_ms: u64,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("address", &self.address)
            .field("database", &self.database)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Target {
    pub fn new(t: &PostgresTarget, password: Option<String>) -> Target {
        let (tls, ca_pem) = match &t.tls {
            TlsMode::Disable => ("disable", None),
            TlsMode::Prefer => ("prefer", None),
            TlsMode::Require => ("require", None),
            TlsMode::VerifyFull { ca_pem } => ("verify-full", Some(ca_pem.clone())),
        };
        Target {
            address: t.address.clone(),
            database: t.database.clone(),
            user: t.user.clone(),
            password,
            tls: tls.into(),
            ca_pem,
            connect_timeout_ms: u64::try_from(t.connect_timeout.as_millis()).unwrap_or(10_000),
        }
    }

    /// The options for a cancel request, which needs no credential.
    pub fn options_without_password(&self) -> Result<UpstreamOptions, String> {
        let mut target = self.clone();
        target.password = None;
        target.options()
    }

    /// The options to connect with, the password resolved here (where the agent runs).
    pub fn options(&self) -> Result<UpstreamOptions, String> {
        let tls = match (self.tls.as_str(), &self.ca_pem) {
            ("disable", _) => TlsMode::Disable,
            ("prefer", _) => TlsMode::Prefer,
            ("require", _) => TlsMode::Require,
            ("verify-full", Some(ca)) => TlsMode::VerifyFull { ca_pem: ca.clone() },
            (other, _) => return Err(format!("unknown TLS mode {other:?}")),
        };
        Ok(UpstreamOptions {
            address: self.address.clone(),
            database: self.database.clone(),
            user: self.user.clone(),
            password: self
                .password
                .as_deref()
                .map(|p| SecretRef::parse(p).resolve().map_err(|e| e.to_string())),
            tls,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms.clamp(100, 600_000)),
        })
    }
}
