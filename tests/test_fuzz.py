"""Fuzzing the whole request path in process: mutated SIP messages through Server.on_message
(and TCP streams through a TcpConnection's StreamFramer, over a socketpair) with the real engine
and a real database; no network.

Seeds are valid INVITE, OPTIONS, CANCEL, ACK and BYE requests carrying a P-tfps identity header.
Each message is one of: a valid INVITE (some with harmless variations: compact forms, folding,
odd case, a deep Via stack, a long User-Agent, a body), an INVITE with two P-tfps headers, a
request with bytes that are not UTF-8 in one of its fields, a structural mutation (duplicated,
dropped or broken headers, bad Content-Length, CR/LF/NUL injection, empty lines, huge headers),
byte-level mutations (flips, insertions, deletions, truncation, splices), a retransmission, or a
batch of requests cut into random pieces of a TCP stream. A virtual clock moves 5 ms per message,
so transaction timers fire as in a busy real server; the engine is flushed every 500 messages as
the event loop does every 0.25 s.

What must hold: nothing but SipError escapes (from the framer only), nothing is logged at ERROR,
every flush succeeds and leaves exactly one call_log row per verdict, a clean account interleaved
with the noise is counted exactly (daily quota 3 of 10 calls), every response is well formed, the
transaction table and memory stay bounded, and nothing undecodable reaches the database.

TFPS_FUZZ_SEED=<int> (and TFPS_FUZZ_MESSAGES=<count>) add a longer run with another seed."""

import logging
import os
import random
import re
import socket
import time
import traceback


import tfps
from conftest import free_port, write_config

SEED = 20260501
STEP = 0.005            # virtual seconds per message
FLUSH_EVERY = 500       # messages between engine flushes (the loop flushes every 0.25 s)
TIMERS_EVERY = 25       # messages between timer runs
RELOAD_EVERY = 400      # messages between checks for changes (the loop does it every 2 s)
ADDR = ("127.0.0.1", 5060)
CLEAN = ("clean", "pbx.example.com")
CLEAN_CALLS, CLEAN_QUOTA = 10, 3
VERDICT_CODE = re.compile(r"A00|R\d\d")
BARE_LINE_BREAK = re.compile(rb"\r(?!\n)|(?<!\r)\n")  # a PBX may take either for a line end

USERS = [f"{1000 + i}" for i in range(40)] + ["alice", "bob.smith", "sales-07", "üser", "x" * 60]
DOMAINS = ["pbx.example.com", "pbx2.example.org", "tenant-3.voip.example.net", "[2001:db8::10]"]
IPS = ["192.0.2.10", "203.0.113.7", "198.51.100.20:5060", "[2001:db8::1]:5060", "2001:db8::2", "",
       "10.0.0.5", "not-an-ip", "8.8.8.8", "127.0.0.1"]
USER_AGENTS = ["Yealink SIP-T46S 66.86.0.15", "Grandstream GXP2170 1.0.11.3", "friendly-scanner", "sipvicious",
               "Asterisk PBX 18.20.0", "Z 5.4.12 v2.10.13.2", "PolycomVVX-VVX_411-UA/6.3.1", "' OR 1=1--",
               "Mozilla/5.0 (X11; Linux x86_64)", "UA;with;semicolons", "", "Zoiper rv2.10 ☎"]
NUMBERS = ["1212555{:04d}", "+1646555{:04d}", "01144207946{:04d}", "004930901{:04d}", "0053712{:04d}",
           "+33142{:04d}", "2125551{:04d}", "+1-212-555-{:04d}", "+1.646.555.{:04d}", "1212555{:04d};npdi",
           "0044-20-{:04d}", "1212ABC{:04d}", "0088213{:04d}", "+{:04d}", "00{:04d}" + "9" * 40]
NOT_UTF8 = [b"\xff", b"\xe9", b"\x80", b"\xbf", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80",
            b"caf\xe9", b"\xfe\xff", b"\xe2\x82"]
TOKENS = [b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b";", b",", b"<", b">", b'"', b"\\", b"@", b"%",
          b"%00", b"=", b"?", b"[", b"]", b"\xff", b"\xc3\xa9", b"0", b"-1", b"4294967296", b"SIP/2.0", b"z9hG4bK",
          b"\r\n\r\n", b"\r\n ", b"sip:", b"tel:", b"A00", b"R06", b"\r\nP-tfps: x;y;z;w;1\r\n",
          b"\r\nContent-Length: 9999\r\n", b"\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKdup\r\n"]
COMPACT = {b"Via": b"v", b"From": b"f", b"To": b"t", b"Call-ID": b"i", b"Contact": b"m", b"Content-Length": b"l",
           b"Supported": b"k", b"Subject": b"s", b"Content-Type": b"c"}
