"""`tfps.py serve` under hostile input and hostile conditions, end to end over loopback sockets:
undecodable bytes, forged and duplicated identity headers, a frozen or killed MariaDB (a private
mariadbd of the test's own), reflection and amplification of responses, file-descriptor
exhaustion, what responses and `config check` disclose, and a bounded transaction table."""

import json
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections import Counter, namedtuple
from pathlib import Path
from unittest import mock

import pymysql
import pytest

import tfps
from conftest import answers_before_options, free_port, run_cli, wait_until, write_config
from test_sip_server import TcpClient, UdpClient, ack_for, call_log, settled_verdicts, udp  # noqa: F401

ALWAYS = {"learning_days": "0", "business_hours": "mon-sun 00:00-24:00"}  # enforcing, and business hours all day
US = "12125551234"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def us_number(i):
    """A distinct US number per call: repeated A->B calls (R13) never get in the way."""
    return f"1212{i:07d}"


def ack(request, response):
    """ACK for a non-2xx answer to `request`; undecodable bytes of the request are left out (the
    transaction is matched by the Via branch)."""
    return ack_for(request.replace(b"\xff", b"x"), response)


def answer(client, data, timeout=2.0):
    """Send `data`; its final response (parsed), ACKed if it answers an INVITE; None on silence.
    Answers to other requests (retransmissions) are passed over."""
    call_id = tfps.parse_message(data).header("call-id")
    client.send(data)
    deadline = time.monotonic() + timeout
    while (got := client.recv(max(0.01, deadline - time.monotonic()))) is not None:
        if got[0].status >= 200 and got[0].header("call-id") == call_id:
            if data.startswith(b"INVITE "):
                client.send(ack(data, got[0]))
            return got[0]
    return None


def outcome(msg):
    """'302 A00', '400', ... or 'silence': one word per answer for assertion messages."""
    if msg is None:
        return "silence"
    return f"{msg.status} {msg.header('x-tfps-code')}" if msg.header("x-tfps-code") else str(msg.status)


def contact_user(msg):
    return tfps.parse_name_addr(msg.header("contact")).uri.user


def cli_json(*args, db):
    return json.loads(run_cli(*args, "--json", db=db, check=True).stdout)


def arrivals(socks, seconds):
    """Everything that reaches `socks` within `seconds`: {sock: [(monotonic time, bytes), ...]}."""
    got = {sock: [] for sock in socks}
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                data, _ = key.fileobj.recvfrom(65536)
                got[key.fileobj].append((time.monotonic(), data))
    return got


def first_answers(client, requests, seconds):
    """Send all `requests` at once; {call-id: first final response} within `seconds`, each
    INVITE answer ACKed as it comes (its retransmissions too)."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    by_call = {tfps.parse_message(r).header("call-id"): r for r in requests}
    for request in requests:
        client.send(request)
    answers = {}
    deadline = time.monotonic() + seconds
    while (got := client.recv(max(0.01, deadline - time.monotonic()))) is not None:
        msg = got[0]
        call_id = msg.header("call-id")
        if msg.status >= 200 and call_id in by_call:
            answers.setdefault(call_id, msg)
            client.send(ack_for(by_call[call_id], msg))
    return answers


def cpu_seconds(pid):
    """User + system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# 1. bytes that are not UTF-8
# ---------------------------------------------------------------------------------------------

NON_UTF8 = {  # where the byte 0xFF goes -> (number dialed, how the INVITE's bytes are spoiled)
    "P-tfps User-Agent": (US, lambda d: d.replace(
        b"Call-ID:", b"P-tfps: 9999;pbx.example.com;192.0.2.10;Yealink \xff;1\r\nCall-ID:", 1)),
    "Request-URI user": ("0044207946", lambda d: d.replace(b"INVITE sip:0044207946@", b"INVITE sip:00\xff44207946@", 1)),
    "From user": (US, lambda d: d.replace(b"From: <sip:1001@", b"From: <sip:10\xff01@", 1)),
    "From domain": (US, lambda d: d.replace(b"@pbx.example.com>", b"@pbx\xff.example.com>", 1)),
}


