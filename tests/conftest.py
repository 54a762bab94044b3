"""Shared test fixtures: the real tfps.py as a module and as a subprocess, real databases
(a SQLite file per test, a fresh MariaDB database per test on 127.0.0.1:3306), free ports."""

import contextlib
import functools
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TFPS = REPO / "tfps.py"
sys.path.insert(0, str(REPO))

import tfps  # noqa: E402  (the module under test)

MYSQL_HOST, MYSQL_PORT = "127.0.0.1", 3306


def wait_until(predicate, timeout=5.0, interval=0.02, message=None):
    """Poll predicate() until it returns something truthy and return that; fail after `timeout` seconds,
    naming what was awaited (`message`, or the predicate's source) and what it last returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message or _describe(predicate)
            pytest.fail(f"timed out after {timeout} s waiting for {what} (last value: {value!r})", pytrace=False)
        time.sleep(interval)


def _describe(predicate):
    import inspect
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)


@functools.cache
def mariadb_unreachable_reason():
    """Why MariaDB on 127.0.0.1:3306 cannot be used, or None; asked once per test session."""
    try:
        import pymysql
    except ImportError:
        return "PyMySQL is not installed"
    try:
        pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="", connect_timeout=3).close()
    except pymysql.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_mariadb():
    """Skip the calling test when MariaDB is not reachable, with one line saying so; under CI
    (TFPS_CI set by .ci/run, which starts MariaDB) that is a failure instead, never a silent skip."""
    reason = mariadb_unreachable_reason()
    if reason is None:
        return
    line = f"MariaDB not reachable on {MYSQL_HOST}:{MYSQL_PORT} ({reason}): mysql tests skipped; tests/run starts it"
    if os.environ.get("TFPS_CI"):
        pytest.fail(line.replace("mysql tests skipped", "required under CI (TFPS_CI)"), pytrace=False)
    pytest.skip(line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """All skips for want of MariaDB at one place, so that `-rs` folds them into one line."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and "MariaDB not reachable" in report.longrepr[2]:
        report.longrepr = (__file__, require_mariadb.__code__.co_firstlineno, report.longrepr[2])
    return report


def mysql_admin():
    require_mariadb()
    import pymysql
    return pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="", autocommit=True)


@pytest.fixture
def mariadb():
    """For tests that talk to the MariaDB server without a database of their own."""
    require_mariadb()


@pytest.fixture
def mysql_url():
    """A fresh, empty MariaDB database; dropped afterwards."""
    name = f"tfps_test_{secrets.token_hex(4)}"
    admin = mysql_admin()
    admin.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    yield f"mysql://root:@{MYSQL_HOST}:{MYSQL_PORT}/{name}"
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
    admin.close()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite://{tmp_path / 'tfps.db'}"


@pytest.fixture(params=["sqlite", "mysql"])
def db_url(request, tmp_path):
    """The same test on both backends."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'tfps.db'}"
    else:
        yield request.getfixturevalue("mysql_url")


_ports_handed_out = set()


def free_port():
    """A port free for both UDP and TCP on 127.0.0.1, never one this process was given before: a test
    that asks for two ports before binding either (HTTP and SIP) would otherwise get the same one
    back when the kernel hands out the port it just freed."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            if port in _ports_handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _ports_handed_out.add(port)
            return port


def write_config(path, sections):
    """sections: {'policy': {'learning_days': '0'}, ...} -> an INI file at path."""
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in keys.items()]
        lines.append("")
    Path(path).write_text("\n".join(lines))
    return str(path)


def older_accounts_trigger(db, name):
    """Put the accounts trigger of an older schema version, named `name`, in place of today's."""
    db.execute("DROP TRIGGER accounts_revised")
    body = "UPDATE meta SET value = value + 1 WHERE name = 'accounts_serial'"
    db.execute(f"CREATE TRIGGER {name} AFTER UPDATE ON accounts FOR EACH ROW "
               + (f"BEGIN {body}; END" if db.dialect == "sqlite" else body))


def run_cli(*args, config=None, db=None, timeout=60, check=False):
    """Run `python3 tfps.py ARGS...`; returns CompletedProcess with text stdout/stderr."""
    cmd = [sys.executable, str(TFPS), *args]
    if config:
        cmd += ["-c", str(config)]
    if db:
        cmd += ["--db", db]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@contextlib.contextmanager
def built_server(config_path):
    """A tfps.Server built in this process from a configuration file, never run; its sockets,
    threads and database closed afterwards."""
    cfg = tfps.Config.load(config_path)
    db = tfps.open_database(cfg.database.url)
    server = tfps.Server(cfg, db, config_path)
    try:
        yield server
    finally:
        server.reputation.close()
        server.selector.close()
        server._wake_r.close()
        server._wake_w.close()
        db.close()


