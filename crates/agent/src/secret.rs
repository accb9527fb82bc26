//! Credential references, resolved where the agent runs.

use std::path::PathBuf;

/// Where a target credential comes from. Written in configuration as a literal,
/// `env:NAME` or `file:PATH`; resolved on every connect so rotated secrets take effect.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Literal(String),
    Env(String),
    File(PathBuf),
}

/// Errors name where the secret was looked for, never its value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SecretRef {
    pub fn parse(s: &str) -> SecretRef {
        if let Some(name) = s.strip_prefix("env:") {
            SecretRef::Env(name.to_owned())
        } else if let Some(path) = s.strip_prefix("file:") {
            SecretRef::File(PathBuf::from(path))
        } else {
            SecretRef::Literal(s.to_owned())
        }
    }

    pub fn resolve(&self) -> Result<String, SecretError> {
        match self {
            SecretRef::Literal(s) => Ok(s.clone()),
            SecretRef::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))
            }
            SecretRef::File(path) => read_secret_file(path)
                // A trailing newline is an artifact of how the file was written.
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                }),
        }
    }
}

/// Largest secret file read: a credential is small, and a path naming something else
/// (`/dev/zero`, a huge file) must not exhaust memory.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a regular file of at most `MAX_SECRET_FILE` bytes (a FIFO or device would block
/// or never end).
fn read_secret_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > MAX_SECRET_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file of at most 64 KiB",
        ));
    }
    let mut text = String::new();
    file.take(MAX_SECRET_FILE).read_to_string(&mut text)?;
    Ok(text)
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Literal(_) => f.write_str("<literal secret>"),
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let file = SecretRef::parse(&format!("file:{}", path.display()));
        assert_eq!(file.resolve().unwrap(), "s3cret");
        assert_eq!(SecretRef::parse("plain").resolve().unwrap(), "plain");
        let missing = SecretRef::parse("env:SLUICE_TEST_SURELY_UNSET_VAR");
        assert!(matches!(missing.resolve(), Err(SecretError::MissingEnv(_))));
    }

    #[test]
    fn debug_never_shows_literal() {
        let s = format!("{:?}", SecretRef::parse("hunter2"));
        assert!(!s.contains("hunter2"));
    }
}
