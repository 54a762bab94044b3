"""The decision engine, rule by rule (hit, miss, boundary), on both backends: a real SQLite file
and a fresh real MariaDB database. The clock is frozen: every attempt carries its own time."""

import datetime as dt
import random
import secrets
import time
import zoneinfo

import pytest

import tfps
from conftest import MYSQL_HOST, MYSQL_PORT, mysql_admin, write_config

UTC = dt.timezone.utc
NY = zoneinfo.ZoneInfo("America/New_York")   # DST: 2024-03-10 has 23 hours, 2024-11-03 has 25


def at(y, m, d, hh, mm=0, ss=0.0, tz=UTC):
    return dt.datetime(y, m, d, hh, mm, tzinfo=tz).timestamp() + ss


WED_10 = at(2025, 1, 15, 10)   # Wednesday, business hours (mon-fri 09:00-18:00 UTC)
WED_20 = at(2025, 1, 15, 20)   # Wednesday, off hours
THU_10 = at(2025, 1, 16, 10)
SAT_10 = at(2025, 1, 18, 10)   # Saturday: off hours all day

USER, DOMAIN = "1001", "pbx.example.com"
US_NUMBER = "12125551234"


def us(i):
    """A distinct US number per i, so that repeated calls do not trip A->B (R13)."""
    return f"1212555{i:04d}"


def fr(i):
    """A distinct number in Paris per i: France is of tier medium for the US operator of these tests."""
    return f"33142{i:04d}00"


# Tables the engine and the admin functions write; cleared before each MariaDB test.
MUTABLE_TABLES = ("accounts", "daily_counters", "ab_pairs", "account_seen", "number_list", "ip_list", "call_log",
                  "alert_outbox", "alert_throttle", "reputation_cache", "locks", "history_days", "account_days",
                  "account_day_countries")


@pytest.fixture(scope="module")
def shared_mysql():
    """One real MariaDB database for this module (creating the schema costs ~1 s per database);
    each test starts from the freshly seeded state (see db_url)."""
    name = f"tfps_test_{secrets.token_hex(4)}"
    admin = mysql_admin()
    admin.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    url = f"mysql://root:@{MYSQL_HOST}:{MYSQL_PORT}/{name}"
    tfps.open_database(url).close()
    yield url
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
    admin.close()


