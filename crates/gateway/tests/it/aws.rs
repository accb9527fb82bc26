//! AWS through the gateway: the AWS CLI (PyPI awscli, with its own botocore) signs with a
//! sluice key pair, the gateway checks it, judges and records each call, and signs again
//! with the real credential for s3s-fs (an S3 server that checks SigV4 itself) or a local
//! Lambda endpoint that checks SigV4 with its own code (`tests/aws/lambda_endpoint.py`).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{free_port, pg, spawn_ready, Gateway};

const REAL_KEY: &str = "AKIAREALKEYFORTESTS1";
const REAL_SECRET: &str = "real-secret-never-leaves-the-agent";
/// The credential of the role connection: good only for AssumeRole at the test STS.
const STS_KEY: &str = "AKIASTSBASEKEY000001";
const STS_SECRET: &str = "sts-base-secret";

/// Where scripts/test installed the AWS CLI (a venv) and s3s-fs.
fn tools() -> PathBuf {
    match std::env::var_os("SLUICE_TEST_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools"),
    }
}

fn tool(relative: &str) -> PathBuf {
    let path = tools().join(relative);
    assert!(
        path.exists(),
        "{} is missing: scripts/test installs the AWS CLI and s3s-fs under {}",
        path.display(),
        tools().display()
    );
    path
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/aws")
        .join(name)
}

struct Peer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what} exited before listening"
        );
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// s3s-fs over a temp dir, with the real credential.
fn s3_server() -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(tool("bin/s3s-fs"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", REAL_KEY, "--secret-key", REAL_SECRET])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port, &mut child, "s3s-fs");
    Peer { child, port, dir }
}

fn lambda_server() -> Peer {
    endpoint_server(&[REAL_KEY, REAL_SECRET, "eu-west-1"])
}

/// STS that accepts the STS key and hands out the real key as the role's credentials.
fn sts_server() -> Peer {
    endpoint_server(&[STS_KEY, STS_SECRET, "us-east-1", REAL_KEY, REAL_SECRET])
}

fn endpoint_server(args: &[&str]) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_ready(
        Command::new(tool("venv/bin/python"))
            .arg(script("aws_endpoint.py"))
            .arg(port.to_string())
            .args(args),
    );
    wait_port(port, &mut child, "the Lambda endpoint");
    Peer { child, port, dir }
}

const POLICIES: &str = r#"policies:
  - { name: keep-prod, match: { actions: ["s3:DeleteObject"], resources: ["prod-*"] }, action: deny }
  - { name: reviewed-puts, match: { actions: ["s3:PutObject"], resources: ["held-*"] }, action: review, reviewers: [user:boss], timeout: 60s }
  - { name: no-secret-reads, match: { actions: ["s3:GetObject"], resources: ["secret-*"] }, action: deny }
  - { name: billing, match: { actions: ["lambda:Invoke"], resources: ["billing-*"] }, action: deny }
masking:
  - { connections: [aws-s3, aws-lambda], detectors: [email] }
"#;

fn aws_connections(s3: u16, lambda: u16) -> String {
    format!(
        "  - name: aws-s3\n    kind: aws\n    region: us-east-1\n    services: [s3]\n    endpoint: http://127.0.0.1:{s3}\n    access_key_id: env:TEST_REAL_KEY\n    secret_access_key: file:{{SECRET_FILE}}\n\
         \x20 - name: aws-lambda\n    kind: aws\n    region: eu-west-1\n    services: [lambda]\n    endpoint: http://127.0.0.1:{lambda}\n    access_key_id: env:TEST_REAL_KEY\n    secret_access_key: file:{{SECRET_FILE}}\n"
    )
}

struct Setup {
    gw: Gateway,
    s3: Peer,
    _lambda: Peer,
    sts: Peer,
    key: String,
    secret: String,
    work: tempfile::TempDir,
}

