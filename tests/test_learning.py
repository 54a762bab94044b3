"""Learning mode is no free pass: an account new to a running installation is held to its
destination tiers and to the [policy] learning_* caps while it learns; the customers a new
installation finds (enrolled within learning_days of the first account) learn freely. The engine
through the module on both backends (a real SQLite file, a fresh real MariaDB database)."""

import pytest

import tfps
from conftest import older_accounts_trigger, run_cli
from test_policy import DAY, DOMAIN, WED_10, Env
from test_replay import replay_config, replay_json, write_cdr

LATER = WED_10 + 15 * DAY          # past the first account's learning_days: a new account here is held
SAT_LATER = LATER + 3 * DAY        # a Saturday: off hours
PREMIUM = ["37090123456", "38190123456", "48704123456", "43900123456", "67573123456", "4990012345678"]
IRSF_COUNTRIES = ["252611234567", "23276123456", "263771234567", "2207712345"]  # SO, SL, ZW, GM: tier medium


@pytest.fixture
def env(tmp_path, db_url):
    env = Env(tmp_path, db_url, {"learning_days": "14"})
    env.call("12125551234", user="first", ts=WED_10)        # the installation's first account
    yield env
    env.db.close()


def decide(env, user, number, ts, **kw):
    return env.engine.decide(tfps.CallAttempt(user, DOMAIN, number, ts=ts, **kw))


def test_a_fresh_account_pumping_premium_destinations_is_stopped_within_three_calls(env):
    """One premium number after another, minutes apart: national premium-rate ranges are of tier
    high (R06), and after them a new country gets no new-destination allowance (R06 too);
    numbers of new countries outside them block the account at the third country (R16); calls
    to one country, each still up when the next starts, meet the learning cap of concurrent
    calls (R10)."""
    premium = [decide(env, "5001", number, LATER + 200 * i) for i, number in enumerate(PREMIUM)]
    assert [v.code for v in premium] == ["R06"] * 6
    assert "no new-destination calls since it dialed a high-risk destination" in premium[4].reason   # +675 73: no premium range
    spread = [decide(env, "5011", number, LATER + 200 * i).code for i, number in enumerate(IRSF_COUNTRIES)]
    assert spread == ["A00", "A00", "R16", "R16"]
    one_country = [decide(env, "5012", f"25261123456{i}", LATER + 200 * i, concurrent_calls=i + 1) for i in range(3)]
    assert [v.code for v in one_country] == ["A00", "A00", "R10"]
    assert "learning_concurrent_calls" in one_country[2].reason and one_country[2].undo.startswith(f"{tfps.PROG} learn 5012")


def test_new_destinations_are_enforced_for_a_new_account_while_it_learns(env):
    codes = [decide(env, "5002", f"3312345678{i}", LATER + 100 * i).code for i in range(4)]
    assert codes == ["A00", "A00", "A00", "R06"]


def test_calls_per_minute_and_off_hours_calls_of_a_new_account_are_capped(env):
    codes = [decide(env, "5003", f"1212555{i:04d}", LATER + 10 * i).code for i in range(5)]
    assert codes == ["A00", "A00", "A00", "R15", "R15"]
    assert decide(env, "5003", "12125559999", LATER + 71).code == "A00"     # the first call left the window
    off = [decide(env, "5004", f"1212556{i:04d}", SAT_LATER + 100 * i) for i in range(7)]
    assert [v.code for v in off] == ["A00"] * 5 + ["R09", "R09"]
    assert "learning_daily_quota_off" in off[5].reason


def test_the_accounts_a_new_installation_finds_learn_freely(env):
    """Enrolled within learning_days of the first account: a dialer already calling is not capped."""
    start = WED_10 + 3600
    verdicts = [decide(env, "dialer", f"3312345{i:04d}", start + 5 * i, concurrent_calls=i + 1) for i in range(8)]
    assert all(v.code == "A00" for v in verdicts)
    assert verdicts[-1].would.code in ("R06", "R10")


