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

/// The query's parameter names, decoded (as the service decodes them: `%64elete` is
/// `delete`).
fn param_names(uri: &Uri) -> Vec<String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| decode(pair.split_once('=').map_or(pair, |(k, _)| k)))
        .collect()
}

fn has_param(uri: &Uri, name: &str) -> bool {
    param_names(uri).iter().any(|k| k == name)
}

/// Whether every query parameter is one of `known` (or a presigned URL's own): a request
/// with a sub-resource or option this module does not know is `Unknown`, never taken for a
/// plainer action. (Other `x-amz-*` parameters are not allowed: a presigner may carry
/// headers such as `x-amz-copy-source` in the query.)
fn only_params(uri: &Uri, known: &[&str]) -> bool {
    param_names(uri)
        .iter()
        .all(|k| known.contains(&k.as_str()) || PRESIGNING.contains(&k.as_str()))
}

/// The query parameters of a presigned URL's signature.
pub const PRESIGNING: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// The query's parameter names, decoded.
pub fn query_param_names(uri: &Uri) -> Vec<String> {
    param_names(uri)
}

/// S3's rules for bucket names: 3 to 63 lowercase letters, digits, dots and hyphens,
/// starting and ending with a letter or digit.
pub fn valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Parameters of a plain object read or write (no sub-resource).
const OBJECT_OPTIONS: &[&str] = &[
    "versionId",
    "partNumber",
    "x-id",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
];

/// Parameters of a bucket listing.
const LIST_OPTIONS: &[&str] = &[
    "prefix",
    "delimiter",
    "marker",
    "max-keys",
    "encoding-type",
    "list-type",
    "continuation-token",
    "start-after",
    "fetch-owner",
    "x-id",
    "optional-object-attributes",
];

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
    let path = uri.path().strip_prefix('/').unwrap_or(uri.path());
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
    // A bucket name S3 would not accept could hide a path or query in a Host header (or an
    // encoded slash in the path): such a request is not named.
    if !bucket.is_empty() && !valid_bucket_name(&bucket) {
        return ("Unknown".to_owned(), bucket, None);
    }
    let sub = |name: &str| has_param(uri, name);
    let upload = sub("uploadId");
    let plain = only_params(uri, OBJECT_OPTIONS);
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
            Method::GET if plain => "GetObject",
            Method::HEAD if plain => "HeadObject",
            Method::PUT if sub("acl") => "PutObjectAcl",
            Method::PUT if sub("tagging") => "PutObjectTagging",
            Method::PUT if upload && headers.contains_key("x-amz-copy-source") => "UploadPartCopy",
            Method::PUT if upload => "UploadPart",
            Method::PUT if plain && headers.contains_key("x-amz-copy-source") => "CopyObject",
            Method::PUT if plain => "PutObject",
            Method::DELETE if sub("tagging") => "DeleteObjectTagging",
            Method::DELETE if upload => "AbortMultipartUpload",
            Method::DELETE if plain => "DeleteObject",
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
    let copied = headers
        .get("x-amz-copy-source")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let v = v.split_once('?').map_or(v, |(path, _)| path);
            decode(v.trim_start_matches('/'))
        });
    // An access point or Outposts ARN names its object indirectly: not judged, so unknown.
    if copied.as_deref().is_some_and(|c| c.starts_with("arn:")) {
        return ("Unknown".to_owned(), resource, copied);
    }
    // A select reads the object it runs on.
    let source = match action {
        "SelectObjectContent" => Some(resource.clone()),
        _ => copied,
    };
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
    let listing = only_params(uri, LIST_OPTIONS);
    let bare = only_params(uri, &["x-id"]);
    match *method {
        Method::GET if sub("list-type") && listing => "ListObjectsV2",
        Method::GET if sub("versions") => "ListObjectVersions",
        Method::GET if sub("uploads") => "ListMultipartUploads",
        Method::GET if sub("location") => "GetBucketLocation",
        Method::POST if sub("delete") => "DeleteObjects",
        Method::HEAD if bare => "HeadBucket",
        _ if SUBRESOURCES.iter().filter(|(name, _)| sub(name)).count() > 1 => "Unknown",
        _ => {
            let found = SUBRESOURCES.iter().find(|(name, _)| sub(name));
            match (method, found) {
                (&Method::GET, Some((_, what))) => get_action(what),
                (&Method::PUT, Some((_, what))) => put_action(what),
                (&Method::DELETE, Some((_, what))) => delete_action(what),
                (&Method::GET, None) if listing => "ListObjects",
                (&Method::PUT, None) if bare => "CreateBucket",
                (&Method::DELETE, None) if bare => "DeleteBucket",
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

/// The object keys of an S3 batch delete (`POST /bucket?delete`), from its XML body, so
/// each can be judged as the `DeleteObject` it is. `None` when the body is not the plain
/// shape S3 documents (CDATA, entities of a DTD, prefixed tags, markup inside a key), which
/// could make the service read other keys than sluice did.
pub fn batch_delete_keys(body: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(body).ok()?;
    if text.contains("<!") || text.contains(":Key") {
        return None;
    }
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<Key>") {
        let after = &rest[start + "<Key>".len()..];
        let end = after.find("</Key>")?;
        let raw = &after[..end];
        if raw.contains('<') {
            return None;
        }
        keys.push(xml_unescape(raw)?);
        rest = &after[end + "</Key>".len()..];
    }
    // Every key tag was read (no `<Key attr>` or `<Key >` slipped past).
    (text.matches("<Key").count() == keys.len() && text.matches("</Key").count() == keys.len())
        .then_some(keys)
}

/// The text of the first `<tag>…</tag>` in `xml`, unescaped (for the few fields read from
/// AWS answers, such as STS credentials and error codes).
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    xml_unescape(&xml[start..end])
}

/// XML's five named entities and numeric references.
fn xml_unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let end = rest[at..].find(';')? + at;
        let entity = &rest[at + 1..end];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = match entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                {
                    Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                    None => entity.strip_prefix('#')?.parse().ok()?,
                };
                char::from_u32(code)?
            }
        };
        out.push(c);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Lambda's REST paths (`/2015-03-31/functions/NAME/invocations`, …).
