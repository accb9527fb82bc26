"""A small HTTP API for the kind: http integration tests. It accepts only the bearer token
given on the command line (the one sluice injects), and answers JSON that says what it saw.

Usage: api_server.py PORT TOKEN — prints "ready" once listening.
GET  /api/v1/users/N  -> {"id": N, "email": "...", "auth_ok": true, "headers": {...}}
GET  /api/big/N       -> N bytes (application/octet-stream)
any  /api/...          -> {"method": ..., "path": ..., "body": ..., "transfer_encoding": ...,
                            "content_length": ...}
GET  /hits            -> how many requests reached /api (no auth; for the test)
"""
import http.server
import json
import sys

PORT, TOKEN = int(sys.argv[1]), sys.argv[2]
HITS = []


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        if self.path == "/hits":
            return self.answer(200, {"hits": HITS})
        HITS.append(f"{self.command} {self.path}")
        if self.headers.get("authorization") != f"Bearer {TOKEN}":
            return self.answer(401, {"error": "bad token", "got": self.headers.get("authorization")})
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.command == "GET" and self.path.startswith("/api/big/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(size))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                while size > 0:
                    self.wfile.write(chunk[:size])
                    size -= len(chunk)
            except OSError:
                pass
            return
        if self.command == "GET" and self.path.startswith("/api/v1/users/"):
            return self.answer(200, {
                "id": self.path.rsplit("/", 1)[1],
                "email": "jane.doe@example.com",
                "auth_ok": True,
                "team": headers.get("x-team"),
                "forwarded_headers": sorted(headers),
            })
        self.answer(200, {"method": self.command, "path": self.path, "body": body,
                          "transfer_encoding": headers.get("transfer-encoding"),
                          "content_length": headers.get("content-length")})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