@pytest.fixture(params=["sqlite", "mysql"])
def db_url(request, tmp_path):
    """The same test on both backends: a new SQLite file, or the module's MariaDB database
    emptied of everything but the seed (countries, default User-Agent list)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'tfps.db'}"
    url = request.getfixturevalue("shared_mysql")
    db = tfps.Database(url)
    try:
        for table in MUTABLE_TABLES:
            db.execute(f"DELETE FROM {table}")
        db.execute("DELETE FROM ua_list WHERE created <> 0")
        assert db.scalar("SELECT COUNT(*) FROM ua_list") == 16
        assert db.scalar("SELECT COUNT(*) FROM countries") >= 240
    finally:
        db.close()
    return url


class Env:
    def __init__(self, tmp_path, db_url, policy=None, **sections):
        policy = {"learning_days": "0", "max_calls_per_minute": "0", **(policy or {})}   # R15 has tests of its own
        conf = {"policy": policy, "server": {"node_name": "node-t"}}
        for section, keys in sections.items():
            conf.setdefault(section, {}).update(keys)
        self.cfg = tfps.Config.load(write_config(tmp_path / "engine.conf", conf))
        self.db = tfps.open_database(db_url)
        self.engine = tfps.Engine(self.cfg, self.db)

    def call(self, number=US_NUMBER, ts=WED_10, user=USER, domain=DOMAIN, enforce=True, count=True, **kw):
        attempt = tfps.CallAttempt(user, domain, number, ts=ts, **kw)
        return self.engine.decide(attempt, enforce=enforce, count=count)

    def code(self, *args, **kw):
        return self.call(*args, **kw).code

    def account(self, user=USER, domain=DOMAIN, now=WED_10 - 3600, **fields):
        """An existing account (enrolled with the defaults), with `fields` set by hand."""
        try:
            acc = tfps.find_account(self.db, user, domain)
        except tfps.UserError:
            tfps.insert_account(self.db, tfps.default_account(self.cfg, user, domain, now))
            acc = tfps.find_account(self.db, user, domain)
        if fields:
            tfps.update_account(self.db, acc, now, **fields)
        self.engine.reload()
        return tfps.find_account(self.db, user, domain)

    def add(self, color, kind, *values):
        tfps.list_add(self.db, color, kind, list(values), "test", WED_10)
        assert self.engine.check_for_changes()

    def count(self, table):
        return self.db.scalar(f"SELECT COUNT(*) FROM {table}")

    def counter(self, acc, day, bucket):
        return self.db.scalar("SELECT approved FROM daily_counters WHERE account_id = ? AND day = ? AND bucket = ?",
                              (acc.id, day, bucket), default=0)


@pytest.fixture
def make(tmp_path, db_url):
    envs = []

    def make(policy=None, **sections):
        env = Env(tmp_path, db_url, policy, **sections)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.db.close()


@pytest.fixture
def env(make):
    return make()


# -- enrollment and the approved path -------------------------------------------------------------

def test_new_account_enrolled_with_defaults_and_approved(env):
    v = env.call()
    assert (v.code, v.number, v.dest_country, v.off_hours, v.would) == ("A00", US_NUMBER, "US", False, None)
    acc = tfps.find_account(env.db, USER, DOMAIN)
    assert (acc.concurrent_calls, acc.concurrent_calls_off, acc.daily_quota, acc.daily_quota_off) == (10, 2, 100, 10)
    assert acc.dest_countries == {"US"} and acc.source_countries == {"US"}
    assert acc.state == "enforcing" and not acc.blocked
    assert env.counter(acc, "2025-01-15", "biz") == 1


def test_account_lookup_is_case_insensitive(env):
    env.account()
    assert env.code(user="1001", domain="PBX.Example.COM") == "A00"
    assert env.count("accounts") == 1


# -- R12 attack signatures ----------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("number", "1212555'1234"), ("number", '1212555"1234'), ("number", "12125551234--"),
    ("number", "1212/*x*/5551234"), ("number", "12125551234=1"), ("number", "1212\\5551234"),
    ("number", "1212%275551234"), ("number", "1212%225551234"), ("number", "1212555ABCD"),
    ("number", "12125551234 or 1"), ("number", "*72"),
    ("user", "1001' OR '1'='1"), ("user", "1001--"), ("user", "admin=1"), ("user", "10%2701"),
    ("domain", "pbx.example.com/*"), ("domain", "pbx\\example.com"), ("domain", "pbx%22.example.com"),
    ("user_agent", "x' or 1=1"), ("user_agent", "sipp union select password"), ("user_agent", "ua/*comment*/"),
])
def test_r12_attack_signature(env, field, value):
    kw = {field: value}
    v = env.call(**kw)
    assert v.code == "R12", v.reason


@pytest.mark.parametrize("number", ["12125551234", "+1 (212) 555-1234", "011-1-212-555-1234", "1.212.555.1234"])
def test_r12_miss_for_clean_input(env, number):
    assert env.code(number, user="alice.smith-1", domain="sip.example-pbx.com", user_agent="Asterisk PBX 18.2") == "A00"


def test_r12_comes_first(env):
    env.add("black", "ip", "203.0.113.0/24")
    assert env.code("1212555'1234", user_agent="friendly-scanner", source_ip="203.0.113.9") == "R12"


@pytest.mark.parametrize("field", ["user", "domain", "user_agent", "source_ip", "number"])
def test_r12_identity_with_bytes_that_are_not_utf8_is_rejected_without_enrolling(env, field):
    kw = {"user": USER, "domain": DOMAIN, "number": US_NUMBER}
    value = "Yealink \udcff" if field != "number" else "4420\udcff79"
    kw[field] = value
    v = env.call(**kw) if field in kw else env.call(**{field: value})
    assert v.code == "R12" and "not UTF-8" in v.reason
    env.engine.record(v, "302 R12", 0.1)
    env.engine.flush()
    assert env.count("accounts") == 0 and env.count("call_log") == 1
    assert "\ufffd" in str(env.db.one("SELECT user, domain, user_agent, source_ip, dialed FROM call_log"))


@pytest.mark.parametrize("field,value,reason", [
    ("user", "1" * 129, "a user of 129 characters (at most 128)"),
    ("domain", "d" * 252 + ".com", "a domain of 256 characters (at most 255)"),
    ("number", "+" + "1" * 33, "not a dialable number"),
])
def test_r12_identity_or_number_longer_than_the_columns(env, field, value, reason):
    v = env.call(**{field: value})
    assert v.code == "R12" and reason in v.reason
    env.engine.record(v, "302 R12", 0.1)
    env.engine.flush()
    assert env.count("call_log") == 1 and env.count("ab_pairs") == 0 and env.count("accounts") == 0


@pytest.mark.parametrize("kw,code", [
    ({"user_agent": "friendly-scanner"}, "R01"),
    ({"source_ip": "203.0.113.9"}, "R02"),
    ({"number": "12125551234' OR 1=1"}, "R12"),
    ({"domain": "tfps.invalid"}, "A00"),  # tfps.py probe
])
def test_noise_enrolls_no_account_and_raises_no_alert(env, kw, code):
    env.add("black", "ip", "203.0.113.0/24")
    v = env.call(**kw)
    assert v.code == code and v.account.id is None
    assert env.count("accounts") == 0
    assert not [e for e in env.engine.alerts.events if e.kind == "enrolled"]
    assert env.code(us(1)) == "A00" and env.count("accounts") == 1  # a real call still enrolls


def test_monitor_mode_enrolls_nothing_for_a_would_be_scanner_rejection(env):
    v = env.call(user_agent="friendly-scanner", enforce=False)
    assert v.code == "A00" and v.would.code == "R01" and env.count("accounts") == 0


def test_a_row_the_database_refuses_is_dropped_alone_and_counters_survive(env, caplog):
    env.account(daily_quota=3, concurrent_calls=None)
    codes = []
    for i in range(4):
        v = env.call(us(i), ts=WED_10 + i)
        codes.append(v.code)
        env.engine.record(v, f"302 {v.code}", 0.1)
        if i == 1:  # a row no database can store, between good ones
            env.engine.log_rows.append(env.engine.log_rows[-1][:1] + ("\udcff",) + env.engine.log_rows[-1][2:])
    env.engine.flush()
    assert codes == ["A00", "A00", "A00", "R11"]
    assert env.count("call_log") == 4 and env.engine.dropped_rows == 1 and not env.engine.log_rows
    assert "refused by the database and dropped" in caplog.text
    acc = tfps.find_account(env.db, USER, DOMAIN)
    assert env.counter(acc, "2025-01-15", "biz") == 3
    assert env.code(us(9), ts=WED_10 + 9) == "R11"  # counting goes on after the bad row


def test_verdicts_from_memory_touch_no_database_and_are_charged_when_it_is_back(env):
    acc = env.account(daily_quota=5, concurrent_calls=None)
    assert [env.code(us(i), ts=WED_10 + i) for i in range(3)] == ["A00"] * 3
    env.engine.flush()
    env.db.close()  # every statement would fail now
    from_memory = [env.engine.decide_from_memory(tfps.CallAttempt(USER, DOMAIN, us(10 + i), ts=WED_10 + 10 + i))
                   for i in range(6)]
    assert [v.code for v in from_memory] == ["A00"] * 5 + ["R11"]
    assert all(v.reason.endswith("(database unavailable: decided from memory)") for v in from_memory)
    stranger = env.engine.decide_from_memory(tfps.CallAttempt("9999", DOMAIN, us(99), ts=WED_10 + 20))
    assert stranger.code == "A00" and stranger.account.id is None  # default limits, not enrolled
    env.db = tfps.Database(env.db.url)
    env.engine.use_database(env.db)
    env.engine.charge_outage_counts()
    env.engine.flush()
    assert env.counter(acc, "2025-01-15", "biz") == 8 and env.engine.local_counters is None
    assert env.code(us(30), ts=WED_10 + 30) == "R11"
    assert env.count("accounts") == 1


def test_unwritten_rows_are_bounded_while_the_database_is_unavailable(make, caplog):
    env = make(database={"max_unflushed_rows": "1000"})
    for i in range(1500):
        v = env.call(us(i % 1000), ts=WED_10 + i * 60, user=f"u{i % 7}")
        env.engine.record(v, "302", 0.1)
    assert len(env.engine.log_rows) == 1000 and env.engine.dropped_rows == 500
    assert "max_unflushed_rows" in caplog.text


# -- R01 scanner User-Agents ---------------------------------------------------------------------

@pytest.mark.parametrize("ua", ["friendly-scanner", "FRIENDLY-SCANNER", "Friendly-Scanner/1.2", "sipvicious 0.3.4",
                                "VaxSIPUserAgent/3.1", "pplsip", "Nmap NSE", "PBX", "pbx", "Trixbox", "SipClient",
                                "sipcli/v1.8"])
def test_r01_hit(env, ua):
    v = env.call(user_agent=ua)
    assert v.code == "R01", v.reason


@pytest.mark.parametrize("ua", ["", "MyPBX", "PBX 1.0", "Asterisk PBX 18", "Trixbox 2.8", "X-Lite 5.0", "Linphone/5.0",
                                "FreeSWITCH-mod_sofia/1.10"])
def test_r01_miss(env, ua):
    assert env.code(user_agent=ua) == "A00"


def test_r01_custom_pattern_added_and_removed(env):
    env.add("black", "ua", r"^evil[0-9]+$")
    assert env.code(user_agent="EVIL42") == "R01"
    assert env.code(user_agent="evil", number=us(1)) == "A00"
    assert env.code(user_agent="evil42 extra", number=us(2)) == "A00"
    tfps.list_remove(env.db, "black", "ua", r"^evil[0-9]+$")
    assert env.engine.check_for_changes()
    assert env.code(user_agent="EVIL42", number=us(3)) == "A00"


# -- R02 source IP: local list and reputation ---------------------------------------------------------

@pytest.mark.parametrize("ip, code", [
    ("203.0.113.0", "R02"), ("203.0.113.77", "R02"), ("203.0.113.255", "R02"),
    ("203.0.112.255", "A00"), ("203.0.114.0", "A00"),
    ("2001:db8:bad::1", "R02"), ("2001:db8:bad:ffff:ffff:ffff:ffff:ffff", "R02"), ("2001:db8:bae::1", "A00"),
    ("2001:db8:bac:ffff::1", "A00"), ("::ffff:203.0.113.9", "R02"), ("", "A00"), ("not-an-ip", "A00"),
])
def test_r02_local_blacklist_ipv4_ipv6(env, ip, code):
    env.add("black", "ip", "203.0.113.0/24", "2001:db8:bad::/48")
    v = env.call(source_ip=ip)
    assert v.code == code, v.reason


def test_r02_whitelisted_ip_beats_blacklist(env):
    env.add("black", "ip", "203.0.113.0/24")
    env.add("white", "ip", "203.0.113.5/32")
    assert env.code(source_ip="203.0.113.5", number=us(1)) == "A00"
    assert env.code(source_ip="203.0.113.6", number=us(2)) == "R02"


def rep(ip, **kw):
    return tfps.Reputation(ip, kw.pop("ok", True), **kw)


@pytest.mark.parametrize("threshold", [10, 50])
def test_r02_reputation_threshold_boundary(make, threshold):
    env = make(reputation={"abuse_threshold": str(threshold)})
    ip = "81.2.69.142"
    assert env.code(us(1), source_ip=ip, reputation=rep(ip, score=threshold - 1, country="US")) == "A00"
    v = env.call(us(2), source_ip=ip, reputation=rep(ip, score=threshold, country="US"))
    assert v.code == "R02" and str(threshold) in v.reason
    assert env.code(us(3), source_ip=ip, reputation=rep(ip, score=100, country="US")) == "R02"
    assert env.code(us(4), source_ip=ip, reputation=rep(ip, score=None, country="US")) == "A00"


def test_r02_reputation_apiban_failure_and_whitelisted(env):
    ip = "81.2.69.142"
    assert env.code(us(1), source_ip=ip, reputation=rep(ip, score=0, apiban=True)) == "R02"
    assert env.code(us(2), source_ip=ip, reputation=rep(ip, ok=False, detail="timeout")) == "A00"   # failure = allow
    assert env.code(us(3), source_ip=ip, reputation=rep(ip, score=100, whitelisted=True)) == "A00"


def test_r02_reputation_failure_reject(make):
    ip = "81.2.69.142"
    env = make(reputation={"reputation_failure": "reject"})
    v = env.call(us(4), source_ip=ip, reputation=rep(ip, ok=False, detail="timeout"))
    assert v.code == "R02" and "reputation_failure" in v.reason
    assert env.code(us(5), source_ip=ip, reputation=rep(ip, score=0, country="US")) == "A00"


def test_r02_ip_whitelist_skips_reputation(env):
    ip = "81.2.69.142"
    env.add("white", "ip", "81.2.69.0/24")
    assert env.code(source_ip=ip, reputation=rep(ip, score=100, apiban=True, country="CN")) == "A00"


# -- R14 blocked or unknown accounts ------------------------------------------------------------------

def test_r14_blocked_account(env):
    acc = env.account(blocked=1)
    env.add("black", "number", "1212")
    v = env.call()
    assert v.code == "R14" and "blocked" in v.reason       # R14 comes before R03
    env.add("black", "ip", "203.0.113.0/24")
    assert env.code(source_ip="203.0.113.1") == "R02"        # ... and after R02
    assert env.code(user="1002") == "R03"                    # other accounts are not blocked
    tfps.update_account(env.db, acc, WED_10, blocked=0)
    env.engine.check_for_changes()
    tfps.list_remove(env.db, "black", "number", "1212")
    env.engine.check_for_changes()
    assert env.code(number=us(7)) == "A00"


def test_r14_unknown_accounts_reject(make):
    env = make({"unknown_accounts": "reject"})
    v = env.call(user="stranger")
    assert v.code == "R14" and "unknown account" in v.reason
    assert env.count("accounts") == 0                      # not enrolled
    env.account()
    assert env.code() == "A00"


# -- R03 number blacklist, whitelist wins --------------------------------------------------------------

@pytest.mark.parametrize("number, code", [
    ("12125551234", "R03"), ("+1 212 555 1234", "R03"), ("001212555", "R03"), ("1212555", "R03"),
    ("1212556", "A00"), ("121255", "A00"), ("12125561234", "A00"),
    ("12125559000", "A00"),   # whitelisted longer prefix wins
])
def test_r03_blacklist_prefix(env, number, code):
    env.add("black", "number", "1212555")
    env.add("white", "number", "12125559")
    v = env.call(number)
    assert v.code == code, v.reason


def test_whitelisted_number_beats_blacklist_and_skips_r06_r13(env):
    env.account(dest_countries={"US"})
    env.add("black", "number", "53", "44")
    env.add("white", "number", "5312345678", "442079460000")
    for i in range(8):                                      # R13 skipped: 8 calls in 8 s
        v = env.call("5312345678", ts=WED_10 + i)
        assert v.code == "A00", (i, v.reason)                # R03 lost, R06 high-risk skipped
    assert env.code("442079460000") == "A00"                 # R06 own list skipped
    assert env.code("5312345679") == "R03"
    env.add("black", "number", "5399")  # blacklisted but not whitelisted: R03 still first
    assert env.code("5399123456") == "R03"
    # whitelisted numbers are no A->B attempts; rejected calls are, whichever rule rejected them
    assert env.count("ab_pairs") == 2


# -- R13 repeated A->B ---------------------------------------------------------------------------------

def test_r13_sixth_call_rejected_and_pair_stays_blocked(env):
    acc = env.account()
    t0 = WED_10
    for i in range(5):
        assert env.code(ts=t0 + i) == "A00", i
    v = env.call(ts=t0 + 5)
    assert v.code == "R13" and "6 times" in v.reason
    assert env.code(us(9), ts=t0 + 6) == "A00"               # another number is fine
    assert env.code(user="1002", ts=t0 + 6) == "A00"          # another account too
    assert env.code(ts=t0 + 40) == "R13"                      # the window expired, the block did not
    assert env.code(ts=t0 + 5 + 3599) == "R13"
    assert env.code(ts=t0 + 5 + 3600) == "A00"                # ab_block elapsed
    assert env.counter(acc, "2025-01-15", "biz") == 5 + 1 + 1


def test_r13_window_expiry_without_block(env):
    env.account()
    t0 = WED_10
    for i in range(5):
        assert env.code(ts=t0 + i) == "A00"
    assert env.code(ts=t0 + 30) == "A00"                      # window restarted at t0 + 30
    for i in range(1, 5):
        assert env.code(ts=t0 + 30 + i) == "A00"
    assert env.code(ts=t0 + 35) == "R13"


def test_r13_window_boundary(env):
    env.account()
    for i in range(5):
        assert env.code(ts=WED_10) == "A00"
    assert env.code(ts=WED_10 + 29.9) == "R13"


def test_r13_burst_straddling_the_window_start(env):
    """'More than 5 calls within 30 s' holds for any 30 s: a burst of calls around the moment the
    first call's window ends is still a burst."""
    env.account()
    t0 = WED_10
    assert env.code(ts=t0) == "A00"
    for i in range(1, 5):
        assert env.code(ts=t0 + 29 + i / 10) == "A00"           # calls 2-5 at t0+29.1 .. t0+29.4
    codes = [env.code(ts=t0 + 30 + i / 10) for i in range(2)]   # calls 6-7 at t0+30.0, t0+30.1
    # the call at t0+30.1 is the 6th within the last 1.0 s: at the latest it must be rejected
    assert codes[-1] == "R13", codes