fn lambda(method: &Method, uri: &Uri) -> (String, String, Option<String>) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // A function is named by name, `name:qualifier`, `function:name`, a partial ARN
    // (`ACCOUNT:function:name`) or a full ARN; anything else is not named.
    let function = |raw: &str| {
        let raw = decode(raw);
        let parts: Vec<&str> = raw.split(':').collect();
        let name = match parts.iter().position(|p| *p == "function") {
            Some(at) => parts.get(at + 1).copied(),
            None if parts.len() <= 2 => parts.first().copied(),
            None => None,
        };
        name.filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_owned)
    };
    let named = |action: &'static str, raw: &str| match function(raw) {
        Some(name) => (action, name),
        None => ("Unknown", "*".to_owned()),
    };
    let (action, resource) = match (method, segments.as_slice()) {
        // Every way of running a function is an Invoke for policy.
        (
            &Method::POST,
            [_, "functions", name, "invocations" | "response-streaming-invocations"],
        )
        | (&Method::POST, [_, "functions", name, "invoke-async"]) => named("Invoke", name),
        (&Method::GET, [_, "functions"]) => ("ListFunctions", "*".to_owned()),
        (&Method::POST, [_, "functions"]) => ("CreateFunction", "*".to_owned()),
        (&Method::GET, [_, "functions", name]) => named("GetFunction", name),
        (&Method::DELETE, [_, "functions", name]) => named("DeleteFunction", name),
        (&Method::GET, [_, "functions", name, "configuration"]) => {
            named("GetFunctionConfiguration", name)
        }
        (&Method::PUT, [_, "functions", name, "configuration"]) => {
            named("UpdateFunctionConfiguration", name)
        }
        (&Method::PUT, [_, "functions", name, "code"]) => named("UpdateFunctionCode", name),
        (_, [_, "functions", name, ..]) => {
            ("Unknown", function(name).unwrap_or_else(|| "*".into()))
        }
        _ => ("Unknown", "*".to_owned()),
    };
    (action.to_owned(), resource, None)
}

