//! How a masked value is written: a fixed marker, the last few characters, a keyed hash,
//! or NULL.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How a rule masks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Style {
    /// The value (or the detected span) becomes a fixed marker.
    Redact { marker: Cow<'static, str> },
    /// Letters and digits become `*` except the last `keep`; punctuation stays, so a card
    /// number keeps its shape (`**** **** **** 4242`).
    Partial { keep: usize },
    /// `hmac:` and 16 hex digits of HMAC-SHA256 under the gateway's masking key: equal
    /// values stay equal (joinable, countable) without being revealed.
    Hash,
    /// The value becomes SQL NULL.
    Null,
}

impl Default for Style {
    fn default() -> Style {
        Style::DEFAULT_REDACT
    }
}

impl Style {
    pub const DEFAULT_REDACT: Style = Style::Redact {
        marker: Cow::Borrowed("[redacted]"),
    };

    pub(crate) fn from_spec(
        style: Option<&str>,
        keep: Option<usize>,
        marker: Option<&str>,
    ) -> Result<Style, String> {
        let style = style.unwrap_or("redact");
        if keep.is_some() && style != "partial" {
            return Err("`keep` applies to `style: partial` only".into());
        }
        if marker.is_some() && style != "redact" {
            return Err("`marker` applies to `style: redact` only".into());
        }
        match style {
            "redact" => match marker {
                None => Ok(Style::DEFAULT_REDACT),
                Some("") => Err("`marker` must not be empty".into()),
                // Markers are written inside JSON strings and text results alike.
                Some(m) if m.chars().any(|c| c.is_control() || c == '"' || c == '\\') => {
                    Err("`marker` may not contain quotes, backslashes or control characters".into())
                }
                Some(m) => Ok(Style::Redact {
                    marker: Cow::Owned(m.to_owned()),
                }),
            },
            "partial" => Ok(Style::Partial {
                keep: keep.unwrap_or(4),
            }),
            "hash" => Ok(Style::Hash),
            "null" => Ok(Style::Null),
            other => Err(format!(
                "`style: {other}` is not one of redact, partial, hash, null"
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Style::Redact { .. } => "redact",
            Style::Partial { .. } => "partial",
            Style::Hash => "hash",
            Style::Null => "null",
        }
    }

    /// Writes the masked form of `span` (a whole text value or a detected part of one).
    /// `json`: the result lands inside a JSON string, so quotes, backslashes and control
    /// characters must not appear. `Null` writes the default marker (callers that can
    /// write NULL do so instead).
    pub(crate) fn write_span(&self, span: &[u8], key: &[u8], json: bool, out: &mut Vec<u8>) {
        match self {
            Style::Redact { marker } => out.extend_from_slice(marker.as_bytes()),
            Style::Null => out.extend_from_slice(b"[redacted]"),
            Style::Hash => write_hash(span, key, out),
            Style::Partial { keep } => write_partial(span, *keep, json, out),
        }
    }

    /// Writes a whole JSON value's replacement: a JSON string.
    pub(crate) fn write_json_value(&self, value: &[u8], key: &[u8], out: &mut Vec<u8>) {
        out.push(b'"');
        self.write_span(value, key, true, out);
        out.push(b'"');
    }
}

fn write_hash(span: &[u8], key: &[u8], out: &mut Vec<u8>) {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        // HMAC takes keys of any length; this branch cannot run.
        out.extend_from_slice(b"[redacted]");
        return;
    };
    mac.update(span);
    let digest = mac.finalize().into_bytes();
    out.extend_from_slice(b"hmac:");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in &digest[..8] {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

fn write_partial(span: &[u8], keep: usize, json: bool, out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(span);
    let alnum = text.chars().filter(|c| c.is_alphanumeric()).count();
    // A value no longer than what would be kept is hidden entirely.
    let hide = if alnum > keep { alnum - keep } else { alnum };
    let mut seen = 0;
    let mut buf = [0u8; 4];
    for c in text.chars() {
        if c.is_alphanumeric() {
            seen += 1;
            if seen <= hide {
                out.push(b'*');
                continue;
            }
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        } else if json && (c.is_control() || c == '"' || c == '\\') {
            out.push(b'*');
        } else {
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(style: &Style, text: &str, json: bool) -> String {
        let mut out = Vec::new();
        style.write_span(text.as_bytes(), b"k", json, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn partial_keeps_shape_and_last_characters() {
        let p = Style::Partial { keep: 4 };
        assert_eq!(
            span(&p, "4242 4242 4242 4242", false),
            "**** **** **** 4242"
        );
        assert_eq!(span(&p, "abc", false), "***");
        assert_eq!(span(&p, "a\"b\\c1234", true), "*****1234");
    }

    #[test]
    fn hash_is_keyed_and_stable() {
        let a = span(&Style::Hash, "alice@example.com", false);
        assert_eq!(a, span(&Style::Hash, "alice@example.com", false));
        assert_ne!(a, span(&Style::Hash, "bob@example.com", false));
        let mut other = Vec::new();
        Style::Hash.write_span(b"alice@example.com", b"other key", false, &mut other);
        assert_ne!(a.as_bytes(), other.as_slice());
        assert!(a.starts_with("hmac:") && a.len() == 21);
    }

    #[test]
    fn specs_are_checked() {
        assert!(Style::from_spec(Some("partial"), Some(2), None).is_ok());
        assert!(Style::from_spec(Some("hash"), Some(2), None).is_err());
        assert!(Style::from_spec(None, None, Some("x\"")).is_err());
        assert!(Style::from_spec(Some("scramble"), None, None).is_err());
        assert_eq!(
            Style::from_spec(None, None, Some("XXX")),
            Ok(Style::Redact {
                marker: Cow::Owned("XXX".into())
            })
        );
    }
}
