"""Local stand-ins for the external services TFPS talks to, all on 127.0.0.1:

- AbuseIPDBStub: GET /api/v2/check?ipAddress=IP&maxAgeInDays=90 (per-IP score, country, latency,
  status code and extra headers such as Retry-After; counts requests per IP)
- ApibanStub:    GET /api/KEY/check/IP -> 200 when listed, 404 when not
- SmtpStub:      a tiny SMTP receiver (socketserver) that can be stopped and restarted on its port
- WebhookStub:   collects JSON POST bodies; can answer errors to simulate an outage

Each stub is a context manager and is also safe to stop twice."""

import json
import socket
import socketserver
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send_json(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class _HttpStub:
    handler = None

    def __init__(self):
        self.lock = threading.Lock()
        self.release = threading.Event()   # set on stop: ends pending latency sleeps
        self.server = None
        self.thread = None

    def start(self):
        stub = self

        class Handler(self.handler):
            pass
        Handler.stub = stub
        self.release.clear()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    @property
    def port(self):
        return self.server.server_address[1]

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.release.set()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _AbuseHandler(_QuietHandler):
    def do_GET(self):
        stub = self.stub
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query)
        ip = query.get("ipAddress", [""])[0]
        with stub.lock:
            stub.counts[ip] += 1
            stub.requests.append({"time": time.time(), "path": self.path, "ip": ip,
                                  "max_age": query.get("maxAgeInDays", [""])[0],
                                  "key": self.headers.get("Key"), "accept": self.headers.get("Accept")})
            cfg = dict(stub.default, **stub.per_ip.get(ip, {}))
        if cfg["latency"]:
            stub.release.wait(cfg["latency"])
        if parts.path != "/api/v2/check" or not ip:
            return self._send_json(422, {"errors": [{"detail": "bad request"}]})
        if self.headers.get("Key") != stub.key:
            return self._send_json(401, {"errors": [{"detail": "Authentication failed"}]})
        status = cfg["status"]
        if cfg["truncate"]:          # promise more than is sent, then hang up
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "500")
            self.end_headers()
            self.wfile.write(b'{"data": {"ipAddress": ')
            self.wfile.flush()
            self.close_connection = True
            return
        if status != 200:
            return self._send_json(status, {"errors": [{"detail": f"status {status}", "status": status}]},
                                   cfg["headers"])
        self._send_json(200, {"data": {"ipAddress": ip, "isPublic": True, "ipVersion": 4,
                                       "abuseConfidenceScore": cfg["score"], "countryCode": cfg["country"],
                                       "isWhitelisted": cfg["whitelisted"], "totalReports": cfg["score"]}})


class AbuseIPDBStub(_HttpStub):
    """AbuseIPDB API v2 stand-in. `set(ip, score=, country=, latency=, status=, headers=, whitelisted=)`
    configures one IP; `set_default(...)` all others. `counts[ip]` counts requests."""

    handler = _AbuseHandler

    def __init__(self, key="test-abuse-key"):
        super().__init__()
        self.key = key
        self.default = {"score": 0, "country": "US", "latency": 0.0, "status": 200, "headers": (),
                        "whitelisted": False, "truncate": False}
        self.per_ip = {}
        self.counts = Counter()
        self.requests = []

    def set(self, ip, **cfg):
        with self.lock:
            self.per_ip.setdefault(ip, {}).update(cfg)

    def set_default(self, **cfg):
        with self.lock:
            self.default.update(cfg)

    def total(self):
        with self.lock:
            return sum(self.counts.values())


class _ApibanHandler(_QuietHandler):
    def do_GET(self):
        stub = self.stub
        parts = self.path.strip("/").split("/")
        # api / KEY / check / IP
        if len(parts) != 4 or parts[0] != "api" or parts[2] != "check":
            return self._send_json(400, {"ipaddress": [], "ID": "none"})
        key, ip = urllib.parse.unquote(parts[1]), urllib.parse.unquote(parts[3])
        with stub.lock:
            stub.counts[ip] += 1
            stub.keys.append(key)
        if key != stub.key:
            return self._send_json(403, {"error": "unauthorized"})
        if ip in stub.listed:
            return self._send_json(200, {"ipaddress": [ip], "ID": "123"})
        self._send_json(404, {"ipaddress": [ip], "ID": "none"})


class ApibanStub(_HttpStub):
    handler = _ApibanHandler

    def __init__(self, key="test-apiban-key", listed=()):
        super().__init__()
        self.key = key
        self.listed = set(listed)
        self.counts = Counter()
        self.keys = []


class _WebhookHandler(_QuietHandler):
    def do_POST(self):
        stub = self.stub
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        with stub.lock:
            stub.attempts += 1
            status = stub.status
        if stub.latency:
            stub.release.wait(stub.latency)
        if status != 200:
            return self._send_json(status, {"error": "unavailable"})
        try:
            body = json.loads(raw.decode("utf-8"))
        except ValueError:
            return self._send_json(400, {"error": "not JSON"})
        with stub.lock:
            stub.bodies.append(body)
            stub.content_types.append(self.headers.get("Content-Type"))
        self._send_json(200, {"ok": True})


class WebhookStub(_HttpStub):
    """Collects JSON POST bodies in `bodies`; `status` != 200 makes it refuse them."""

    handler = _WebhookHandler

    def __init__(self):
        super().__init__()
        self.bodies = []
        self.content_types = []
        self.attempts = 0
        self.status = 200
        self.latency = 0.0

    def of_kind(self, kind):
        with self.lock:
            return [b for b in self.bodies if b.get("kind") == kind]