def test_non_utf8_bytes_are_answered_and_do_not_stop_the_call_log(tmp_path, start_server, udp, db_url):
    """Undecodable bytes once poisoned the call log buffer: every later flush failed, so approved
    calls were never counted against the quota. They are answered (400, or 302 R12), and an
    account with daily quota 3 still gets exactly 3 approvals out of 10 afterwards."""
    cli_config = write_config(tmp_path / "cli.conf", {"policy": ALWAYS})
    run_cli("add", "quota", "pbx.example.com", "--daily-quota", "3", config=cli_config, db=db_url, check=True)
    server = start_server(db_url, sections={"policy": ALWAYS})
    client = udp(server)

    got = {}
    for where, (number, spoil) in NON_UTF8.items():
        request = spoil(client.invite(number))
        assert b"\xff" in request, where
        got[where] = answer(client, request)
    wrong = {where: outcome(msg) for where, msg in got.items()
             if msg is None or not (msg.status == 400 or (msg.status == 302 and msg.header("x-tfps-code") == "R12"))}
    assert not wrong, f"want 400 (or 302 R12) for each; got {wrong}"
    verdicts = sum(1 for msg in got.values() if msg.status == 302)
    wait_until(lambda: len(cli_json("calls", db=db_url)) >= verdicts,
               message=f"a flush with the {verdicts} R12 verdict(s) in it")

    codes = [outcome(answer(client, client.invite(us_number(i), user="quota", call_id=f"quota-{i}@test")))
             for i in range(10)]
    assert codes == ["302 A00"] * 3 + ["302 R11"] * 7, codes
    assert answer(client, client.invite("ping", method="OPTIONS")).status == 200
    wait_until(lambda: cli_json("show", "quota", "pbx.example.com", db=db_url)["approved_today_business"] == 3,
               message=lambda: f"3 approvals counted: {cli_json('show', 'quota', 'pbx.example.com', db=db_url)}")
    wait_until(lambda: len(cli_json("calls", "--account", "quota@pbx.example.com", db=db_url)) == 10,
               message=lambda: f"10 call log rows of quota@: "
                               f"{cli_json('calls', '--account', 'quota@pbx.example.com', db=db_url)}\n"
                               f"{server.read_log()[-3000:]}")
    assert server.proc.poll() is None


# ---------------------------------------------------------------------------------------------
# 2. the identity of the call
# ---------------------------------------------------------------------------------------------

def test_two_p_tfps_headers_are_rejected_r12(start_server, udp):
    """The caller adds its own P-tfps before the PBX's: TFPS must not pick either."""
    server = start_server(sections={"policy": ALWAYS})
    client = udp(server)
    pbx = "P-tfps: 1001;pbx.example.com;192.0.2.10;Yealink;1"
    msg = answer(client, client.invite(US, headers=[pbx]))
    assert outcome(msg) == "302 A00"  # one P-tfps: the usual verdict
    msg = answer(client, client.invite(US, headers=["P-tfps: attacker;evil.example.com;198.51.100.7;Yealink;1", pbx]))
    assert msg is not None and msg.status == 302, outcome(msg)
    assert contact_user(msg).startswith("R12") and msg.header("x-tfps-code") == "R12", outcome(msg)
    assert "p-tfps" in msg.header("x-tfps-reason").lower(), msg.header("x-tfps-reason")


LEGACY = [  # (call-id, From user, legacy headers, account with legacy_headers = yes, its source IP, its code)
    ("legacy-ua", "1001", ["X-tfps: victim@victim.example.com", "P-Received: 192.0.2.77", "P-UA: friendly-scanner"],
     "victim@victim.example.com", "192.0.2.77", "R01"),
    ("legacy-calls", "1002", ["X-tfps: other@victim.example.com", "P-Source: 192.0.2.78", "P-Calls: 99"],
     "other@victim.example.com", "192.0.2.78", "R10"),
]


