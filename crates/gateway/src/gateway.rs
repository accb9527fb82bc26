//! `sluice gateway`: wires configuration, store, audit log, agent and listeners together.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sluice_agent::{PostgresTarget, SecretRef};
use sluice_audit::{AuditWriter, WriterOptions};
use sluice_auth::Tokens;
use sluice_postgres::{Frontend, FrontendConfig, TlsMode};
use sluice_store::Store;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::access::Access;
use crate::agents::{Connectors, StoreRegistry};
use crate::api::{self, ApiState, ConnectionView};
use crate::config::{self, Config, UpstreamTls};
use crate::metrics::Metrics;
use crate::pipeline::{GatewayPipeline, Parts};
use crate::reviews::Reviews;
use crate::signin::SignIn;
use crate::webhooks::Notifier;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs until a shutdown signal. Returns the data directory's lock, which the caller
/// releases only after the runtime (and with it every task still holding the audit log)
/// is gone, so a new gateway can never write alongside this one.
pub async fn run(config: Config) -> Result<File> {
    create_private_dir(&config.data_dir)?;
    // One gateway per data directory: two writers would fork the audit chain.
    let lock_path = config.data_dir.join("gateway.lock");
    let lock = File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another sluice gateway is already using data_dir {}",
            config.data_dir.display()
        )
    })?;

    let store = Arc::new(Store::open(&config.store_path()).with_context(|| {
        format!(
            "cannot open the metadata store {}",
            config.store_path().display()
        )
    })?);
    warn_unregistered_agents(&config, &store)?;
    let stale = store.end_open_sessions(now_ms(), "gateway restarted")?;
    if stale > 0 {
        info!(
            sessions = stale,
            "marked sessions left open by a previous run as ended"
        );
    }
    let durability = match config.audit.durability {
        config::Durability::Fsync => sluice_audit::Durability::Fsync,
        config::Durability::Write => sluice_audit::Durability::Write,
    };
    let audit = AuditWriter::open(
        &config.audit_dir(),
        WriterOptions {
            durability,
            ..WriterOptions::default()
        },
    )
    .with_context(|| {
        format!(
            "cannot open the audit log in {}",
            config.audit_dir().display()
        )
    })?;
    let tls = crate::tls::acceptor(&config)?;
    let tunnel_tls = tls.clone();
    let remote_agents = Arc::new(sluice_tunnel::gateway::Agents::default());
    let agent = Arc::new(Connectors::new(
        postgres_targets(&config)?,
        config
            .connections
            .iter()
            .filter(|c| c.agent != "embedded")
            .map(|c| (c.name.clone(), (c.agent.clone(), c.password.clone())))
            .collect(),
        remote_agents.clone(),
    ));
    let metrics = Arc::new(Metrics::new());
    let notifier = Notifier::start(&config.notifications.webhooks)?;
    let reviews = Arc::new(Reviews::new(
        store.clone(),
        audit.clone(),
        notifier,
        format!("http://{}", config.listen.api),
    ));
    // Sessions that held statements before a restart are gone.
    reviews.withdraw_held(None).await;
    let policy = Arc::new(config.policy()?);
    let access = Arc::new(Access::new(
        store.clone(),
        audit.clone(),
        policy.clone(),
        config
            .connections
            .iter()
            .map(|c| (c.name.clone(), c.access_reviewers()))
            .collect(),
    ));
    let pipeline = Arc::new(GatewayPipeline::new(Parts {
        audit: audit.clone(),
        store: store.clone(),
        allow: config.allow_lists(),
        policy,
        reviews: reviews.clone(),
        access: access.clone(),
        requires_access: config
            .connections
            .iter()
            .filter(|c| c.require_access_request)
            .map(|c| c.name.clone())
            .collect(),
        metrics: metrics.clone(),
        kinds: config
            .connections
            .iter()
            .map(|c| (c.name.clone(), c.kind.as_str()))
            .collect(),
    }));
    tokio::spawn(pipeline.clone().end_revoked_sessions());
    let masking = config.masking().context("masking")?;
    let frontend = Arc::new(Frontend::new(
        pipeline.clone(),
        agent,
        FrontendConfig {
            tls: Some(tls),
            max_message_bytes: config.limits.max_message_bytes,
            max_connections: config.limits.max_connections,
            masking: masking.clone(),
        },
    ));

    let pg_listener = TcpListener::bind(config.listen.postgres)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (listen.postgres)",
                config.listen.postgres
            )
        })?;
    let api_listener = TcpListener::bind(config.listen.api)
        .await
        .with_context(|| format!("cannot listen on {} (listen.api)", config.listen.api))?;
    let aws = match config.listen.http {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (listen.http)"))?;
            let frontend = crate::apis::ApiFrontend::new(
                pipeline.clone(),
                store.clone(),
                sluice_auth::Sealer::new(&config.sealing_key()?),
                api_targets(&config, remote_agents.clone())?,
                masking.clone(),
                crate::apis::ListenOptions {
                    virtual_host: config.listen.s3_virtual_host.clone(),
                    max_connections: config.limits.max_connections,
                    tls: crate::tls::http_acceptor(&config)?,
                },
            );
            Some((Arc::new(frontend), listener))
        }
        None => None,
    };
    let tunnel_listener = match config.listen.tunnel {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (listen.tunnel)"))?,
        ),
        None => None,
    };
    let signin = Arc::new(
        SignIn::new(
            &config,
            store.clone(),
            Tokens::new(store.clone()),
            audit.clone(),
        )
        .context("identity")?,
    );
    let connections = Arc::new(connection_views(&config));
    let mcp = crate::mcp::service(
        Arc::new(crate::mcp::McpDeps {
            frontend: frontend.clone(),
            connections: connections.clone(),
            masking,
            store: store.clone(),
        }),
        mcp_hosts(&config),
    );
    let router = api::router(
        ApiState {
            store: store.clone(),
            tokens: Tokens::new(store.clone()),
            metrics,
            audit: audit.clone(),
            reviews,
            access,
            signin,
            connections,
            audit_dir: config.audit_dir(),
            searches: Arc::new(tokio::sync::Semaphore::new(2)),
            console: crate::console::ConsoleState::new(config.console_key()?, mcp_hosts(&config)),
            sealer: Arc::new(sluice_auth::Sealer::new(&config.sealing_key()?)),
        },
        mcp,
    );
    info!(
        postgres = %config.listen.postgres,
        api = %config.listen.api,
        data_dir = %config.data_dir.display(),
        connections = config.connections.len(),
        "sluice gateway ready"
    );

    tokio::spawn(anchor_audit_log(audit.clone(), store.clone()));
    tokio::spawn(crate::index::follow(config.audit_dir(), store.clone()));
    let tunnel = async {
        match tunnel_listener {
            Some(listener) => {
                crate::agents::sync_state(store.clone(), remote_agents.clone());
                info!(tunnel = ?config.listen.tunnel, "accepting remote agents");
                remote_agents
                    .clone()
                    .serve(
                        listener,
                        tunnel_tls,
                        Arc::new(StoreRegistry::new(store.clone(), audit.clone())),
                    )
                    .await
            }
            None => std::future::pending().await,
        }
    };
    let aws = async {
        match aws {
            Some((frontend, listener)) => {
                info!(http = ?config.listen.http, "accepting AWS clients");
                frontend.serve(listener).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tunnel => r.context("tunnel listener failed")?,
        r = aws => r.context("http listener failed")?,
        r = frontend.serve(pg_listener) => r.context("postgres listener failed")?,
        r = axum::serve(
            api_listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        ) => r.context("api listener failed")?,
        () = shutdown_signal() => info!("shutting down"),
    }
    // Clients are told, as PostgreSQL does on a fast shutdown; their sessions get a moment
    // to record their end before the log is flushed.
    pipeline.end_all_sessions("terminating connection due to administrator command");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while pipeline.sessions_ending() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if let Err(e) = audit.flush().await {
        error!(error = %e, "audit log flush failed at shutdown");
    }
    let (seq, hash) = audit.synced_head();
    store.set_audit_anchor(seq, &hash, now_ms())?;
    store.end_open_sessions(now_ms(), "gateway stopped")?;
    // Its tunnels end with it: `agents list` must not show them connected meanwhile.
    store.set_agent_states(&[], now_ms())?;
    Ok(lock)
}

/// Warns about connections whose agent cannot serve them as things stand: not registered
/// (a typo, or `sluice agents add` not run yet), or revoked. They start anyway: the agent
/// may be added while the gateway runs.
fn warn_unregistered_agents(config: &Config, store: &Store) -> Result<()> {
    let agents = store.list_agents()?;
    for connection in config.connections.iter().filter(|c| c.agent != "embedded") {
        match agents.iter().find(|a| a.name == connection.agent) {
            None => warn!(connection = %connection.name, agent = %connection.agent,
                "the connection names an agent that is not registered; add it with `sluice agents add`"),
            Some(a) if a.revoked_ms.is_some() => {
                warn!(connection = %connection.name, agent = %connection.agent,
                "the connection names an agent whose key is revoked; give it a new one with `sluice agents add`")
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Notes the audit log's durable head in the metadata store every few seconds, so that
/// `sluice audit verify` can tell when the newest records were removed — something the
/// hash chain alone cannot show.
async fn anchor_audit_log(audit: AuditWriter, store: Arc<Store>) {
    let mut last = 0;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        let (seq, hash) = audit.synced_head();
        if seq <= last {
            continue;
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.set_audit_anchor(seq, &hash, now_ms()))
            .await
        {
            Ok(Ok(())) => last = seq,
            Ok(Err(e)) => error!(error = %e, "cannot record the audit log's head"),
            Err(e) => error!(error = %e, "cannot record the audit log's head"),
        }
    }
}

fn postgres_targets(config: &Config) -> Result<HashMap<String, PostgresTarget>> {
    let mut targets = HashMap::new();
    for c in config
        .connections
        .iter()
        .filter(|c| c.kind == config::Kind::Postgres)
    {
        let tls = match c.tls {
            UpstreamTls::Disable => TlsMode::Disable,
            UpstreamTls::Prefer => TlsMode::Prefer,
            UpstreamTls::Require => TlsMode::Require,
            UpstreamTls::VerifyFull => {
                let path = c
                    .ca_file
                    .as_ref()
                    .context("tls: verify-full needs ca_file")?;
                let ca_pem = std::fs::read(path).with_context(|| {
                    format!(
                        "connection {}: cannot read ca_file {}",
                        c.name,
                        path.display()
                    )
                })?;
                TlsMode::VerifyFull { ca_pem }
            }
        };
        targets.insert(
            c.name.clone(),
            PostgresTarget {
                address: c.address.clone(),
                database: c.database.clone(),
                user: c.user.clone(),
                password: c.password.as_deref().map(SecretRef::parse),
                tls,
                connect_timeout: c.connect_timeout,
            },
        );
    }
    Ok(targets)
}

/// The `kind: aws` and `kind: http` connections as written (credentials as references),
/// with their CA files read — what the embedded agent builds its targets from, and what a
/// remote agent is sent — each with the agent that serves it.
fn api_specs(config: &Config) -> Result<Vec<(String, crate::apis::remote::TargetSpec)>> {
    use crate::apis::remote::{AwsSpec, HttpSpec, TargetSpec};
    let mut specs = Vec::new();
    for c in &config.connections {
        let ca_pem = c
            .ca_file
            .as_deref()
            .map(crate::tls::read_ca_file)
            .transpose()
            .with_context(|| format!("connection {}: ca_file", c.name))?;
        let spec = match c.kind {
            config::Kind::Aws => TargetSpec::Aws(AwsSpec {
                name: c.name.clone(),
                region: c.region.clone().unwrap_or_default(),
                services: c.services.clone(),
                endpoint: c.endpoint.clone(),
                access_key_id: c.access_key_id.clone().unwrap_or_default(),
                secret_access_key: c.secret_access_key.clone().unwrap_or_default(),
                session_token: c.session_token.clone(),
                role_arn: c.role_arn.clone(),
                external_id: c.external_id.clone(),
                sts_endpoint: c.sts_endpoint.clone(),
                ca_pem,
            }),
            config::Kind::Http => TargetSpec::Http(HttpSpec {
                name: c.name.clone(),
                url: c.url.clone().unwrap_or_default(),
                headers: c
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ca_pem,
            }),
            _ => continue,
        };
        specs.push((c.agent.clone(), spec));
    }
    Ok(specs)
}

/// The AWS and HTTP connections, and which of them remote agents serve.
fn api_targets(
    config: &Config,
    agents: Arc<sluice_tunnel::gateway::Agents>,
) -> Result<crate::apis::ApiTargets> {
    use crate::apis::remote::TargetSpec;
    let mut targets = crate::apis::ApiTargets {
        aws: Vec::new(),
        http: Vec::new(),
        remote: crate::apis::remote::RemoteApis {
            agents,
            routes: std::collections::HashMap::new(),
        },
    };
    for (agent, spec) in api_specs(config)? {
        let name = match &spec {
            TargetSpec::Aws(s) => {
                targets.aws.push(s.target()?);
                &s.name
            }
            TargetSpec::Http(s) => {
                targets.http.push(s.target()?);
                &s.name
            }
        };
        if agent != "embedded" {
            targets
                .remote
                .routes
                .insert(name.clone(), (agent, spec.clone()));
        }
    }
    Ok(targets)
}

fn create_private_dir(path: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .with_context(|| format!("cannot create data_dir {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", path.display()))?;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The `Host` values `/mcp` answers (DNS-rebinding protection): loopback names, the API
/// listener's own address, and the host of `identity.public_url` behind a reverse proxy.
fn mcp_hosts(config: &Config) -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    hosts.push(config.listen.api.ip().to_string());
    if let Some(host) = config
        .identity
        .public_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(str::to_owned))
    {
        hosts.push(host);
    }
    hosts
}

/// The connections as the API lists them.
fn connection_views(config: &Config) -> Vec<ConnectionView> {
    let allow = config.allow_lists();
    config
        .connections
        .iter()
        .map(|c| ConnectionView {
            name: c.name.clone(),
            kind: c.kind.as_str(),
            agent: c.agent.clone(),
            allow: allow.get(&c.name).cloned().flatten(),
            requires_access_request: c.require_access_request,
            listen: match c.kind {
                config::Kind::Postgres => config.listen.postgres.to_string(),
                config::Kind::Aws | config::Kind::Http => config
                    .listen
                    .http
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            },
        })
        .collect()
}
