"""Signed S3 requests the AWS CLI does not make, for the AWS integration tests: a replayed
request, streamed (aws-chunked) uploads with chunk signatures or with a trailing checksum,
and tampered bodies. The request
signature comes from botocore; chunk signatures are computed here.

Usage: signed.py MODE ENDPOINT ACCESS_KEY SECRET BUCKET KEY
MODE: replay | capture | resend | streaming | streaming-tampered | unsigned-trailer |
      unsigned-trailer-bad-crc | unsigned-trailer-smuggled |
      tampered-body
Prints one HTTP status per request sent, space-separated, then the last answer's body.
"""
import base64
import hashlib
import hmac
import http.client
import json
import os
import sys
import urllib.parse
import zlib

# awscli 1.46 carries its own botocore.
from awscli.botocore.auth import S3SigV4Auth, SigV4Auth
from awscli.botocore.awsrequest import AWSRequest
from awscli.botocore.credentials import Credentials

MODE, ENDPOINT, KEY, SECRET, BUCKET, NAME = sys.argv[1:7]
REGION = "us-east-1"
EMPTY = hashlib.sha256(b"").hexdigest()


def send(method, url, headers, body):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    path = u.path + ("?" + u.query if u.query else "")
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    # botocore signs the host from the URL; the HTTP client sends it.
    if not any(k.lower() == "host" for k in headers):
        conn.putheader("Host", u.netloc)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    if body:
        conn.send(body)
    r = conn.getresponse()
    return r.status, r.read().decode(errors="replace")


def signing_key(date):
    k = ("AWS4" + SECRET).encode()
    for part in (date, REGION, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def chunked(headers, chunks):
    auth = headers["Authorization"]
    seed = auth.rsplit("Signature=", 1)[1]
    amz_date = headers["X-Amz-Date"]
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    key = signing_key(amz_date[:8])
    previous, out = seed, b""
    for data in chunks + [b""]:
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, EMPTY,
                             hashlib.sha256(data).hexdigest()])
        previous = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        out += f"{len(data):x};chunk-signature={previous}\r\n".encode() + data + b"\r\n"
    return out


url = f"{ENDPOINT}/{BUCKET}/{NAME}"
creds = Credentials(KEY, SECRET)
statuses, last = [], ""
REPLAYED = b"written once, replayed"
if MODE == "capture":
    # A write sent once; its signed headers printed as the body, for "resend"
    # (SIGNED_HEADERS).
    req = AWSRequest(method="PUT", url=url, data=REPLAYED)
    S3SigV4Auth(creds, "s3", REGION).add_auth(req)
    headers = dict(req.headers)
    headers["Content-Length"] = str(len(REPLAYED))
    status, _ = send("PUT", url, headers, REPLAYED)
    statuses.append(status)
    last = json.dumps(headers)
elif MODE == "resend":
    status, last = send("PUT", url, json.loads(os.environ["SIGNED_HEADERS"]), REPLAYED)
    statuses.append(status)
elif MODE == "replay":
    # A write sent twice, then a read sent twice (reads may repeat).
    req = AWSRequest(method="PUT", url=url, data=REPLAYED)
    S3SigV4Auth(creds, "s3", REGION).add_auth(req)
    headers = dict(req.headers)
    headers["Content-Length"] = str(len(REPLAYED))
    for _ in range(2):
        status, last = send("PUT", url, headers, REPLAYED)
        statuses.append(status)
    req = AWSRequest(method="GET", url=url)
    S3SigV4Auth(creds, "s3", REGION).add_auth(req)
    for _ in range(2):
        status, _ = send("GET", url, dict(req.headers), b"")
        statuses.append(status)
elif MODE in ("streaming", "streaming-tampered"):
    chunks = [b"a" * 65536, b"b" * 65536, b"tail"]
    decoded = sum(len(c) for c in chunks)
    headers = {
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(decoded),
    }
    req = AWSRequest(method="PUT", url=url, headers=headers)
    # Plain SigV4: it keeps the declared x-amz-content-sha256 (the S3 signer would replace it).
    SigV4Auth(creds, "s3", REGION).add_auth(req)
    signed = dict(req.headers)
    body = chunked(signed, chunks)
    if MODE == "streaming-tampered":
        at = body.index(b"bbbb")
        body = body[:at] + b"X" + body[at + 1:]
    signed["Content-Length"] = str(len(body))
    status, last = send("PUT", url, signed, body)
    statuses.append(status)
elif MODE in ("unsigned-trailer", "unsigned-trailer-bad-crc", "unsigned-trailer-smuggled"):
    # What SDKs send over https: chunks without signatures, a CRC32 of the payload after them.
    chunks = [b"c" * 70000, b"d" * 1000]
    payload = b"".join(chunks)
    crc = zlib.crc32(payload if MODE == "unsigned-trailer" else payload + b"!")
    checksum = base64.b64encode(crc.to_bytes(4, "big")).decode()
    body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
    body += f"0\r\nx-amz-checksum-crc32:{checksum}\r\n".encode()
    if MODE == "unsigned-trailer-smuggled":
        # A header the target might read from the trailers, after a bare LF.
        body = body[:-2] + b"\nx-amz-copy-source:/prod-data/secret.csv\r\n"
    body += b"\r\n"
    headers = {
        "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(len(payload)),
        "X-Amz-Trailer": "x-amz-checksum-crc32",
        "X-Amz-Sdk-Checksum-Algorithm": "CRC32",
    }
    req = AWSRequest(method="PUT", url=url, headers=headers)
    SigV4Auth(creds, "s3", REGION).add_auth(req)
    signed = dict(req.headers)
    signed["Content-Length"] = str(len(body))
    status, last = send("PUT", url, signed, body)
    statuses.append(status)
elif MODE == "tampered-body":
    req = AWSRequest(method="PUT", url=url, data=b"what was signed")
    S3SigV4Auth(creds, "s3", REGION).add_auth(req)
    body = b"what was sent!!"
    headers = dict(req.headers)
    headers["Content-Length"] = str(len(body))
    status, last = send("PUT", url, headers, body)
    statuses.append(status)
else:
    sys.exit(f"unknown mode {MODE}")
print(" ".join(map(str, statuses)))
print(last)