def test_legacy_identity_headers_only_when_enabled(tmp_path, start_server, udp):
    """X-tfps, P-Received, P-Source, P-UA and P-Calls name whoever the sender likes: ignored
    (the identity is the From URI, the packet's source and User-Agent) unless legacy_headers = yes."""
    for legacy in ("no", "yes"):
        server = start_server(f"sqlite://{tmp_path / f'legacy-{legacy}.db'}",
                              sections={"policy": ALWAYS, "server": {"legacy_headers": legacy}})
        client = udp(server)
        for call_id, user, headers, *_ in LEGACY:
            request = client.invite(US, user=user, call_id=call_id, headers=headers + ["User-Agent: Asterisk PBX 20"])
            assert answer(client, request) is not None, call_id
        got = {line[0]: (line[1], line[3]) for line in settled_verdicts(server, count=len(LEGACY))}
        server.stop()
        ips = {row["account"]: row["source_ip"] for row in call_log(server)}
        if legacy == "yes":
            assert got == {c[0]: (c[3], c[5]) for c in LEGACY}
            assert ips == {c[3]: c[4] for c in LEGACY}
        else:
            assert got == {c[0]: (f"{c[1]}@pbx.example.com", "A00") for c in LEGACY}, "legacy_headers = no"
            assert ips == {f"{c[1]}@pbx.example.com": "127.0.0.1" for c in LEGACY}, "legacy_headers = no"


# ---------------------------------------------------------------------------------------------
# 3. database outages on a private MariaDB
# ---------------------------------------------------------------------------------------------

class PrivateMariaDB:
    """A mariadbd of the test's own (data directory, port, socket) to freeze, kill and restart:
    the shared server on 3306 is left alone."""

    SIZES = ("--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M")  # small and quick to create

    def __init__(self, root):
        self.root = Path(root)
        self.data = self.root / "data"
        self.port = free_port()
        self.sock = f"/tmp/tfps-mariadb-{self.port}.sock"  # short: a socket path has 108 bytes at most
        self.proc = None
        self.root.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--user=root",
                                 "--auth-root-authentication-method=normal", "--skip-test-db", *self.SIZES],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

    @property
    def url(self):
        return f"mysql://root:@127.0.0.1:{self.port}/tfps"

    def start(self, timeout=30):
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.data}", f"--port={self.port}", f"--socket={self.sock}",
             "--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables", "--skip-log-bin",
             *self.SIZES, f"--pid-file={self.root / 'pid'}",
             f"--log-error={self.root / 'error.log'}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._accepts_connections, timeout, interval=0.1,
                   message=lambda: f"mariadbd to start:\n{(self.root / 'error.log').read_text()[-3000:]}")
        return self

    def _accepts_connections(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"mariadbd exited {self.proc.returncode}:\n"
                                 f"{(self.root / 'error.log').read_text()[-3000:]}")
        try:
            self.connect().close()
            return True
        except pymysql.Error:
            return False

    def connect(self, database=None):
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", database=database,
                               autocommit=True, connect_timeout=2, read_timeout=10)

    def signal(self, signum):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def kill(self):
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(30)

    def stop(self):
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc and self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        Path(self.sock).unlink(missing_ok=True)

    def call_ids(self):
        """call_id of every call_log row (duplicates kept)."""
        conn = self.connect("tfps")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT call_id FROM call_log")
                return [row[0] for row in cur.fetchall()]
        finally:
            conn.close()


@pytest.fixture
def private_mariadb(tmp_path):
    """A running private mariadbd with an empty database `tfps` made by `tfps.py initdb`."""
    db = PrivateMariaDB(tmp_path / "mariadb")
    try:
        db.start()
        conn = db.connect()
        conn.cursor().execute("CREATE DATABASE tfps CHARACTER SET utf8mb4")
        conn.close()
        run_cli("initdb", db=db.url, check=True)
        yield db
    finally:
        db.stop()  # thawed first, should the test have stopped while it was frozen


Answer = namedtuple("Answer", "status reason code why sent latency")