def test_r13_reset_account_clears_block(env):
    acc = env.account()
    for i in range(6):
        env.call(ts=WED_10 + i)
    assert env.code(ts=WED_10 + 10) == "R13"
    tfps.reset_account(env.db, env.cfg, acc, WED_10 + 11)
    env.engine.check_for_changes()
    assert env.count("ab_pairs") == 0
    assert env.code(ts=WED_10 + 12) == "A00"


def test_r13_configurable_max(make):
    env = make({"ab_max_calls": "2", "ab_window": "10s", "ab_block": "60s"})
    env.account()
    assert [env.code(ts=WED_10 + i) for i in range(3)] == ["A00", "A00", "R13"]
    assert env.code(ts=WED_10 + 59) == "R13"
    assert env.code(ts=WED_10 + 2 + 60) == "A00"


# -- R07 unknown country code ------------------------------------------------------------------------

@pytest.mark.parametrize("number", ["9991234567", "+999 123 4567", "0099912345", "8001234567"])
def test_r07_unknown_country_code(env, number):
    env.account(dest_countries={"*"})
    v = env.call(number)
    assert (v.code, v.dest_country) == ("R07", ""), v.reason


def test_r07_miss(env):
    env.account(dest_countries={"*"})
    assert env.code("4930123456") == "A00"


# -- R06 destination country -------------------------------------------------------------------------

def test_r06_high_risk_even_when_allowed(env):
    env.account(dest_countries={"*", "CU"})
    v = env.call("5312345678")
    assert (v.code, v.dest_country) == ("R06", "CU") and "high-risk" in v.reason
    for number in ("37120000000", "21620000000", "93700000000", "37250000000"):   # LV TN AF EE
        assert env.code(number) == "R06"


def test_r06_account_destination_list(make):
    env = make({"new_destination_calls": "0"})                # no new-destination calls: the list is a wall
    acc = env.account(dest_countries={"US"})
    v = env.call("442079460000")
    assert (v.code, v.dest_country) == ("R06", "GB") and "allowed destinations" in v.reason
    assert env.code("18765551234") == "R06"                   # NANP Caribbean is not the US
    assert env.code("14165551234") == "A00"                   # Canada is of tier low for a US operator
    assert env.code(US_NUMBER) == "A00"
    env.account(dest_countries={"US", "GB"})
    assert env.code("442079460000", ts=WED_10 + 1) == "A00"
    assert env.code("441481123456") == "R06"                  # Guernsey is not GB
    env.account(dest_countries={"*"})
    assert env.code("18765551234") == "A00"
    assert env.code("5312345678") == "R06"                    # '*' does not open high-risk countries
    assert acc.id == tfps.find_account(env.db, USER, DOMAIN).id