def test_caps_end_with_learning(env):
    decide(env, "5005", "12125551234", LATER)
    acc = tfps.find_account(env.db, "5005", DOMAIN)
    tfps.update_account(env.db, acc, LATER, end_learning=True)       # `learn --stop`
    env.engine.check_for_changes()
    assert decide(env, "5005", "12125551235", LATER + 1, concurrent_calls=5).code == "A00"


def test_raised_caps_and_the_installation_start_survive_a_restart(env, tmp_path):
    env.cfg.replace("policy", "learning_concurrent_calls", 4)
    engine = tfps.Engine(env.cfg, env.db)                                 # a restart: the first account is read back
    assert engine.first_enrolled == pytest.approx(WED_10)
    calls = [engine.decide(tfps.CallAttempt("5006", DOMAIN, f"1212555{i:04d}", ts=LATER + 100 * i, concurrent_calls=i + 1))
             for i in range(5)]
    assert [v.code for v in calls] == ["A00"] * 4 + ["R10"]


@pytest.mark.parametrize("key, value", [("learning_concurrent_calls", "-1"), ("learning_calls_per_minute", "many"),
                                        ("learning_daily_quota_off", "1.5")])
def test_a_bad_cap_names_its_key(tmp_path, key, value):
    path = tmp_path / "bad.conf"
    path.write_text(f"[policy]\n{key} = {value}\n", encoding="utf-8")
    with pytest.raises(tfps.ConfigError, match=key):
        tfps.Config.load(path)


def test_a_sharded_replay_holds_the_same_new_accounts_as_one_process(tmp_path):
    """The installation starts with the CDR in every shard: a domain whose first call comes three
    weeks in is new there too."""
    header = "time,user,domain,number,source_ip,user_agent,concurrent_calls,source_country,label"
    lines = ["2024-03-04T09:00:00+00:00,first,pbx.example.com,+12125551234,,,1,US,legit"]
    lines += [f"2024-03-25T10:0{i}:00+00:00,5001,fresh.example.net,+1212555{i:04d},,,{i + 1},US,fraud" for i in range(4)]
    cdr = write_cdr(tmp_path / "shards.csv", header, lines)
    conf = replay_config(tmp_path)
    one, two = (replay_json(cdr, conf, "--jobs", jobs) for jobs in ("1", "2"))
    assert one == two and one["codes"] == {"A00": 3, "R10": 2}


def test_replay_names_the_rules_that_blocked_legitimate_calls(tmp_path):
    """A labeled CDR: a new desk phone, three weeks after the first account, with three calls up
    at once is blocked R10; the report and the CLI name the rule."""
    header = "time,user,domain,number,source_ip,user_agent,concurrent_calls,source_country,label"
    lines = ["2024-03-04T09:00:00+00:00,first,pbx.example.com,+12125551234,,,1,US,legit"]
    lines += [f"2024-03-25T10:0{i}:00+00:00,desk,pbx.example.com,+1212555{i:04d},,,{i + 1},US,legit" for i in range(4)]
    cdr = write_cdr(tmp_path / "labeled.csv", header, lines)
    conf = replay_config(tmp_path)
    report = replay_json(cdr, conf)
    assert report["legit_blocked"] == 2 and report["legit_blocked_by_code"] == {"R10": 2}
    r = run_cli("replay", str(cdr), config=conf)
    assert r.returncode == 0 and "rules that blocked legitimate calls, most first: R10 2" in r.stdout


# -- velocity: R15 on by default, a calls-per-minute limit learned per account ---------------------

def test_velocity_is_on_by_default_and_only_logged_while_an_installation_learns(tmp_path, db_url):
    assert tfps.Config().policy.max_calls_per_minute == 6
    env = Env(tmp_path, db_url, {})
    try:
        codes = [env.call(f"1212555{i:04d}", ts=WED_10 + i).code for i in range(8)]
        assert codes == ["A00"] * 6 + ["R15", "R15"]
    finally:
        env.db.close()


