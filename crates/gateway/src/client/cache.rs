//! The signed-in user's credentials on their machine: `credentials.json` in
//! `$SLUICE_HOME`, else `$XDG_CONFIG_HOME/sluice`, else `~/.config/sluice` — directory
//! 0700, file 0600, replaced atomically.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::api_client::ApiClient;

/// Renew when less than this is left.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

#[derive(Serialize, Deserialize, Clone)]
pub struct Saved {
    pub gateway: String,
    pub user: String,
    pub role: String,
    pub token: String,
    /// Unix seconds.
    pub expires: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved")
            .field("gateway", &self.gateway)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Saved {
    /// From a sign-in answer.
    pub fn from_grant(gateway: &str, grant: &serde_json::Value) -> Result<Saved> {
        let text = |k: &str| {
            grant[k]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("the gateway's answer lacks {k}"))
        };
        let expires = humantime::parse_rfc3339(&text("expires")?)
            .context("the gateway's answer has a bad expiry")?;
        Ok(Saved {
            gateway: gateway.trim_end_matches('/').to_owned(),
            user: text("user")?,
            role: text("role")?,
            token: text("token")?,
            expires: expires
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            refresh_token: grant["refresh_token"].as_str().map(str::to_owned),
        })
    }

    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expires)
    }
}

pub fn dir() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("SLUICE_HOME") {
        return Ok(PathBuf::from(home));
    }
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("sluice"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set SLUICE_HOME")?;
    Ok(PathBuf::from(home).join(".config").join("sluice"))
}

fn path() -> Result<PathBuf> {
    Ok(dir()?.join("credentials.json"))
}

pub fn load() -> Result<Option<Saved>> {
    let path = path()?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is damaged; run sluice login", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The private directory, created 0700 (or tightened to it).
fn private_dir() -> Result<PathBuf> {
    let dir = dir()?;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private", dir.display()))?;
        }
    }
    Ok(dir)
}

pub fn save(saved: &Saved) -> Result<()> {
    let dir = private_dir()?;
    let tmp = dir.join(format!(".credentials.{}.tmp", std::process::id()));
    // A new file (never one that exists, or a link placed there), private from birth.
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    std::io::Write::write_all(&mut file, &serde_json::to_vec_pretty(saved)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path()?).context("saving credentials")?;
    Ok(())
}

pub fn remove() -> Result<bool> {
    match std::fs::remove_file(path()?) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The saved sign-in, renewed through the gateway first when it is about to expire.
/// Renewals by several `sluice` processes at once (a `connect` running, a command
/// typed) take turns on a lock file: a refresh handle works once, and a second
/// process presenting the one just spent would look like a stolen copy.
pub async fn current() -> Result<Saved> {
    let lock_path = private_dir()?.join("credentials.lock");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .context("waiting for the credentials lock")?
        .context("locking the saved credentials")?;
    let renewed = renew_if_needed().await;
    drop(lock);
    renewed
}

async fn renew_if_needed() -> Result<Saved> {
    let Some(saved) = load()? else {
        bail!("not signed in: run `sluice login --gateway URL`");
    };
    let left = saved
        .expires_at()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    if left > RENEW_BEFORE {
        return Ok(saved);
    }
    let Some(refresh) = saved.refresh_token.clone() else {
        if left.is_zero() {
            bail!("your sluice sign-in has expired: run `sluice login` again");
        }
        return Ok(saved);
    };
    let api = ApiClient::anonymous(&saved.gateway)?;
    let (status, answer) = api
        .call(
            hyper::Method::POST,
            "/auth/refresh",
            Some(serde_json::json!({ "refresh_token": refresh })),
        )
        .await?;
    if !status.is_success() {
        let why = answer["error"].as_str().unwrap_or("refused").to_owned();
        // Only a refusal ends the sign-in; a gateway or provider hiccup does not.
        if status == hyper::StatusCode::UNAUTHORIZED {
            remove()?;
            bail!("renewing your sign-in was refused: {why}; run `sluice login` again");
        }
        if left.is_zero() {
            bail!("renewing your sign-in failed ({status}): {why}");
        }
        return Ok(saved);
    }
    let renewed = Saved::from_grant(&saved.gateway, &answer)?;
    save(&renewed)?;
    Ok(renewed)
}
