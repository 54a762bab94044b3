"""`tfps.py serve` over real loopback sockets (UDP, TCP, IPv4 and IPv6): verdict responses in the
three modes, the identity of the call, RFC 3261 server transactions and their timers, CANCEL,
the other methods, sanity answers, trusted_peers, TCP framing and limits, rport/received, signals."""

import http.server
import json
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import tfps
from conftest import answers_before_options, free_port, run_cli, sip_invite, wait_until

POLICY = {"learning_days": "0", "new_destination_calls": "0"}  # a country not allowed is R06 at once
US, CUBA, UK = "12125551234", "5355512345", "441632960961"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

class UdpClient:
    """A UDP socket on 127.0.0.1 (or ::1) that sends to the server and collects its answers."""

    def __init__(self, server, family=socket.AF_INET, host="127.0.0.1"):
        self.server = server
        self.host = host
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.last_request = None

    def send(self, data):
        self.last_request = data
        self.sock.sendto(data, (self.host, self.server.port))

    def recv(self, timeout=3.0):
        """(parsed, raw bytes, arrival time) or None after `timeout` seconds of silence."""
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65536)
        except socket.timeout:
            return None
        return tfps.parse_message(data), data, time.monotonic()

    def final(self, timeout=3.0, ack=True):
        """Skip provisional responses; the first final response (parsed, raw). When the last
        request sent was an INVITE, it is ACKed (else Timer G would send the answer again)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.recv(max(0.01, deadline - time.monotonic()))
            assert got is not None, "no final response"
            if got[0].status >= 200:
                request = self.last_request
                if ack and request and request.startswith(b"INVITE "):
                    self.send(ack_for(request, got[0]))
                return got[0], got[1]

    def invite(self, number=US, **kw):
        kw.setdefault("local_port", self.port)
        return sip_invite(number, self.server.port, **kw)

    def close(self):
        self.sock.close()


def made_clients(cls):
    """A fixture body: yields make(server, **kw) -> a new `cls` client; closes them all afterwards."""
    clients = []

    def make(server, **kw):
        clients.append(cls(server, **kw))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def udp():
    yield from made_clients(UdpClient)


def ack_for(request, response, method="ACK"):
    """ACK for a non-2xx final response: the INVITE's Request-URI, top Via (branch), From, Call-ID
    and CSeq number, and the To of the response (with its tag)."""
    msg = tfps.parse_message(request)
    lines = [f"{method} {msg.uri} SIP/2.0", f"Via: {msg.header('via')}", "Max-Forwards: 70",
             f"From: {msg.header('from')}", f"To: {response.header('to')}", f"Call-ID: {msg.header('call-id')}",
             f"CSeq: {(msg.header('cseq') or '1').split()[0]} ACK", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def verdict_lines(server, call_id=None):
    quoted = r'"((?:[^"\\]|\\.)*)"'
    lines = re.findall(rf"verdict call_id={quoted} account={quoted} number={quoted} code={quoted} reason={quoted} "
                       rf'source_ip="[^"]*" via="sip" latency_ms=([\d.]+)', server.read_log())
    return [line for line in lines if call_id is None or line[0] == call_id]


def settled_verdicts(server, call_id=None, count=1, timeout=3.0):
    """Verdict log lines once `count` of them are there (the line is written just after the answer)."""
    return wait_until(lambda: (lambda lines: len(lines) >= count and lines)(verdict_lines(server, call_id)), timeout,
                      message=f"{count} verdict line(s) for {call_id or 'any call'}")


def assert_nothing_on_its_way(client):
    """Nothing the server sent is still on its way to `client`."""
    strays = answers_before_options(client.sock, client.server.port)
    assert not strays, [f"{m.status} {m.header('call-id')}" for m in strays]


def call_log(server):
    """Rows of `tfps.py calls --json` (the server must be stopped, or have flushed)."""
    result = run_cli("calls", "--json", "--limit", "1000", db=server.db_url, check=True)
    return json.loads(result.stdout)


class TcpClient:
    def __init__(self, server, host="127.0.0.1", family=socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(3)
        self.sock.connect((host, server.port))
        self.port = self.sock.getsockname()[1]
        self.server = server
        self.framer = tfps.StreamFramer(1 << 20)
        self.pending = []

    def invite(self, number=US, **kw):
        kw.setdefault("local_port", self.port)
        kw.setdefault("transport", "TCP")
        return sip_invite(number, self.server.port, **kw)

    def send(self, data):
        self.sock.sendall(data)

    def read(self, count, timeout=3.0):
        """`count` parsed messages; fewer if the connection closes or nothing comes in `timeout`."""
        self.sock.settimeout(timeout)
        while len(self.pending) < count:
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ConnectionError):
                break
            if not data:
                break
            self.pending += self.framer.feed(data)
        got, self.pending = self.pending[:count], self.pending[count:]
        return [tfps.parse_message(m) for m in got]

    def closed_by_peer(self, timeout):
        """True when the server closes the connection within `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


@pytest.fixture
def tcp():
    yield from made_clients(TcpClient)


# ---------------------------------------------------------------------------------------------
# verdicts in the three modes
# ---------------------------------------------------------------------------------------------

def test_redirect_mode_verdicts_and_response_shape(start_server, udp):
    server = start_server(sections={"policy": POLICY})
    client = udp(server)
    answers = {}
    for number in (US, CUBA, UK):
        request = client.invite(number, call_id=f"redir-{number}@test", branch=f"z9hG4bKredir{number}")
        client.send(request)
        first = client.recv()
        assert first is not None
        msg, raw, _ = first
        assert msg.status == 302, raw  # the first answer is final: no 100 Trying for a normal INVITE
        answers[number] = msg
        req = tfps.parse_message(request)
        assert msg.reason == "Moved Temporarily"
        assert msg.header("from") == req.header("from") and msg.header("call-id") == req.header("call-id")
        assert msg.header("cseq") == "1 INVITE"
        assert tfps.tag_of(msg.header("to")), "final responses carry a To tag"
        via = msg.vias()[0]
        assert via.branch == req.vias()[0].branch
        assert via.params.get("rport") == str(client.port) and via.params.get("received") == "127.0.0.1"
        client.send(ack_for(request, msg))
    assert answers[US].header("contact") == f"<sip:A00{US}@pbx.example.com>"
    assert answers[US].header("x-tfps-code") == "A00" and answers[US].header("x-tfps-reason") == "approved"
    assert answers[CUBA].header("contact") == f"<sip:R06{CUBA}@pbx.example.com>"
    assert answers[CUBA].header("x-tfps-code") == "R06" and "high-risk" in answers[CUBA].header("x-tfps-reason")
    assert answers[UK].header("contact") == f"<sip:R06{UK}@pbx.example.com>"
    assert "allowed destinations" in answers[UK].header("x-tfps-reason")
    assert client.recv(0.8) is None  # ACKed: nothing more comes

    lines = settled_verdicts(server, count=3)
    assert [(n, c) for _, _, n, c, _, _ in lines] == [(US, "A00"), (CUBA, "R06"), (UK, "R06")]
    assert all(account == "1001@pbx.example.com" and float(ms) >= 0 for _, account, _, _, _, ms in lines)


def test_redirect_host_and_ipv6_contact(start_server, udp):
    server = start_server(sections={"policy": POLICY, "server": {"redirect_host": "pbx-out.example.net"}})
    client = udp(server)
    client.send(client.invite(US, domain="ignored.example.com"))
    msg, _ = client.final()
    assert msg.header("contact") == f"<sip:A00{US}@pbx-out.example.net>"

    server6 = start_server(sections={"policy": POLICY, "server": {"redirect_host": "2001:db8::5"}})
    client6 = udp(server6)
    client6.send(client6.invite(CUBA))
    msg, _ = client6.final()
    assert msg.header("contact") == f"<sip:R06{CUBA}@[2001:db8::5]>"


def test_failover_mode(start_server, udp):
    server = start_server(sections={"policy": POLICY}, mode="failover")
    client = udp(server)
    client.send(client.invite(US))
    msg, _ = client.final()
    assert (msg.status, msg.reason) == (503, "Service Unavailable")
    assert msg.header("x-tfps-code") == "A00" and msg.header("contact") is None
    client.send(client.invite(CUBA))
    msg, _ = client.final()
    assert (msg.status, msg.reason) == (603, "Decline")
    assert msg.header("x-tfps-code") == "R06" and "high-risk" in msg.header("x-tfps-reason")


def test_monitor_mode_always_approves_and_logs_the_would_be_rejection(start_server, udp):
    server = start_server(sections={"policy": POLICY}, mode="monitor")
    client = udp(server)
    client.send(client.invite(CUBA, call_id="monitor-cu@test"))
    msg, _ = client.final()
    assert msg.status == 302 and msg.header("contact") == f"<sip:A00{CUBA}@pbx.example.com>"
    assert msg.header("x-tfps-code") == "A00"
    assert "would reject R06" in msg.header("x-tfps-reason")
    [(_, _, _, code, reason, _)] = settled_verdicts(server, "monitor-cu@test")
    assert code == "A00" and "would reject R06" in reason
    server.stop()
    [row] = call_log(server)
    assert (row["code"], row["would"]) == ("A00", "R06")


# ---------------------------------------------------------------------------------------------
# the identity of the call
# ---------------------------------------------------------------------------------------------

def test_identity_from_p_tfps_legacy_headers_and_fallbacks(start_server, udp):
    policy = dict(POLICY, business_hours="mon-sun 00:00-24:00", default_concurrent_calls="10")
    server = start_server(sections={"policy": policy})
    client = udp(server)
    cases = [
        # (call-id, extra headers, user-agent header, expected account, source ip, code)
        ("p-full", ["P-tfps: alice;tenant-a.example.com;192.168.10.7;Yealink SIP-T46S;3"], None,
         "alice@tenant-a.example.com", "192.168.10.7", "A00"),
        ("p-ua", ["P-tfps: bob;tenant-a.example.com;192.168.10.8;friendly-scanner;1"], None,
         "bob@tenant-a.example.com", "192.168.10.8", "R01"),
        ("p-calls", ["P-tfps: carol;tenant-b.example.com;192.168.10.9;Polycom;50"], None,
         "carol@tenant-b.example.com", "192.168.10.9", "R10"),
        ("p-short", ["P-tfps: dave;tenant-b.example.com"], "friendly-scanner",  # missing fields: fallbacks
         "dave@tenant-b.example.com", "127.0.0.1", "R01"),
        ("p-ua-semicolon", ["P-tfps: erin;tenant-b.example.com;192.168.10.11;Soft;phone 2.0;50"], None,
         "erin@tenant-b.example.com", "192.168.10.11", "R10"),
        ("fallback", [], "friendly-scanner", "1001@pbx.example.com", "127.0.0.1", "R01"),
        ("fallback-ok", [], "Asterisk PBX 20", "1002@pbx.example.com", "127.0.0.1", "A00"),
    ]
    assert_identities(server, client, cases)


LEGACY_CASES = [
    ("legacy", ["X-tfps: frank@legacy.example.com", "P-Received: 192.168.20.1", "P-UA: friendly-scanner",
                "P-Calls: 1"], "Grandstream", "frank@legacy.example.com", "192.168.20.1", "R01"),
    ("legacy-src", ["X-tfps: gina@legacy.example.com", "P-Source: 192.168.20.2", "P-Calls: 99"], None,
     "gina@legacy.example.com", "192.168.20.2", "R10"),
]


def test_legacy_identity_headers_are_read_only_when_enabled(start_server, udp):
    policy = dict(POLICY, business_hours="mon-sun 00:00-24:00", default_concurrent_calls="10")
    server = start_server(sections={"policy": policy, "server": {"legacy_headers": "yes"}})
    assert_identities(server, udp(server), LEGACY_CASES)


def test_legacy_identity_headers_are_ignored_by_default(start_server, udp):
    policy = dict(POLICY, business_hours="mon-sun 00:00-24:00", default_concurrent_calls="10")
    server = start_server(sections={"policy": policy})
    ignored = [(call_id, headers, ua, "1001@pbx.example.com", "127.0.0.1", "A00")
               for call_id, headers, ua, *_ in LEGACY_CASES]
    assert_identities(server, udp(server), ignored)


@pytest.mark.parametrize("headers,reason", [
    (["P-tfps: mallory;pbx.example.com;127.0.0.1;Soft;1", "P-tfps: 1001;pbx.example.com;192.0.2.10;Yealink;1"],
     "more than one P-tfps header"),
    (["P-tfps: 1001;pbx.example.com;192.0.2.10;Yealink;1", "p-TFPS: 1001;pbx.example.com;192.0.2.10;Yealink;1"],
     "more than one P-tfps header"),
])
def test_a_caller_cannot_choose_the_identity_that_is_checked(start_server, udp, headers, reason):
    server = start_server(sections={"policy": POLICY})
    client = udp(server)
    client.send(client.invite(US, call_id="twice@test", headers=headers))
    msg, _ = client.final()
    assert msg.status == 302 and msg.header("contact").startswith("<sip:R12")
    assert msg.header("x-tfps-code") == "R12" and reason in msg.header("x-tfps-reason")
    server.stop()
    assert call_log(server)[0]["code"] == "R12"


def assert_identities(server, client, cases):
    """Each case: (call-id, extra headers, user-agent header, expected account, source ip, code)."""
    for call_id, headers, ua, *_ in cases:
        headers = list(headers) + ([f"User-Agent: {ua}"] if ua else [])
        user = "1002" if call_id == "fallback-ok" else "1001"
        client.send(client.invite(US, call_id=call_id, headers=headers, user=user))
        client.final()
    got = {line[0]: (line[1], line[3]) for line in settled_verdicts(server, count=len(cases))}
    assert got == {c[0]: (c[3], c[5]) for c in cases}
    server.stop()
    rows = call_log(server)
    by_account = {row["account"]: row["source_ip"] for row in rows}
    assert by_account == {c[3]: c[4] for c in cases}


@pytest.mark.parametrize("user,number", [
    ("1%0D%0AX-Injected%3A%20yes", "1\r\nX-Injected: yes"),   # CR LF: a header injected into the answer
    ("%3E%40evil.example.com", ">@evil.example.com"),            # closes <...> and moves the host
    ("12125551234%23", "12125551234#"),                         # '#' must be escaped in a SIP URI user
    ("1%00", "1\x00"),
    ("%2B12125551234", "+12125551234"),                         # control: nothing to escape
], ids=["crlf", "angle-at", "hash", "nul", "plus"])
def test_contact_user_is_escaped(start_server, udp, user, number):
    """The Request-URI user arrives %-escaped; the 302 Contact must carry it escaped again, so the
    answer keeps one Contact header with one URI whose host is the redirect host."""
    server = start_server(sections={"policy": POLICY})
    client = udp(server)
    client.send(client.invite(user))
    msg, raw = client.final()
    assert msg.status == 302
    assert msg.header("x-injected") is None and b"\r\nX-Injected" not in raw, raw
    assert len([1 for name, _ in msg.headers if name == "contact"]) == 1, raw
    # RFC 3261 25.1: user = 1*( unreserved / escaped / user-unreserved )
    assert re.fullmatch(r"<sip:[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+@pbx\.example\.com>", msg.header("contact")), raw
    contact = tfps.parse_name_addr(msg.header("contact"))  # raises on a broken URI
    code = msg.header("x-tfps-code")
    assert (contact.uri.host, contact.uri.user) == ("pbx.example.com", code + number), raw


def test_contact_host_when_from_has_no_host(start_server, udp):
    """A PBX that sends From: <tel:...> still gets a Contact URI with a host."""
    server = start_server(sections={"policy": POLICY})
    client = udp(server)
    client.send(client.invite(US).replace(b"From: <sip:1001@pbx.example.com>", b"From: <tel:+12125550000>"))
    msg, raw = client.final()
    assert msg.status == 302
    contact = tfps.parse_name_addr(msg.header("contact"))  # '<sip:A0012125551234@>' has no host: ValueError
    assert contact.uri.host and contact.uri.user == f"A00{US}", raw


def test_huge_concurrency_value_does_not_break_the_call_log(start_server, udp):
    """P-Calls beyond a 64-bit integer must not poison the call log buffer (every later flush
    failing, and serve dying with a traceback on SIGTERM)."""
    server = start_server(sections={"policy": POLICY, "database": {"flush_interval": "0.2s"}})
    client = udp(server)
    client.send(client.invite(US, user="huge", headers=["P-Calls: " + "9" * 20]))
    assert client.final()[0].status == 302
    wait_until(lambda: [row for row in call_log(server) if row["account"] == "huge@pbx.example.com"],
               message="a flush with the huge value in it")
    client.send(client.invite(US, user="normal", headers=["P-Calls: 1"]))
    assert client.final()[0].status == 302
    assert server.stop() == 0, server.read_log()[-2000:]
    accounts = sorted(row["account"] for row in call_log(server))
    assert accounts == ["huge@pbx.example.com", "normal@pbx.example.com"]


# ---------------------------------------------------------------------------------------------
# server transactions
# ---------------------------------------------------------------------------------------------

def test_retransmitted_invite_gets_identical_answers_and_one_evaluation(start_server, udp):
    server = start_server(sections={"policy": POLICY})
    client = udp(server)
    request = client.invite(CUBA, user="retrans", call_id="retrans@test")
    answers = []
    client.send(request)
    answers.append(client.recv()[1])
    client.send(request)
    client.send(request)
    answers += [client.recv()[1], client.recv()[1]]
    assert len(answers) == 3 and answers[0] == answers[1] == answers[2]
    assert b"SIP/2.0 302 " in answers[0]
    client.send(ack_for(request, tfps.parse_message(answers[0])))
    assert client.recv(0.8) is None
    assert len(settled_verdicts(server, "retrans@test")) == 1

    # an OPTIONS retransmission gets the same 200 from the non-INVITE transaction
    options = client.invite("ping", method="OPTIONS", call_id="opt-retrans@test")
    client.send(options)
    first = client.recv()[1]
    client.send(options)
    assert client.recv()[1] == first

    # RFC 2543 peer (no z9hG4bK cookie): matched on Request-URI, From tag, Call-ID, CSeq, Via
    old = client.invite(US, user="retrans", call_id="rfc2543@test", branch="oldstyle1")
    client.send(old)
    a = client.recv()[1]
    client.send(old)
    assert client.recv()[1] == a
    client.send(ack_for(old, tfps.parse_message(a)))
    assert client.recv(0.8) is None
    assert len(settled_verdicts(server, "rfc2543@test")) == 1

    # the same branch from another sent-by (Via port) is another transaction
    branch = "z9hG4bK" + secrets.token_hex(6)
    client.send(client.invite(US, user="retrans", call_id="sentby-a@test", branch=branch))
    a = client.final()[1]
    client.send(client.invite(US, user="retrans", call_id="sentby-b@test", branch=branch, local_port=client.port + 1))
    b = client.final()[1]  # (rport: the answer still comes back to this socket)
    assert a != b
    assert len(settled_verdicts(server, "sentby-a@test")) == 1 and len(settled_verdicts(server, "sentby-b@test")) == 1

    server.stop()
    rows = [r for r in call_log(server) if r["account"] == "retrans@pbx.example.com"]
    assert len(rows) == 4  # retrans@test, rfc2543@test, sentby-a, sentby-b: each counted once


def test_ack_stops_retransmissions_and_tcp_never_retransmits(start_server, udp, tcp):
    server = start_server(sections={"policy": POLICY})
    client = udp(server)
    request = client.invite(US)
    client.send(request)
    msg, _ = client.final()
    client.send(ack_for(request, msg))
    assert client.recv(0.8) is None  # Timer G would have sent it again after T1 = 0.5 s

    conn = tcp(server)
    conn.send(conn.invite(US))
    [msg] = conn.read(1)
    assert msg.status == 302
    assert conn.read(1, timeout=0.8) == []  # no ACK, but TCP is reliable: no Timer G (T1 = 0.5 s)


def test_timer_g_schedule_through_the_event_loop(start_server, udp):
    """No ACK over UDP: the 302 comes again 0.5 and 1.5 s after the first (T1 = 0.5 s doubling);
    the whole schedule up to Timer H is checked on a virtual clock in test_sip_service.py, this
    checks that the loop keeps it."""
    server = start_server(sections={"policy": POLICY})
    client = udp(server)
    client.send(client.invite(CUBA))
    first = client.recv()
    assert first is not None and first[0].status == 302
    t0, arrivals = first[2], []
    while len(arrivals) < 2:
        got = client.recv(timeout=max(0.05, t0 + 2.5 - time.monotonic()))
        if got is None:
            break
        assert got[1] == first[1], "retransmissions are byte-identical"
        arrivals.append(got[2] - t0)
    assert len(arrivals) == 2, arrivals
    for n, (got, want) in enumerate(zip(arrivals, [0.5, 1.5])):
        assert abs(got - want) <= 0.3 + 0.1 * n, (n, arrivals)


def test_cancel_of_pending_invite_and_100_trying(start_server, udp):
    """A pending INVITE needs a slow reputation lookup: a stub AbuseIPDB on loopback answers after 1 s."""
    hits, answered = [], []

    class SlowAbuseIPDB(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            time.sleep(1.0)
            body = json.dumps({"data": {"abuseConfidenceScore": 0, "countryCode": "US", "isWhitelisted": False}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
            answered.append(self.path)

        def log_message(self, *args):
            pass

    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowAbuseIPDB)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        server = start_server(sections={
            "policy": POLICY,
            "reputation": {"abuseipdb_key": "k", "abuseipdb_url": f"http://127.0.0.1:{stub.server_port}",
                           "reputation_timeout": "3s"}})
        client = udp(server)

        # 1. CANCEL while the verdict is pending: 200 to the CANCEL, 487 to the INVITE, no verdict
        branch = "z9hG4bK" + secrets.token_hex(6)
        invite = client.invite(US, branch=branch, call_id="cancel-me@test",
                               headers=["P-tfps: 1001;pbx.example.com;8.8.8.8;Yealink;1"])
        client.send(invite)
        t0 = time.monotonic()
        trying = client.recv(2.0)
        assert trying is not None and trying[0].status == 100, "a pending verdict is announced with 100 Trying"
        assert trying[2] - t0 < 0.9 and trying[0].header("cseq") == "1 INVITE"
        client.send(client.invite(US, branch=branch, call_id="cancel-me@test", method="CANCEL"))
        got = {}
        for _ in range(2):
            answer = client.recv(2.0)
            assert answer is not None
            got[answer[0].header("cseq")] = answer[0]
        assert got["1 CANCEL"].status == 200
        assert got["1 INVITE"].status == 487 and got["1 INVITE"].reason == "Request Terminated"
        assert tfps.tag_of(got["1 INVITE"].header("to"))
        client.send(ack_for(invite, got["1 INVITE"]))
        wait_until(lambda: answered, 3, message="the slow lookup to be answered")
        assert client.recv(0.3) is None  # the lookup has finished: no late verdict is sent
        assert verdict_lines(server, "cancel-me@test") == []
        assert "call-id=cancel-me@test cancelled before its verdict" in server.read_log()

        # 2. no CANCEL: 100 Trying, then the verdict once the lookup answers
        client.send(client.invite(US, call_id="slow@test", headers=["P-tfps: 1001;pbx.example.com;8.8.4.4;Yealink;1"]))
        t0 = time.monotonic()
        assert client.recv(2.0)[0].status == 100
        msg, _ = client.final(4.0)
        assert msg.status == 302 and msg.header("x-tfps-code") == "A00"
        assert 0.8 <= time.monotonic() - t0 <= 3.5
        assert len(hits) == 2 and all("/api/v2/check?" in h and "ipAddress=8.8." in h for h in hits)

        # 3. CANCEL after the final answer: 200, and the INVITE's answer stands (no 487)
        branch = "z9hG4bK" + secrets.token_hex(6)
        invite = client.invite(US, branch=branch, call_id="late-cancel@test")
        client.send(invite)
        msg, _ = client.final()
        assert msg.status == 302
        client.send(client.invite(US, branch=branch, call_id="late-cancel@test", method="CANCEL"))
        answer = client.recv()
        assert answer[0].status == 200 and answer[0].header("cseq") == "1 CANCEL"
        client.send(ack_for(invite, msg))
        assert client.recv(0.7) is None

        # 4. CANCEL of nothing: 481
        client.send(client.invite(US, method="CANCEL", call_id="nothing@test"))
        answer = client.recv()
        assert answer[0].status == 481 and answer[0].header("cseq") == "1 CANCEL"

        # 5. SIGTERM while a verdict is pending: it is answered (or dropped) and serve exits within ~2 s
        client.send(client.invite(US, call_id="at-stop@test", headers=["P-tfps: 1001;pbx.example.com;8.8.8.9;Yealink;1"]))
        assert client.recv(2.0)[0].status == 100
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0
        assert time.monotonic() - t0 <= 4.0
        answer = client.recv(0.5)
        assert answer is None or answer[0].status == 302
    finally:
        stub.shutdown()
        stub.server_close()


# ---------------------------------------------------------------------------------------------
# other methods and sanity answers
# ---------------------------------------------------------------------------------------------

def test_the_start_line_names_the_interpreter(start_server):
    """Which python3 runs the service decides how fast it is: the distribution's, built with
    profile-guided and link-time optimization, or one built from source without them."""
    server = start_server()
    line = next(line for line in server.read_log().splitlines() if "serving in" in line)
    assert line.endswith(f", Python {platform.python_version()} ({sys.executable})"), line


def test_options_answers_200(start_server, udp):
    server = start_server()
    client = udp(server)
    client.send(client.invite("ping", method="OPTIONS"))
    msg, _ = client.final()
    assert msg.status == 200 and "INVITE" in msg.header("allow") and tfps.tag_of(msg.header("to"))
    result = subprocess.run(["sipsak", "-vv", "-s", f"sip:ping@127.0.0.1:{server.port}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIP/2.0 200 OK" in result.stdout


def test_other_methods(start_server, udp):
    server = start_server()
    client = udp(server)
    client.send(client.invite(US, method="BYE"))
    msg, _ = client.final()
    assert msg.status == 481
    for method in ("REGISTER", "SUBSCRIBE", "MESSAGE", "INFO", "PUBLISH"):
        client.send(client.invite(US, method=method))
        msg, _ = client.final()
        assert (msg.status, msg.header("cseq")) == (405, f"1 {method}"), method
        allowed = {m.strip() for m in msg.header("allow").split(",")}
        assert allowed == {"INVITE", "ACK", "CANCEL", "OPTIONS", "BYE"}
    # an ACK that matches nothing is absorbed silently
    client.send(client.invite(US, method="ACK"))
    assert_nothing_on_its_way(client)
    assert verdict_lines(server) == []


def test_require_gets_420_bad_extension(start_server, udp):
    """RFC 3261 8.2.2.3: TFPS supports no extension, so every Require tag is listed back."""
    server = start_server(sections={"policy": POLICY})
    client = udp(server)
    for method in ("INVITE", "OPTIONS", "BYE"):
        client.send(client.invite(US, method=method, headers=["Require: 100rel, timer", "Require: foo"]))
        msg, _ = client.final()
        assert (msg.status, msg.reason, msg.header("cseq")) == (420, "Bad Extension", f"1 {method}"), method
        assert [t.strip() for t in msg.header("unsupported").split(",")] == ["100rel", "timer", "foo"]
    assert verdict_lines(server) == [], "a rejected extension is no call attempt"
    # Supported (not Require) changes nothing: the verdict comes as usual
    client.send(client.invite(US, headers=["Supported: 100rel, timer"]))
    msg, _ = client.final()
    assert msg.status == 302


def test_sanity_answers(start_server, udp):
    server = start_server(sections={"policy": POLICY})
    client = udp(server)

    def answer(data):
        client.send(data)
        return client.final()[0]

    msg = answer(client.invite(US).replace(b"Max-Forwards: 70", b"Max-Forwards: 0"))
    assert (msg.status, msg.reason) == (483, "Too Many Hops")
    msg = answer(client.invite(US).replace(f"INVITE sip:{US}@".encode(), b"INVITE sip:"))
    assert msg.status == 484
    msg = answer(client.invite(";npdi"))  # only user parameters, no number
    assert msg.status == 484
    msg = answer(client.invite(f"A00{US}"))
    assert (msg.status, msg.reason) == (482, "Loop Detected")
    msg = answer(client.invite(f"R06{CUBA}"))
    assert msg.status == 482
    for header, word in (("Call-ID", "Call-Id"), ("From", "From"), ("To", "To"), ("CSeq", "Cseq")):
        data = re.sub(rf"{header}: [^\r]*\r\n".encode(), b"", client.invite(US), count=1)
        msg = answer(data)
        assert msg.status == 400 and word.lower() in msg.reason.lower(), (header, msg.reason)
    msg = answer(client.invite(US).replace(b"CSeq: 1 INVITE", b"CSeq: 1 OPTIONS"))
    assert msg.status == 400 and "CSeq" in msg.reason
    for msg in [answer(client.invite(US).replace(b"Max-Forwards: 70", b"Max-Forwards: 0"))]:
        assert tfps.tag_of(msg.header("to"))
    # no Via at all: nowhere to send an answer, silently dropped
    client.send(re.sub(rb"Via: [^\r]*\r\n", b"", client.invite(US)))
    assert_nothing_on_its_way(client)
    # an ACK that is malformed is never answered
    client.send(client.invite(US, method="ACK").replace(b"CSeq: 1 ACK", b"CSeq: 1 INVITE"))
    assert_nothing_on_its_way(client)
    assert verdict_lines(server) == []


ODD_HEADERS = {  # header -> (odd value, the same with ASCII digits, answer wanted)
    "Content-Length": ("\u00b2", "0", 400),         # SUPERSCRIPT TWO: str.isdigit() is True, int() fails
    "Max-Forwards": ("\u00b2", "70", 400),
    "P-Calls": ("\u00b2", "2", 302),
    "P-tfps": ("odd;pbx.example.com;;;\u00b2", "odd;pbx.example.com;;;2", 302),
}


@pytest.mark.parametrize("header", sorted(ODD_HEADERS))
def test_odd_digit_values_are_answered(start_server, udp, header):
    """Header values that str.isdigit() accepts but int() refuses must still get an answer."""
    server = start_server(sections={"policy": POLICY})
    client = udp(server)
    odd, plain, want = ODD_HEADERS[header]
    got = []
    for value in (plain, odd):
        data = client.invite(US, user="odd", headers=[f"X-Test: {header}"])
        data = re.sub(rb"(?m)^" + header.encode() + rb":[^\r]*\r\n", b"", data)
        data = data.replace(b"Call-ID:", f"{header}: {value}\r\nCall-ID:".encode())
        client.send(data)
        answer = client.recv(1.5)
        got.append(answer[0].status if answer else None)
        if answer and answer[0].status >= 300:
            client.send(ack_for(data, answer[0]))
    assert got == [302, want], f"{header}: plain value -> {got[0]}, odd value -> {got[1]} (want {want})"
    client.send(client.invite("ping", method="OPTIONS"))
    assert client.final()[0].status == 200  # still serving


# ---------------------------------------------------------------------------------------------
# trusted peers, message size, TCP
# ---------------------------------------------------------------------------------------------

def test_untrusted_source_gets_no_answer(start_server, udp):
    server = start_server(sections={"policy": POLICY, "server": {"trusted_peers": "10.0.0.0/8"}})
    client = udp(server)
    client.send(client.invite(US))
    client.send(client.invite("ping", method="OPTIONS"))
    assert client.recv(1.0) is None
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=3)
    try:
        try:
            conn.sendall(sip_invite(US, server.port, transport="TCP", local_port=conn.getsockname()[1]))
            data = conn.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            data = b""
        assert data == b""  # the connection is closed without a word
    finally:
        conn.close()
    assert verdict_lines(server) == []
    assert "dropping SIP from untrusted source 127.0.0.1" in server.read_log()
    server.stop()
    stopped = re.search(r"stopped after 0 verdicts, 0 of them R98 \((\d+) packets from untrusted sources dropped", server.read_log())
    assert stopped and int(stopped.group(1)) >= 3


def test_udp_oversize_message_is_dropped(start_server, udp):
    server = start_server(sections={"policy": POLICY, "server": {"max_message_size": "2000"}})
    client = udp(server)
    client.send(client.invite(US, headers=["X-Pad: " + "a" * 2500]))
    client.send(client.invite(US, call_id="fits@test", headers=["X-Pad: " + "a" * 1000]))
    got = client.recv()  # the first answer: none came to the oversize one
    assert got is not None and (got[0].status, got[0].header("call-id")) == (302, "fits@test"), got and got[1]


def test_tcp_framing(start_server, tcp):
    server = start_server(sections={"policy": POLICY, "server": {"max_message_size": "2000"}})
    conn = tcp(server)
    # several requests on one connection, answered on it
    for i in range(3):
        conn.send(conn.invite(US, call_id=f"tcp-{i}@test"))
        [msg] = conn.read(1)
        assert msg.status == 302 and msg.header("call-id") == f"tcp-{i}@test"
        via = msg.vias()[0]
        assert via.transport == "TCP"
    # one message split across several sends (with pauses), then two messages in one send
    data = conn.invite(US, call_id="split@test")
    for i in range(0, len(data), 40):
        conn.send(data[i:i + 40])
        time.sleep(0.02)
    [msg] = conn.read(1)
    assert msg.header("call-id") == "split@test"
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    with_body = conn.invite(CUBA, call_id="pipelined-1@test").replace(b"Content-Length: 0",
                                                                      f"Content-Length: {len(body)}".encode()) + body
    conn.send(b"\r\n\r\n" + with_body + conn.invite("ping", method="OPTIONS", call_id="pipelined-2@test"))
    msgs = conn.read(2)
    assert [(m.status, m.header("call-id")) for m in msgs] == [(302, "pipelined-1@test"), (200, "pipelined-2@test")]
    # a message over max_message_size: 513, then the connection is closed
    conn.send(conn.invite(US, call_id="big@test", headers=["X-Pad: " + "b" * 2500]))
    [msg] = conn.read(1)
    assert (msg.status, msg.header("call-id")) == (513, "big@test")
    assert conn.closed_by_peer(3.0)
    # a body announced larger than the limit is refused before it arrives
    conn2 = tcp(server)
    conn2.send(conn2.invite(US, call_id="big2@test").replace(b"Content-Length: 0", b"Content-Length: 100000"))
    [msg] = conn2.read(1)
    assert msg.status == 513
    assert conn2.closed_by_peer(3.0)
    # no Content-Length on TCP: 400, connection closed
    conn3 = tcp(server)
    conn3.send(conn3.invite(US, call_id="nocl@test").replace(b"Content-Length: 0\r\n", b""))
    [msg] = conn3.read(1)
    assert msg.status == 400 and "Content-Length" in msg.reason
    assert conn3.closed_by_peer(3.0)
    assert server.proc.poll() is None


def test_tcp_huge_content_length_is_answered_or_closed(start_server, tcp):
    server = start_server(sections={"policy": POLICY})
    conn = tcp(server)
    conn.send(conn.invite(US, call_id="hugecl@test").replace(b"Content-Length: 0", b"Content-Length: " + b"9" * 5000))
    msgs = conn.read(1, timeout=2.0)
    assert (msgs and msgs[0].status in (400, 513)) or conn.closed_by_peer(2.0), "stream neither answered nor closed"
    assert "unexpected error" not in server.read_log()


def test_tcp_idle_connections_are_closed_and_connections_capped(start_server, tcp):
    server = start_server(sections={"server": {"tcp_idle_timeout": "2s", "tcp_max_connections": "2"}})
    first, second = tcp(server), tcp(server)
    for conn in (first, second):
        conn.send(conn.invite("ping", method="OPTIONS"))
        assert conn.read(1)[0].status == 200
    third = tcp(server)  # over the cap: accepted and closed at once
    assert third.closed_by_peer(3.0)
    t0 = time.monotonic()
    assert first.closed_by_peer(12.0), "idle connection not closed"
    assert 1.9 <= time.monotonic() - t0 <= 13.0, "closed before tcp_idle_timeout, or long after it"
    assert second.closed_by_peer(2.0)
    fourth = tcp(server)  # room again
    fourth.send(fourth.invite("ping", method="OPTIONS"))
    assert fourth.read(1)[0].status == 200


# ---------------------------------------------------------------------------------------------
# response routing: rport / received (RFC 3261 18.2.2, RFC 3581), IPv6
# ---------------------------------------------------------------------------------------------

def test_response_routing_rport_and_received(start_server, udp):
    server = start_server(sections={"policy": POLICY})
    sender, listener = udp(server), udp(server)
    # rport: the answer goes back to the source port, which is written into the Via
    data = sender.invite(US, local_port=listener.port)  # Via names the listener's port, but asks for rport
    sender.send(data)
    msg, _ = sender.final()
    via = msg.vias()[0]
    assert via.port == listener.port and via.params["rport"] == str(sender.port) and via.params["received"] == "127.0.0.1"
    assert_nothing_on_its_way(listener)
    # no rport: the answer still goes back to the source, never to the Via's sent-by port;
    # received only when the sent-by host differs
    data = sender.invite(US, local_port=listener.port).replace(b";rport", b"")
    sender.send(data)
    msg, _ = sender.final()
    sender.send(ack_for(data, msg))
    via = msg.vias()[0]
    assert "rport" not in via.params and "received" not in via.params
    data = sender.invite(US, local_port=listener.port).replace(b";rport", b"").replace(
        f"127.0.0.1:{listener.port}".encode(), f"client.example.invalid:{listener.port}".encode())
    sender.send(data)
    msg, _ = sender.final()
    sender.send(ack_for(data, msg))
    assert msg.vias()[0].params["received"] == "127.0.0.1" and msg.vias()[0].host == "client.example.invalid"
    # maddr is not obeyed: a forged request must not direct answers at a third party
    data = sender.invite(US, local_port=listener.port).replace(b";rport", b";maddr=127.0.0.2")
    sender.send(data)
    msg, _ = sender.final()
    sender.send(ack_for(data, msg))
    assert msg.vias()[0].params["maddr"] == "127.0.0.2"
    assert_nothing_on_its_way(listener)
    # an answer to a request that crossed a proxy keeps the whole Via stack, top first
    data = sender.invite(US).replace(b"Max-Forwards:", b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKprx1\r\nMax-Forwards:")
    sender.send(data)
    msg, _ = sender.final()
    assert [v.host for v in msg.vias()] == ["127.0.0.1", "proxy.example.com"]


def test_ipv6_listen(start_server, udp, tcp):
    port = free_port()
    server = start_server(sections={"policy": POLICY, "server": {"listen": f"udp:[::1]:{port}, tcp:[::1]:{port}"}},
                          port=port)
    client = udp(server, family=socket.AF_INET6, host="::1")
    client.send(client.invite(CUBA).replace(b"127.0.0.1", b"[::1]"))
    msg, _ = client.final()
    assert msg.status == 302 and msg.header("x-tfps-code") == "R06"
    via = msg.vias()[0]
    assert via.host == "::1" and via.params["rport"] == str(client.port) and via.params["received"] == "::1"
    conn = tcp(server, host="::1", family=socket.AF_INET6)
    conn.send(conn.invite(US).replace(b"127.0.0.1", b"[::1]"))
    [msg] = conn.read(1)
    assert msg.status == 302 and msg.header("contact") == f"<sip:A00{US}@pbx.example.com>"


# ---------------------------------------------------------------------------------------------
# signals
# ---------------------------------------------------------------------------------------------

def test_sighup_reloads_config_and_sigterm_stops_gracefully(start_server, udp):
    server = start_server(sections={"policy": POLICY})
    client = udp(server)
    client.send(client.invite(CUBA))
    assert client.final()[0].status == 302
    config = Path(server.config).read_text()
    assert "mode = redirect" in config
    Path(server.config).write_text(config.replace("mode = redirect", "mode = failover"))
    server.signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: configuration and lists reloaded (mode failover)" in server.read_log())
    client.send(client.invite(CUBA))
    assert client.final()[0].status == 603
    client.send(client.invite(US))
    assert client.final()[0].status == 503
    server.signal(signal.SIGTERM)
    assert server.proc.wait(5) == 0
    log = server.read_log()
    assert "stopped after 3 verdicts" in log