fn setup(db: &str) -> Setup {
    pg().create_db(db);
    let s3 = s3_server();
    let lambda = lambda_server();
    let sts = sts_server();
    let work = tempfile::tempdir().unwrap();
    // The CLI's HOME: v1 presigns with Signature Version 2 unless told otherwise.
    std::fs::create_dir(work.path().join(".aws")).unwrap();
    std::fs::write(
        work.path().join(".aws/config"),
        "[default]\ns3 =\n    signature_version = s3v4\n",
    )
    .unwrap();
    let secret_file = work.path().join("real-secret");
    std::fs::write(&secret_file, REAL_SECRET).unwrap();
    let connections = aws_connections(s3.port, lambda.port)
        .replace("{SECRET_FILE}", &secret_file.display().to_string())
        + &format!(
            "  - name: aws-s3-role\n    kind: aws\n    region: us-east-1\n    services: [s3]\n    endpoint: http://127.0.0.1:{}\n    access_key_id: env:TEST_STS_KEY\n    secret_access_key: env:TEST_STS_SECRET\n    role_arn: arn:aws:iam::123456789012:role/sluice-test\n    sts_endpoint: http://127.0.0.1:{}\n",
            s3.port, sts.port
        );
    // The real key id reaches the gateway through its environment only.
    std::env::set_var("TEST_REAL_KEY", REAL_KEY);
    std::env::set_var("TEST_STS_KEY", STS_KEY);
    std::env::set_var("TEST_STS_SECRET", STS_SECRET);
    let gw = Gateway::start_with_http(db, &connections, POLICIES);
    gw.cli_ok(&["users", "add", "alice", "--group", "engineers"]);
    gw.cli_ok(&["users", "add", "boss"]);
    let issued = gw.cli_json(&[
        "aws-keys", "issue", "--user", "alice", "--ttl", "1h", "--json",
    ]);
    Setup {
        key: issued["access_key_id"].as_str().unwrap().to_owned(),
        secret: issued["secret_access_key"].as_str().unwrap().to_owned(),
        gw,
        s3,
        _lambda: lambda,
        sts,
        work,
    }
}

