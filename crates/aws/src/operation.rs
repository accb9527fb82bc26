//! What an AWS request does, named the way AWS names it, for policy and the record: the
//! service, the API action and the resource it acts on.

use http::{HeaderMap, Method, Uri};
use percent_encoding::percent_decode_str;

/// One AWS API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The signing name: `s3`, `lambda`, `dynamodb`, …
    pub service: String,
    /// The API action: `GetObject`, `Invoke`, … (`Unknown` when it cannot be told).
    pub action: String,
    /// What it acts on: `bucket/key`, `bucket`, a function name; `*` when unknown.
    pub resource: String,
    /// What else it reads: a copy's source object (`bucket/key`).
    pub source: Option<String>,
}

impl Operation {
    /// `service:Action`, the way policies name it.
    pub fn qualified_action(&self) -> String {
        format!("{}:{}", self.service, self.action)
    }
}

/// Names the operation of a request signed for `service`. `virtual_host` is the gateway's
/// own host name for S3's virtual-hosted addressing (`BUCKET.virtual_host`); `form` is the
/// body of a form-encoded request (the query protocol's `Action=`), when it was read.
pub fn classify(
    service: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    virtual_host: Option<&str>,
    form: Option<&[u8]>,
) -> Operation {
    let (action, resource, source) = match service {
        "s3" => s3(method, uri, headers, virtual_host),
        "lambda" => lambda(method, uri),
        _ => (other(uri, headers, form), "*".to_owned(), None),
    };
    Operation {
        service: service.to_owned(),
        action,
        resource,
        source,
    }
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

fn has_param(uri: &Uri, name: &str) -> bool {
    uri.query().unwrap_or("").split('&').any(|pair| {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        key == name
    })
}

fn param(uri: &Uri, name: &str) -> Option<String> {
    uri.query().unwrap_or("").split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode(v))
    })
}

/// S3, path-style (`/bucket/key`) or virtual-hosted (`bucket.host/key`).
fn s3(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    virtual_host: Option<&str>,
) -> (String, String, Option<String>) {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
        .unwrap_or("");
    let path = uri.path().trim_start_matches('/');
    let hosted = virtual_host
        .and_then(|base| host.strip_suffix(base))
        .and_then(|prefix| prefix.strip_suffix('.'))
        .filter(|bucket| !bucket.is_empty());
    let (bucket, key) = match hosted {
        Some(bucket) => (bucket.to_owned(), decode(path)),
        None => {
            let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
            (decode(bucket), decode(key))
        }
    };
    let sub = |name: &str| has_param(uri, name);
    let upload = sub("uploadId");
    let action = if bucket.is_empty() {
        match *method {
            Method::GET => "ListBuckets",
            _ => "Unknown",
        }
    } else if key.is_empty() {
        bucket_action(method, uri)
    } else {
        match *method {
            Method::GET if sub("acl") => "GetObjectAcl",
            Method::GET if sub("tagging") => "GetObjectTagging",
            Method::GET if sub("attributes") => "GetObjectAttributes",
            Method::GET if upload => "ListParts",
            Method::GET => "GetObject",
            Method::HEAD => "HeadObject",
            Method::PUT if sub("acl") => "PutObjectAcl",
            Method::PUT if sub("tagging") => "PutObjectTagging",
            Method::PUT if upload && headers.contains_key("x-amz-copy-source") => "UploadPartCopy",
            Method::PUT if upload => "UploadPart",
            Method::PUT if headers.contains_key("x-amz-copy-source") => "CopyObject",
            Method::PUT => "PutObject",
            Method::DELETE if sub("tagging") => "DeleteObjectTagging",
            Method::DELETE if upload => "AbortMultipartUpload",
            Method::DELETE => "DeleteObject",
            Method::POST if sub("uploads") => "CreateMultipartUpload",
            Method::POST if upload => "CompleteMultipartUpload",
            Method::POST if sub("select") => "SelectObjectContent",
            Method::POST if sub("restore") => "RestoreObject",
            _ => "Unknown",
        }
    };
    let resource = if key.is_empty() {
        bucket
    } else {
        format!("{bucket}/{key}")
    };
    let source = headers
        .get("x-amz-copy-source")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let v = v.split_once("?versionId=").map_or(v, |(path, _)| path);
            decode(v.trim_start_matches('/'))
        });
    (action.to_owned(), resource, source)
}

