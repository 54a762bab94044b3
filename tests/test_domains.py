"""Policy hierarchy: [policy] defaults -> domain (customer) -> account. The engine through the
module on both backends (a real SQLite file, a fresh real MariaDB database), training on a
synthetic history, and the `domain` verbs and `show` through the CLI as a subprocess."""

import json

import pytest

import tfps
from conftest import run_cli, write_config
from test_training import NOW, TRAIN_POLICY, build_history, make_config

WED_10 = 1736935200.0  # 2025-01-15 10:00 UTC, business hours
WED_22 = WED_10 + 12 * 3600  # off hours
DOMAIN, OTHER = "acme.example", "other.example"


class Env:
    def __init__(self, tmp_path, db_url, **policy):
        conf = {"policy": {"learning_days": "0", "home_country": "GB", "new_destination_calls": "0", **policy}}
        self.cfg = tfps.Config.load(write_config(tmp_path / "domains.conf", conf))
        self.db = tfps.open_database(db_url)
        self.engine = tfps.Engine(self.cfg, self.db)
        self.clock = WED_10

    def call(self, number, user="1001", domain=DOMAIN, calls=None, ts=None):
        self.clock += 1
        return self.engine.decide(tfps.CallAttempt(user, domain, number, concurrent_calls=calls, ts=ts or self.clock))

    def set_domain(self, domain=DOMAIN, **fields):
        tfps.update_domain(self.db, domain, fields, WED_10)
        self.engine.check_for_changes()

    def set_account(self, user="1001", domain=DOMAIN, **fields):
        if tfps.load_account(self.db, user, domain) is None:
            tfps.insert_account(self.db, tfps.default_account(self.cfg, user, domain, WED_10 - 86400))
        tfps.update_account(self.db, tfps.find_account(self.db, user, domain), WED_10, **fields)
        self.engine.check_for_changes()


@pytest.fixture
def env(tmp_path, db_url):
    made = Env(tmp_path, db_url)
    yield made
    made.db.close()


def test_a_domain_limit_applies_to_its_accounts_unless_the_account_sets_its_own(env):
    assert env.call("442079460000", calls=5).code == "A00"          # [policy] default: 10 concurrent calls
    env.set_domain(concurrent_calls=3)
    assert env.call("442079460000", calls=5).code == "R10"          # the domain's 3
    assert env.call("442079460000", user="2002", calls=5).code == "R10"   # a new account of the domain too
    assert env.call("442079460000", domain=OTHER, calls=5).code == "A00"  # another domain keeps the default
    env.set_account(concurrent_calls=6)
    assert env.call("442079460000", calls=5).code == "A00"          # the account's own value wins
    env.set_domain(concurrent_calls=None)                           # unlimited on the domain
    assert env.call("442079460000", user="2002", calls=500).code == "A00"
    env.set_domain(concurrent_calls=tfps.INHERIT)                   # back to the default
    assert env.call("442079460000", user="2002", calls=11).code == "R10"


def test_a_domain_daily_quota_off_hours_is_inherited(env):
    env.set_domain(daily_quota_off=2)
    codes = [env.call("442079460000", ts=WED_22 + k).code for k in range(3)]
    assert codes == ["A00", "A00", "R09"]


def test_domain_destinations_replace_the_default_and_deny_wins(env):
    assert env.call("33123456789").code == "R06"                    # France: medium, not allowed by default
    env.set_domain(dest_countries={"GB", "FR"})
    assert env.call("33123456789").code == "A00"
    assert env.call("33123456789", domain=OTHER).code == "R06"
    env.set_domain(dest_countries={"GB", "!FR"})
    assert env.call("33123456789").code == "R06"
    env.set_account(dest_countries={"GB", "FR"})                    # set on the account: the account's list
    assert env.call("33123456789").code == "A00"


def test_domain_source_countries_are_inherited(tmp_path, db_url):
    env = Env(tmp_path, db_url, new_destination_calls="3")
    try:
        # France: a new destination, which a caller from a source country not allowed may not call
        attempt = dict(user="1001", domain=DOMAIN, number="33123456789", source_country="US")
        assert env.engine.decide(tfps.CallAttempt(**attempt, ts=WED_10 + 1)).code == "R04"
        env.set_domain(source_countries={"GB", "US"})
        assert env.engine.decide(tfps.CallAttempt(**attempt, ts=WED_10 + 2)).code == "A00"
    finally:
        env.db.close()


