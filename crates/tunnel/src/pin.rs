//! Trusting the gateway by its certificate's SHA-256 fingerprint (what `sluice agents
//! add` prints), for a gateway with a self-signed certificate: the check itself is
//! `sluice_postgres::tls::CertCheck::pinned`.

pub use sluice_postgres::tls::{fingerprint, CertCheck};

/// Normalises a fingerprint as users may paste it (`AB:CD:…`, upper case, `sha256:`).
pub fn normalize(fp: &str) -> String {
    fp.trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// The check for a fingerprint as the user gave it.
pub fn pinned(fp: &str) -> CertCheck {
    CertCheck::pinned(&normalize(fp))
}