class Traffic:
    """Over UDP, from two sockets: INVITEs at `rate` a second (a new Call-ID each, ACKed when
    answered) and an OPTIONS every 100 ms. The first final answer to each is kept with its latency."""

    def __init__(self, server, rate=200, users=10):
        self.server, self.rate, self.users = server, rate, users
        self.invites, self.pings = UdpClient(server), UdpClient(server)
        for client in (self.invites, self.pings):
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sent = {}     # call-id -> (monotonic send time, request bytes)
        self.answers = {}  # call-id -> Answer
        self.sending = threading.Event()
        self.receiving = threading.Event()
        self.threads = []

    def start(self):
        self.sending.set()
        self.receiving.set()
        for target, args in ((self._send_invites, ()), (self._send_pings, ()),
                             (self._receive, (self.invites,)), (self._receive, (self.pings,))):
            self.threads.append(threading.Thread(target=target, args=args, daemon=True))
            self.threads[-1].start()
        return self

    def stop(self, drain=1.5):
        """Stop sending; keep receiving until every request has its answer, `drain` s at the most
        (what is missing then is for the test to report)."""
        self.sending.clear()
        drained_by = time.monotonic() + drain
        wait_until(lambda: set(self.sent) <= set(self.answers) or time.monotonic() >= drained_by, drain + 1)
        self.receiving.clear()
        for thread in self.threads:
            thread.join(5)
        self.invites.close()
        self.pings.close()

    def _paced(self, interval, make):
        n, next_at = 0, time.monotonic()
        while self.sending.is_set():
            client, call_id, data = make(n)
            self.sent[call_id] = (time.monotonic(), data)
            client.sock.sendto(data, ("127.0.0.1", self.server.port))
            n += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _send_invites(self):
        def make(n):
            call_id = f"load-{n}@test"
            return self.invites, call_id, self.invites.invite(us_number(n), user=f"load{n % self.users}", call_id=call_id)
        self._paced(1.0 / self.rate, make)

    def _send_pings(self):
        def make(n):
            call_id = f"ping-{n}@test"
            return self.pings, call_id, self.pings.invite("ping", method="OPTIONS", call_id=call_id)
        self._paced(0.1, make)

    def _receive(self, client):
        client.sock.settimeout(0.1)
        while self.receiving.is_set():
            try:
                data = client.sock.recv(65536)
            except socket.timeout:
                continue
            arrived = time.monotonic()
            msg = tfps.parse_message(data)
            call_id = msg.header("call-id")
            if msg.status < 200 or call_id not in self.sent:
                continue
            sent, request = self.sent[call_id]
            if request.startswith(b"INVITE "):
                client.sock.sendto(ack_for(request, msg), ("127.0.0.1", self.server.port))
            self.answers.setdefault(call_id, Answer(msg.status, msg.reason, msg.header("x-tfps-code"),
                                                    msg.header("x-tfps-reason") or "", sent, arrived - sent))

    # -- what came back ------------------------------------------------------------------------

    def kind(self, prefix, since=0.0, until=float("inf")):
        return {c: s for c, (s, _) in self.sent.items() if c.startswith(prefix) and since <= s < until}

    def problems(self, prefix, limit=1.0):
        """Requests unanswered or answered later than `limit` s: 'N of M: call-id -> latency, ...'."""
        sent = self.kind(prefix)
        bad = {c: (f"{self.answers[c].latency:.2f}s" if c in self.answers else "silence") for c in sent
               if c not in self.answers or self.answers[c].latency > limit}
        return f"{len(bad)} of {len(sent)} {prefix} requests unanswered or slower than {limit} s: " \
               f"{dict(list(bad.items())[:8])}" if bad else ""

    def verdict_call_ids(self, since=0.0):
        """The calls that got an engine's verdict: an R98 answer (overload control) is counted, not written."""
        return {c for c, a in self.answers.items() if a.status == 302 and a.sent >= since and "TFPS overloaded" not in a.why}

    def statuses(self, prefix, since=0.0, until=float("inf")):
        return Counter(f"{self.answers[c].status} {self.answers[c].code or ''}".strip() if c in self.answers else "none"
                       for c in self.kind(prefix, since, until))


def serve_on_mariadb(start_server, mariadb, failure):
    return start_server(mariadb.url, sections={"policy": {"learning_days": "0"}, "database": {"failure": failure}})


