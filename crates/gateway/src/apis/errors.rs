//! Refusals in the shape each AWS protocol uses, so the CLI and SDKs show them as they
//! show AWS's own: S3's XML `<Error>`, the JSON protocols' `__type`, the query protocol's
//! `<ErrorResponse>`.

use hyper::body::Bytes;
use hyper::{Response, StatusCode};

use super::body::BoxBody;

/// Which error shape a request expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// S3: `<Error><Code/><Message/></Error>`.
    S3,
    /// REST-JSON (Lambda) and JSON (`X-Amz-Target`) services.
    Json,
    /// Query-protocol services (STS, SQS, …): `<ErrorResponse>`.
    Query,
    /// `kind: http` connections: `{"error": {"code", "message"}}`.
    Http,
}

impl Shape {
    pub fn for_request(service: &str, has_target_header: bool) -> Shape {
        match service {
            "s3" => Shape::S3,
            "lambda" => Shape::Json,
            _ if has_target_header => Shape::Json,
            _ => Shape::Query,
        }
    }
}

/// The code for JSON services: AWS names their errors `…Exception`.
fn json_code(code: &str) -> String {
    match code {
        "SignatureDoesNotMatch" => "InvalidSignatureException".into(),
        "InvalidAccessKeyId" => "UnrecognizedClientException".into(),
        "AccessDenied" => "AccessDeniedException".into(),
        c if c.ends_with("Exception") => c.into(),
        c => format!("{c}Exception"),
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// An AWS-style error answer.
pub fn error(
    shape: Shape,
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<BoxBody> {
    let (content_type, body) = match shape {
        Shape::S3 => (
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><RequestId>{}</RequestId></Error>",
                xml_escape(code),
                xml_escape(message),
                xml_escape(request_id)
            ),
        ),
        Shape::Json => (
            "application/x-amz-json-1.1",
            serde_json::json!({ "__type": json_code(code), "message": message }).to_string(),
        ),
        Shape::Http => (
            "application/json",
            serde_json::json!({ "error": { "code": code, "message": message, "request_id": request_id } })
                .to_string(),
        ),
        Shape::Query => (
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
                xml_escape(code),
                xml_escape(message),
                xml_escape(request_id)
            ),
        ),
    };
    let mut response = Response::new(super::full(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if shape == Shape::Json {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&json_code(code)) {
            headers.insert("x-amzn-errortype", value);
        }
    }
    if let Ok(value) = hyper::header::HeaderValue::from_str(request_id) {
        headers.insert("x-amz-request-id", value);
    }
    response
}
