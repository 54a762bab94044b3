"""The engine end to end: real `tfps.py serve` subprocesses answering real INVITEs on loopback,
on both backends; CLI changes reach the running server within 5 s."""

import secrets
import time

import pytest

import tfps
from conftest import recv_response, run_cli, sip_invite, udp_socket, wait_until

USER, DOMAIN = "1001", "pbx.example.com"
ALWAYS_BUSINESS = {"business_hours": "mon-sun 00:00-24:00"}


def invite(server, number, *, user=USER, domain=DOMAIN, headers=(), timeout=8.0):
    """Send one INVITE over UDP (retransmitted like a UAC would) -> the final response."""
    sock = udp_socket(timeout=0.5)
    try:
        data = sip_invite(number, server.port, user=user, domain=domain, local_port=sock.getsockname()[1],
                          headers=headers, call_id=secrets.token_hex(8) + "@sip-test")
        deadline = time.monotonic() + timeout
        sock.sendto(data, ("127.0.0.1", server.port))
        while time.monotonic() < deadline:
            try:
                msg, _raw = recv_response(sock)
            except TimeoutError:
                sock.sendto(data, ("127.0.0.1", server.port))
                continue
            if msg.status >= 200:
                return msg
        raise AssertionError(f"no final response to INVITE {number} within {timeout} s:\n{server.read_log()[-3000:]}")
    finally:
        sock.close()


def code_of(msg):
    return msg.header("x-tfps-code")


def poll(server, expect, numbers, within=5.0, since=None, **kw):
    """INVITE until the X-TFPS-Code is `expect`; returns the seconds since `since` (a
    time.monotonic() value, default now) that it took."""
    start = time.monotonic() if since is None else since
    numbers = iter(numbers)
    seen = []

    def answered_as_expected():
        seen.append(code_of(invite(server, next(numbers), **kw)))
        return seen[-1] == expect
    wait_until(answered_as_expected, max(0.0, start + within - time.monotonic()), interval=0.2,
               message=lambda: f"{expect}, got {seen}")
    return time.monotonic() - start


def wait_for_account(db_url, user=USER, domain=DOMAIN, within=5.0):
    """Enrollment by a running server is visible to other connections once it has committed
    (SQLite commits verdicts in groups, every [database] flush_interval)."""
    db = tfps.open_database(db_url)

    def enrolled():
        try:
            return tfps.find_account(db, user, domain)
        except tfps.UserError:
            return None
    try:
        return wait_until(enrolled, within, interval=0.1, message=f"account {user}@{domain} to be enrolled")
    finally:
        db.close()


def numbers(base):
    return (f"1212{base}{i:05d}" for i in range(100000))


def test_verdicts_end_to_end(db_url, start_server):
    server = start_server(db_url)          # defaults: home_country US, new accounts in learning mode
    msg = invite(server, "12125551234")
    assert msg.status == 302 and code_of(msg) == "A00", msg.header("x-tfps-reason")
    assert msg.header("contact") == "<sip:A0012125551234@pbx.example.com>"
    assert msg.header("x-tfps-reason") == "approved"

    msg = invite(server, "442079460000")   # a new destination: approved (with an alert) a few times a day
    assert (msg.status, code_of(msg)) == (302, "A00")
    assert msg.header("x-tfps-reason") == "approved"

    msg = invite(server, "5312345678")
    assert msg.status == 302 and code_of(msg) == "R06"
    assert msg.header("contact") == "<sip:R065312345678@pbx.example.com>"
    assert "Cuba" in msg.header("x-tfps-reason") and "high-risk" in msg.header("x-tfps-reason")

    msg = invite(server, "442079460000")   # after a high-risk call, no new-destination allowance: a would-be R06
    assert (msg.status, code_of(msg)) == (302, "A00")       # while the account learns

    msg = invite(server, "12125550000", headers=["User-Agent: friendly-scanner"])
    assert (msg.status, code_of(msg)) == (302, "R01")
    assert msg.header("contact") == "<sip:R0112125550000@pbx.example.com>"

    msg = invite(server, "9991234567")
    assert (msg.status, code_of(msg)) == (302, "R07")
    assert msg.header("contact") == "<sip:R079991234567@pbx.example.com>"

    server.stop()
    db = tfps.open_database(db_url)
    try:
        rows = db.query("SELECT number, code, would_code, sip_response, user, domain FROM call_log ORDER BY id")
        assert [r[:4] for r in rows] == [
            ("12125551234", "A00", "", "302 A00"), ("442079460000", "A00", "", "302 A00"),
            ("5312345678", "R06", "", "302 R06"), ("442079460000", "A00", "R06", "302 A00"),
            ("12125550000", "R01", "", "302 R01"), ("9991234567", "R07", "", "302 R07")]
        assert {r[4:] for r in rows} == {(USER, DOMAIN)}
        acc = tfps.find_account(db, USER, DOMAIN)
        assert acc.state == "learning" and acc.dest_countries == {"US"}
    finally:
        db.close()