/// Bucket-level S3 actions: by method and sub-resource.
fn bucket_action(method: &Method, uri: &Uri) -> &'static str {
    const SUBRESOURCES: &[(&str, &str)] = &[
        ("acl", "BucketAcl"),
        ("cors", "BucketCors"),
        ("encryption", "BucketEncryption"),
        ("lifecycle", "BucketLifecycleConfiguration"),
        ("logging", "BucketLogging"),
        ("notification", "BucketNotificationConfiguration"),
        ("ownershipControls", "BucketOwnershipControls"),
        ("policy", "BucketPolicy"),
        ("publicAccessBlock", "PublicAccessBlock"),
        ("replication", "BucketReplication"),
        ("tagging", "BucketTagging"),
        ("versioning", "BucketVersioning"),
        ("website", "BucketWebsite"),
    ];
    let sub = |name: &str| has_param(uri, name);
    match *method {
        Method::GET if sub("list-type") => "ListObjectsV2",
        Method::GET if sub("versions") => "ListObjectVersions",
        Method::GET if sub("uploads") => "ListMultipartUploads",
        Method::GET if sub("location") => "GetBucketLocation",
        Method::POST if sub("delete") => "DeleteObjects",
        Method::HEAD => "HeadBucket",
        _ => {
            let found = SUBRESOURCES.iter().find(|(name, _)| sub(name));
            match (method, found) {
                (&Method::GET, Some((_, what))) => get_action(what),
                (&Method::PUT, Some((_, what))) => put_action(what),
                (&Method::DELETE, Some((_, what))) => delete_action(what),
                (&Method::GET, None) => "ListObjects",
                (&Method::PUT, None) => "CreateBucket",
                (&Method::DELETE, None) => "DeleteBucket",
                _ => "Unknown",
            }
        }
    }
}

macro_rules! prefixed {
    ($name:ident, $prefix:literal) => {
        fn $name(what: &str) -> &'static str {
            match what {
                "BucketAcl" => concat!($prefix, "BucketAcl"),
                "BucketCors" => concat!($prefix, "BucketCors"),
                "BucketEncryption" => concat!($prefix, "BucketEncryption"),
                "BucketLifecycleConfiguration" => concat!($prefix, "BucketLifecycleConfiguration"),
                "BucketLogging" => concat!($prefix, "BucketLogging"),
                "BucketNotificationConfiguration" => {
                    concat!($prefix, "BucketNotificationConfiguration")
                }
                "BucketOwnershipControls" => concat!($prefix, "BucketOwnershipControls"),
                "BucketPolicy" => concat!($prefix, "BucketPolicy"),
                "PublicAccessBlock" => concat!($prefix, "PublicAccessBlock"),
                "BucketReplication" => concat!($prefix, "BucketReplication"),
                "BucketTagging" => concat!($prefix, "BucketTagging"),
                "BucketVersioning" => concat!($prefix, "BucketVersioning"),
                "BucketWebsite" => concat!($prefix, "BucketWebsite"),
                _ => "Unknown",
            }
        }
    };
}
prefixed!(get_action, "Get");
prefixed!(put_action, "Put");
prefixed!(delete_action, "Delete");

/// Lambda's REST paths (`/2015-03-31/functions/NAME/invocations`, …).
fn lambda(method: &Method, uri: &Uri) -> (String, String, Option<String>) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let function = |name: &str| {
        // A function may be named by ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUAL]).
        let name = decode(name);
        match name.split_once(":function:") {
            Some((_, rest)) => rest.split(':').next().unwrap_or(rest).to_owned(),
            None => name.split(':').next().unwrap_or(&name).to_owned(),
        }
    };
    let (action, resource) = match (method, segments.as_slice()) {
        (&Method::POST, [_, "functions", name, "invocations"]) => ("Invoke", function(name)),
        (&Method::POST, [_, "functions", name, "invoke-async"]) => ("InvokeAsync", function(name)),
        (&Method::GET, [_, "functions"]) => ("ListFunctions", "*".to_owned()),
        (&Method::POST, [_, "functions"]) => ("CreateFunction", "*".to_owned()),
        (&Method::GET, [_, "functions", name]) => ("GetFunction", function(name)),
        (&Method::DELETE, [_, "functions", name]) => ("DeleteFunction", function(name)),
        (&Method::GET, [_, "functions", name, "configuration"]) => {
            ("GetFunctionConfiguration", function(name))
        }
        (&Method::PUT, [_, "functions", name, "configuration"]) => {
            ("UpdateFunctionConfiguration", function(name))
        }
        (&Method::PUT, [_, "functions", name, "code"]) => ("UpdateFunctionCode", function(name)),
        (_, [_, "functions", name, ..]) => ("Unknown", function(name)),
        _ => ("Unknown", "*".to_owned()),
    };
    (action.to_owned(), resource, None)
}

