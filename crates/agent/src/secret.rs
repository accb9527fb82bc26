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
            SecretRef::File(path) => std::fs::read_to_string(path)
                // A trailing newline is an artifact of how the file was written.
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                }),
        }
    }
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
