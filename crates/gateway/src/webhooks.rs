//! Outgoing webhooks on review events (`review_created`, `review_decided`): a plain JSON
//! body or a Slack-compatible one, signed with HMAC-SHA256, delivered in the background with
//! retries and exponential backoff so a slow or failing receiver never delays a session.
//!
//! Signature: `X-Sluice-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` with
//! the same `<timestamp>` (unix seconds) in `X-Sluice-Timestamp`; receivers recompute it and
//! reject stale timestamps. Webhook URLs often carry a secret in their path (Slack's do), so
//! logs name only the scheme and host.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use hmac::{Hmac, Mac};
use hyper::header::{HeaderName, CONTENT_TYPE};
use hyper::Uri;
use rand::Rng;
use serde_json::{json, Value};
use sha2::Sha256;
use sluice_agent::SecretRef;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{WebhookFormat, WebhookSpec};
use crate::http_client::HttpClient;

/// Deliveries waiting at once; beyond that new ones are dropped (and logged) rather than
/// let memory grow while a receiver is down.
const QUEUE: usize = 1024;
/// Attempts per delivery, and the backoff between them (doubling, with jitter).
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// One attempt, connect to last byte.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A configured webhook, validated.
struct Hook {
    url: String,
    /// `scheme://host`: what logs may say about the hook.
    label: String,
    format: WebhookFormat,
    secret: Option<SecretRef>,
    events: Vec<String>,
}

impl Hook {
    fn from_spec(spec: &WebhookSpec) -> Result<Hook> {
        let uri: Uri = spec
            .url
            .parse()
            .with_context(|| "webhook url is not a URL".to_string())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("webhook url must start with http:// or https://"),
        };
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("webhook url has no host"))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        for event in &spec.events {
            if event != "review_created" && event != "review_decided" {
                bail!("webhook events: unknown event {event:?} (review_created, review_decided)");
            }
        }
        Ok(Hook {
            url: spec.url.clone(),
            label: format!("{}://{host}", if https { "https" } else { "http" }),
            format: spec.format,
            secret: spec.secret.as_deref().map(SecretRef::parse),
            events: spec.events.clone(),
        })
    }

    /// What logs may say about this hook.
    fn label(&self) -> &str {
        &self.label
    }

    fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

struct Delivery {
    hook: Arc<Hook>,
    event: &'static str,
    body: Vec<u8>,
}

/// Sends review events to the configured webhooks. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    hooks: Arc<Vec<Arc<Hook>>>,
    queue: Option<mpsc::Sender<Delivery>>,
}

impl Notifier {
    /// Validates the webhooks (secrets are resolved at each delivery, so rotation works).
    pub fn validate(specs: &[WebhookSpec]) -> Result<()> {
        for (i, spec) in specs.iter().enumerate() {
            Hook::from_spec(spec).with_context(|| format!("notifications.webhooks[{i}]"))?;
        }
        Ok(())
    }

    /// Starts the delivery task (on the current runtime) when any webhook is configured.
    pub fn start(specs: &[WebhookSpec]) -> Result<Notifier> {
        let hooks = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                Hook::from_spec(spec)
                    .map(Arc::new)
                    .with_context(|| format!("notifications.webhooks[{i}]"))
            })
            .collect::<Result<Vec<_>>>()?;
        if hooks.is_empty() {
            return Ok(Notifier {
                hooks: Arc::new(hooks),
                queue: None,
            });
        }
        // Receivers are verified against the Mozilla roots bundled with the binary.
        let http = HttpClient::new(None)?;
        let (tx, mut rx) = mpsc::channel::<Delivery>(QUEUE);
        tokio::spawn(async move {
            while let Some(delivery) = rx.recv().await {
                // Each delivery retries on its own, so one dead receiver delays no other.
                tokio::spawn(deliver(http.clone(), delivery));
            }
        });
        Ok(Notifier {
            hooks: Arc::new(hooks),
            queue: Some(tx),
        })
    }

    /// Queues `event` about a review for every webhook that wants it.
    pub fn review_event(&self, event: &'static str, review: &Value, review_url: &str) {
        let Some(queue) = &self.queue else {
            return;
        };
        for hook in self.hooks.iter().filter(|h| h.wants(event)) {
            let body = match hook.format {
                WebhookFormat::Json => json!({
                    "event": event,
                    "review": review,
                    "review_url": review_url,
                }),
                WebhookFormat::Slack => json!({ "text": slack_text(event, review, review_url) }),
            };
            let delivery = Delivery {
                hook: hook.clone(),
                event,
                body: body.to_string().into_bytes(),
            };
            if queue.try_send(delivery).is_err() {
                warn!(webhook = %hook.label(), event, "webhook queue full; event dropped");
            }
        }
    }
}

fn slack_text(event: &str, review: &Value, review_url: &str) -> String {
    let field = |key: &str| review[key].as_str().unwrap_or_default().to_owned();
    let statement: String = field("statement").chars().take(500).collect();
    match event {
        "review_created" => format!(
            "sluice: {} wants to run on *{}* (policy `{}`, review {}):\n```{}```\nApprove: `sluice reviews approve {}` or {}",
            field("requester"),
            field("connection"),
            field("rule"),
            field("id"),
            statement.replace("```", "'''"),
            field("id"),
            review_url
        ),
        _ => format!(
            "sluice: review {} on *{}* is *{}*{}",
            field("id"),
            field("connection"),
            field("status"),
            review["decided_by"]
                .as_str()
                .map(|by| format!(" by {by}"))
                .unwrap_or_default()
        ),
    }
}

/// `v1=<hex>`: HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(http: HttpClient, delivery: Delivery) {
    let hook = &delivery.hook;
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let result = tokio::time::timeout(ATTEMPT_TIMEOUT, attempt_once(&http, &delivery)).await;
        let retry = match result {
            Ok(Ok(status)) if status.is_success() => {
                info!(webhook = %hook.label(), event = delivery.event, attempt, "webhook delivered");
                return;
            }
            // The receiver refused the request itself: sending it again would not help.
            Ok(Ok(status)) if status.is_client_error() && status.as_u16() != 429 => {
                warn!(webhook = %hook.label(), event = delivery.event, %status, "webhook refused; not retrying");
                return;
            }
            Ok(Ok(status)) => format!("status {status}"),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "timed out".to_owned(),
        };
        if attempt == ATTEMPTS {
            warn!(webhook = %hook.label(), event = delivery.event, error = %retry, "webhook failed; giving up after {ATTEMPTS} attempts");
            return;
        }
        warn!(webhook = %hook.label(), event = delivery.event, attempt, error = %retry, "webhook failed; retrying");
        let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 4);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn attempt_once(http: &HttpClient, delivery: &Delivery) -> Result<hyper::StatusCode> {
    let hook = &delivery.hook;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut headers = vec![
        (CONTENT_TYPE, "application/json".to_owned()),
        (
            HeaderName::from_static("x-sluice-event"),
            delivery.event.to_owned(),
        ),
        (
            HeaderName::from_static("x-sluice-timestamp"),
            timestamp.to_string(),
        ),
    ];
    if let Some(secret) = &hook.secret {
        let secret = secret.resolve().context("webhook secret")?;
        headers.push((
            HeaderName::from_static("x-sluice-signature"),
            signature(secret.as_bytes(), timestamp, &delivery.body),
        ));
    }
    let response = http
        .send(
            hyper::Method::POST,
            &hook.url,
            headers,
            delivery.body.clone(),
        )
        .await?;
    Ok(response.status)
}
