//! TLS toward the target (rustls, ring provider).

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How the gateway side protects its connection to the target (libpq's `sslmode` names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without certificate verification; plain otherwise.
    Prefer,
    /// TLS or fail, without certificate verification.
    Require,
    /// TLS or fail; the certificate must chain to `ca_pem` and match the host name.
    VerifyFull { ca_pem: Vec<u8> },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server-certificate check without a CA: any certificate (libpq's `sslmode=require`,
/// which encrypts but does not authenticate the server), or exactly the one whose SHA-256
/// fingerprint is pinned (a remote agent trusting the gateway's self-signed certificate).
/// Handshake signatures are checked either way, so the handshake itself is sound.
#[derive(Debug)]
pub struct CertCheck {
    provider: Arc<CryptoProvider>,
    /// Lowercase hex SHA-256 of the certificate's DER; `None`: any certificate.
    pinned: Option<String>,
}

impl CertCheck {
    pub fn any() -> CertCheck {
        CertCheck {
            provider: provider(),
            pinned: None,
        }
    }

    pub fn pinned(fingerprint: &str) -> CertCheck {
        CertCheck {
            provider: provider(),
            pinned: Some(fingerprint.to_ascii_lowercase()),
        }
    }
}

/// The fingerprint of a certificate: lowercase hex SHA-256 of its DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ServerCertVerifier for CertCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(fp) if fingerprint(end_entity) != *fp => Err(rustls::Error::General(
                "the server's certificate does not match the pinned fingerprint".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn unverified_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CertCheck::any()))
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

fn verifying_config(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| rustls::Error::General(format!("bad CA PEM: {e}")))?;
        roots.add(cert)?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Runs the client side of the TLS handshake after the server accepted SSLRequest.
pub async fn connect_upstream(
    tcp: TcpStream,
    host: &str,
    mode: &TlsMode,
) -> Result<TlsStream<TcpStream>, rustls::Error> {
    let config = match mode {
        TlsMode::VerifyFull { ca_pem } => verifying_config(ca_pem)?,
        _ => unverified_config()?,
    };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| rustls::Error::General(format!("invalid server name {host:?}: {e}")))?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| rustls::Error::General(e.to_string()))
}

/// The `tls-server-end-point` channel binding data (RFC 5929) for the server
/// certificate of `stream`: the certificate hashed with the hash of its signature
/// algorithm (SHA-256 for SHA-1/SHA-256 signatures). `None` when the algorithm is one the
/// RFC leaves undefined (e.g. Ed25519) or unknown; SCRAM then runs without binding.
pub fn server_end_point(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha256, Sha384, Sha512};
    let cert = stream.get_ref().1.peer_certificates()?.first()?;
    let der = cert.as_ref();
    match signature_algorithm(der)? {
        SigHash::Sha256 => Some(Sha256::digest(der).to_vec()),
        SigHash::Sha384 => Some(Sha384::digest(der).to_vec()),
        SigHash::Sha512 => Some(Sha512::digest(der).to_vec()),
    }
}

enum SigHash {
    Sha256,
    Sha384,
    Sha512,
}

/// The hash of a certificate's `signatureAlgorithm` (the second element of the outer
/// SEQUENCE), read with a minimal DER walk.
fn signature_algorithm(der: &[u8]) -> Option<SigHash> {
    let (_, cert) = der_element(der, 0x30)?;
    let (rest, _tbs) = der_element(cert, 0x30)?;
    let (_, alg) = der_element(rest, 0x30)?;
    let (_, oid) = der_element(alg, 0x06)?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    match oid {
        [p @ .., 0x05 | 0x0b] if p == RSA => Some(SigHash::Sha256),
        [p @ .., 0x0c] if p == RSA => Some(SigHash::Sha384),
        [p @ .., 0x0d] if p == RSA => Some(SigHash::Sha512),
        [p @ .., 0x02] if p == ECDSA => Some(SigHash::Sha256),
        [p @ .., 0x03] if p == ECDSA => Some(SigHash::Sha384),
        [p @ .., 0x04] if p == ECDSA => Some(SigHash::Sha512),
        _ => None,
    }
}

/// Splits a DER element with `tag` off the front of `input`: (rest, contents).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, input) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let len = input[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        input = &input[n..];
        len
    };
    if input.len() < len {
        return None;
    }
    Some((&input[len..], &input[..len]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walk_never_panics_and_reads_lengths() {
        assert!(der_element(&[0x30, 0x82, 0x00], 0x30).is_none());
        assert!(der_element(&[0x30, 0x03, 1, 2], 0x30).is_none());
        assert_eq!(
            der_element(&[0x30, 0x02, 1, 2, 9], 0x30),
            Some((&[9u8][..], &[1u8, 2][..]))
        );
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 53 % 251) as u8).collect();
            let _ = signature_algorithm(&junk);
        }
    }
}