def assert_all_logged(mariadb, traffic, since=0.0, timeout=10.0):
    """Every verdict answered since `since` gets its call_log row, exactly once, within `timeout` s."""
    want = traffic.verdict_call_ids(since)
    wait_until(lambda: want <= set(mariadb.call_ids()), timeout, interval=0.25,
               message=lambda: f"{len(want - set(mariadb.call_ids()))} of {len(want)} verdicts to reach call_log")
    rows = Counter(c for c in mariadb.call_ids() if c in want)
    missing = want - set(rows)
    twice = [c for c, n in rows.items() if n > 1]
    assert not missing and not twice, f"{len(missing)} of {len(want)} verdicts not in call_log, " \
                                      f"{len(twice)} logged twice: {sorted(missing)[:5]} {twice[:5]}"


@pytest.mark.parametrize("failure,frozen_for", [("continue", 10.0), ("reject", 5.0)])
def test_frozen_database(private_mariadb, start_server, failure, frozen_for):
    """mariadbd stopped (SIGSTOP) under 200 INVITEs/s: OPTIONS and INVITEs are answered within 1 s
    throughout; verdicts from memory (continue) or a 500 that discloses nothing (reject); once it
    resumes, every verdict answered reaches call_log."""
    server = serve_on_mariadb(start_server, private_mariadb, failure)
    traffic = Traffic(server).start()
    try:
        time.sleep(1.0)
        frozen_at = time.monotonic()
        private_mariadb.signal(signal.SIGSTOP)
        time.sleep(frozen_for)
    finally:
        private_mariadb.signal(signal.SIGCONT)
        thawed_at = time.monotonic()
    time.sleep(1.0)
    traffic.stop()

    phases = {name: traffic.statuses("load-", since, until) for name, since, until in
              (("before", 0.0, frozen_at), ("frozen", frozen_at, thawed_at), ("after", thawed_at, float("inf")))}
    assert not traffic.problems("ping-"), traffic.problems("ping-")
    assert all(a.status == 200 for c, a in traffic.answers.items() if c.startswith("ping-"))
    assert not traffic.problems("load-"), f"{traffic.problems('load-')}\nanswers by phase: {phases}"
    invites = [a for c, a in traffic.answers.items() if c.startswith("load-")]
    assert all(a.status == 302 and re.fullmatch(r"A00|R\d\d", a.code or "") or a.status == 500 for a in invites), phases
    if failure == "continue":
        assert all(a.status == 302 for a in invites), phases
    else:
        errors = [a for a in invites if a.status == 500]
        late_frozen = sum(n for k, n in traffic.statuses("load-", frozen_at + 1.0, thawed_at).items())
        assert len(errors) >= late_frozen // 2, f"failure = reject, yet few 500s while frozen: {phases}"
        assert len({a.reason for a in errors}) == 1 and len(errors[0].reason) <= 40, Counter(a.reason for a in errors)
        leaked = [a.why for a in errors if re.search(r"Lost connection|pymysql|\(20\d\d|Errno|OperationalError|"
                                                     r"Traceback", a.reason + a.why, re.I)]
        assert not leaked, f"500s disclose the database error: {leaked[:3]}"
    assert_all_logged(private_mariadb, traffic)


def test_killed_database_and_reconnect(private_mariadb, start_server):
    """mariadbd killed: the server keeps answering within 1 s; restarted: the server reconnects by
    itself and the verdicts of the outage and after it reach call_log."""
    server = serve_on_mariadb(start_server, private_mariadb, "continue")
    traffic = Traffic(server, rate=100).start()
    try:
        time.sleep(1.0)
        private_mariadb.kill()
        time.sleep(3.0)
        private_mariadb.start()
        wait_until(lambda: "database back after" in server.read_log(), 6.0, interval=0.1,
                   message="the server to reconnect within a few seconds")
        reconnected_by = time.monotonic()
        time.sleep(1.0)
    finally:
        traffic.stop()
    assert not traffic.problems("ping-"), traffic.problems("ping-")
    assert not traffic.problems("load-"), f"{traffic.problems('load-')}\n{traffic.statuses('load-')}"
    assert set(traffic.statuses("load-")) <= {"302 A00"} | {f"302 R{n:02d}" for n in range(1, 16)}, \
        traffic.statuses("load-")
    assert_all_logged(private_mariadb, traffic, since=reconnected_by)  # verdicts after the restart
    assert_all_logged(private_mariadb, traffic, timeout=5.0)  # and those of the outage, held in memory