/// Any other service: the JSON protocol's `X-Amz-Target: Prefix.Action`, or the query
/// protocol's `Action=` in the query string or form body.
fn other(uri: &Uri, headers: &HeaderMap, form: Option<&[u8]>) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return target.rsplit('.').next().unwrap_or(target).to_owned();
    }
    if let Some(action) = param(uri, "Action") {
        return action;
    }
    form.and_then(|body| {
        std::str::from_utf8(body).ok()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "Action").then(|| decode(&v.replace('+', " ")))
        })
    })
    .unwrap_or_else(|| "Unknown".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn s3_op(method: Method, host: &str, target: &str, copy: Option<&str>) -> Operation {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_str(host).unwrap());
        if let Some(copy) = copy {
            headers.insert("x-amz-copy-source", HeaderValue::from_str(copy).unwrap());
        }
        classify(
            "s3",
            &method,
            &target.parse().unwrap(),
            &headers,
            Some("s3.gw.test"),
            None,
        )
    }

    #[test]
    fn s3_actions_in_both_addressing_styles() {
        let cases = [
            (Method::GET, "gw:1", "/", "ListBuckets", ""),
            (
                Method::GET,
                "gw:1",
                "/bkt?list-type=2&prefix=a",
                "ListObjectsV2",
                "bkt",
            ),
            (
                Method::GET,
                "gw:1",
                "/bkt/a%20b/c.txt",
                "GetObject",
                "bkt/a b/c.txt",
            ),
            (Method::PUT, "gw:1", "/prod-x/k", "PutObject", "prod-x/k"),
            (
                Method::DELETE,
                "gw:1",
                "/prod-x/k",
                "DeleteObject",
                "prod-x/k",
            ),
            (
                Method::POST,
                "gw:1",
                "/b/k?uploads",
                "CreateMultipartUpload",
                "b/k",
            ),
            (
                Method::PUT,
                "gw:1",
                "/b/k?partNumber=1&uploadId=x",
                "UploadPart",
                "b/k",
            ),
            (
                Method::POST,
                "gw:1",
                "/b/k?uploadId=x",
                "CompleteMultipartUpload",
                "b/k",
            ),
            (
                Method::DELETE,
                "gw:1",
                "/b/k?uploadId=x",
                "AbortMultipartUpload",
                "b/k",
            ),
            (Method::POST, "gw:1", "/b?delete", "DeleteObjects", "b"),
            (Method::PUT, "gw:1", "/b", "CreateBucket", "b"),
            (Method::GET, "gw:1", "/b?policy", "GetBucketPolicy", "b"),
            (
                Method::DELETE,
                "gw:1",
                "/b?tagging",
                "DeleteBucketTagging",
                "b",
            ),
            (
                Method::GET,
                "bkt.s3.gw.test:18080",
                "/dir/k",
                "GetObject",
                "bkt/dir/k",
            ),
            (
                Method::GET,
                "bkt.s3.gw.test",
                "/?list-type=2",
                "ListObjectsV2",
                "bkt",
            ),
        ];
        for (method, host, target, action, resource) in cases {
            let op = s3_op(method, host, target, None);
            assert_eq!(
                (op.action.as_str(), op.resource.as_str()),
                (action, resource),
                "{target}"
            );
        }
        let copy = s3_op(
            Method::PUT,
            "gw",
            "/open/k",
            Some("/secret/a%20b?versionId=3"),
        );
        assert_eq!(copy.action, "CopyObject");
        assert_eq!(copy.source.as_deref(), Some("secret/a b"));
        assert_eq!(copy.qualified_action(), "s3:CopyObject");
    }

    #[test]
    fn lambda_and_other_services() {
        let none = HeaderMap::new();
        let op = classify(
            "lambda",
            &Method::POST,
            &"/2015-03-31/functions/arn%3Aaws%3Alambda%3Aeu-west-1%3A1%3Afunction%3Abilling-x%3Aprod/invocations".parse().unwrap(),
            &none,
            None,
            None,
        );
        assert_eq!(
            (op.action.as_str(), op.resource.as_str()),
            ("Invoke", "billing-x")
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("DynamoDB_20120810.GetItem"),
        );
        let op = classify(
            "dynamodb",
            &Method::POST,
            &"/".parse().unwrap(),
            &headers,
            None,
            None,
        );
        assert_eq!(op.action, "GetItem");
        let op = classify(
            "sts",
            &Method::POST,
            &"/".parse().unwrap(),
            &none,
            None,
            Some(b"Version=2011-06-15&Action=GetCallerIdentity"),
        );
        assert_eq!(op.qualified_action(), "sts:GetCallerIdentity");
    }
}