def test_r06_configured_high_risk(make):
    env = make({"high_risk_countries": "JM"})
    env.account(dest_countries={"*"})
    assert env.code("18765551234") == "R06"
    assert env.code("5312345678") == "R06"                    # risk 'high' in the country table
    assert env.code("4930123456") == "A00"


def test_default_destination_countries(make):
    env = make({"default_destination_countries": "US, GB", "new_destination_calls": "0"})
    assert env.code("442079460000") == "A00"
    assert env.code("4930123456") == "R06"


# -- R04 source country -------------------------------------------------------------------------------

def test_r04_source_country(make):
    env = make({"new_destination_calls": "10"})
    env.account()
    ip = "81.2.69.142"
    v = env.call(fr(1), source_ip=ip, source_country="DE")          # a new destination from abroad
    assert (v.code, v.source_country) == ("R04", "DE"), v.reason
    assert env.code(fr(2), source_ip=ip, reputation=rep(ip, score=0, country="DE")) == "R04"
    assert env.code(fr(3), source_ip=ip, source_country="US") == "A00"
    assert env.code(fr(4), source_ip=ip, source_country="") == "A00"            # unknown: R05's business
    assert env.code(fr(5), source_ip=ip, reputation=rep(ip, ok=False, country="DE")) == "A00"
    env.account(source_countries={"US", "DE"})
    assert env.code(fr(6), source_ip=ip, source_country="DE") == "A00"
    env.account(source_countries={"*"})
    assert env.code(fr(7), source_ip=ip, source_country="CN") == "A00"


def test_r04_ip_whitelist_skips(env):
    env.account()
    env.add("white", "ip", "81.2.69.142")
    assert env.code(fr(1), source_ip="81.2.69.142", source_country="DE") == "A00"


@pytest.mark.parametrize("ip", ["192.168.1.20", "10.1.2.3", "127.0.0.1", "fd00::1"])
def test_r04_private_ip_skips(env, ip):
    """Issue: 'R04 ... (private IPs skip)'."""
    env.account()
    v = env.call(fr(1), source_ip=ip, reputation=rep(ip, score=0, country="DE"))
    assert v.code == "A00", v.reason


# -- R05 source country unknown -------------------------------------------------------------------------

def test_r05_require_source_country(make):
    env = make({"require_source_country": "yes"})
    env.account()
    ip = "81.2.69.142"
    v = env.call(us(1), source_ip=ip)
    assert v.code == "R05", v.reason
    assert env.code(us(2), source_ip=ip, source_country="US") == "A00"
    assert env.code(us(3), source_ip="192.168.1.20") == "A00"                   # private
    env.add("white", "ip", ip)
    assert env.code(us(4), source_ip=ip) == "A00"                               # whitelisted


def test_r05_off_by_default(env):
    assert env.code(source_ip="81.2.69.142") == "A00"


# -- R10 / R08 concurrent calls ---------------------------------------------------------------------------

@pytest.mark.parametrize("ts, calls, code", [
    (WED_10, None, "A00"), (WED_10, 1, "A00"), (WED_10, 10, "A00"), (WED_10, 11, "R10"), (WED_10, 500, "R10"),
    (WED_20, 2, "A00"), (WED_20, 3, "R08"), (SAT_10, 3, "R08"),
    (at(2025, 1, 15, 17, 59, 59), 3, "A00"), (at(2025, 1, 15, 18), 3, "R08"),
    (at(2025, 1, 15, 8, 59, 59), 3, "R08"), (at(2025, 1, 15, 9), 3, "A00"),
])
def test_r10_r08_concurrency(env, ts, calls, code):
    env.account()
    v = env.call(ts=ts, concurrent_calls=calls)
    assert v.code == code, v.reason


def test_concurrency_limits_zero_and_unlimited(env):
    env.account(concurrent_calls=0, concurrent_calls_off=None)
    assert env.code(us(1), concurrent_calls=1) == "R10"
    assert env.code(us(2), ts=WED_20, concurrent_calls=1000) == "A00"


# -- R15 calls per minute ---------------------------------------------------------------------------------

def test_r15_max_calls_per_minute(make):
    env = make({"max_calls_per_minute": "3"})
    env.account()
    t0 = WED_10
    assert [env.code(us(i), ts=t0 + i) for i in range(3)] == ["A00"] * 3
    v = env.call(us(3), ts=t0 + 3)
    assert v.code == "R15" and "3 approved calls" in v.reason
    assert env.code(us(4), ts=t0 + 59.9) == "R15"
    assert env.code(us(5), ts=t0 + 60) == "A00"              # the call at t0 left the window
    assert env.code(us(6), ts=t0 + 60.5) == "R15"            # rejected calls did not count, this one did


def test_r15_on_by_default_at_six_calls_a_minute(make):
    env = make({"max_calls_per_minute": str(tfps.Config().policy.max_calls_per_minute)})
    env.account()
    assert [env.code(us(i), ts=WED_10 + i * 0.01) for i in range(8)] == ["A00"] * 6 + ["R15", "R15"]


# -- R11 / R09 daily quotas ---------------------------------------------------------------------------------

def test_r11_business_quota(env):
    acc = env.account(daily_quota=3)
    assert [env.code(us(i), ts=WED_10 + i) for i in range(3)] == ["A00"] * 3
    v = env.call(us(3), ts=WED_10 + 3)
    assert v.code == "R11" and "daily quota of 3" in v.reason
    assert env.code(us(4), ts=at(2025, 1, 15, 17, 59, 59)) == "R11"
    assert env.counter(acc, "2025-01-15", "biz") == 3
    assert env.code(us(5), ts=THU_10) == "A00"                # the next day starts at zero
    assert env.counter(acc, "2025-01-16", "biz") == 1


def test_r09_off_hours_quota_separate(env):
    acc = env.account(daily_quota=2, daily_quota_off=2)
    assert [env.code(us(i), ts=WED_10 + i) for i in range(2)] == ["A00", "A00"]
    assert env.code(us(2), ts=WED_10 + 2) == "R11"
    assert [env.code(us(10 + i), ts=WED_20 + i) for i in range(2)] == ["A00", "A00"]  # own bucket
    v = env.call(us(12), ts=WED_20 + 2)
    assert (v.code, v.off_hours) == ("R09", True)
    assert env.counter(acc, "2025-01-15", "biz") == 2
    assert env.counter(acc, "2025-01-15", "off") == 2
    assert env.code(us(13), ts=at(2025, 1, 16, 8)) == "A00"   # Thursday 08:00: a new day, off hours


def test_quota_1800_edge(env):
    env.account(daily_quota=2, daily_quota_off=1)
    assert env.code(us(1), ts=at(2025, 1, 15, 17, 58)) == "A00"
    assert env.code(us(2), ts=at(2025, 1, 15, 17, 59)) == "A00"
    v = env.call(us(3), ts=at(2025, 1, 15, 17, 59, 59.9))
    assert (v.code, v.off_hours) == ("R11", False)
    v = env.call(us(4), ts=at(2025, 1, 15, 18))
    assert (v.code, v.off_hours) == ("A00", True)
    assert env.code(us(5), ts=at(2025, 1, 15, 18, 0, 1)) == "R09"


def test_quota_holiday_is_off_hours(make):
    env = make({"holidays": "2025-01-15, 2025-12-25"})
    acc = env.account(daily_quota=5, daily_quota_off=1)
    v = env.call(us(1))
    assert (v.code, v.off_hours) == ("A00", True)
    assert env.code(us(2), ts=WED_10 + 1) == "R09"
    assert env.counter(acc, "2025-01-15", "off") == 1
    assert env.call(us(3), ts=THU_10).off_hours is False


def test_quota_weekend_is_off_hours(env):
    env.account(daily_quota=5, daily_quota_off=1)
    assert env.code(us(1), ts=SAT_10) == "A00"
    assert env.code(us(2), ts=SAT_10 + 1) == "R09"