# ---------------------------------------------------------------------------------------------
# 4. no reflection, no amplification
# ---------------------------------------------------------------------------------------------

def test_udp_answers_go_to_the_packet_source_only(start_server, udp):
    """A forged Via (maddr, a sent-by port other than the source port, no rport) must not aim the
    answer at a third party: it goes to the address and port the request came from. The default
    trusted_peers is loopback only, and loopback is answered."""
    server = start_server(sections={"policy": ALWAYS})  # trusted_peers left at its default
    sender = udp(server)
    port = free_port()
    victims = []
    for host in ("127.0.0.2", "127.0.0.1"):
        victims.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        victims[-1].bind((host, port))
    try:
        for via_params in (b";maddr=127.0.0.2", b""):
            request = sender.invite(US, local_port=port).replace(b";rport", via_params)
            assert f"127.0.0.1:{port};branch=".encode() in request and b"rport" not in request
            sender.send(request)
            answer = sender.recv()
            assert answer is not None, f"Via params {via_params!r}: no answer at the source"
            sender.send(ack_for(request, answer[0]))
            # Whatever went to a victim is there before the answer to an OPTIONS the victim sends now.
            strays = {name: [m.status for m in answers_before_options(victim, server.port)] for name, victim in
                      zip(("maddr 127.0.0.2", "Via port"), victims)}
            assert not any(strays.values()), f"Via params {via_params!r}: answers went to {strays}"
    finally:
        for sock in victims:
            sock.close()

    result = run_cli("config", "check", config=server.config, check=True)
    assert re.search(r"(?m)^trusted_peers = 127\.0\.0\.0/8, ::1$", result.stdout), result.stdout


def test_retransmissions_follow_timer_g_and_are_capped_per_source(start_server, udp):
    """Unacknowledged 302s over UDP come again on Timer G only (0.5, 1, 2, 4 s apart), and with
    resend_bytes_per_source = 1024 fifty of them from one source cost it ~1 KB/s, not 50 x 4
    retransmissions."""
    single = udp(start_server(sections={"policy": ALWAYS}))
    flood = udp(start_server(sections={"policy": ALWAYS, "server": {"resend_bytes_per_source": "1024"}}))
    flood.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    requests = [flood.invite(us_number(i), user=f"flood{i % 5}", call_id=f"flood-{i}@test") for i in range(50)]
    single.send(single.invite(US, call_id="single@test"))
    for request in requests:
        flood.send(request)
    started = time.monotonic()
    got = arrivals([single.sock, flood.sock], 8.3)

    [(t0, first), *again] = got[single.sock]
    times = [round(t - t0, 2) for t, _ in again]
    assert all(data == first for _, data in again), "retransmissions are byte-identical"
    assert len(times) == 4 and all(abs(t - want) <= 0.3 + 0.1 * n for n, (t, want) in
                                   enumerate(zip(times, (0.5, 1.5, 3.5, 7.5)))), times

    seen, resent = set(), []
    for at, data in got[flood.sock]:
        call_id = tfps.parse_message(data).header("call-id")
        (resent.append((at, len(data))) if call_id in seen else seen.add(call_id))
    assert len(seen) == 50, f"first answers: {len(seen)} of 50"
    largest = max(n for _, n in resent) if resent else 0
    total = sum(n for _, n in resent)
    window = max((sum(n for t, n in resent if s <= t < s + 1.0) for s, _ in resent), default=0)
    elapsed = time.monotonic() - started
    assert total <= 1024 * (elapsed + 1) + largest and window <= 2 * 1024 + largest, \
        f"{len(resent)} retransmissions, {total} bytes in {elapsed:.1f} s, {window} bytes in the busiest second"


# ---------------------------------------------------------------------------------------------
# 5. file descriptors
# ---------------------------------------------------------------------------------------------