CONTENT_LENGTHS = [b"-1", b"-0", b"99999999999", b"999999999", b"abc", b"1e3", b"0x10", b"", b" ", b"9" * 200,
                   b"\xc2\xb2", b"+5", b"5 5", b"00000000000000000000"]
SDP = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
       b"m=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n")


# ---------------------------------------------------------------------------------------------
# Requests as (start line, [(name, value)], body) in bytes, and mutations of them
# ---------------------------------------------------------------------------------------------

class Request:
    __slots__ = ("method", "ruri", "headers", "body", "fix_length")

    def __init__(self, method, ruri, headers, body=b""):
        self.method, self.ruri, self.headers, self.body = method, ruri, headers, body
        self.fix_length = True  # Content-Length follows the body unless a mutation set it

    def set(self, name, value):
        self.headers = [(n, value if n == name else v) for n, v in self.headers]

    def get(self, name):
        return next(v for n, v in self.headers if n == name)

    def render(self):
        headers = self.headers
        if self.fix_length:
            length = str(len(self.body)).encode()
            headers = [(n, length if n.lower() in (b"content-length", b"l") else v) for n, v in headers]
        lines = [self.method + b" " + self.ruri + b" SIP/2.0"] + [n + b": " + v for n, v in headers]
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


def seed_request(rng, n, method=b"INVITE", identity=None, number=None, calls=None, ua=None):
    """A valid request; `n` makes its branch and Call-ID unique."""
    user, domain = identity or (rng.choice(USERS), rng.choice(DOMAINS))
    number = number or rng.choice(NUMBERS).format(rng.randrange(10000))
    ua = ua if ua is not None else rng.choice(USER_AGENTS)
    calls = rng.randint(0, 12) if calls is None else calls
    ruri = f"sip:{number}@127.0.0.1:5060" + rng.choice(["", "", ";user=phone", ";transport=udp"])
    if rng.random() < 0.03 and number.lstrip("+").isdigit():
        ruri = f"tel:{number}"
    headers = [
        (b"Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{n:x}x{rng.getrandbits(40):010x};rport".encode()),
        (b"Max-Forwards", b"70"),
        (b"From", f'"{user}" <sip:{user}@{domain}>;tag={rng.getrandbits(32):08x}'.encode()),
        (b"To", f"<sip:{number}@tfps.example.net>".encode()),
        (b"Call-ID", f"{n:x}-{rng.getrandbits(48):012x}@fuzz".encode()),
        (b"CSeq", b"1 " + method),
        (b"Contact", f"<sip:{user}@192.0.2.10:5060>".encode()),
        (b"User-Agent", ua.encode()),
        (b"P-tfps", f"{user};{domain};{rng.choice(IPS)};{ua};{calls}".encode()),
        (b"Content-Length", b"0"),
    ]
    body = b""
    if method == b"INVITE" and rng.random() < 0.3:
        headers.insert(-1, (b"Content-Type", b"application/sdp"))
        body = SDP
    return Request(method, ruri.encode(), headers, body)


def with_method(req, method):
    """The same transaction's CANCEL, or an ACK / BYE of the same dialog."""
    other = Request(method, req.ruri, list(req.headers))
    other.set(b"CSeq", b"1 " + method if method != b"BYE" else b"2 BYE")
    other.headers = [(n, v) for n, v in other.headers if n not in (b"Content-Type", b"P-tfps")]
    return other


def harmless(rng, req):
    """A variation that leaves the request valid: it still gets a verdict."""
    kind = rng.randrange(8)
    if kind == 0:
        req.headers = [(COMPACT.get(n, n), v) for n, v in req.headers]
    elif kind == 1:
        req.headers = [(n.swapcase() if rng.random() < 0.5 else n.lower(), v) for n, v in req.headers]
    elif kind == 2:
        top = req.headers[:1]
        rest = req.headers[1:]
        rng.shuffle(rest)
        req.headers = top + rest
    elif kind == 3:
        req.headers.insert(2, (b"Subject", b"folded\r\n  across\r\n\tthree lines"))
    elif kind == 4:
        depth = rng.choice((2, 10, 70)) if rng.random() < 0.9 else 300
        req.headers[1:1] = [(b"Via", f"SIP/2.0/UDP 10.{i % 250}.0.1:5060;branch=z9hG4bKdeep{i}".encode())
                            for i in range(depth)]
    elif kind == 5:
        req.set(b"User-Agent", b"LongUA/" + b"x" * rng.choice((300, 5000, 30000)))
    elif kind == 6:
        req.headers.insert(3, (b"X-Unknown-" + str(rng.randrange(99)).encode(), b"value;a=b, c"))
        req.headers.insert(3, (b"Supported", b"replaces, timer"))
    else:
        req.set(b"Max-Forwards", rng.choice((b"1", b"0070", b"255")))
    return req


ROUTED_OR_ECHOED = ("Request-URI user", "Request-URI host", "From user", "From host", "From display name", "Call-ID")


