//! Masking of AWS answers: a Lambda's JSON result, a CSV or text object read from S3.
//! JSON is parsed and each string value masked on its own (escapes decoded first, and the
//! document stays valid JSON); other text is masked as it is.

use hyper::header::{HeaderMap, CONTENT_TYPE};
use serde_json::Value;
use sluice_core::MaskCount;
use sluice_mask::{JsonStep, SessionMasking};

/// The largest answer masked: it is read whole. A larger answer in a masked session is
/// refused rather than passed unmasked.
pub const MAX_MASKED_BODY: usize = 16 * 1024 * 1024;

/// What kind of text an answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Text,
}

/// Whether an answer is masked, by its content type or, for objects stored with a generic
/// one, the name it was read under (`report.csv`).
///
/// S3's own XML (listings) is left alone, so keys and continuation tokens stay usable; other
/// services' XML answers (SQS messages, the query protocol) are masked as text.
pub fn maskable(headers: &HeaderMap, resource: &str, s3: bool) -> Option<BodyKind> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase())
        .unwrap_or_default();
    if content_type.contains("json") {
        return Some(BodyKind::Json);
    }
    let xml = content_type.ends_with("/xml") || content_type.ends_with("+xml");
    if xml {
        return (!s3).then_some(BodyKind::Text);
    }
    if content_type.starts_with("text/") {
        return Some(BodyKind::Text);
    }
    let name = resource.to_ascii_lowercase();
    if name.ends_with(".json") || name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        // JSON Lines are not one document: masked as text.
        return Some(if name.ends_with(".json") {
            BodyKind::Json
        } else {
            BodyKind::Text
        });
    }
    [".csv", ".tsv", ".txt", ".log"]
        .iter()
        .any(|ext| name.ends_with(ext))
        .then_some(BodyKind::Text)
}

/// Masks `body`; `None` when nothing was found.
pub fn mask_body(
    masking: &SessionMasking,
    kind: BodyKind,
    body: &[u8],
) -> Option<(Vec<u8>, Vec<MaskCount>)> {
    if kind == BodyKind::Json {
        if let Ok(mut doc) = serde_json::from_slice::<Value>(body) {
            let mut counts = Vec::new();
            mask_value(masking, &mut doc, &mut Vec::new(), &mut counts);
            if counts.is_empty() {
                return None;
            }
            return serde_json::to_vec(&doc).ok().map(|bytes| (bytes, counts));
        }
        // Not a JSON document after all: masked as text.
    }
    masking.mask_text(body)
}

/// Where a value sits in the document being masked.
enum Step {
    Key(String),
    Item,
}