class TfpsServer:
    """`tfps.py serve` as a real subprocess on a free loopback port (UDP and TCP)."""

    def __init__(self, tmp_path, db_url, sections=None, mode="redirect", port=None, host="127.0.0.1", cpus=None):
        self.port = port or free_port()
        self.cpus = cpus  # the affinity mask to serve with (None: pytest's)
        self.host = host
        self.db_url = db_url
        sections = {k: dict(v) for k, v in (sections or {}).items()}
        sections.setdefault("server", {}).setdefault("listen", f"udp:{host}:{self.port}, tcp:{host}:{self.port}")
        sections["server"].setdefault("mode", mode)
        sections["server"].setdefault("workers", "1")  # tests of several workers say so
        sections.setdefault("database", {}).setdefault("url", db_url)
        sections["database"].setdefault("spool", str(tmp_path / f"spool-{self.port}.jsonl"))  # never another test's
        self.config = write_config(tmp_path / f"tfps-{self.port}.conf", sections)
        self.log_path = tmp_path / f"serve-{self.port}.log"
        self.proc = None

    def start(self, timeout=15):
        self.log = open(self.log_path, "w")
        pinned = {} if self.cpus is None else {"preexec_fn": lambda: os.sched_setaffinity(0, self.cpus)}
        self.proc = subprocess.Popen([sys.executable, str(TFPS), "serve", "-c", self.config],
                                     stdout=self.log, stderr=subprocess.STDOUT, **pinned)
        wait_until(self._started, timeout, message=lambda: f"serve to start:\n{self.read_log()}")
        return self

    def _started(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.read_log()}")
        return "serving in" in self.read_log()

    def read_log(self):
        return Path(self.log_path).read_text(errors="replace")

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self, timeout=10):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()
        return self.proc.returncode if self.proc else None


@pytest.fixture
def start_server(tmp_path):
    """Factory: start_server(db_url, sections={...}, mode='redirect') -> running TfpsServer."""
    servers = []

    def start(db_url=None, sections=None, mode="redirect", **kw):
        server = TfpsServer(tmp_path, db_url or f"sqlite://{tmp_path / 'tfps.db'}", sections, mode, **kw).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def sip_invite(number, port, *, user="1001", domain="pbx.example.com", transport="UDP", local_port=5099,
               branch=None, call_id=None, headers=(), cseq=1, method="INVITE", from_tag="ft1"):
    """Bytes of a minimal valid request towards 127.0.0.1:port."""
    branch = branch or "z9hG4bK" + secrets.token_hex(6)
    call_id = call_id or secrets.token_hex(8) + "@test"
    lines = [f"{method} sip:{number}@127.0.0.1:{port} SIP/2.0",
             f"Via: SIP/2.0/{transport} 127.0.0.1:{local_port};branch={branch};rport",
             "Max-Forwards: 70", f"From: <sip:{user}@{domain}>;tag={from_tag}", f"To: <sip:{number}@127.0.0.1>",
             f"Call-ID: {call_id}", f"CSeq: {cseq} {method}", *headers, "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def ack_for(invite_bytes, response):
    """The ACK of a non-2xx final response (RFC 3261 §17.1.1.3): same branch, To with the tag."""
    msg = tfps.parse_message(invite_bytes)
    to = tfps.parse_message(response).header("to")
    lines = [f"ACK {msg.uri} SIP/2.0", f"Via: {msg.header('via')}", "Max-Forwards: 70",
             f"From: {msg.header('from')}", f"To: {to}", f"Call-ID: {msg.header('call-id')}",
             f"CSeq: {msg.header('cseq').split()[0]} ACK", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def answers_before_options(sock, port):
    """Everything (parsed) that reaches the UDP `sock` before the 200 to an OPTIONS it sends now to
    127.0.0.1:port. The server answers each datagram before it reads the next, so this is all it
    still had to send to `sock`: an empty list proves a silence without waiting for one."""
    call_id = f"options-{secrets.token_hex(4)}@test"
    sock.sendto(sip_invite("ping", port, method="OPTIONS", local_port=sock.getsockname()[1], call_id=call_id),
                ("127.0.0.1", port))
    sock.settimeout(3.0)
    before = []
    while (msg := tfps.parse_message(sock.recvfrom(65536)[0])).header("call-id") != call_id:
        before.append(msg)
    assert msg.status == 200, f"OPTIONS answered {msg.status}"
    return before


def udp_socket(timeout=2.0):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(timeout)
    return sock


def recv_response(sock):
    """One SIP response from a UDP socket, parsed with tfps's own parser."""
    data, _ = sock.recvfrom(65536)
    return tfps.parse_message(data), data
