//! Prometheus metrics, served at `/metrics` on the API listener.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: String,
}

pub struct Metrics {
    registry: Registry,
    pub sessions: Family<ProtocolLabel, Counter>,
    pub sessions_active: Gauge,
    pub statements_allowed: Counter,
    pub statements_refused: Counter,
    pub auth_failures: Counter,
    pub audit_events: Gauge,
    pub audit_syncs: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sluice");
        let sessions = Family::<ProtocolLabel, Counter>::default();
        let sessions_active = Gauge::default();
        let statements_allowed = Counter::default();
        let statements_refused = Counter::default();
        let auth_failures = Counter::default();
        let audit_events = Gauge::default();
        let audit_syncs = Gauge::default();
        registry.register("sessions", "Client sessions opened", sessions.clone());
        registry.register(
            "sessions_active",
            "Client sessions open now",
            sessions_active.clone(),
        );
        registry.register(
            "statements_allowed",
            "Statements recorded and forwarded",
            statements_allowed.clone(),
        );
        registry.register(
            "statements_refused",
            "Statements refused by the gateway",
            statements_refused.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed client authentications",
            auth_failures.clone(),
        );
        registry.register(
            "audit_events",
            "Records in the audit log (head sequence number)",
            audit_events.clone(),
        );
        registry.register(
            "audit_syncs",
            "fdatasync calls made by the audit writer (group commits)",
            audit_syncs.clone(),
        );
        Metrics {
            registry,
            sessions,
            sessions_active,
            statements_allowed,
            statements_refused,
            auth_failures,
            audit_events,
            audit_syncs,
        }
    }

    pub fn session_opened(&self, protocol: &str) {
        self.sessions
            .get_or_create(&ProtocolLabel {
                protocol: protocol.to_owned(),
            })
            .inc();
        self.sessions_active.inc();
    }

    pub fn session_closed(&self) {
        self.sessions_active.dec();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