/// Masks `value`, found at `path`: whole when a `fields` rule names the path, else its
/// strings through the detectors.
fn mask_value(
    masking: &SessionMasking,
    value: &mut Value,
    path: &mut Vec<Step>,
    counts: &mut Vec<MaskCount>,
) {
    if masking.has_fields() {
        let steps: Vec<JsonStep<'_>> = path
            .iter()
            .map(|p| match p {
                Step::Key(key) => JsonStep::Key(key),
                Step::Item => JsonStep::Item,
            })
            .collect();
        let text = || match &*value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if let Some((replacement, count)) = masking.mask_field(&steps, text) {
            *value = replacement.map_or(Value::Null, Value::String);
            add(counts, vec![count]);
            return;
        }
    }
    match value {
        Value::String(text) => {
            if let Some((masked, found)) = masking.mask_text(text.as_bytes()) {
                *text = String::from_utf8_lossy(&masked).into_owned();
                add(counts, found);
            }
        }
        Value::Array(items) => {
            for item in items {
                path.push(Step::Item);
                mask_value(masking, item, path, counts);
                path.pop();
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields.iter_mut() {
                path.push(Step::Key(key.clone()));
                mask_value(masking, item, path, counts);
                path.pop();
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Adds `found` into `counts`, one entry per detector and style.
fn add(counts: &mut Vec<MaskCount>, found: Vec<MaskCount>) {
    for f in found {
        match counts
            .iter_mut()
            .find(|c| c.detector == f.detector && c.column == f.column && c.style == f.style)
        {
            Some(c) => c.values += f.values,
            None => counts.push(f),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use sluice_core::{ActorKind, Identity};
    use sluice_mask::{MaskRuleSpec, Masking};

    fn masking() -> std::sync::Arc<SessionMasking> {
        let specs: Vec<MaskRuleSpec> =
            serde_yaml_ng::from_str("[{ detectors: [email, credit_card], marker: '<x>' }]")
                .unwrap();
        let who = Identity {
            user: "a".into(),
            groups: vec![],
            credential: None,
            actor: ActorKind::Human,
        };
        Masking::new(&specs, vec![1; 32])
            .unwrap()
            .for_session("aws", &who)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn json_strings_are_masked_one_by_one_and_the_document_stays_json() {
        let m = masking();
        let body = br#"{"user":"jane\u0040example.com","cards":["4111 1111 1111 1111"],"n":5}"#;
        let (masked, counts) = mask_body(&m, BodyKind::Json, body).unwrap();
        let doc: Value = serde_json::from_slice(&masked).unwrap();
        assert_eq!(doc["user"], "<x>");
        assert_eq!(doc["cards"][0], "<x>");
        assert_eq!(doc["n"], 5);
        assert_eq!(counts.iter().map(|c| c.values).sum::<u64>(), 2);
        assert!(mask_body(&m, BodyKind::Json, br#"{"ok":true}"#).is_none());
    }

    #[test]
    fn json_fields_named_by_path_are_masked_whole() {
        let specs: Vec<MaskRuleSpec> = serde_yaml_ng::from_str(
            "[{ fields: ['users[*].ssn', '*.card'] }, { fields: [total], style: 'null' }]",
        )
        .unwrap();
        let who = Identity {
            user: "a".into(),
            groups: vec![],
            credential: None,
            actor: ActorKind::Human,
        };
        let m = Masking::new(&specs, vec![1; 32])
            .unwrap()
            .for_session("api", &who)
            .unwrap()
            .unwrap();
        let body = br#"{"users":[{"ssn":"123-45-6789","name":"x"},{"ssn":7}],"pay":{"card":{"n":1}},"total":12,"ssn":"keep"}"#;
        let (masked, counts) = mask_body(&m, BodyKind::Json, body).unwrap();
        let doc: Value = serde_json::from_slice(&masked).unwrap();
        assert_eq!(doc["users"][0]["ssn"], "[redacted]");
        assert_eq!(doc["users"][1]["ssn"], "[redacted]");
        assert_eq!(doc["users"][0]["name"], "x");
        assert_eq!(doc["pay"]["card"], "[redacted]");
        assert_eq!(doc["total"], Value::Null);
        assert_eq!(doc["ssn"], "keep");
        assert_eq!(counts.iter().map(|c| c.values).sum::<u64>(), 4);
        assert!(Masking::new(
            &serde_yaml_ng::from_str::<Vec<MaskRuleSpec>>("[{ fields: ['a[0]'] }]").unwrap(),
            vec![1; 32]
        )
        .is_err());
    }

    #[test]
    fn text_and_csv_are_masked_and_kinds_follow_type_or_name() {
        let m = masking();
        let (masked, _) = mask_body(&m, BodyKind::Text, b"id,email\n1,bob@example.org\n").unwrap();
        assert_eq!(masked, b"id,email\n1,<x>\n");
        let mut headers = HeaderMap::new();
        assert_eq!(
            maskable(&headers, "b/report.csv", true),
            Some(BodyKind::Text)
        );
        assert_eq!(maskable(&headers, "b/blob.bin", true), None);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(maskable(&headers, "fn", false), Some(BodyKind::Json));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        assert_eq!(maskable(&headers, "b", true), None);
        assert_eq!(maskable(&headers, "queue", false), Some(BodyKind::Text));
    }
}