impl Setup {
    /// The AWS CLI with `args`, signing with `key` / `secret`, aimed at the gateway.
    fn aws_command(&self, key: &str, secret: &str, region: &str, args: &[&str]) -> Command {
        let mut command = Command::new(tool("venv/bin/aws"));
        command
            .args(args)
            .current_dir(self.work.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.work.path())
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", region)
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.gw.http_port),
            )
            .env("AWS_MAX_ATTEMPTS", "1");
        command
    }

    fn aws_with(&self, key: &str, secret: &str, region: &str, args: &[&str]) -> Output {
        self.aws_command(key, secret, region, args)
            .output()
            .unwrap()
    }

    /// The AWS CLI started in the background, as alice.
    fn aws_child(&self, args: &[&str]) -> std::process::Child {
        self.aws_command(&self.key, &self.secret, "us-east-1", args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn aws(&self, args: &[&str]) -> Output {
        self.aws_with(&self.key, &self.secret, "us-east-1", args)
    }

    fn aws_ok(&self, args: &[&str]) -> String {
        let out = self.aws(args);
        assert!(
            out.status.success(),
            "aws {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn aws_err(&self, args: &[&str]) -> String {
        let out = self.aws(args);
        assert!(!out.status.success(), "aws {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn signed(&self, mode: &str, bucket: &str, name: &str) -> (Vec<u16>, String) {
        self.signed_with(mode, bucket, name, "")
    }

    /// [`Setup::signed`] with `SIGNED_HEADERS` (for mode `resend`).
    fn signed_with(
        &self,
        mode: &str,
        bucket: &str,
        name: &str,
        headers: &str,
    ) -> (Vec<u16>, String) {
        let out = Command::new(tool("venv/bin/python"))
            .env("SIGNED_HEADERS", headers)
            .arg(script("signed.py"))
            .args([
                mode,
                &format!("http://127.0.0.1:{}", self.gw.http_port),
                &self.key,
                &self.secret,
                bucket,
                name,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (statuses, body) = text.split_once('\n').unwrap_or((&text, ""));
        (
            statuses
                .split_whitespace()
                .map(|s| s.parse().unwrap())
                .collect(),
            body.to_owned(),
        )
    }

    fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.s3.dir.path().join(bucket).join(key)).ok()
    }

    /// Every call recorded on the AWS connections, as `s3:Action resource` → decision.
    fn calls(&self) -> Vec<Value> {
        self.gw.wait_sessions_closed();
        self.gw
            .all_statements()
            .into_iter()
            .filter(|s| s.get("call").is_some())
            .collect()
    }
}

/// Writes `size` bytes that do not repeat within a part, without holding them in memory.
fn write_big_file(path: &Path, size: usize) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = [0u8; 64 * 1024];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut written = 0;
    while written < size {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let n = block.len().min(size - written);
        file.write_all(&block[..n]).unwrap();
        written += n;
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use sha2::{Digest, Sha256};
    let hash = |p: &Path| {
        let mut hasher = Sha256::new();
        let mut f = std::fs::File::open(p).unwrap();
        std::io::copy(&mut f, &mut hasher).unwrap();
        hasher.finalize()
    };
    hash(a) == hash(b)
}

#[test]
fn the_aws_cli_uses_s3_through_the_gateway_with_policy_audit_and_constant_memory() {
    let s = setup("aws_s3");
    let dir = s.work.path();

    // Small objects: make a bucket, upload, list, download.
    assert!(s
        .aws_ok(&["s3", "mb", "s3://prod-data"])
        .contains("make_bucket"));
    std::fs::write(dir.join("small.txt"), "hello through sluice\n").unwrap();
    s.aws_ok(&["s3", "cp", "small.txt", "s3://prod-data/reports/small.txt"]);
    let listed = s.aws_ok(&["s3", "ls", "s3://prod-data/reports/"]);
    assert!(listed.contains("small.txt"), "{listed}");
    let listed = s.aws_ok(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "prod-data",
        "--prefix",
        "reports/",
    ]);
    assert!(listed.contains("reports/small.txt"), "{listed}");
    s.aws_ok(&["s3", "cp", "s3://prod-data/reports/small.txt", "back.txt"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("back.txt")).unwrap(),
        "hello through sluice\n"
    );

    // 200 MB up (multipart: the CLI cuts it in 8 MiB parts) and down, while the gateway's
    // memory stays far below the object's size.
    let rss_before = s.gw.peak_rss_kib();
    let big = dir.join("big.bin");
    write_big_file(&big, 200 * 1024 * 1024);
    s.aws_ok(&["s3", "cp", "big.bin", "s3://prod-data/big.bin"]);
    assert!(same_file(&big, &s.s3.dir.path().join("prod-data/big.bin")));
    s.aws_ok(&["s3", "cp", "s3://prod-data/big.bin", "big-back.bin"]);
    assert!(same_file(&big, &dir.join("big-back.bin")));
    let rss_after = s.gw.peak_rss_kib();
    eprintln!("gateway peak RSS: {rss_before} KiB before, {rss_after} KiB after 2 x 200 MB");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the gateway's peak memory grew from {rss_before} KiB to {rss_after} KiB moving 200 MB"
    );
    let calls = s.calls();
    let actions: Vec<&str> = calls
        .iter()
        .filter_map(|c| c["call"]["action"].as_str())
        .collect();
    for action in [
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "GetObject",
    ] {
        assert!(
            actions.contains(&action),
            "{action} not recorded: {actions:?}"
        );
    }
    let parts = calls
        .iter()
        .filter(|c| c["call"]["action"] == "UploadPart")
        .collect::<Vec<_>>();
    assert!(parts.len() >= 20, "{} parts", parts.len());
    let uploaded: u64 = parts
        .iter()
        .map(|c| c["transfer"]["bytes_in"].as_u64().unwrap())
        .sum();
    assert_eq!(
        uploaded,
        200 * 1024 * 1024,
        "bytes in recorded for the parts"
    );
    let got = calls
        .iter()
        .filter(|c| {
            c["call"]["action"] == "GetObject" && c["call"]["resource"] == "prod-data/big.bin"
        })
        .map(|c| c["transfer"]["bytes_out"].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert_eq!(
        got,
        200 * 1024 * 1024,
        "bytes out recorded for the download"
    );

    // A presigned URL works with any HTTP client until it expires, and not once changed.
    let url = s
        .aws_ok(&[
            "s3",
            "presign",
            "s3://prod-data/reports/small.txt",
            "--expires-in",
            "300",
        ])
        .trim()
        .to_owned();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let curl = |url: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let fetched = curl(&url);
    assert!(fetched.ends_with("\n200"), "{fetched}");
    assert!(fetched.starts_with("hello through sluice"), "{fetched}");
    let forged = url.replace("reports/small.txt", "reports/other.txt");
    let refused = curl(&forged);
    assert!(
        refused.contains("SignatureDoesNotMatch") && refused.ends_with("\n403"),
        "{refused}"
    );

    // Masking: a CSV read from S3 comes back with the e-mail addresses masked; the object
    // itself is untouched.
    std::fs::write(dir.join("people.csv"), "id,email\n1,jane.doe@example.com\n").unwrap();
    s.aws_ok(&["s3", "cp", "people.csv", "s3://prod-data/people.csv"]);
    let read = s.aws_ok(&["s3", "cp", "s3://prod-data/people.csv", "-"]);
    assert_eq!(read, "id,email\n1,[redacted]\n");
    assert_eq!(
        s.object("prod-data", "people.csv").as_deref(),
        Some(&b"id,email\n1,jane.doe@example.com\n"[..])
    );

    // Policy: deleting from prod-* is refused, and the object is still there.
    let err = s.aws_err(&["s3", "rm", "s3://prod-data/reports/small.txt"]);
    assert!(
        err.contains("AccessDenied") && err.contains("keep-prod"),
        "{err}"
    );
    assert!(s.object("prod-data", "reports/small.txt").is_some());
    // A batch delete is judged key by key as the DeleteObject it is.
    let err = s.aws_err(&[
        "s3api",
        "delete-objects",
        "--bucket",
        "prod-data",
        "--delete",
        "Objects=[{Key=reports/small.txt}]",
    ]);
    assert!(
        err.contains("AccessDenied") && err.contains("keep-prod"),
        "{err}"
    );
    assert!(s.object("prod-data", "reports/small.txt").is_some());
    // A masked answer cannot be read in pieces (a value could be split between them).
    let err = s.aws_err(&[
        "s3api",
        "get-object",
        "--bucket",
        "prod-data",
        "--key",
        "people.csv",
        "--range",
        "bytes=0-12",
        "part.csv",
    ]);
    assert!(
        err.contains("AccessDenied") && err.contains("ranges"),
        "{err}"
    );
    // A copy cannot carry out what may not be read.
    s.aws_ok(&["s3", "mb", "s3://secret-vault"]);
    s.aws_ok(&["s3", "cp", "small.txt", "s3://secret-vault/keys.txt"]);
    let err = s.aws_err(&[
        "s3",
        "cp",
        "s3://secret-vault/keys.txt",
        "s3://prod-data/copied.txt",
    ]);
    assert!(
        err.contains("AccessDenied") && err.contains("no-secret-reads"),
        "{err}"
    );
    assert!(s.object("prod-data", "copied.txt").is_none());

    // A put into held-* waits for a reviewer, then completes.
    s.aws_ok(&["s3", "mb", "s3://held-area"]);
    let mut held = s.aws_child(&["s3", "cp", "small.txt", "s3://held-area/waiting.txt"]);
    let boss =
        s.gw.cli_ok(&["tokens", "issue", "boss", "--ttl", "1h"])
            .trim()
            .to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let review = loop {
        let pending = s.gw.cli_as_json(&boss, &["reviews", "list"]);
        if let Some(r) = pending.as_array().and_then(|a| a.first()).cloned() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no review was filed for the held put"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        review
            .to_string()
            .contains("s3:PutObject held-area/waiting.txt"),
        "{review}"
    );
    assert!(
        s.object("held-area", "waiting.txt").is_none(),
        "put before approval"
    );
    let id = review["id"].as_str().unwrap();
    let approved =
        s.gw.cli_as(&boss, &["reviews", "approve", id, "--reason", "fine"]);
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let status = held.wait().unwrap();
    assert!(status.success(), "the held put failed after approval");
    assert_eq!(
        s.object("held-area", "waiting.txt").as_deref(),
        Some(&b"hello through sluice\n"[..])
    );

    // A client that hangs up while its call is held withdraws it.
    let mut gone = s.aws_child(&["s3", "cp", "small.txt", "s3://held-area/abandoned.txt"]);
    let status_of = |statement: &str| {
        let all =
            s.gw.cli_as_json(&boss, &["reviews", "list", "--status", "all"]);
        all.as_array()
            .unwrap()
            .iter()
            .find(|r| r["statement"] == statement)
            .map(|r| r["status"].as_str().unwrap().to_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_of("s3:PutObject held-area/abandoned.txt").as_deref() != Some("pending") {
        assert!(Instant::now() < deadline, "no review for the abandoned put");
        std::thread::sleep(Duration::from_millis(100));
    }
    gone.kill().unwrap();
    gone.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of("s3:PutObject held-area/abandoned.txt").as_deref() != Some("withdrawn") {
        assert!(
            Instant::now() < deadline,
            "the abandoned put was not withdrawn"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.object("held-area", "abandoned.txt").is_none());

    // Streamed (aws-chunked) uploads with chunk signatures: a good one lands, one with a
    // changed byte is refused before the target has it.
    let (statuses, _) = s.signed("streaming", "prod-data", "streamed.bin");
    assert_eq!(statuses, [200]);
    assert_eq!(
        s.object("prod-data", "streamed.bin").map(|b| b.len()),
        Some(131_076)
    );
    let (statuses, body) = s.signed("streaming-tampered", "prod-data", "tampered.bin");
    assert_eq!(statuses, [400], "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    assert!(s.object("prod-data", "tampered.bin").is_none());
    // An upload with a trailing checksum reaches the target chunked, checksum and all: the
    // target keeps a good one and refuses a wrong one.
    let (statuses, body) = s.signed("unsigned-trailer", "prod-data", "crc.bin");
    assert_eq!(statuses, [200], "{body}");
    assert_eq!(
        s.object("prod-data", "crc.bin").map(|b| b.len()),
        Some(71_000)
    );
    let (statuses, body) = s.signed("unsigned-trailer-bad-crc", "prod-data", "bad-crc.bin");
    // The target's own verdict (s3s-fs checks the CRC only after writing the file, so the
    // file itself proves nothing here).
    assert_eq!(statuses, [400], "{body}");
    assert!(body.contains("BadDigest"), "{body}");
    // A trailer that could read as a second line is refused before the target has the body.
    let (statuses, body) = s.signed("unsigned-trailer-smuggled", "prod-data", "smuggled.bin");
    assert_eq!(statuses, [400], "{body}");
    assert!(body.contains("IncompleteBody"), "{body}");
    assert!(s.object("prod-data", "smuggled.bin").is_none());
    let (statuses, body) = s.signed("tampered-body", "prod-data", "swapped.bin");
    assert_eq!(statuses, [400], "{body}");
    assert!(body.contains("XAmzContentSHA256Mismatch"), "{body}");
    assert!(s.object("prod-data", "swapped.bin").is_none());
    // A captured write cannot be sent again; the same read may be.
    let (statuses, body) = s.signed("replay", "prod-data", "replayed.txt");
    assert_eq!(statuses, [200, 403, 200, 200], "{body}");

    // Wrong secret, unknown key, revoked key: refused with the error the CLI shows.
    let err = s.aws_with(&s.key, "not-the-secret", "us-east-1", &["s3", "ls"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("SignatureDoesNotMatch"));
    let err = s.aws_with(
        "SLUICEUNKNOWNKEY0000",
        &s.secret,
        "us-east-1",
        &["s3", "ls"],
    );
    assert!(String::from_utf8_lossy(&err.stderr).contains("InvalidAccessKeyId"));
    s.gw.cli_ok(&["aws-keys", "revoke", &s.key]);
    let err = s.aws_err(&["s3", "ls"]);
    assert!(err.contains("revoked"), "{err}");

    // The record: every call with its decision, intact; no secret anywhere.
    let calls = s.calls();
    let denied: Vec<String> = calls
        .iter()
        .filter(|c| c["decision"] == "deny")
        .map(|c| c["statement"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        denied
            .contains(&"s3:DeleteObject prod-data/reports/small.txt (in DeleteObjects)".to_owned()),
        "{denied:?}"
    );
    assert!(
        denied.contains(&"s3:DeleteObject prod-data/reports/small.txt".to_owned()),
        "{denied:?}"
    );
    assert!(
        denied
            .contains(&"s3:CopyObject prod-data/copied.txt from secret-vault/keys.txt".to_owned()),
        "{denied:?}"
    );
    let masked_read = calls
        .iter()
        .find(|c| c["statement"] == "s3:GetObject prod-data/people.csv")
        .unwrap();
    assert_eq!(
        masked_read["masked"][0]["detector"], "email",
        "{masked_read}"
    );
    assert_eq!(masked_read["masked"][0]["values"], 1);
    let held_put = calls
        .iter()
        .find(|c| c["statement"] == "s3:PutObject held-area/waiting.txt")
        .unwrap();
    assert_eq!(held_put["review"]["status"], "approved");
    assert_eq!(held_put["review"]["by"], "boss");
    assert!(s.gw.verify().status.success());
    let written = s.gw.everything_written();
    assert!(
        !written.contains(REAL_SECRET),
        "the real secret was written"
    );
    assert!(
        !written.contains(&s.secret),
        "the sluice secret was written"
    );
}

#[test]
fn aws_lambda_invoke_is_signed_again_for_the_function_and_judged_by_name() {
    let s = setup("aws_lambda");
    let region = "eu-west-1";
    let out = s.aws_with(
        &s.key,
        &s.secret,
        region,
        &[
            "lambda",
            "invoke",
            "--function-name",
            "report-daily",
            "--payload",
            "{\"day\": 3, \"notify\": \"ops\\u0040example.com\"}",
            "out.json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value =
        serde_json::from_slice(&std::fs::read(s.work.path().join("out.json")).unwrap()).unwrap();
    assert_eq!(answer["function"], "report-daily");
    assert_eq!(answer["event"]["day"], 3);
    // The function's JSON answer is masked value by value (the escape is decoded first).
    assert_eq!(answer["event"]["notify"], "[redacted]");

    let out = s.aws_with(
        &s.key,
        &s.secret,
        region,
        &[
            "lambda",
            "invoke",
            "--function-name",
            "billing-charge",
            "--payload",
            "{}",
            "out2.json",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("AccessDenied") && err.contains("billing"),
        "{err}"
    );
    // The same function named by partial ARN is the same function.
    let out = s.aws_with(
        &s.key,
        &s.secret,
        region,
        &[
            "lambda",
            "invoke",
            "--function-name",
            "123456789012:function:billing-charge",
            "--payload",
            "{}",
            "out4.json",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("AccessDenied") && err.contains("billing"),
        "{err}"
    );

    // A user issues a key pair for themselves through the API (no access to the store),
    // and uses it; an auditor may not.
    let boss =
        s.gw.cli_ok(&["tokens", "issue", "boss", "--ttl", "1h"])
            .trim()
            .to_owned();
    let own =
        s.gw.cli_as_json(&boss, &["aws-keys", "issue", "--ttl", "1h"]);
    assert_eq!(own["user"], "boss");
    let out = s.aws_with(
        own["access_key_id"].as_str().unwrap(),
        own["secret_access_key"].as_str().unwrap(),
        region,
        &[
            "lambda",
            "invoke",
            "--function-name",
            "report-weekly",
            "out3.json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.gw.cli_ok(&["users", "add", "audrey", "--role", "auditor"]);
    let audrey =
        s.gw.cli_ok(&["tokens", "issue", "audrey", "--ttl", "1h"])
            .trim()
            .to_owned();
    let refused = s.gw.cli_as(&audrey, &["aws-keys", "issue"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let calls = s.calls();
    let invoked: Vec<(String, String)> = calls
        .iter()
        .map(|c| {
            (
                c["statement"].as_str().unwrap().to_owned(),
                c["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        invoked.contains(&("lambda:Invoke report-daily".into(), "allow".into())),
        "{invoked:?}"
    );
    assert!(
        invoked.contains(&("lambda:Invoke billing-charge".into(), "deny".into())),
        "{invoked:?}"
    );
    let weekly = calls
        .iter()
        .find(|c| c["statement"] == "lambda:Invoke report-weekly")
        .unwrap();
    assert_eq!(weekly["decision"], "allow");
    let ok = calls
        .iter()
        .find(|c| c["statement"] == "lambda:Invoke report-daily")
        .unwrap();
    assert_eq!(ok["transfer"]["status"], 200);
    assert_eq!(ok["tag"], "HTTP 200");
    assert!(s.gw.verify().status.success());
}

#[test]
fn a_connection_with_a_role_signs_with_credentials_from_assume_role() {
    let s = setup("aws_role");
    let role_key = s.gw.cli_json(&[
        "aws-keys",
        "issue",
        "--user",
        "alice",
        "--connection",
        "aws-s3-role",
        "--json",
    ]);
    let (key, secret) = (
        role_key["access_key_id"].as_str().unwrap(),
        role_key["secret_access_key"].as_str().unwrap(),
    );
    // The connection's own credential is good only for STS; the S3 server accepts the
    // role's temporary one, which the gateway got with it.
    let made = s.aws_with(key, secret, "us-east-1", &["s3", "mb", "s3://role-bucket"]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let listed = s.aws_with(key, secret, "us-east-1", &["s3", "ls"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("role-bucket"));
    // Asked once, then reused while valid.
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{}/assumed", s.sts.port)])
        .output()
        .unwrap();
    let assumed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        assumed["assumed"],
        serde_json::json!(["arn:aws:iam::123456789012:role/sluice-test"])
    );
    let written = s.gw.everything_written();
    assert!(!written.contains(STS_SECRET));
    assert!(!written.contains(REAL_SECRET));
}

#[test]
fn boto3_puts_gets_multiparts_and_presigns_through_the_gateway() {
    let mut s = setup("aws_sdk");
    let sdk = |bucket: &str, endpoint: String| {
        s.aws_ok(&["s3", "mb", &format!("s3://{bucket}")]);
        let out = Command::new(tool("venv/bin/python"))
            .arg(script("sdk.py"))
            .arg(bucket)
            .env("AWS_ACCESS_KEY_ID", &s.key)
            .env("AWS_SECRET_ACCESS_KEY", &s.secret)
            .env("AWS_ENDPOINT_URL", endpoint)
            // The gateway's self-signed certificate, for https://.
            .env("AWS_CA_BUNDLE", s.gw.data_dir().join("tls/server.crt"))
            .env("HOME", s.work.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let results: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(results["put_get"], true, "{results}");
        assert_eq!(results["multipart"], true, "{results}");
        assert_eq!(results["presigned"], true, "{results}");
        assert_eq!(results["delete"], "AccessDenied", "{results}");
        assert_eq!(
            s.object(bucket, "sdk/big.bin").map(|b| b.len()),
            Some(20 * 1024 * 1024)
        );
    };
    sdk("prod-sdk", format!("http://127.0.0.1:{}", s.gw.http_port));
    // The same port speaks https:// with the gateway's certificate.
    sdk(
        "prod-sdk-tls",
        format!("https://localhost:{}", s.gw.http_port),
    );
    // What the SDK signed its uploads with is on record.
    let puts: Vec<Value> = s
        .calls()
        .into_iter()
        .filter(|c| c["call"]["action"] == "PutObject" || c["call"]["action"] == "UploadPart")
        .collect();
    assert!(!puts.is_empty());
    for put in &puts {
        let params = put["params"].to_string();
        assert!(params.contains("body"), "{put}");
    }
    eprintln!("boto3 upload signing: {}", puts[0]["params"]);

    // A captured header-signed request stays refused after the gateway restarts.
    let (statuses, captured) = s.signed("capture", "prod-sdk", "sdk/replayed.bin");
    assert_eq!(statuses, [200], "{captured}");
    s.gw.restart();
    let (statuses, body) = s.signed_with("resend", "prod-sdk", "sdk/replayed.bin", &captured);
    assert_eq!(statuses, [403], "{body}");
    assert!(body.contains("already used"), "{body}");
    assert!(s.gw.verify().status.success());
}

/// A remote agent serves an AWS and an HTTP connection: their credentials are only in the
/// agent's environment; the gateway judges, records and masks as for the embedded agent.
#[test]
fn a_remote_agent_serves_aws_and_http_connections_with_credentials_only_it_has() {
    use crate::http_api::{api, get_json, API_TOKEN};
    use crate::tunnel::{add_agent, agent_state, wait_until, Agent};
    pg().create_db("aws_remote");
    let s3 = s3_server();
    let api = api();
    let connections = format!(
        "  - name: s3-edge\n    kind: aws\n    agent: edge\n    region: us-east-1\n    services: [s3]\n    endpoint: http://127.0.0.1:{}\n    access_key_id: env:EDGE_AWS_KEY\n    secret_access_key: env:EDGE_AWS_SECRET\n\
         \x20 - name: billing-edge\n    kind: http\n    agent: edge\n    url: http://127.0.0.1:{}/api\n    headers:\n      Authorization: Bearer env:EDGE_API_TOKEN\n",
        s3.port, api.port
    );
    let policies = "policies:\n  - { name: keep-edge, match: { actions: [\"s3:DeleteObject\"], resources: [\"edge-*\"] }, action: deny }\n";
    let gw = Gateway::start_with_tunnel_and_http("aws_remote", &connections, policies);
    let (key, fingerprint) = add_agent(&gw, "edge");
    let credentials = [
        ("EDGE_AWS_KEY", REAL_KEY),
        ("EDGE_AWS_SECRET", REAL_SECRET),
        ("EDGE_API_TOKEN", API_TOKEN),
    ];
    let agent = Agent::start_env(&gw, gw.tunnel_port, &key, &fingerprint, &[], &credentials);
    wait_until(Duration::from_secs(10), "the agent connects", || {
        agent_state(&gw, "edge")["state"] == "connected"
    });
    gw.cli_ok(&["users", "add", "alice"]);
    let issued = gw.cli_json(&[
        "aws-keys",
        "issue",
        "--user",
        "alice",
        "--connection",
        "s3-edge",
        "--json",
    ]);
    let work = tempfile::tempdir().unwrap();
    let aws = |args: &[&str]| {
        Command::new(tool("venv/bin/aws"))
            .args(args)
            .current_dir(work.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", work.path())
            .env(
                "AWS_ACCESS_KEY_ID",
                issued["access_key_id"].as_str().unwrap(),
            )
            .env(
                "AWS_SECRET_ACCESS_KEY",
                issued["secret_access_key"].as_str().unwrap(),
            )
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", gw.http_port),
            )
            .env("AWS_MAX_ATTEMPTS", "1")
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let out = aws(args);
        assert!(
            out.status.success(),
            "aws {args:?}: {}\n{}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            agent.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&["s3", "mb", "s3://edge-data"]);
    let up = work.path().join("up.bin");
    write_big_file(&up, 12 * 1024 * 1024 + 5);
    ok(&["s3", "cp", up.to_str().unwrap(), "s3://edge-data/up.bin"]);
    let back = work.path().join("back.bin");
    ok(&["s3", "cp", "s3://edge-data/up.bin", back.to_str().unwrap()]);
    assert!(same_file(&up, &back));
    assert!(ok(&["s3", "ls", "s3://edge-data/"]).contains("up.bin"));
    let refused = aws(&["s3", "rm", "s3://edge-data/up.bin"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("keep-edge"));

    // The HTTP API through the same agent: it adds the API's token, the client sends its own.
    let token = gw.user_token("hank");
    let url = format!("http://127.0.0.1:{}/billing-edge/v1/users/7", gw.http_port);
    let answer = get_json(&url, &token, &[]);
    assert_eq!(answer["auth_ok"], true, "{answer}");
    // A request without a body reaches the target without one (not as an empty chunked
    // body, which S3 refuses with 411), as through the embedded agent.
    let url = format!("http://127.0.0.1:{}/billing-edge/v1/items/3", gw.http_port);
    let answer = get_json(&url, &token, &["-X", "DELETE"]);
    assert_eq!(answer["method"], "DELETE", "{answer}");
    assert!(answer["transfer_encoding"].is_null(), "{answer}");

    // An upload that fails its chunk signatures on the gateway is abandoned on the way:
    // the target never gets it whole.
    let signed = |mode: &str, name: &str| {
        let out = Command::new(tool("venv/bin/python"))
            .arg(script("signed.py"))
            .args([
                mode,
                &format!("http://127.0.0.1:{}", gw.http_port),
                issued["access_key_id"].as_str().unwrap(),
                issued["secret_access_key"].as_str().unwrap(),
                "edge-data",
                name,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(signed("streaming", "streamed.bin").starts_with("200"));
    let tampered = signed("streaming-tampered", "tampered.bin");
    assert!(tampered.starts_with("400"), "{tampered}");
    assert!(tampered.contains("SignatureDoesNotMatch"), "{tampered}");
    let listed = ok(&["s3", "ls", "s3://edge-data/"]);
    assert!(
        listed.contains("streamed.bin") && !listed.contains("tampered.bin"),
        "{listed}"
    );
    // Whole answers through the agent are recorded as whole: none was "cut off".
    let cut: Vec<_> = gw
        .all_statements()
        .into_iter()
        .filter(|e| e.to_string().contains("cut off"))
        .collect();
    assert!(cut.is_empty(), "{cut:#?}");

    // None of the credentials reached the gateway.
    let written = gw.everything_written();
    for secret in [REAL_SECRET, API_TOKEN] {
        assert!(!written.contains(secret));
    }

    // An agent opens only the targets it allows, whatever the gateway asks.
    drop(agent);
    let agent = Agent::start_env(
        &gw,
        gw.tunnel_port,
        &key,
        &fingerprint,
        &["--allow-target", "db.internal:5432"],
        &credentials,
    );
    wait_until(Duration::from_secs(10), "the agent reconnects", || {
        agent_state(&gw, "edge")["state"] == "connected"
    });
    let refused = aws(&["s3", "ls", "s3://edge-data/"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("does not serve that target"), "{err}");
    assert!(agent.log().contains("refused"), "{}", agent.log());
    assert!(gw.verify().status.success());
}