def test_quota_calendar_day_in_timezone(make):
    env = make({"timezone": "America/New_York"})
    acc = env.account(daily_quota_off=1)
    first = env.call(us(1), ts=at(2025, 1, 16, 2))        # 21:00 on the 15th in New York
    assert (first.code, first.off_hours) == ("A00", True)
    assert env.counter(acc, "2025-01-15", "off") == 1
    assert env.code(us(2), ts=at(2025, 1, 16, 4, 59)) == "R09"      # 23:59 New York: same day
    assert env.code(us(3), ts=at(2025, 1, 16, 5)) == "A00"          # midnight New York: next day
    assert env.call(us(4), ts=at(2025, 1, 16, 14, 30)).off_hours is False   # 09:30 New York
    assert env.call(us(5), ts=at(2025, 1, 16, 13, 59)).off_hours is True    # 08:59 New York


def test_business_hours_config(make):
    env = make({"business_hours": "mon-fri 09:00-12:00, mon-fri 13:00-17:00, sat 10:00-14:00"})
    assert env.call(us(1), ts=at(2025, 1, 15, 12, 30)).off_hours is True
    assert env.call(us(2), ts=at(2025, 1, 15, 13)).off_hours is False
    assert env.call(us(3), ts=at(2025, 1, 18, 13, 59)).off_hours is False
    assert env.call(us(4), ts=at(2025, 1, 18, 14)).off_hours is True


def test_business_hours_parse():
    always = tfps.BusinessHours.parse("mon-sun 00:00-24:00")
    assert all(always.contains(dt.datetime(2025, 1, d, h, 59)) for d in range(13, 20) for h in (0, 12, 23))
    wrap = tfps.BusinessHours.parse("fri-mon 09:00-18:00")
    assert wrap.contains(dt.datetime(2025, 1, 19, 9)) and not wrap.contains(dt.datetime(2025, 1, 15, 9))
    assert not wrap.contains(dt.datetime(2025, 1, 17, 9), holidays={dt.date(2025, 1, 17)})
    for bad in ("mon-fri 18:00-09:00", "xyz 09:00-10:00", "mon-fri 9-18", "mon 09:00-25:00"):
        with pytest.raises(ValueError):
            tfps.BusinessHours.parse(bad)


def test_quota_zero_and_unlimited(env):
    acc = env.account(daily_quota=0, daily_quota_off=None)
    assert env.code(us(1)) == "R11"                          # 0 = none allowed
    assert {env.code(us(100 + i), ts=WED_20 + i) for i in range(30)} == {"A00"}
    assert env.counter(acc, "2025-01-15", "biz") == 0
    assert env.counter(acc, "2025-01-15", "off") == 30


def test_only_approved_calls_count(env):
    acc = env.account(daily_quota=2)
    for i in range(5):
        assert env.code("5312345678", ts=WED_10 + i * 40) == "R06"
        assert env.code("9991234567", ts=WED_10 + i * 40) == "R07"
        assert env.code(us(i), ts=WED_10 + i * 40, concurrent_calls=50) == "R10"
    assert env.counter(acc, "2025-01-15", "biz") == 0
    assert [env.code(us(10 + i), ts=WED_10 + 300 + i) for i in range(3)] == ["A00", "A00", "R11"]
    assert env.counter(acc, "2025-01-15", "biz") == 2


def test_reset_account_clears_todays_counters(env):
    acc = env.account(daily_quota=1)
    assert env.code(us(1)) == "A00"
    assert env.code(us(2)) == "R11"
    tfps.reset_account(env.db, env.cfg, acc, WED_10 + 5)
    env.engine.check_for_changes()
    assert env.code(us(3), ts=WED_10 + 6) == "A00"
    assert env.code(us(4), ts=WED_10 + 7) == "R11"


def test_limits_changed_reach_engine(env):
    acc = env.account(daily_quota=1)
    assert env.code(us(1)) == "A00"
    assert env.code(us(2)) == "R11"
    tfps.update_account(env.db, acc, WED_10, daily_quota=3)
    assert env.engine.check_for_changes()
    assert env.code(us(3)) == "A00"
    assert env.code(us(4)) == "A00"
    assert env.code(us(5)) == "R11"
    assert not env.engine.check_for_changes()


# -- learning mode, monitor mode, dry run -------------------------------------------------------------

def test_learning_mode_soft_rules_only_logged(make):
    env = make({"learning_days": "14", "max_calls_per_minute": "100", "new_destination_calls": "1"})
    env.call(us(0))                                             # enrolls the account in learning mode
    acc = tfps.find_account(env.db, USER, DOMAIN)
    assert acc.state == "learning" and acc.learning_until == pytest.approx(WED_10 + 14 * 86400)
    ip = "81.2.69.142"
    soft = [
        ("R04", dict(number=fr(1), source_ip=ip, source_country="DE")),  # a new destination from abroad
        ("R06", dict(number=fr(2))),                                      # its one new-destination call is used
        ("R10", dict(number=us(2), concurrent_calls=11)),
        ("R08", dict(number=us(3), concurrent_calls=3, ts=WED_20)),
    ]
    for code, kw in soft:
        v = env.call(**kw)
        assert v.code == "A00" and v.would is not None and v.would.code == code, (code, v.reason)
        assert "learning" in v.reason
    hard = [
        ("R06", dict(number="5312345678")),                                # high-risk country
        ("R01", dict(number=us(4), user_agent="friendly-scanner")),
        ("R12", dict(number="1212555'1")),
    ]
    for code, kw in hard:
        assert env.code(**kw) == code
    env.add("black", "number", "1900")
    assert env.code("19005551234") == "R03"
    for i in range(5):
        env.call(us(50), ts=WED_10 + 100 + i)
    assert env.code(us(50), ts=WED_10 + 105) == "R13"
    tfps.update_account(env.db, acc, WED_10, end_learning=False, blocked=1)
    env.engine.check_for_changes()
    assert env.code(us(51)) == "R14"
    assert tfps.find_account(env.db, USER, DOMAIN).state == "learning"


def test_learning_mode_quota_and_velocity_are_soft(make):
    env = make({"learning_days": "14", "max_calls_per_minute": "2"})
    env.call(us(0), ts=at(2025, 1, 14, 10))                     # enrolled on Tuesday
    acc = tfps.find_account(env.db, USER, DOMAIN)
    tfps.update_account(env.db, acc, WED_10, end_learning=False, daily_quota=1, daily_quota_off=1)
    env.engine.check_for_changes()
    codes = [env.call(us(i), ts=WED_10 + 61 * i) for i in range(3)]   # 61 s apart: no R15
    assert [v.code for v in codes] == ["A00"] * 3
    assert [v.would.code if v.would else None for v in codes] == [None, "R11", "R11"]
    v = env.call(us(8), ts=WED_10 + 123)
    assert v.code == "A00" and v.would.code == "R11"
    v = env.call(us(9), ts=WED_10 + 124)                          # 2 approved in the last 60 s
    assert v.code == "A00" and v.would.code == "R15"
    v = env.call(us(10), ts=WED_20)
    assert v.code == "A00" and v.would is None
    v = env.call(us(11), ts=WED_20 + 100)
    assert v.code == "A00" and v.would.code == "R09"


def test_learning_mode_r14_unknown_rejects(make):
    env = make({"learning_days": "14", "unknown_accounts": "reject"})
    assert env.code() == "R14"


def test_learning_ends_after_learning_days(make):
    env = make({"learning_days": "1", "new_destination_calls": "0"})
    v = env.call("442079460000")
    assert v.code == "A00" and v.would.code == "R06"
    assert env.code("442079460000", ts=WED_10 + 86400) == "R06"


def test_monitor_mode_never_rejects(env):
    env.account()
    env.add("black", "number", "1900")
    for code, kw in [("R06", dict(number="5312345678")), ("R01", dict(number=us(1), user_agent="sipvicious")),
                     ("R07", dict(number="9991234567")), ("R03", dict(number="19005551234")),
                     ("R12", dict(number=us(3), user="1001'--"))]:
        v = env.call(enforce=False, **kw)
        assert v.code == "A00" and v.would is not None and v.would.code == code, (code, v.reason)
        assert "monitor" in v.reason
    v = env.call(us(2), enforce=False)
    assert v.code == "A00" and v.would is None and v.reason == "approved"


