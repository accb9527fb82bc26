//! `sluice agent`: the remote agent process. It needs no configuration file: the gateway
//! says which target to open for each session, and the credentials written as `env:` or
//! `file:` are resolved here, where the agent runs.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sluice_tunnel::agent::AgentOptions;
use tracing::info;

/// What `sluice agent` was given.
pub struct Args<'a> {
    pub gateway: &'a str,
    pub key: &'a str,
    pub fingerprint: Option<&'a str>,
    pub ca: Option<&'a Path>,
    pub allowed_targets: Vec<String>,
    pub allowed_secrets: Vec<String>,
    pub threads: usize,
}

pub fn run(args: Args<'_>) -> Result<ExitCode> {
    let Args {
        gateway,
        key,
        fingerprint,
        ca,
        allowed_targets,
        allowed_secrets,
        threads,
    } = args;
    let (host, address) = parse_gateway(gateway)?;
    if sluice_auth::agent_key_hash(key).is_none() {
        bail!("--key is not an agent key (sla_…); see `sluice agents add`");
    }
    if let Some(fp) = fingerprint {
        let digits = sluice_tunnel::pin::normalize(fp);
        if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--fingerprint must be the 64 hex digits of the gateway certificate's SHA-256, as `sluice agents add` prints it");
        }
    }
    let tls = match (fingerprint, ca) {
        (Some(fp), None) => Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(sluice_tunnel::pin::pinned(fp)))
            .with_no_client_auth(),
        ),
        (None, Some(ca)) => crate::tls::client_config(Some(ca)).context("--ca")?,
        _ => bail!("give the gateway certificate's --fingerprint (from `sluice agents add`) or a --ca file"),
    };
    let options = AgentOptions {
        address,
        server_name: host,
        key: key.to_owned(),
        tls,
        allowed_targets,
        allowed_secrets,
        calls: Some(Arc::new(crate::apis::remote::AgentCalls::default())),
    };
    // One thread by default: the agent relays bytes and shares its host with the targets
    // (measured on 2 cores: one thread left more for the rest; bench/README.md).
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        info!(gateway = %options.address, version = sluice_tunnel::VERSION, "sluice agent starting");
        tokio::select! {
            () = sluice_tunnel::agent::run(options) => {}
            () = shutdown() => info!("sluice agent stopping"),
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// `https://host:port`, `tls://host:port` or `host:port` → (host, `host:port`).
fn parse_gateway(gateway: &str) -> Result<(String, String)> {
    let rest = gateway
        .strip_prefix("https://")
        .or_else(|| gateway.strip_prefix("tls://"))
        .unwrap_or(gateway)
        .trim_end_matches('/');
    let Some((host, port)) = rest.rsplit_once(':') else {
        bail!("--gateway must be https://HOST:PORT (the gateway's listen.tunnel), got {gateway:?}");
    };
    if host.is_empty() || port.parse::<u16>().is_err() || rest.contains('/') || rest.contains('@') {
        bail!("--gateway must be https://HOST:PORT (the gateway's listen.tunnel), got {gateway:?}");
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, rest.to_owned()))
}

async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gateway_addresses() {
        assert_eq!(
            parse_gateway("https://gw.example.com:8443").unwrap(),
            ("gw.example.com".into(), "gw.example.com:8443".into())
        );
        assert_eq!(
            parse_gateway("127.0.0.1:9").unwrap(),
            ("127.0.0.1".into(), "127.0.0.1:9".into())
        );
        for bad in [
            "https://gw",
            "gw:x",
            "https://u@gw:1",
            "https://gw:1/path",
            ":1",
        ] {
            assert!(parse_gateway(bad).is_err(), "{bad}");
        }
    }
}