def inject_not_utf8(rng, req):
    """Bytes that are not UTF-8 in one field of the start line or the headers; returns the field."""
    bad = rng.choice(NOT_UTF8)

    def spliced(text):
        at = rng.randrange(len(text) + 1)
        return text[:at] + bad + text[at:]

    field = rng.choice(("Request-URI user", "Request-URI host", "From user", "From host", "From display name",
                        "User-Agent", "P-tfps user", "P-tfps domain", "P-tfps ip", "P-tfps ua", "P-tfps calls",
                        "Call-ID", "other header"))
    if field.startswith("Request-URI"):
        scheme, _, rest = req.ruri.partition(b":")
        user, at, host = rest.rpartition(b"@")
        req.ruri = scheme + b":" + (spliced(user) + at + host if field.endswith("user") else user + at + spliced(host))
    elif field.startswith("From"):
        value = req.get(b"From")
        m = re.match(rb'"([^"]*)" <sip:([^@]*)@([^>]*)>(.*)', value)
        display, user, host, params = m.groups()
        part = {"From display name": 0, "From user": 1, "From host": 2}[field]
        parts = [display, user, host]
        parts[part] = spliced(parts[part])
        req.set(b"From", b'"%s" <sip:%s@%s>%s' % (*parts, params))
    elif field == "User-Agent":
        req.set(b"User-Agent", spliced(req.get(b"User-Agent")))
    elif field.startswith("P-tfps"):
        fields = req.get(b"P-tfps").split(b";")
        index = ("user", "domain", "ip", "ua", "calls").index(field[7:])
        index = len(fields) - 1 if field.endswith("calls") else index
        fields[index] = spliced(fields[index])
        req.set(b"P-tfps", b";".join(fields))
    elif field == "Call-ID":
        req.set(b"Call-ID", spliced(req.get(b"Call-ID")))
    else:
        req.headers.insert(rng.randrange(1, len(req.headers)), (b"X-Note", spliced(b"hello")))
    return field


def break_structure(rng, req):
    """A header-level mutation that may or may not leave the request valid."""
    kind = rng.randrange(11)
    headers = req.headers
    if kind == 0:                                        # duplicate a header, same or other value
        name, value = rng.choice(headers)
        value = value if rng.random() < 0.5 else value + b"2"
        headers.insert(rng.randrange(len(headers) + 1), (name, value))
    elif kind == 1:                                      # drop a header
        del headers[rng.randrange(len(headers))]
    elif kind == 2:                                      # bad Content-Length
        req.fix_length = False
        req.set(b"Content-Length", rng.choice(CONTENT_LENGTHS + [str(len(req.body) + rng.choice((-3, 1, 50))).encode()]))
    elif kind == 3:                                      # CR, LF or NUL inside a value or the start line
        token = rng.choice((b"\r", b"\n", b"\x00", b"\r\n", b"\n\r", b"\r\r\n", b"\x00\r\n"))
        if rng.random() < 0.2:
            at = rng.randrange(len(req.ruri) + 1)
            req.ruri = req.ruri[:at] + token + req.ruri[at:]
        else:
            i = rng.randrange(len(headers))
            name, value = headers[i]
            at = rng.randrange(len(value) + 1)
            headers[i] = (name, value[:at] + token + value[at:])
    elif kind == 4:                                      # an empty line among the headers
        headers.insert(rng.randrange(1, len(headers) + 1), (b"", b""))
    elif kind == 5:                                      # a huge header
        size = rng.choice((1000, 8000, 40000, 63000))
        name = rng.choice((b"X-Huge", b"P-tfps", b"From", b"Via", b"Call-ID", b"User-Agent"))
        filler = rng.choice((b"a", b"1", b";", b",", b" ", b"<"))
        headers.insert(rng.randrange(len(headers) + 1), (name, filler * size))
    elif kind == 6:                                      # a deep Via stack, some of it malformed
        depth = rng.choice((20, 50, 100, 200)) if rng.random() < 0.9 else 900
        vias = [(b"Via", f"SIP/2.0/UDP h{i}.example.com;branch=z9hG4bK{i}".encode()) for i in range(depth)]
        if rng.random() < 0.5:
            vias[rng.randrange(depth)] = (b"Via", b"SIP/2.0/UDP ;;;")
        headers[1:1] = vias
    elif kind == 7:                                      # a P-tfps with odd fields
        req.set(b"P-tfps", rng.choice((b"", b";;;;", b";" * 50, b"a;b", b"u;d;1.2.3.4;ua;99999999",
                                       b"u;d;1.2.3.4;ua;-1", b"u;d;1.2.3.4;ua;\xc2\xb2", b"u@d;x",
                                       b"%27;d;ip;ua;1", b"u;" + b"d" * 400 + b";ip;ua;1",
                                       b"u" * 300 + b";d;ip;ua;1", b" ; ; ; ; ")))
    elif kind == 8:                                      # legacy identity headers
        headers += [(b"X-tfps", rng.choice((b"u@d", b"@", b"a@b@c", b"'; DROP TABLE accounts"))),
                    (b"P-Calls", rng.choice((b"1", b"x", b"99999999"))), (b"P-Source", b"198.51.100.1:5060")]
    elif kind == 9:                                      # an odd start line or URI
        req.ruri = rng.choice((b"sip:", b"sip:@", b"sip:123@", b"tel:", b"mailto:a@b", b"sip:A00123@h",
                               b"sip:R06123@h", b"sip:123@h?x=y", b"sips:+1%32%33@h", b"sip:%ff@h", b"*",
                               b"sip:123@[::1", b"sip:" + b"9" * 3000 + b"@h", b"sip:123@h;lr;maddr=::1"))
    else:                                                # odd CSeq / Max-Forwards / Require
        choice = rng.randrange(3)
        if choice == 0:
            req.set(b"CSeq", rng.choice((b"1", b"x INVITE", b"99999999999 INVITE", b"1 OPTIONS", b"-1 INVITE")))
        elif choice == 1:
            req.set(b"Max-Forwards", rng.choice((b"0", b"256", b"-1", b"7" * 5000, b"")))
        else:
            headers.append((b"Require", rng.choice((b"100rel", b"", b",", b"timer, foo"))))
    return req