def test_training_learns_a_dialers_calls_per_minute_and_r15_follows_it(tmp_path, db_url):
    env = Env(tmp_path, db_url, {"learning_days": "14"})
    try:
        for day in range(8):
            start = WED_10 + day * DAY
            for i in range(20):                                  # a campaign: 20 calls within 50 s
                env.engine.record(decide(env, "dialer", f"1212555{i:04d}", start + 2.5 * i), "302", 0.1)
            for i in range(3):                                   # a person: a call an hour
                env.engine.record(decide(env, "desk", f"1646555{i:04d}", start + 3600 * (i + 1)), "302", 0.1)
        env.engine.flush(WED_10 + 8 * DAY)
        now = WED_10 + 8 * DAY + 7200
        proposals = {p.account.user: p for p in tfps.train(env.cfg, env.db, now)}
        why = {c[0]: c[3] for c in proposals["dialer"].changes}
        assert "busiest 60 s: 20 approved calls x 2" in why["calls_per_minute"]
        learned = {user: tfps.find_account(env.db, user, DOMAIN).calls_per_minute for user in ("dialer", "desk")}
        assert learned == {"dialer": 40, "desk": 6}                 # a person: the lower bound
        env.db.execute("UPDATE account_days SET peak_minute = NULL")     # days summed up by schema version 3
        env.db.execute("UPDATE accounts SET calls_per_minute = NULL")
        tfps.train(env.cfg, env.db, now)                                  # filled in from call_log
        assert tfps.find_account(env.db, "dialer", DOMAIN).calls_per_minute == 40
        assert env.db.scalar("SELECT COUNT(*) FROM account_days WHERE peak_minute IS NULL") == 0
        for user, quota in (("dialer", {"daily_quota": None}), ("desk", {})):   # a campaign day above the learned quota
            tfps.update_account(env.db, tfps.find_account(env.db, user, DOMAIN), now, end_learning=True, **quota)
        env.engine.check_for_changes()
        campaign = [decide(env, "dialer", f"1212556{i:04d}", now + i).code for i in range(41)]
        assert campaign == ["A00"] * 40 + ["R15"]
        desk = [decide(env, "desk", f"1646556{i:04d}", now + i) for i in range(7)]
        assert [v.code for v in desk] == ["A00"] * 6 + ["R15"] and "learned calls_per_minute = 6" in desk[6].reason
    finally:
        env.db.close()


def test_schema_3_is_migrated_in_place(db_url):
    db = tfps.open_database(db_url)
    try:
        older_accounts_trigger(db, "accounts_updated")
        db.execute("ALTER TABLE accounts DROP COLUMN calls_per_minute")
        db.execute("ALTER TABLE account_days DROP COLUMN peak_minute")
        db.execute("UPDATE meta SET value = 3 WHERE name = 'schema_version'")
        old, new, changes = db.initdb()
        assert (old, new) == (3, db.schema_version()) and new >= 4
        assert {"added accounts.calls_per_minute", "added account_days.peak_minute", "dropped trigger accounts_updated"} <= set(changes)
        assert "accounts_revised" in db.names("trigger") and "accounts_updated" not in db.names("trigger")
        cfg = tfps.Config()
        tfps.insert_account(db, tfps.default_account(cfg, "u", DOMAIN, WED_10))
        serial = db.scalar("SELECT value FROM meta WHERE name = 'accounts_serial'")
        db.execute("UPDATE accounts SET calls_per_minute = 30 WHERE user = 'u'")
        assert db.scalar("SELECT value FROM meta WHERE name = 'accounts_serial'") == serial + 1
        assert tfps.find_account(db, "u", DOMAIN).calls_per_minute == 30
    finally:
        db.close()