/// Any other service: the JSON protocol's `X-Amz-Target: Prefix.Action`, or the query
/// protocol's `Action=` in the query string or form body.
/// A request that names its action in more than one place, or more than once, is
/// `Unknown`: the service may read another one than sluice did.
fn other(uri: &Uri, headers: &HeaderMap, form: Option<&[u8]>) -> String {
    // Protocols that name the operation elsewhere (RPC v2's path, a compressed body) are
    // not read here.
    let plain_post = matches!(uri.path(), "" | "/")
        && !headers.contains_key("smithy-protocol")
        && !headers.contains_key(http::header::CONTENT_ENCODING)
        && form.is_none_or(|b| std::str::from_utf8(b).is_ok());
    if !plain_post {
        return "Unknown".to_owned();
    }
    let mut named: Vec<String> = Vec::new();
    for target in headers.get_all("x-amz-target") {
        let target = target.to_str().unwrap_or("");
        named.push(target.rsplit('.').next().unwrap_or(target).to_owned());
    }
    for pair in uri.query().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k) == "Action" {
            named.push(decode(v));
        }
    }
    if let Some(body) = form.and_then(|b| std::str::from_utf8(b).ok()) {
        for pair in body.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if decode(&k.replace('+', " ")) == "Action" {
                named.push(decode(&v.replace('+', " ")));
            }
        }
    }
    match named.as_slice() {
        [one] if !one.is_empty() => one.clone(),
        _ => "Unknown".to_owned(),
    }
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
                "/bk1/k?uploads",
                "CreateMultipartUpload",
                "bk1/k",
            ),
            (
                Method::PUT,
                "gw:1",
                "/bk1/k?partNumber=1&uploadId=x",
                "UploadPart",
                "bk1/k",
            ),
            (
                Method::POST,
                "gw:1",
                "/bk1/k?uploadId=x",
                "CompleteMultipartUpload",
                "bk1/k",
            ),
            (
                Method::DELETE,
                "gw:1",
                "/bk1/k?uploadId=x",
                "AbortMultipartUpload",
                "bk1/k",
            ),
            (Method::POST, "gw:1", "/bk1?delete", "DeleteObjects", "bk1"),
            (Method::PUT, "gw:1", "/bk1", "CreateBucket", "bk1"),
            (Method::GET, "gw:1", "/bk1?policy", "GetBucketPolicy", "bk1"),
            (
                Method::DELETE,
                "gw:1",
                "/bk1?tagging",
                "DeleteBucketTagging",
                "bk1",
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
        // What S3 would read differently, or sluice does not know, is Unknown.
        for (method, target) in [
            (Method::PUT, "/bk1?inventory&id=1"),
            (Method::DELETE, "/bk1?metrics&id=1"),
            (Method::GET, "/bk1?list-type=2&surprise=1"),
            (Method::PUT, "/bk1/k?retention"),
            (Method::GET, "/bk1/k?torrent"),
        ] {
            assert_eq!(
                s3_op(method, "gw", target, None).action,
                "Unknown",
                "{target}"
            );
        }
        assert_eq!(
            s3_op(Method::POST, "gw", "/bk1?%64elete", None).action,
            "DeleteObjects"
        );
        let select = s3_op(
            Method::POST,
            "gw",
            "/secret/f.csv?select&select-type=2",
            None,
        );
        assert_eq!(select.source.as_deref(), Some("secret/f.csv"));
        // A Host header or encoded slash that is no bucket name is not named.
        assert_eq!(
            s3_op(Method::DELETE, "prod/k#.s3.gw.test", "/", None).action,
            "Unknown"
        );
        assert_eq!(
            s3_op(Method::GET, "gw", "/prod%2Fsecret.csv", None).action,
            "Unknown"
        );
        // Headers carried in the query (as some presigners do) are not options.
        assert_eq!(
            s3_op(
                Method::PUT,
                "gw",
                "/open/k?x-amz-copy-source=secret%2Fpw.csv",
                None
            )
            .action,
            "Unknown"
        );
        let arn = s3_op(
            Method::PUT,
            "gw",
            "/bk1/k",
            Some("arn:aws:s3:us-east-1:1:accesspoint/ap/object/k"),
        );
        assert_eq!(arn.action, "Unknown");
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
    fn batch_delete_keys_are_read_or_refused() {
        let body = b"<Delete><Object><Key>prod/a&amp;b.csv</Key></Object><Object><Key>x&#x2F;y</Key><VersionId>1</VersionId></Object><Quiet>true</Quiet></Delete>";
        assert_eq!(batch_delete_keys(body).unwrap(), ["prod/a&b.csv", "x/y"]);
        for bad in [
            &b"<Delete><Object><Key><![CDATA[prod/a]]></Key></Object></Delete>"[..],
            b"<!DOCTYPE d [<!ENTITY e 'prod'>]><Delete><Object><Key>&e;/a</Key></Object></Delete>",
            b"<Delete><Object><s3:Key>prod/a</s3:Key></Object></Delete>",
            b"<Delete><Object><Key>a</Key><Key >prod/b</Key ></Object></Delete>",
        ] {
            assert!(
                batch_delete_keys(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
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
        for (path, name) in [
            (
                "/2015-03-31/functions/function:billing-x/invocations",
                "billing-x",
            ),
            (
                "/2015-03-31/functions/123456789012:function:billing-x:prod/invocations",
                "billing-x",
            ),
            (
                "/2015-03-31/functions/billing-x:prod/invocations",
                "billing-x",
            ),
        ] {
            let op = classify(
                "lambda",
                &Method::POST,
                &path.parse().unwrap(),
                &none,
                None,
                None,
            );
            assert_eq!(
                (op.action.as_str(), op.resource.as_str()),
                ("Invoke", name),
                "{path}"
            );
        }
        let odd = classify(
            "lambda",
            &Method::POST,
            &"/2015-03-31/functions/a:b:c/invocations".parse().unwrap(),
            &none,
            None,
            None,
        );
        assert_eq!(odd.action, "Unknown");
        let streamed = classify(
            "lambda",
            &Method::POST,
            &"/2021-11-15/functions/billing-x/response-streaming-invocations"
                .parse()
                .unwrap(),
            &none,
            None,
            None,
        );
        assert_eq!(
            (streamed.action.as_str(), streamed.resource.as_str()),
            ("Invoke", "billing-x")
        );
        // Named twice, differently: the service might read either.
        let twice = classify(
            "iam",
            &Method::POST,
            &"/?Action=ListUsers".parse().unwrap(),
            &none,
            None,
            Some(b"Action=DeleteUser&UserName=admin"),
        );
        assert_eq!(twice.action, "Unknown");
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