def test_a_running_engine_follows_domain_changes_through_the_accounts_serial(env, tmp_path, db_url):
    assert env.call("442079460000", calls=4).code == "A00"
    env.engine.flush()  # the verdict's SQLite group transaction ends
    other = tfps.open_database(db_url)  # another process (the CLI) changes the domain
    try:
        tfps.update_domain(other, DOMAIN, {"concurrent_calls": 2}, WED_10)
        if other.in_transaction:
            other.commit()
    finally:
        other.close()
    assert env.call("442079460000", calls=4).code == "A00"          # cached until the serial is read
    assert env.engine.check_for_changes()
    assert env.call("442079460000", calls=4).code == "R10"


def test_effective_policy_says_where_each_value_comes_from(env):
    p = env.cfg.policy
    env.set_account(daily_quota=50)
    tfps.update_account_row(env.db, tfps.find_account(env.db, "1001", DOMAIN).id, {"daily_quota_off": 7}, WED_10)  # learned
    env.set_domain(concurrent_calls=3, daily_spend=20.0)
    acc = tfps.find_account(env.db, "1001", DOMAIN)
    effective, sources = tfps.effective_policy(acc, tfps.find_domain(env.db, DOMAIN), p)
    assert sources == {"concurrent_calls": "domain", "concurrent_calls_off": "default", "daily_quota": "account",
                       "daily_quota_off": "learned", "daily_spend": "domain", "dest_countries": "default",
                       "source_countries": "default"}
    assert (effective.concurrent_calls, effective.daily_quota, effective.daily_quota_off, effective.daily_spend) == (3, 50, 7, 20.0)


def test_migration_adds_the_domain_table_and_retires_the_old_accounts_trigger(db_url):
    db = tfps.open_database(db_url)
    try:
        db.execute("DROP TABLE domains")
        db.execute("DROP TABLE spend_counters")
        db.execute("UPDATE meta SET value = 2 WHERE name = 'schema_version'")
        body = "UPDATE meta SET value = value + 1 WHERE name = 'accounts_serial'"
        db.execute(f"CREATE TRIGGER accounts_changed AFTER UPDATE ON accounts FOR EACH ROW "
                   + (f"BEGIN {body}; END" if db.dialect == "sqlite" else body))
        old, new, changes = db.initdb()
        assert old == 2 and new == db.schema_version()
        assert {"domains", "spend_counters"} <= db.names("table")
        assert "accounts_changed" not in db.names("trigger") and "dropped trigger accounts_changed" in changes
        assert {"accounts_revised", "domains_changed"} <= db.names("trigger")
    finally:
        db.close()


# -- training: destinations the domain's accounts call regularly ------------------------------

def test_training_learns_a_domains_regular_destinations_for_its_quiet_and_new_accounts(tmp_path, db_url):
    cfg, _path = make_config(tmp_path, **TRAIN_POLICY, new_destination_calls=0, learning_days=0)
    db = tfps.open_database(db_url)
    try:
        build_history(db, cfg)   # tokyo.example: alice, bob and carol call GB; DE once, CU high risk
        tfps.train(cfg, db, NOW)
        domain = tfps.find_domain(db, "tokyo.example")
        assert domain.learned_dest == {"GB", "JP"}   # JP: home, called by all
        engine = tfps.Engine(cfg, db)
        new = engine.decide(tfps.CallAttempt("frank", "tokyo.example", "442079460000", ts=NOW))
        assert new.code == "A00" and "GB" in new.account.dest_countries
        assert engine.decide(tfps.CallAttempt("frank", "osaka.example", "442079460000", ts=NOW + 1)).code == "R06"
        assert engine.decide(tfps.CallAttempt("frank", "tokyo.example", "4930123456", ts=NOW + 2)).code == "R06"
        tfps.update_domain(db, "tokyo.example", {"dest_countries": {"JP", "!GB"}}, NOW)
        engine.check_for_changes()
        assert engine.decide(tfps.CallAttempt("frank", "tokyo.example", "442079460000", ts=NOW + 3)).code == "R06"
    finally:
        db.close()