def test_new_account_in_other_home_country(sqlite_url, start_server):
    server = start_server(sqlite_url, {"policy": {"home_country": "GB", "learning_days": "0", "new_destination_calls": "0"}})
    msg = invite(server, "442079460000", user="alice", domain="voip.example.co.uk")
    assert (code_of(msg), msg.header("contact")) == ("A00", "<sip:A00442079460000@voip.example.co.uk>")
    msg = invite(server, "12125551234", user="alice", domain="voip.example.co.uk")
    assert code_of(msg) == "R06"


def test_cli_changes_reach_running_server(db_url, start_server):
    server = start_server(db_url, {"policy": {**ALWAYS_BUSINESS, "max_calls_per_minute": "0"}})   # calls many times a minute
    first = invite(server, "12125551234")                     # enrolls the account
    assert code_of(first) == "A00"
    wait_for_account(db_url)

    run_cli("set", USER, DOMAIN, "--daily-quota", "1", "--daily-quota-off", "1", config=server.config, db=db_url, check=True)
    assert poll(server, "R11", numbers("61")) <= 5.0

    run_cli("reset", USER, DOMAIN, config=server.config, db=db_url, check=True)
    assert poll(server, "A00", numbers("62")) <= 5.0
    assert code_of(invite(server, "12126300001")) == "R11"   # the quota of 1 is used up again

    run_cli("block", USER, DOMAIN, config=server.config, db=db_url, check=True)
    assert poll(server, "R14", numbers("63")) <= 5.0

    run_cli("unblock", USER, DOMAIN, config=server.config, db=db_url, check=True)
    run_cli("reset", USER, DOMAIN, config=server.config, db=db_url, check=True)
    assert poll(server, "A00", numbers("64")) <= 5.0

    run_cli("blacklist", "add", "number", "1212650", config=server.config, db=db_url, check=True)
    run_cli("reset", USER, DOMAIN, config=server.config, db=db_url, check=True)
    assert poll(server, "R03", numbers("65")) <= 5.0
    assert server.proc.poll() is None


def test_reset_lifts_ab_block_on_running_server(db_url, start_server):
    """On MySQL the server keeps the A->B window in memory (quota leases): reset reaches it too."""
    server = start_server(db_url, {"policy": {"learning_days": "0", **ALWAYS_BUSINESS}})
    codes = [code_of(invite(server, "12125557777")) for _ in range(6)]
    assert codes == ["A00"] * 5 + ["R13"]
    wait_for_account(db_url)
    assert code_of(invite(server, "12125557777")) == "R13"
    run_cli("reset", USER, DOMAIN, config=server.config, db=db_url, check=True)
    assert poll(server, "A00", ["12125557777"] * 25) <= 5.0


def test_direct_database_edits_reach_running_server(db_url, start_server):
    """Issue 5: changes made 'directly in the database' (plain SQL, no CLI) reach a running
    server within 5 s: the schema's triggers move the change serials the server polls."""
    server = start_server(db_url, {"policy": ALWAYS_BUSINESS})
    assert code_of(invite(server, "12125551234")) == "A00"
    wait_for_account(db_url)
    db = tfps.Database(db_url)
    try:
        since = time.monotonic()
        db.execute("UPDATE accounts SET blocked = 1 WHERE user = ? AND domain = ?", (USER, DOMAIN))
        assert poll(server, "R14", numbers("71"), since=since) <= 5.0

        db.execute("UPDATE accounts SET blocked = 0 WHERE user = ? AND domain = ?", (USER, DOMAIN))
        assert poll(server, "A00", numbers("72")) <= 5.0

        since = time.monotonic()
        db.execute("INSERT INTO number_list (kind, prefix, note, created) VALUES ('black', '1212730', 'by hand', 0)")
        assert poll(server, "R03", numbers("73"), since=since) <= 5.0

        serial = "SELECT value FROM meta WHERE name = 'accounts_serial'"
        before = db.scalar(serial)
        db.execute("UPDATE accounts SET last_seen = 1 WHERE user = ?", (USER,))  # activity, not a change
        assert db.scalar(serial) == before
        db.execute("UPDATE accounts SET email = 'noc@example.com' WHERE user = ?", (USER,))
        assert db.scalar(serial) == before + 1
        since = time.monotonic()
        db.execute("DELETE FROM number_list WHERE prefix = '1212730'")
        assert poll(server, "A00", numbers("73"), since=since) <= 5.0
    finally:
        db.close()
    assert server.proc.poll() is None
