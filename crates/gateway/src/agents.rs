//! Wiring of remote agents: which connections go through which agent, agent keys checked
//! against the store, and the agents' live state written back for `sluice agents list`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use sluice_agent::{EmbeddedAgent, PostgresTarget};
use sluice_audit::{AuditWriter, Event, EventBody};
use sluice_postgres::{CancelKey, Connector, Upstream, UpstreamError};
use sluice_store::Store;
use sluice_tunnel::gateway::{AgentRegistry, Agents};
use sluice_tunnel::Target;
use tracing::warn;

/// How often the agents' live state is written to the store (and revocations applied).
const STATE_EVERY: Duration = Duration::from_secs(2);

/// Routes each connection to the embedded agent or to the remote agent it names.
pub struct Connectors {
    embedded: EmbeddedAgent,
    remote: Arc<Agents>,
    /// Connection → (agent name, target as the agent gets it).
    routes: HashMap<String, (String, Target)>,
}

impl Connectors {
    /// `targets`: every connection; `remote`: connection → (agent, password as written).
    pub fn new(
        targets: HashMap<String, PostgresTarget>,
        remote_routes: HashMap<String, (String, Option<String>)>,
        remote: Arc<Agents>,
    ) -> Connectors {
        let mut routes = HashMap::new();
        let mut embedded = HashMap::new();
        for (name, target) in targets {
            match remote_routes.get(&name) {
                Some((agent, password)) => {
                    routes.insert(
                        name,
                        (agent.clone(), Target::new(&target, password.clone())),
                    );
                }
                None => {
                    embedded.insert(name, target);
                }
            }
        }
        Connectors {
            embedded: EmbeddedAgent::new(embedded),
            remote,
            routes,
        }
    }
}

impl Connector for Connectors {
    async fn connect(
        &self,
        connection: &str,
        client_params: &[(String, String)],
    ) -> Result<Upstream, UpstreamError> {
        match self.routes.get(connection) {
            Some((agent, target)) => self.remote.connect(agent, target, client_params).await,
            None => self.embedded.connect(connection, client_params).await,
        }
    }

    async fn cancel(&self, connection: &str, key: &CancelKey) -> Result<(), UpstreamError> {
        match self.routes.get(connection) {
            Some((agent, target)) => self.remote.cancel(agent, target, key).await,
            None => self.embedded.cancel(connection, key).await,
        }
    }
}

/// How often a revoked key's attempts are recorded, per agent: its holder may keep trying.
const REFUSALS_RECORDED_EVERY: Duration = Duration::from_secs(60);

/// Agent keys as the store has them; agents' tunnels recorded in the audit log.
pub struct StoreRegistry {
    pub store: Arc<Store>,
    pub audit: AuditWriter,
    /// When a revoked key of each agent was last recorded.
    refusals: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl StoreRegistry {
    pub fn new(store: Arc<Store>, audit: AuditWriter) -> Self {
        StoreRegistry {
            store,
            audit,
            refusals: std::sync::Mutex::default(),
        }
    }

    /// Records a revoked key's attempt, at most once per [`REFUSALS_RECORDED_EVERY`].
    fn refused(&self, agent: &str, address: &str, reason: &str) {
        {
            let mut last = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            if last
                .get(agent)
                .is_some_and(|at| now.duration_since(*at) < REFUSALS_RECORDED_EVERY)
            {
                return;
            }
            last.insert(agent.to_owned(), now);
        }
        self.audit.append(Event::now(
            None,
            EventBody::AgentRefused {
                agent: agent.to_owned(),
                address: address.to_owned(),
                reason: reason.to_owned(),
            },
        ));
    }
}

impl AgentRegistry for StoreRegistry {
    fn authenticate(&self, key: &str, address: &str) -> Result<String, String> {
        let hash = sluice_auth::agent_key_hash(key).ok_or("malformed agent key")?;
        match self.store.agent_by_key_hash(&hash) {
            Ok(Some(agent)) if agent.revoked_ms.is_some() => {
                let reason = format!("the key of agent {} has been revoked", agent.name);
                self.refused(&agent.name, address, &reason);
                Err(reason)
            }
            Ok(Some(agent)) => Ok(agent.name),
            Ok(None) => Err("unknown agent key".into()),
            Err(e) => {
                warn!(error = %e, "agent keys unavailable");
                Err("the gateway cannot check agent keys right now".into())
            }
        }
    }

    fn connected(&self, name: &str, address: &str, version: &str) {
        self.audit.append(Event::now(
            None,
            EventBody::AgentConnected {
                agent: name.to_owned(),
                address: address.to_owned(),
                version: version.to_owned(),
            },
        ));
    }

    fn disconnected(&self, name: &str, address: &str, reason: &str) {
        self.audit.append(Event::now(
            None,
            EventBody::AgentDisconnected {
                agent: name.to_owned(),
                address: address.to_owned(),
                reason: reason.to_owned(),
            },
        ));
    }
}

/// Writes the agents' live tunnels to the store every `STATE_EVERY`, and closes the
/// tunnels of agents whose key was revoked meanwhile (by `sluice agents revoke`, which
/// works on the store).
pub fn sync_state(store: Arc<Store>, agents: Arc<Agents>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATE_EVERY);
        loop {
            tick.tick().await;
            let mut by_name: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
            for link in agents.connected() {
                by_name.entry(link.name.clone()).or_default().push(json!({
                    "since": humantime::format_rfc3339_seconds(link.since).to_string(),
                    "address": link.address,
                    "version": link.version,
                    "sessions": link.sessions(),
                }));
            }
            let states: Vec<(String, String)> = by_name
                .into_iter()
                .map(|(name, links)| (name, serde_json::Value::Array(links).to_string()))
                .collect();
            let (s, a) = (store.clone(), agents.clone());
            let result = tokio::task::spawn_blocking(move || {
                // Revocations first, and whether or not the state can be written.
                let revoked = s.list_agents().map(|rows| {
                    for row in rows.iter().filter(|r| r.revoked_ms.is_some()) {
                        a.disconnect(&row.name);
                    }
                });
                revoked.and_then(|()| s.set_agent_states(&states, now_ms()))
            })
            .await;
            if let Ok(Err(e)) = result {
                warn!(error = %e, "cannot apply agent revocations or record agent state");
            }
        }
    });
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