@pytest.mark.parametrize("number", ["1212555'1234", "1212555ABCD"])
def test_monitor_mode_non_dialable_number(env, number):
    """Monitor mode must answer every call: a non-dialable number is a would-be R12, not a crash."""
    env.add("black", "number", "1900")
    v = env.call(number, enforce=False)
    assert v.code == "A00" and v.would is not None and v.would.code == "R12", v.reason


def test_dry_run_writes_nothing(env):
    tables = ("accounts", "daily_counters", "ab_pairs", "account_seen", "call_log", "alert_outbox")
    v = env.call(count=False)
    assert v.code == "A00"
    assert {t: env.count(t) for t in tables} == {t: 0 for t in tables}     # not even enrolled
    acc = env.account(daily_quota=2)
    before = {t: env.count(t) for t in tables}
    for i in range(10):
        assert env.code(ts=WED_10 + i, count=False) == "A00"            # R13 and R11 untouched
    assert env.code("5312345678", count=False) == "R06"
    assert {t: env.count(t) for t in tables} == before
    assert env.counter(acc, "2025-01-15", "biz") == 0


def test_dry_run_reflects_current_state(env):
    env.account(daily_quota=2)
    for i in range(5):
        env.call(ts=WED_10 + i) if i < 2 else env.call(us(i), ts=WED_10 + i)
    assert env.code(us(20), ts=WED_10 + 6, count=False) == "R11"
    assert env.code(us(20), ts=WED_20, count=False) == "A00"
    env.account(daily_quota=100)
    for i in range(3):
        env.call(ts=WED_10 + 10 + i)
    assert env.code(ts=WED_10 + 14, count=False) == "R13"     # would be the 6th call
    assert env.db.scalar("SELECT blocked_until FROM ab_pairs WHERE number = ?", (US_NUMBER,)) == 0  # nothing blocked
    assert env.code(ts=WED_10 + 15) == "R13"


# -- the call log ---------------------------------------------------------------------------------

COLUMNS = ("ts, call_id, account_id, user, domain, from_uri, dialed, number, source_ip, user_agent, source_country, "
           "dest_country, off_hours, concurrent_calls, code, would_code, reason, sip_response, abuse_score, node, latency_ms")


def test_call_log_rows(env):
    acc = env.account(dest_countries={"US"})
    ip = "81.2.69.142"
    v1 = env.call("+1 (212) 555-1234", source_ip=ip, user_agent="Yealink SIP-T46S", concurrent_calls=3,
                  call_id="abc@pbx", from_uri="sip:1001@pbx.example.com", reputation=rep(ip, score=4, country="US"))
    env.engine.record(v1, "302 A00", 0.5)
    v2 = env.call("5312345678", ts=WED_20, source_ip="192.168.1.2", call_id="def@pbx")
    env.engine.record(v2, "302 R06", 1.25)
    assert env.count("call_log") == 0                          # buffered until flush
    env.engine.flush()
    rows = env.db.query(f"SELECT {COLUMNS} FROM call_log ORDER BY ts")
    assert len(rows) == 2
    names = [c.strip() for c in COLUMNS.split(",")]
    r1, r2 = (dict(zip(names, row)) for row in rows)
    assert r1["ts"] == pytest.approx(WED_10)
    assert (r1["call_id"], r1["account_id"], r1["user"], r1["domain"]) == ("abc@pbx", acc.id, USER, DOMAIN)
    assert (r1["from_uri"], r1["dialed"], r1["number"]) == ("sip:1001@pbx.example.com", "+1 (212) 555-1234", US_NUMBER)
    assert (r1["source_ip"], r1["user_agent"], r1["source_country"], r1["dest_country"]) == (ip, "Yealink SIP-T46S", "US", "US")
    assert (r1["off_hours"], r1["concurrent_calls"], r1["code"], r1["would_code"]) == (0, 3, "A00", "")
    assert (r1["reason"], r1["sip_response"], r1["abuse_score"], r1["node"]) == ("approved", "302 A00", 4, "node-t")
    assert r1["latency_ms"] == pytest.approx(0.5)
    assert r2["ts"] == pytest.approx(WED_20)
    assert (r2["code"], r2["dest_country"], r2["off_hours"], r2["sip_response"]) == ("R06", "CU", 1, "302 R06")
    assert "high-risk" in r2["reason"] and r2["abuse_score"] is None and r2["concurrent_calls"] is None
    assert r2["latency_ms"] == pytest.approx(1.25)
    assert env.db.scalar("SELECT last_seen FROM accounts WHERE id = ?", (acc.id,)) == pytest.approx(WED_20)


def test_call_log_would_code_in_monitor_mode(env):
    v = env.call("5312345678", enforce=False)
    env.engine.record(v, "302 A00", 0.1)
    env.engine.flush()
    assert env.db.one("SELECT code, would_code FROM call_log") == ("A00", "R06")


def test_call_log_unknown_number_row(env):
    v = env.call("1212'x")
    env.engine.record(v, "302 R12", 0.1)
    env.engine.flush()
    row = env.db.one("SELECT code, dialed, number, dest_country FROM call_log")
    assert row == ("R12", "1212'x", "", "")


# -- the local day and off hours, remembered per stretch; when the daily jobs are next due ------------

INDEPENDENCE_DAY = dt.date(2024, 7, 4)   # a Thursday, made a holiday below


def local_day(ts, holidays=(INDEPENDENCE_DAY,)):
    """(ISO day, off hours) in New York with mon-fri 09:00-18:00 business hours, from zoneinfo."""
    local = dt.datetime.fromtimestamp(ts, NY)
    return local.date().isoformat(), not (local.weekday() < 5 and local.date() not in holidays and 9 <= local.hour < 18)


def stretch_end(ts, holidays=(INDEPENDENCE_DAY,)):
    """The next moment local_day() may change: 09:00 or 18:00 of a business day, else midnight."""
    local = dt.datetime.fromtimestamp(ts, NY)
    edges = [dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), NY).timestamp()]
    if local.weekday() < 5 and local.date() not in holidays:
        edges += [dt.datetime.combine(local.date(), dt.time(hour), NY).timestamp() for hour in (9, 18)]
    return min(edge for edge in edges if edge > ts)


def edges_of(y, m, d):
    """Both sides of every edge of a New York day: 09:00, 18:00 and midnight."""
    return [at(y, m, d, hh, mm, ss, tz=NY) for hh, mm, ss in
            ((0, 0, 0.0), (8, 59, 59.0), (8, 59, 59.999), (9, 0, 0.0), (12, 0, 0.0), (17, 59, 59.0), (18, 0, 0.0),
             (23, 59, 59.0), (23, 59, 59.999))]


def sweep(first, last, step=433):
    return [t for t in range(int(at(*first, 0, tz=NY)), int(at(*last, 0, tz=NY)), step)]


def test_local_day_and_off_hours_follow_the_clock_whatever_the_order(tmp_path):
    env = Env(tmp_path, f"sqlite://{tmp_path / 'tfps.db'}", {"timezone": "America/New_York", "holidays": "2024-07-04"})
    try:
        named = (edges_of(2024, 7, 3) + edges_of(2024, 7, 4) + edges_of(2024, 7, 5) + edges_of(2024, 7, 6)  # Wed..Sat
                 + edges_of(2024, 3, 8) + edges_of(2024, 3, 10) + edges_of(2024, 3, 11)        # spring forward
                 + [at(2024, 3, 10, 1, 59, 59, tz=NY), at(2024, 3, 10, 3, tz=NY)]
                 + edges_of(2024, 11, 2) + edges_of(2024, 11, 3) + edges_of(2024, 11, 4)       # fall back
                 + [at(2024, 11, 3, 1, 30, tz=NY), at(2024, 11, 3, 1, 30, tz=NY) + 3600])     # 01:30 EDT, 01:30 EST
        dense = sweep((2024, 3, 8, 20), (2024, 3, 12, 4)) + sweep((2024, 11, 1, 20), (2024, 11, 5, 4))
        shuffled = named + dense
        random.Random(9).shuffle(shuffled)
        sequences = [named, named[::-1], dense, dense[::-1], shuffled]
        for times in sequences:
            for ts in times:
                assert env.engine._local_day(ts) == local_day(ts), dt.datetime.fromtimestamp(ts, NY)
                assert env.engine.clock[1] == stretch_end(ts), dt.datetime.fromtimestamp(ts, NY)
        # what the sequences cross
        assert local_day(at(2024, 7, 3, 8, 59, 59, tz=NY)) == ("2024-07-03", True)
        assert local_day(at(2024, 7, 3, 9, tz=NY)) == ("2024-07-03", False)
        assert local_day(at(2024, 7, 4, 12, tz=NY)) == ("2024-07-04", True)
        assert local_day(at(2024, 11, 3, 1, 30, tz=NY) + 3600) == ("2024-11-03", True)
        assert stretch_end(at(2024, 3, 10, 12, tz=NY)) - at(2024, 3, 10, 0, tz=NY) == 23 * 3600
        assert stretch_end(at(2024, 11, 3, 12, tz=NY)) - at(2024, 11, 3, 0, tz=NY) == 25 * 3600
    finally:
        env.db.close()