def test_open_file_limit_with_many_idle_tcp_connections(start_server, udp):
    """With 256 open files and tcp_max_connections = auto, 400 idle TCP connections neither make
    the server spin nor stop UDP; once they close, TCP is served again."""
    popen = subprocess.Popen

    def limited(*args, **kw):
        return popen(*args, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)), **kw)

    with mock.patch.object(subprocess, "Popen", limited):
        server = start_server(sections={"policy": ALWAYS})
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    assert re.search(r"Max open files\s+256\s+256", limits), limits
    idle = []
    try:
        for _ in range(400):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=3))
        time.sleep(0.5)
        before = cpu_seconds(server.proc.pid)
        time.sleep(1.0)
        spent = cpu_seconds(server.proc.pid) - before
        assert spent < 0.25, f"{spent:.2f} s of CPU in 1 s with 400 idle connections"
        client = udp(server)
        for i in range(5):
            t0 = time.monotonic()
            msg = answer(client, client.invite(us_number(i), call_id=f"udp-{i}@test"), timeout=1.0)
            assert msg is not None and msg.status == 302 and time.monotonic() - t0 < 1.0, outcome(msg)
    finally:
        for sock in idle:
            sock.close()

    def tcp_invite_answered():
        conn = TcpClient(server)
        try:
            conn.send(conn.invite(US))
            return [m.status for m in conn.read(1, timeout=1.0)] == [302]
        finally:
            conn.close()
    wait_until(tcp_invite_answered, 10.0, interval=0.2, message=lambda: f"a TCP INVITE answered:\n{server.read_log()[-3000:]}")
    assert server.proc.poll() is None


# ---------------------------------------------------------------------------------------------
# 6. disclosure
# ---------------------------------------------------------------------------------------------

def test_server_header_has_no_version_and_config_check_masks_the_webhook(tmp_path, start_server, udp):
    for setting, want in ((None, "TFPS"), ("Acme", "Acme")):
        server = start_server(sections={"policy": ALWAYS, "server": {"server_header": setting} if setting else {}})
        client = udp(server)
        for request in (client.invite("ping", method="OPTIONS"), client.invite(US)):
            msg = answer(client, request)
            assert msg is not None and msg.header("server") == want, (setting, msg and msg.header("server"))
    token = "T000/B000/XXXX"
    config = write_config(tmp_path / "webhook.conf", {"alerts": {"alert_webhook": f"https://hooks.slack.com/services/{token}"}})
    result = run_cli("config", "check", config=config, check=True)
    assert "alert_webhook" in result.stdout
    for secret in (token, "B000", "XXXX"):
        assert secret not in result.stdout + result.stderr, result.stdout


# ---------------------------------------------------------------------------------------------
# 7. bounds
# ---------------------------------------------------------------------------------------------

def test_transaction_table_is_bounded(start_server, udp):
    """max_transactions = 100 and 300 new INVITEs at once: 100 held, the rest refused with an
    error that is no verdict (500 TFPS Overloaded: in failover mode a 503 would mean approved),
    logged once; the server keeps answering, and takes INVITEs again once transactions end."""
    server = start_server(sections={"policy": ALWAYS, "server": {"max_transactions": "100"}})
    client = udp(server)
    requests = [client.invite(us_number(i), user=f"burst{i % 20}", call_id=f"burst-{i}@test") for i in range(300)]
    answers = first_answers(client, requests, 3.0)
    statuses = Counter(outcome(m) for m in answers.values())
    assert len(answers) == 300 and set(statuses) <= {"302 A00", "500"}, statuses
    assert statuses["302 A00"] <= 100 and statuses["500"] >= 200, statuses
    notes = [line for line in server.read_log().splitlines() if "max_transactions" in line]
    assert len(notes) == 1, notes
    assert answer(client, client.invite("ping", method="OPTIONS")) is not None, "no answer while full"
    # the ACKed transactions end after Timer I (T4 = 5 s): room again
    wait_until(lambda: outcome(answer(client, client.invite(us_number(999)), 0.5)) == "302 A00", 10.0, 0.3,
               message="a verdict again after the transactions ended")
    assert len([line for line in server.read_log().splitlines() if "max_transactions" in line]) == 1
