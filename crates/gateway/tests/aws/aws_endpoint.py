"""A local stand-in for two AWS APIs that checks SigV4 itself (its own implementation,
independent of the gateway's), for the AWS integration tests:

- Lambda Invoke: POST /2015-03-31/functions/NAME/invocations answers
  {"function": NAME, "event": <the payload>};
- STS AssumeRole (when ISSUE_KEY and ISSUE_SECRET are given): POST / with
  Action=AssumeRole answers temporary credentials ISSUE_KEY / ISSUE_SECRET with a session
  token; GET /assumed (unsigned) says how many times a role was assumed.

Usage: aws_endpoint.py PORT ACCESS_KEY SECRET_KEY REGION [ISSUE_KEY ISSUE_SECRET]
Prints "ready" once listening. A request not signed with ACCESS_KEY gets 403.
"""
import datetime
import hashlib
import hmac
import http.server
import json
import sys
import urllib.parse

PORT, KEY, SECRET, REGION = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ISSUE = sys.argv[5:7]
ASSUMED = []


def hmac_sha256(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def expected_signature(method, raw_path, headers, body):
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        raise ValueError("not SigV4")
    fields = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    key, date, region, service, _ = fields["Credential"].split("/")
    if key != KEY or region != REGION or service not in ("lambda", "sts"):
        raise ValueError("wrong credential scope")
    signed = fields["SignedHeaders"].split(";")
    path, _, query = raw_path.partition("?")
    # Services other than S3 sign the path URI-encoded once more.
    canonical_path = urllib.parse.quote(path, safe="/~")
    pairs = sorted(
        (urllib.parse.quote(urllib.parse.unquote(k), safe="~"), urllib.parse.quote(urllib.parse.unquote(v), safe="~"))
        for k, _, v in (p.partition("=") for p in query.split("&") if p)
    )
    canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
    canonical_headers = "".join(f"{h}:{' '.join(headers[h].split())}\n" for h in signed)
    canonical = "\n".join([
        method, canonical_path, canonical_query, canonical_headers, ";".join(signed),
        hashlib.sha256(body).hexdigest(),
    ])
    amz_date = headers["x-amz-date"]
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = hmac_sha256(("AWS4" + SECRET).encode(), date)
    for part in (region, service, "aws4_request"):
        k = hmac_sha256(k, part)
    return hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest(), fields["Signature"]


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/assumed":
            return self.answer(200, {"assumed": ASSUMED})
        self.answer(404, {"message": "no such API"})

    def answer(self, status, obj, headers=()):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            want, got = expected_signature("POST", self.path, headers, body)
        except (ValueError, KeyError) as e:
            return self.answer(403, {"message": f"bad signature: {e}"}, [("x-amzn-errortype", "InvalidSignatureException")])
        if not hmac.compare_digest(want, got):
            return self.answer(403, {"message": "signature mismatch"}, [("x-amzn-errortype", "InvalidSignatureException")])
        if self.path == "/" and ISSUE:
            form = urllib.parse.parse_qs(body.decode())
            if form.get("Action") != ["AssumeRole"] or not form.get("RoleArn"):
                return self.answer(400, {"message": "not an AssumeRole"})
            ASSUMED.append(form["RoleArn"][0])
            expires = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            xml = (
                "<AssumeRoleResponse><AssumeRoleResult><Credentials>"
                f"<AccessKeyId>{ISSUE[0]}</AccessKeyId><SecretAccessKey>{ISSUE[1]}</SecretAccessKey>"
                f"<SessionToken>token-{len(ASSUMED)}</SessionToken><Expiration>{expires}</Expiration>"
                "</Credentials></AssumeRoleResult></AssumeRoleResponse>"
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "text/xml")
            self.send_header("content-length", str(len(xml)))
            self.end_headers()
            self.wfile.write(xml)
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) != 4 or parts[1] != "functions" or parts[3] != "invocations":
            return self.answer(404, {"message": "no such API"}, [("x-amzn-errortype", "ResourceNotFoundException")])
        name = urllib.parse.unquote(parts[2])
        self.answer(200, {"function": name, "event": json.loads(body or b"null")},
                    [("x-amz-executed-version", "$LATEST")])


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