class _SmtpHandler(socketserver.StreamRequestHandler):
    timeout = 10

    def reply(self, text):
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self):
        stub = self.server.stub
        self.reply("220 stub.localhost ESMTP ready")
        mail_from, rcpt = None, []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            command = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = command[:4].upper()
            if verb == "EHLO":
                self.reply("250-stub.localhost\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760")
            elif verb == "HELO":
                self.reply("250 stub.localhost")
            elif command.upper().startswith("MAIL FROM:"):
                args = command[10:].split()
                mail_from = args[0].strip("<>") if args else ""
                rcpt = []
                self.reply("250 OK")
            elif command.upper().startswith("RCPT TO:"):
                rcpt.append(command[8:].strip().split()[0].strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                if mail_from is None or not rcpt:
                    self.reply("503 need MAIL and RCPT first")
                    continue
                self.reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while True:
                    data = self.rfile.readline()
                    if not data:
                        return
                    if data in (b".\r\n", b".\n"):
                        break
                    if data.startswith(b".."):
                        data = data[1:]
                    lines.append(data)
                with stub.lock:
                    stub.messages.append({"from": mail_from, "to": list(rcpt), "data": b"".join(lines)})
                mail_from, rcpt = None, []
                self.reply("250 OK queued")
            elif verb == "RSET":
                mail_from, rcpt = None, []
                self.reply("250 OK")
            elif verb == "NOOP":
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 command not implemented")


class _SmtpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class SmtpStub:
    """A small SMTP receiver. `stop()` closes the port (connections are refused: an outage);
    `start()` opens it again on the same port. Received messages are in `messages`."""

    def __init__(self, port=0):
        self.lock = threading.Lock()
        self.messages = []
        self._port = port
        self.server = None

    def start(self):
        self.server = _SmtpServer(("127.0.0.1", self._port), _SmtpHandler)
        self.server.stub = self
        self._port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    @property
    def port(self):
        return self._port

    @property
    def running(self):
        return self.server is not None

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def subjects(self):
        import email
        from email import policy
        with self.lock:
            msgs = [email.message_from_bytes(m["data"], policy=policy.default) for m in self.messages]
        return [m["Subject"] for m in msgs]

    def parsed(self):
        import email
        from email import policy
        with self.lock:
            return [(m, email.message_from_bytes(m["data"], policy=policy.default)) for m in self.messages]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def reserve_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- SIP client helpers for the tests ----------------------------------------------------------

US_NUMBER = "0012125550100"


def unique_us_number(i):
    """Distinct US numbers, so that the A->B rule (R13) never interferes."""
    return f"001212555{i % 10000:04d}"


def unique_fr_number(i):
    """Distinct numbers in Paris: France is of tier medium for a US operator, so a call there from
    a source country not allowed is rejected R04 (a US number would be approved, as a traveller's)."""
    return f"0033142{i % 10000:04d}00"


class SipAnswer:
    def __init__(self, final, provisional, elapsed, sent_at):
        self.final = final
        self.provisional = provisional      # [(status, seconds after sending)]
        self.elapsed = elapsed              # seconds from send to the final answer
        self.sent_at = sent_at
        self.received_at = sent_at + elapsed
        self.status = final.status
        self.code = final.header("x-tfps-code")
        self.reason = final.header("x-tfps-reason") or ""

    def __repr__(self):
        return f"<SipAnswer {self.status} {self.code} {self.reason!r} {self.elapsed * 1000:.1f} ms>"


def p_tfps(ip, user="1001", domain="pbx.example.com", ua="TestPBX/1.0", calls=1):
    return f"P-tfps: {user};{domain};{ip};{ua};{calls}"


def send_invite(sock, port, ip, number=US_NUMBER, user="1001", domain="pbx.example.com", ua="TestPBX/1.0"):
    from conftest import sip_invite
    data = sip_invite(number, port, user=user, domain=domain, local_port=sock.getsockname()[1],
                      headers=[p_tfps(ip, user, domain, ua)])
    sent_at = time.perf_counter()
    sock.sendto(data, ("127.0.0.1", port))
    return sent_at


def wait_final(sock, sent_at, timeout=6.0):
    import tfps
    provisional = []
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data, _ = sock.recvfrom(65536)
        now = time.perf_counter()
        msg = tfps.parse_message(data)
        if msg.status >= 200:
            return SipAnswer(msg, provisional, now - sent_at, sent_at)
        provisional.append((msg.status, now - sent_at))


def call(port, ip, number=US_NUMBER, user="1001", domain="pbx.example.com", ua="TestPBX/1.0", timeout=6.0):
    """One INVITE with P-tfps carrying `ip`; returns the SipAnswer of its final response."""
    from conftest import udp_socket
    with udp_socket(timeout) as sock:
        sent_at = send_invite(sock, port, ip, number, user, domain, ua)
        return wait_final(sock, sent_at, timeout)


class BackgroundCall:
    """An INVITE whose answers are read by a thread (so arrival times are exact)."""

    def __init__(self, port, ip, number=US_NUMBER, timeout=8.0, **kw):
        from conftest import udp_socket
        self.sock = udp_socket(timeout)
        self.answer = None
        self.error = None
        self.sent_at = send_invite(self.sock, port, ip, number, **kw)
        self.thread = threading.Thread(target=self._read, args=(timeout,), daemon=True)
        self.thread.start()

    def _read(self, timeout):
        try:
            self.answer = wait_final(self.sock, self.sent_at, timeout)
        except Exception as exc:  # reported by result()
            self.error = exc

    def result(self, timeout=10.0):
        self.thread.join(timeout)
        self.sock.close()
        if self.error:
            raise self.error
        assert self.answer is not None, "no final answer"
        return self.answer