def test_domain_destinations_need_two_accounts_and_a_quarter_of_the_active_ones(tmp_path):
    cfg = tfps.Config.load(write_config(tmp_path / "t.conf", {"policy": {"train_min_country_calls": "3"}}))

    def account(id_, domain, **dst):
        acc = tfps.default_account(cfg, f"u{id_}", domain, 0)
        acc.id = id_
        history = tfps.AccountHistory(0)
        history.dst.update(dst)
        return acc, history

    pairs = [account(1, "a.example", FR=5), account(2, "a.example", FR=3, DE=9), account(3, "b.example", FR=9),
             *(account(10 + k, "c.example", FR=4) for k in range(2)), *(account(20 + k, "c.example", JP=1) for k in range(8))]
    learned = tfps.domain_destinations(cfg, [a for a, _ in pairs], {a.id: h for a, h in pairs}, high_risk={"DE"})
    assert learned == {"a.example": {"FR"}, "b.example": set(), "c.example": set()}


# -- the CLI ------------------------------------------------------------------------------------

def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def usage_error(result):
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_cli_domain_set_show_list_allow_deny(db_url):
    ok(run_cli("add", "1001", DOMAIN, "--daily-quota", "50", db=db_url))
    out = ok(run_cli("domain", "set", DOMAIN, "--concurrent", "3", "--daily-spend", "20", "--dest", "GB,FR", db=db_url)).stdout
    assert "concurrent_calls 3" in out and "daily_spend 20.0" in out
    ok(run_cli("domain", "allow", "ACME.example", "--dest", "DE", db=db_url))
    ok(run_cli("domain", "deny", DOMAIN, "--dest", "FR", db=db_url))
    shown = json.loads(ok(run_cli("domain", "show", DOMAIN, "--json", db=db_url)).stdout)
    fields = {f["field"]: f for f in shown["fields"]}
    assert shown["accounts"] == 1
    assert fields["concurrent_calls"] == {"field": "concurrent_calls", "domain": 3, "effective": 3, "from": "domain"}
    assert fields["daily_quota"]["domain"] == "inherit" and fields["daily_quota"]["from"] == "default"
    assert fields["dest_countries"]["effective"] == "!FR,DE,GB"
    account = json.loads(ok(run_cli("show", "1001", DOMAIN, "--json", db=db_url)).stdout)
    assert (account["concurrent_calls"], account["daily_quota"], account["daily_spend"]) == (3, 50, 20.0)
    assert account["sources"]["concurrent_calls"] == "domain" and account["sources"]["daily_quota"] == "account"
    text = ok(run_cli("show", "1001", DOMAIN, db=db_url)).stdout
    assert "concurrent_calls         3  (domain)" in text and "daily_quota              50  (account)" in text
    ok(run_cli("set", "1001", DOMAIN, "--daily-quota", "inherit", db=db_url))
    account = json.loads(ok(run_cli("show", "1001", DOMAIN, "--json", db=db_url)).stdout)
    assert account["sources"]["daily_quota"] == "default" and "daily_quota" not in account["pinned"]
    ok(run_cli("domain", "set", DOMAIN, "--concurrent", "unlimited", "--dest", "inherit", db=db_url))
    listed = json.loads(ok(run_cli("domain", "list", "--json", db=db_url)).stdout)
    assert listed == [{"domain": DOMAIN, "accounts": 1, "concurrent_calls": "unlimited", "concurrent_calls_off": "inherit",
                       "daily_quota": "inherit", "daily_quota_off": "inherit", "daily_spend": 20.0,
                       "dest_countries": "inherit", "source_countries": "inherit", "learned_dest": ""}]
    assert DOMAIN in ok(run_cli("domain", "list", db=db_url)).stdout


@pytest.mark.parametrize("args, message", [
    (["domain", "set", DOMAIN, "--concurrent", "lots"], "or unlimited, or inherit"),
    (["domain", "set", DOMAIN, "--daily-spend", "-1"], "--daily-spend"),
    (["domain", "set", DOMAIN, "--dest", "UK"], "nearest: GB"),
    (["domain", "set", DOMAIN], "nothing to set"),
    (["domain", "allow", DOMAIN], "nothing to allow"),
    (["domain", "show", "a@b"], "must not be empty or contain '@'"),
    (["domain", "frobnicate", DOMAIN], "invalid choice"),
    (["domain"], "argument ACTION"),
])
def test_cli_domain_bad_input_is_one_line_and_exit_2(sqlite_url, args, message):
    assert message in usage_error(run_cli(*args, db=sqlite_url))