def test_local_day_follows_a_reloaded_timezone(tmp_path):
    """The remembered stretch belongs to the configuration: a reload (SIGHUP) starts afresh."""
    env = Env(tmp_path, f"sqlite://{tmp_path / 'tfps.db'}", {"timezone": "America/New_York"})
    try:
        ts = at(2024, 7, 3, 3, 30)                     # 23:30 on the 2nd in New York
        assert env.engine._local_day(ts) == ("2024-07-02", True)
        env.cfg.set("policy", "timezone", "Asia/Tokyo")
        env.engine.reload()
        assert env.engine._local_day(ts + 60) == ("2024-07-03", False)      # 12:31 on a Wednesday in Tokyo...
        env.cfg.set("policy", "business_hours", "sat-sun 10:00-16:00")
        env.engine.reload()
        assert env.engine._local_day(ts + 120) == ("2024-07-03", True)      # ... now off hours
    finally:
        env.db.close()


def test_run_due_returns_the_next_learning_end_or_daily_job(make):
    env = make({"timezone": "America/New_York", "learning_days": "14"})   # train_at 03:30, summary_at 08:00
    created = at(2024, 2, 25, 6, tz=NY)
    learner = env.account("learner", now=created)
    env.account("veteran", now=created - 30 * 86400, daily_quota=50)  # enforcing: its old learning_until is over
    assert learner.state == "learning" and learner.learning_until == created + 14 * 86400
    learning_end = learner.learning_until                               # Sunday 2024-03-10, 07:00 EDT
    jobs = tfps.DailyJobs(env.cfg, env.db, env.engine)

    def locks():
        return {r[0] for r in env.db.query("SELECT name FROM locks")}

    # Saturday 2024-03-09 (EST); Sunday 2024-03-10 is the 23-hour day
    assert jobs.run_due(at(2024, 3, 9, 2, tz=NY)) == at(2024, 3, 9, 3, 30, tz=NY)
    assert locks() == set()
    assert jobs.run_due(at(2024, 3, 9, 3, 29, 59, tz=NY)) == at(2024, 3, 9, 3, 30, tz=NY)
    assert jobs.run_due(at(2024, 3, 9, 3, 30, tz=NY)) == at(2024, 3, 9, 8, tz=NY)        # trained; the summary next
    assert locks() == {"train:2024-03-09", "purge:2024-03-09"}
    assert jobs.run_due(at(2024, 3, 9, 7, 59, 59, tz=NY)) == at(2024, 3, 9, 8, tz=NY)
    assert jobs.run_due(at(2024, 3, 9, 8, tz=NY)) == at(2024, 3, 10, 3, 30, tz=NY)       # all done until tomorrow
    assert "summary:2024-03-09" in locks()
    assert jobs.run_due(at(2024, 3, 10, 3, 30, tz=NY)) == learning_end                 # before the summary
    assert tfps.find_account(env.db, "learner", DOMAIN).state == "learning"
    assert jobs.run_due(learning_end - 0.5) == learning_end
    assert jobs.run_due(learning_end) == at(2024, 3, 10, 8, tz=NY)
    assert tfps.find_account(env.db, "learner", DOMAIN).state == "enforcing"
    assert jobs.run_due(at(2024, 3, 10, 8, tz=NY)) == at(2024, 3, 11, 3, 30, tz=NY)
    # another node's jobs: nothing left to do today, the same next moment
    other = tfps.DailyJobs(env.cfg, env.db, env.engine)
    assert other.run_due(at(2024, 3, 10, 9, tz=NY)) == at(2024, 3, 11, 3, 30, tz=NY)


# -- R16 new destination countries in quick succession ----------------------------------------------

FR, FR_MOBILE, DE, PL, IT, BR, JP = ("33123456789", "33612345678", "4930123456", "48221234567", "390612345678",
                                     "5511987654321", "81312345678")


def test_r16_the_third_new_country_within_10_minutes_blocks_the_account_until_anomaly_block_ends(env):
    assert [env.code(n, ts=WED_10 + i * 60) for i, n in enumerate((FR, DE, FR_MOBILE))] == ["A00"] * 3  # FR twice: 2 countries
    v = env.call(PL, ts=WED_10 + 300)
    assert v.code == "R16", v.reason
    assert "called 3 new destination countries within 10 minutes (DE,FR,PL" in v.reason
    assert "blocked until 2025-01-15 11:05:00 UTC" in v.reason
    assert v.undo.startswith(f"{tfps.PROG} unblock {USER} {DOMAIN}  (if the calls are expected")
    assert f"allow {USER} {DOMAIN} --dest DE,FR,PL" in v.undo
    assert tfps.find_account(env.db, USER, DOMAIN).blocked_until == WED_10 + 300 + 3600
    blocked = env.call(us(1), ts=WED_10 + 301)                 # every call of the account, the home country's too
    assert blocked.code == "R16" and "blocked until 2025-01-15 11:05:00 UTC" in blocked.reason
    assert blocked.undo == f"{tfps.PROG} unblock {USER} {DOMAIN}"
    assert env.code("911", ts=WED_10 + 302) == "A00"           # emergency numbers never
    assert env.code(us(1), user="1002", ts=WED_10 + 303) == "A00"  # other accounts are not blocked
    assert env.code(us(2), ts=WED_10 + 3899) == "R16"
    assert env.code(us(3), ts=WED_10 + 3900) == "A00"          # over by itself
    assert env.code(IT, ts=WED_10 + 3901) == "A00"             # calls before the block count no more


def test_r16_two_new_countries_do_not_block_and_the_window_slides(env):
    assert env.code(FR, ts=WED_10) == "A00"
    assert env.code(DE, ts=WED_10 + 60) == "A00"
    assert env.code(PL, ts=WED_10 + 600) == "A00"              # FR's call is 10 minutes old: two in the window
    assert env.code(IT, ts=WED_10 + 659) == "R16"               # DE, PL and IT
    assert tfps.find_account(env.db, USER, DOMAIN).blocked_until == WED_10 + 659 + 3600


def test_r16_counts_only_new_countries(make):
    env = make({"anomaly_block": "30m"})
    env.add("white", "number", "4822")
    env.account(dest_countries={"US", "FR"})                   # allowed by hand
    tfps.update_account_row(env.db, env.account().id, {"dest_countries": "US,FR,DE"}, WED_10)   # DE learned by training
    env.engine.check_for_changes()
    calls = [FR, DE, "14165551234", "17875551234", PL, IT, BR, JP]   # allowed, learned, CA and PR (low),
    codes = [env.code(n, ts=WED_10 + i) for i, n in enumerate(calls)]  # whitelisted, then new ones
    assert codes == ["A00", "A00", "A00", "A00", "A00", "A00", "A00", "R16"]
    assert tfps.find_account(env.db, USER, DOMAIN).blocked_until == WED_10 + 7 + 1800


def test_r16_counts_approved_calls_only(make):
    env = make({"new_destination_calls": "0"})                 # every new country is R06: nothing got through
    assert [env.code(n, ts=WED_10 + i) for i, n in enumerate((FR, DE, PL, IT))] == ["R06"] * 4
    assert tfps.find_account(env.db, USER, DOMAIN).blocked_until is None


