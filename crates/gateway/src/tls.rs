//! Client-facing TLS: the configured certificate, or a self-signed one generated on
//! first start and kept under `data_dir/tls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::info;

use crate::config::Config;

/// The certificate and key files: configured, or the self-signed pair (made if absent).
fn files(config: &Config) -> Result<(PathBuf, PathBuf)> {
    match &config.tls {
        Some(files) => Ok((files.cert.clone(), files.key.clone())),
        None => ensure_self_signed(&config.data_dir.join("tls")),
    }
}

/// A TLS client configuration that verifies servers against `ca_file` (PEM) or, without
/// one, the Mozilla roots bundled with the binary. Every verifying client of this binary
/// (identity providers, webhooks, the CLI towards the gateway, agents with `--ca`) uses it.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    match ca_file {
        Some(path) => {
            let pem = read_ca_file(path)?;
            client_config_pem(Some(pem.as_bytes()))
                .with_context(|| format!("invalid CA file {}", path.display()))
        }
        None => client_config_pem(None),
    }
}

/// A CA file's PEM text (to check a target's certificate where an agent runs).
pub fn read_ca_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read CA file {}", path.display()))
}

/// [`client_config`] with the CA certificates as PEM text.
pub fn client_config_pem(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .context("invalid CA certificates")?;
            if certs.is_empty() {
                anyhow::bail!("the CA file holds no certificate");
            }
            for cert in certs {
                roots.add(cert).context("adding a CA certificate")?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The SHA-256 fingerprint of the gateway's certificate (what agents pin).
pub fn fingerprint(config: &Config) -> Result<String> {
    let (cert_path, _) = files(config)?;
    let cert = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("cannot read TLS certificate {}", cert_path.display()))?
        .next()
        .context("the TLS certificate file is empty")?
        .with_context(|| format!("invalid TLS certificate {}", cert_path.display()))?;
    Ok(sluice_tunnel::pin::fingerprint(&cert))
}

/// TLS for PostgreSQL clients.
pub fn acceptor(config: &Config) -> Result<TlsAcceptor> {
    // PostgreSQL 17 clients ask for ALPN "postgresql" (required for direct SSL).
    acceptor_for(config, b"postgresql")
}

/// TLS for AWS and HTTP clients on `listen.http`.
pub fn http_acceptor(config: &Config) -> Result<TlsAcceptor> {
    acceptor_for(config, b"http/1.1")
}

/// The gateway's certificate, offering `alpn` to clients that ask for a protocol.
fn acceptor_for(config: &Config, alpn: &[u8]) -> Result<TlsAcceptor> {
    let (cert_path, key_path) = files(config)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("cannot read TLS certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid TLS certificate {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("cannot read TLS key {}", key_path.display()))?;
    let mut server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("TLS certificate and key do not match")?;
    server.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn ensure_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated =
        rcgen::generate_simple_self_signed(names).context("generating a TLS certificate")?;
    std::fs::write(&cert, generated.cert.pem())
        .with_context(|| format!("cannot write {}", cert.display()))?;
    write_private(&key, generated.key_pair.serialize_pem().as_bytes())?;
    info!(cert = %cert.display(), "generated a self-signed TLS certificate");
    Ok((cert, key))
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