def mutate_bytes(rng, data, others):
    """Byte-level mutations of rendered bytes; `others` gives material for splices."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        op = rng.randrange(7)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 2:
            data[at:at] = rng.choice(TOKENS)
        elif op == 3:
            del data[at:at + rng.randint(1, 30)]
        elif op == 4:
            del data[at:]
        elif op == 5:
            start = rng.randrange(len(data) + 1)
            data[at:at] = data[start:start + rng.randint(1, 120)]
        else:
            other = rng.choice(others)
            cut = rng.randrange(len(other) + 1)
            data[at:] = other[cut:]
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# The server in process, a virtual clock, and what the run observed
# ---------------------------------------------------------------------------------------------

def shape(text):
    """A message without what varies from case to case (positions, numbers, characters)."""
    return re.sub(r'\\udc[0-9a-f]{2}|\d+(?:-\d+)?|call_id="[^"]*" ', "_", text)[:120]


def raised(exc):
    """An exception and where in tfps.py it came from."""
    where = [f"{frame.name}:{frame.lineno}" for frame in traceback.extract_tb(exc.__traceback__)
             if frame.filename.endswith("tfps.py")]
    return f"{type(exc).__name__} at {' < '.join(reversed(where[-3:]))}: {shape(str(exc))}"


class Reply:
    """The start line and first header values of a response: what the checks need, read much
    faster than parse_message reads it (responses echo deep Via stacks)."""

    __slots__ = ("status", "headers")
    STATUS_LINE = re.compile(rb"SIP/2\.0 ([1-6]\d\d) [^\r\n]*\r\n")
    WANTED = re.compile(rb"^(Server|X-TFPS-Code|X-TFPS-Reason|Contact|To):[ \t]*(.*?)\r?$", re.M)

    def __init__(self, head):
        m = self.STATUS_LINE.match(head)
        self.status = int(m.group(1)) if m else 0
        self.headers = {}
        for name, value in self.WANTED.findall(head):
            self.headers.setdefault(name.lower().decode(), value)

    def header(self, name):
        value = self.headers.get(name)
        return None if value is None else value.decode("utf-8", "surrogateescape")


class VirtualTime:
    """tfps's `time` module with clocks the test moves forward: the wall clock starts at noon UTC
    today, so a run never crosses midnight (the clean account's daily quota stays one day's)."""

    def __init__(self):
        self.offset = 0.0
        self.noon = time.time() // 86400 * 86400 + 43200

    def monotonic(self):
        return time.monotonic() + self.offset

    def time(self):
        return self.noon + self.offset

    def __getattr__(self, name):
        return getattr(time, name)


class Collector(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


class UdpEndpoint:
    transport = "udp"
    closed = False

    def __init__(self):
        self.sent = []

    def send(self, data, addr):
        self.sent.append(data)


class Fuzz:
    """The server, the feeding of messages, and the problems found (property -> [count, example])."""

    def __init__(self, tmp_path, db_url, monkeypatch, messages, seed, server=()):
        self.rng = random.Random(seed)
        self.total = messages
        self.clock = VirtualTime()
        monkeypatch.setattr(tfps, "time", self.clock)
        config = write_config(tmp_path / "fuzz.conf", {
            "server": {"listen": f"udp:127.0.0.1:{free_port()}", "log_verdicts": "no", **dict(server)},
            "database": {"url": db_url},
            "policy": {"learning_days": "0", "business_hours": "mon-sun 00:00-24:00"}})
        self.cfg = tfps.Config.load(config)
        self.db = tfps.open_database(self.cfg.database.url)
        tfps.insert_account(self.db, tfps.default_account(self.cfg, *CLEAN, self.clock.time()))
        clean = tfps.find_account(self.db, *CLEAN)
        tfps.update_account(self.db, clean, self.clock.time(), daily_quota=CLEAN_QUOTA)
        self.clean_id = clean.id
        self.server = tfps.Server(self.cfg, self.db)
        self.on_message = self.server.on_message
        self.server.on_message = self.on_tcp_message  # only _service_tcp calls it: UDP goes to deliver()
        self.udp = UdpEndpoint()
        self.errors = Collector()
        logging.getLogger("tfps").addHandler(self.errors)
        # thousands of records would bury the report: the collector keeps what matters
        monkeypatch.setattr(logging.getLogger("tfps"), "propagate", False)
        self.problems = {}
        self.fed = 0              # messages through on_message
        self.verdict_responses = set()
        self.clean_codes = []
        self.max_table = self.max_timers = 0
        self.recent = []          # the latest valid INVITEs, for retransmissions, CANCEL, BYE and ACK
        self.acks = []            # ACKs owed for final responses to INVITEs
        self.outcomes = {}
        self.rss_start = None     # taken once the caches are warm

    # -- bookkeeping -------------------------------------------------------------------------

    def problem(self, what, data, note=""):
        entry = self.problems.setdefault(what, [0, f"{note} {data[:600]!r}" if note else repr(data[:600])])
        entry[0] += 1

    def check_response(self, data, request):
        try:
            head = data[:data.index(b"\r\n\r\n")]
        except ValueError:
            self.problem("response without an end of headers", request)
            return None
        bare = BARE_LINE_BREAK.search(head)
        if bare and not head.startswith((b"SIP/2.0 4", b"SIP/2.0 5")):  # an error response echoes what it got
            name = head[head.rfind(b"\n", 0, bare.start()) + 1:bare.start()].partition(b":")[0]
            self.problem(f"{head[8:11].decode()} response with a bare CR or LF in its "
                         f"{name.decode(errors='replace')} header", request)
        msg = Reply(head)
        if not msg.status:
            self.problem(f"response with the start line {head[:40]!r}", request)
            return None
        if msg.header("server") != "TFPS":
            self.problem(f"response Server header is {msg.header('server')!r}, not 'TFPS'", request)
        if msg.status == 500:
            self.problem(f"500 response: {shape(msg.header('x-tfps-reason') or '')}", request)
        if msg.status == 302:
            code = msg.header("x-tfps-code") or ""
            contact = msg.header("contact") or ""
            if not VERDICT_CODE.fullmatch(code) or not contact.startswith(f"<sip:{code}"):
                self.problem("302 whose X-TFPS-Code and Contact disagree", request)
            self.verdict_responses.add(hash(data))
        return msg

    def answers(self, endpoint_sent, request):
        msgs = [self.check_response(data, request) for data in endpoint_sent]
        endpoint_sent.clear()
        return [m for m in msgs if m is not None]

    # -- feeding -----------------------------------------------------------------------------

    def udp_message(self, data):
        """One datagram, as _read_udp hands it on; returns the parsed responses."""
        if len(data) > self.cfg.server.max_message_size or not data.strip(b"\r\n\0 "):
            return []  # _read_udp drops these before on_message
        self.deliver(data, self.udp)
        answers = self.answers(self.udp.sent, data)
        self.after_message()
        return answers

    def deliver(self, data, endpoint):
        """on_message, and what it must not do: raise, or log at ERROR."""
        seen = len(self.errors.records)
        self.fed += 1
        try:
            self.on_message(data, endpoint, ADDR)
        except Exception as exc:  # noqa: BLE001 - this is what the test looks for
            self.problem(f"on_message ({endpoint.transport}) raised {raised(exc)}", data)
        for record in self.errors.records[seen:]:
            why = f" ({raised(record.exc_info[1])})" if record.exc_info else ""
            self.problem(f"logged at {record.levelname}: {shape(record.getMessage())}{why}", data)

    def tcp_stream(self, messages):
        """Messages as one TCP stream cut into random pieces, read by the server's own TCP path
        (_service_tcp: framing, an answer to a stream that cannot be framed, on_message)."""
        stream = b"".join(messages)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)  # a piece fits in the socket buffer: the server reads all of each
        server = self.server
        conn = tfps.TcpConnection(ours, ADDR, self.cfg.server.max_message_size, self.clock.monotonic())
        server.connections[ours.fileno()] = conn
        server.selector.register(ours, tfps.selectors.EVENT_READ, ("tcp", conn))
        replies = tfps.StreamFramer(1 << 22)
        pos = 0
        try:
            while pos < len(stream) and not conn.closed:
                piece = stream[pos:pos + self.rng.choice((1, 7, 100, 1500, 65536))]
                pos += len(piece)
                theirs.sendall(piece)
                while not conn.closed and self._readable(ours):
                    try:
                        server._service_tcp(conn, tfps.selectors.EVENT_READ)
                    except Exception as exc:  # noqa: BLE001 - the loop would log "unexpected error"
                        self.problem(f"_service_tcp raised {raised(exc)}", stream)
                        server._close_tcp(conn)
                self._drain(theirs, replies, conn, stream)
        finally:
            if not conn.closed:
                server._close_tcp(conn)
            self._drain(theirs, replies, conn, stream)
            theirs.close()

    @staticmethod
    def _readable(sock):
        try:
            return bool(sock.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return False

    def _drain(self, sock, replies, conn, stream):
        """Read the responses the server wrote to the connection."""
        while True:
            if conn.outbuf and not conn.closed:
                self.server._flush_tcp(conn)
            try:
                chunk = sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            try:
                self.answers(replies.feed(chunk), stream)
            except tfps.SipError:
                self.problem("TCP responses that cannot be framed", stream)
                return

    def on_tcp_message(self, data, endpoint, addr, _arrived=None):
        """Stands in for server.on_message when _service_tcp calls it."""
        self.deliver(data, endpoint)
        self.after_message()

    def after_message(self):
        self.clock.offset += STEP
        if self.fed % TIMERS_EVERY == 0:
            self.server._run_timers()
            self.answers(self.udp.sent, b"(timer retransmission)")
            self.max_table = max(self.max_table, len(self.server.sip.transactions.table))
            self.max_timers = max(self.max_timers, sum(map(len, self.server.sip.transactions.timers.values())))
        if self.fed % RELOAD_EVERY == 0:
            self.server.engine.check_for_changes()
        if self.fed % FLUSH_EVERY == 0:
            self.flush()

    def flush(self):
        try:
            self.server.engine.flush()
        except Exception as exc:  # noqa: BLE001
            self.problem(f"engine.flush() raised {raised(exc)}", b"")
            return
        rows = self.db.scalar("SELECT COUNT(*) FROM call_log", default=0)
        if rows != self.server.counters["verdicts"]:
            self.problem("call_log rows != verdicts after a flush", b"",
                         note=f"{rows} rows, {self.server.counters['verdicts']} verdicts")

    # -- the kinds of messages ---------------------------------------------------------------

    def valid_invite(self, n):
        req = seed_request(self.rng, n)
        if self.rng.random() < 0.5:
            harmless(self.rng, req)
        data = req.render()
        answers = self.udp_message(data)
        self.expect_verdict(data, answers, "valid INVITE")
        self.owe_ack(req, answers)
        return req

    def expect_verdict(self, data, answers, kind, code=None):
        statuses = [m.status for m in answers]
        if statuses != [302]:
            self.problem(f"{kind} answered {statuses}, not one 302", data)
            return None
        got = answers[0].header("x-tfps-code")
        if code and (got != code or "p-tfps" not in (answers[0].header("x-tfps-reason") or "").lower()):
            self.problem(f"{kind} got {got}, not {code} with a reason naming P-tfps", data)
        return answers[0]

    def dup_identity(self, n):
        # nothing else to reject: the duplicate is the only reason for R12
        req = seed_request(self.rng, n, identity=(self.rng.choice(USERS[:40]), "pbx.example.com"),
                           number=f"1212555{self.rng.randrange(10000):04d}", calls=1, ua="Yealink SIP-T46S")
        value = req.get(b"P-tfps")
        second = value if self.rng.random() < 0.3 else f"other;{self.rng.choice(DOMAINS)};192.0.2.99;UA;1".encode()
        at = self.rng.randrange(1, len(req.headers))
        req.headers.insert(at, (b"p-tfps" if self.rng.random() < 0.2 else b"P-tfps", second))
        data = req.render()
        self.expect_verdict(data, self.udp_message(data), "INVITE with two P-tfps headers", code="R12")

    def not_utf8(self, n):
        method = self.rng.choice((b"INVITE", b"INVITE", b"INVITE", b"OPTIONS", b"BYE", b"CANCEL"))
        req = seed_request(self.rng, n, method)
        field = inject_not_utf8(self.rng, req)
        data = req.render()
        before = self.server.counters["verdicts"]
        answers = self.udp_message(data)
        statuses = [m.status for m in answers]
        if field in ROUTED_OR_ECHOED:  # no answer that echoes it or routes by it can be trusted
            if statuses != [400] or self.server.counters["verdicts"] != before:
                self.problem(f"a request with bytes that are not UTF-8 in its {field} was not answered 400", data,
                             note=f"answered {statuses}:")
        elif method == b"INVITE" and field.startswith("P-tfps"):  # an identity that cannot be an account's
            self.expect_verdict(data, answers, f"INVITE with bytes that are not UTF-8 in its {field}", code="R12")
        elif len(statuses) != 1 or statuses[0] >= 500:  # a header no rule reads, or not an INVITE
            self.problem(f"a request with bytes that are not UTF-8 in its {field} got {statuses}", data)

    def dialog(self, n):
        """OPTIONS, or a CANCEL/BYE/ACK that goes with an earlier INVITE."""
        kind = self.rng.randrange(4)
        if kind == 0 or not self.recent:
            data = seed_request(self.rng, n, b"OPTIONS").render()
            answers = self.udp_message(data)
            if [m.status for m in answers] != [200]:
                self.problem(f"OPTIONS answered {[m.status for m in answers]}", data)
            return
        invite = self.recent[-1 - self.rng.randrange(len(self.recent))]
        method = (b"CANCEL", b"BYE", b"ACK")[kind - 1]
        data = with_method(invite, method).render()
        answers = self.udp_message(data)
        if method == b"ACK" and answers:
            self.problem(f"ACK answered {[m.status for m in answers]}", data)

    def clean_call(self, k):
        req = seed_request(self.rng, 10**9 + k, identity=CLEAN, number=f"1212555{k:04d}", calls=1)
        req.set(b"P-tfps", f"{CLEAN[0]};{CLEAN[1]};192.0.2.10;Yealink SIP-T46S;1".encode())
        req.set(b"User-Agent", b"Yealink SIP-T46S")
        data = req.render()
        answer = self.expect_verdict(data, self.udp_message(data), "clean account INVITE")
        self.clean_codes.append(answer.header("x-tfps-code") if answer else None)

    def owe_ack(self, req, answers):
        final = [m for m in answers if m.status >= 200]
        if final and final[0].header("to") and self.rng.random() < 0.85:
            ack = with_method(req, b"ACK")
            ack.set(b"To", final[0].header("to").encode("utf-8", "surrogateescape"))
            self.acks.append(ack.render())

    # -- the run -----------------------------------------------------------------------------

    def run(self):
        rng = self.rng
        clean_at = {self.total * (k + 1) // (CLEAN_CALLS + 1): k for k in range(CLEAN_CALLS)}
        others = [seed_request(rng, i, m).render() for i, m in enumerate((b"INVITE", b"OPTIONS", b"BYE", b"CANCEL"))]
        n = 0
        while self.fed < self.total:
            n += 1
            if self.rss_start is None and self.fed >= min(5000, self.total // 2):
                self.rss_start = rss_bytes()
            if clean_at and self.fed >= min(clean_at):
                self.clean_call(clean_at.pop(min(clean_at)))
                continue
            if self.acks and rng.random() < 0.8:
                self.udp_message(self.acks.pop(0))
                continue
            roll = rng.random()
            if roll < 0.22:
                kind = "valid"
                req = self.valid_invite(n)
                self.recent = (self.recent + [req])[-50:]
            elif roll < 0.25:
                kind = "two P-tfps"
                self.dup_identity(n)
            elif roll < 0.31:
                kind = "not UTF-8"
                self.not_utf8(n)
            elif roll < 0.37:
                kind = "dialog"
                self.dialog(n)
            elif roll < 0.52:
                kind = "structure"
                req = break_structure(rng, seed_request(rng, n, rng.choice((b"INVITE", b"INVITE", b"OPTIONS", b"BYE"))))
                data = req.render()
                answers = self.udp_message(data)
                if req.method == b"INVITE":
                    self.owe_ack(req, answers)
            elif roll < 0.90:
                kind = "bytes"
                method = rng.choice((b"INVITE", b"INVITE", b"INVITE", b"OPTIONS", b"CANCEL", b"ACK", b"BYE"))
                req = seed_request(rng, n, method)
                if rng.random() < 0.3:
                    break_structure(rng, req)
                self.udp_message(mutate_bytes(rng, req.render(), others))
            elif roll < 0.95 and self.recent:
                kind = "retransmission"
                self.udp_message(self.recent[-1 - rng.randrange(len(self.recent))].render())
            else:
                kind = "tcp"
                batch = []
                for i in range(rng.randint(1, 5)):
                    req = seed_request(rng, n * 10 + i, rng.choice((b"INVITE", b"OPTIONS")))
                    if rng.random() < 0.4:
                        break_structure(rng, req)
                    data = req.render()
                    batch.append(mutate_bytes(rng, data, others) if rng.random() < 0.3 else data)
                self.tcp_stream(batch)
            self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
        self.flush()

    def close(self):
        """Server.shutdown without listening sockets: answer what is pending, stop, close."""
        server = self.server
        for tx in server.sip.pending():
            server._finish_invite(tx, tfps.Reputation(tx.data.attempt.source_ip, False, detail="stopping"))
        server.threads_stop.set()
        server.dispatcher.stop_event.set()  # its thread never started: run() starts it
        server.reputation.close()
        server.selector.close()
        server._wake_r.close()
        server._wake_w.close()
        self.db.close()
        logging.getLogger("tfps").removeHandler(self.errors)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fuzz_and_check(tmp_path, db_url, monkeypatch, messages, seed, server=()):
    fuzz = Fuzz(tmp_path, db_url, monkeypatch, messages, seed, server)
    started = time.perf_counter()
    try:
        fuzz.run()
        rss_growth = rss_bytes() - fuzz.rss_start
        server, db = fuzz.server, fuzz.db
        verdicts = server.counters["verdicts"]
        rows = db.scalar("SELECT COUNT(*) FROM call_log", default=0)
        clean_rows = dict(db.query("SELECT code, COUNT(*) FROM call_log WHERE user = ? AND domain = ? GROUP BY code",
                                   CLEAN))
        clean_approved = db.scalar("SELECT SUM(approved) FROM daily_counters WHERE account_id = ?",
                                   (fuzz.clean_id,), default=0)
        # undecodable bytes reach the call log only as U+FFFD, in the row of the R12 that refused them
        undecodable = []
        for table, columns in (("call_log", "code, call_id, user, domain, from_uri, dialed, number, source_ip, "
                                            "user_agent, reason"), ("accounts", "'', user, domain")):
            for row in db.query(f"SELECT {columns} FROM {table}"):
                if any(isinstance(v, str) and (("\ufffd" in v and row[0] != "R12") or re.search("[\udc80-\udcff]", v))
                       for v in row):
                    undecodable.append((table, row))
        log_rows, events = len(server.engine.log_rows), len(server.engine.alerts.events)
    finally:
        fuzz.close()
    elapsed = time.perf_counter() - started
    print(f"\nfuzz seed {seed}: {fuzz.fed} messages in {elapsed:.1f} s, {verdicts} verdicts, "
          f"kinds {fuzz.outcomes}, largest transaction table {fuzz.max_table}, RSS growth {rss_growth >> 20} MiB")

    failures = [f"{count} x {what}\n      first: {example}" for what, (count, example) in sorted(fuzz.problems.items())]
    if len(fuzz.verdict_responses) != verdicts:
        failures.append(f"{len(fuzz.verdict_responses)} distinct 302 responses but {verdicts} verdicts counted")
    if rows != verdicts:
        failures.append(f"{rows} call_log rows after the last flush, {verdicts} verdicts")
    expected_clean = ["A00"] * CLEAN_QUOTA + ["R11"] * (CLEAN_CALLS - CLEAN_QUOTA)
    if fuzz.clean_codes != expected_clean:
        failures.append(f"clean account answered {fuzz.clean_codes}, not {expected_clean}")
    if clean_approved != CLEAN_QUOTA or clean_rows != {"A00": CLEAN_QUOTA, "R11": CLEAN_CALLS - CLEAN_QUOTA}:
        failures.append(f"clean account: daily_counters say {clean_approved} approved, call_log says {clean_rows}")
    table_bound = int(64 * tfps.T1 / STEP) + 2000
    if fuzz.max_table > table_bound or fuzz.max_timers > 4 * table_bound:
        failures.append(f"transaction table grew to {fuzz.max_table} (timers {fuzz.max_timers}); bound {table_bound}")
    if log_rows or events:
        failures.append(f"after the last flush {log_rows} call log rows and {events} alerts still buffered")
    if rss_growth > 100 << 20:
        failures.append(f"RSS grew by {rss_growth >> 20} MiB")
    if undecodable:
        failures.append(f"{len(undecodable)} rows with undecodable text, first: {undecodable[0]!r}")
    if fuzz.fed < messages:
        failures.append(f"only {fuzz.fed} messages reached on_message")
    assert not failures, "fuzzing found:\n  - " + "\n  - ".join(failures)
    # the mix reaches the engine, not only the early exits
    assert verdicts > messages // 5, (verdicts, fuzz.outcomes)


def test_fuzz_request_path_sqlite(tmp_path, sqlite_url, monkeypatch):
    """TFPS_FUZZ_SEED and TFPS_FUZZ_MESSAGES run it longer, with another seed, by hand."""
    fuzz_and_check(tmp_path, sqlite_url, monkeypatch, int(os.environ.get("TFPS_FUZZ_MESSAGES", "100000")),
                   int(os.environ.get("TFPS_FUZZ_SEED", SEED)))


def test_fuzz_request_path_mariadb(tmp_path, mysql_url, monkeypatch):
    # the legacy identity headers some of the mutations add are read here
    fuzz_and_check(tmp_path, mysql_url, monkeypatch, 10_000, SEED + 1, {"legacy_headers": "yes"})