def test_r16_is_enforced_for_a_new_account_while_it_learns_and_soft_for_those_a_new_installation_finds(make):
    env = make({"learning_days": "14"})
    found = [env.call(n, user="found", ts=WED_10 + i) for i, n in enumerate((FR, DE, PL, IT))]
    assert [v.code for v in found] == ["A00"] * 4 and found[2].would.code == "R16", "every country is new to it yet"
    assert tfps.find_account(env.db, "found", DOMAIN).blocked_until is None
    later = WED_10 + 15 * 86400                                 # past learning_days of the first account
    assert [env.code(n, user="fresh", ts=later + i) for i, n in enumerate((FR, DE, PL))] == ["A00", "A00", "R16"]
    assert tfps.find_account(env.db, "fresh", DOMAIN).learning(later)
    assert [env.code(n, user="found", ts=later + 3600 + i) for i, n in enumerate((BR, JP, "61212345678"))] == \
        ["A00", "A00", "R16"], "enforced once it has learned"


def test_r16_is_only_logged_in_monitor_mode(env):
    monitor = [env.call(n, ts=WED_10 + i, enforce=False) for i, n in enumerate((FR, DE, PL, IT))]
    assert [v.code for v in monitor] == ["A00"] * 4 and monitor[2].would.code == "R16"
    assert tfps.find_account(env.db, USER, DOMAIN).blocked_until is None


def test_r16_off_with_zero(make):
    env = make({"new_destinations_per_10min": "0"})
    assert [env.code(n, ts=WED_10 + i) for i, n in enumerate((FR, DE, PL, IT, BR))] == ["A00"] * 5


def test_r16_unblock_lifts_the_block_at_once_and_block_stays_the_administrators(env):
    assert [env.code(n, ts=WED_10 + i) for i, n in enumerate((FR, DE, PL))] == ["A00", "A00", "R16"]
    acc = tfps.find_account(env.db, USER, DOMAIN)
    details = tfps.account_details(env.db, env.cfg, acc, WED_10 + 10)[0]
    assert details["blocked"] is False and details["blocked_until"] == "2025-01-15 11:00:02 UTC"
    record = [r for r in tfps.account_records(env.db, env.cfg, WED_10 + 10) if r["user"] == USER][0]
    assert record["blocked_until"] == "2025-01-15 11:00:02 UTC"
    assert dict(tfps.accounts_by_state(env.db, WED_10 + 10))["blocked"] == 1
    tfps.set_blocked(env.db, acc, False, WED_10 + 10)
    assert env.engine.check_for_changes()
    assert env.code(us(1), ts=WED_10 + 11) == "A00"
    assert env.code(IT, ts=WED_10 + 12) == "A00"              # the countries before the unblock count no more
    acc = tfps.find_account(env.db, USER, DOMAIN)
    assert tfps.account_details(env.db, env.cfg, acc, WED_10 + 13)[0]["blocked_until"] == ""
    tfps.set_blocked(env.db, acc, True, WED_10 + 13)
    env.engine.check_for_changes()
    assert env.code(us(2), ts=WED_10 + 7200) == "R14"          # the administrator's block does not end by itself
    tfps.set_blocked(env.db, tfps.find_account(env.db, USER, DOMAIN), False, WED_10 + 7201)
    env.engine.check_for_changes()
    assert env.code(us(3), ts=WED_10 + 7202) == "A00"


def test_r16_alert_says_what_happened_and_how_to_undo_it(env):
    for i, number in enumerate((FR, DE, PL)):
        v = env.call(number, ts=WED_10 + i)
        env.engine.record(v, f"302 {v.code}", 1.0)
    event = [e for e in env.engine.alerts.events if e.kind == "rejection"][-1]
    assert event.rule == "R16" and "3 new destination countries within 10 minutes" in event.body
    assert f"If this is a false positive: {tfps.PROG} unblock {USER} {DOMAIN}" in event.body


@pytest.mark.parametrize("lease", [0, 4])
def test_r16_block_reaches_another_engine_on_the_same_database(tmp_path, db_url, lease):
    """A second server (or worker) sharing the database follows the block through the accounts
    serial; with quota leases each worker counts the new countries of the calls it answers."""
    cfg = tfps.Config.load(write_config(tmp_path / "r16.conf", {"policy": {"learning_days": "0", "max_calls_per_minute": "0"}}))
    dbs = [tfps.open_database(db_url) for _ in range(2)]
    try:
        engines = [tfps.Engine(cfg, db, counters=tfps.LeasedCounters(db, f"node-{i}", lease, 30.0) if lease else None)
                   for i, db in enumerate(dbs)]
        first, second = engines
        now = time.time()
        assert first.decide(tfps.CallAttempt(USER, DOMAIN, us(1), ts=now)).code == "A00"
        first.flush(now)
        assert second.decide(tfps.CallAttempt(USER, DOMAIN, us(2), ts=now + 1)).code == "A00"   # the account cached there
        second.flush(now + 1)
        codes = [first.decide(tfps.CallAttempt(USER, DOMAIN, n, ts=now + 2 + i)).code for i, n in enumerate((FR, DE, PL))]
        assert codes == ["A00", "A00", "R16"]
        first.flush(now + 5)
        assert second.check_for_changes()
        v = second.decide(tfps.CallAttempt(USER, DOMAIN, us(3), ts=now + 6))
        assert v.code == "R16" and "blocked until" in v.reason
    finally:
        for db in dbs:
            db.close()


def test_r16_keys_are_checked(tmp_path):
    for key, value, needle in (("new_destinations_per_10min", "-1", "new_destinations_per_10min"),
                               ("new_destinations_per_10min", "three", "new_destinations_per_10min"),
                               ("anomaly_block", "10s", "anomaly_block"), ("anomaly_block", "31d", "anomaly_block"),
                               ("anomaly_block", "soon", "anomaly_block")):
        path = write_config(tmp_path / "bad.conf", {"policy": {"learning_days": "0", key: value}})
        with pytest.raises(tfps.ConfigError, match=rf"bad\.conf:3: .*{needle}"):
            tfps.Config.load(path)
    cfg = tfps.Config.load(write_config(tmp_path / "ok.conf", {"policy": {"anomaly_block": "2h", "new_destinations_per_10min": "5"}}))
    assert (cfg.policy.anomaly_block, cfg.policy.new_destinations_per_10min) == (7200.0, 5)


def test_r16_from_memory_blocks_in_this_engine_and_touches_no_database(env):
    assert env.code(us(1), ts=WED_10) == "A00"                 # the account is known and in memory
    env.engine.flush()
    env.db.close()  # every statement would fail now
    codes = [env.engine.decide_from_memory(tfps.CallAttempt(USER, DOMAIN, n, ts=WED_10 + 1 + i)).code
             for i, n in enumerate((FR, DE, PL, us(2)))]
    assert codes == ["A00", "A00", "R16", "R16"]
    env.db = tfps.Database(env.db.url)
    env.engine.use_database(env.db)
    assert tfps.find_account(env.db, USER, DOMAIN).blocked_until is None


def test_r16_reset_forgets_the_new_countries_a_leasing_server_keeps_in_memory(tmp_path, db_url):
    cfg = tfps.Config.load(write_config(tmp_path / "r16.conf", {"policy": {"learning_days": "0", "max_calls_per_minute": "0"}}))
    db = tfps.open_database(db_url)
    try:
        engine = tfps.Engine(cfg, db, counters=tfps.LeasedCounters(db, "node-r", 4, 30.0))
        now = time.time()
        assert [engine.decide(tfps.CallAttempt(USER, DOMAIN, n, ts=now + i)).code for i, n in enumerate((FR, DE))] == ["A00"] * 2
        engine.flush(now + 2)
        tfps.reset_account(db, cfg, tfps.find_account(db, USER, DOMAIN), now + 3)
        assert engine.check_for_changes()
        assert engine.decide(tfps.CallAttempt(USER, DOMAIN, PL, ts=now + 4)).code == "A00"
        assert engine.decide(tfps.CallAttempt(USER, DOMAIN, IT, ts=now + 5)).code == "A00"
        assert engine.decide(tfps.CallAttempt(USER, DOMAIN, BR, ts=now + 6)).code == "R16"
    finally:
        db.close()
