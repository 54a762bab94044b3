"""Detection policy: destination risk tiers, new destinations, emergency numbers, and list and
country input read as dialed. The engine through the module on both backends (a real SQLite
file, a fresh real MariaDB database), the CLI as a subprocess, and one SIP call end to end."""

import datetime as dt
import json
import re
import signal

import pytest

import tfps
from conftest import run_cli, write_config
from test_hostile import private_mariadb  # noqa: F401  (a fixture: a mariadbd of the test's own, to freeze)

WED_10 = dt.datetime(2025, 1, 15, 10, tzinfo=dt.timezone.utc).timestamp()   # business hours
DAY = 86400
USER, DOMAIN = "1001", "pbx.example.com"


class Env:
    def __init__(self, tmp_path, db_url, policy):
        conf = {"policy": {"learning_days": "0", **policy}, "server": {"node_name": "node-t"}}
        self.cfg = tfps.Config.load(write_config(tmp_path / "policy.conf", conf))
        self.db = tfps.open_database(db_url)
        self.engine = tfps.Engine(self.cfg, self.db)
        self.clock = WED_10

    def call(self, number, user=USER, ts=None, **kw):
        """One attempt, a second after the one before (no two share a time)."""
        self.clock += 1
        return self.engine.decide(tfps.CallAttempt(user, DOMAIN, number, ts=ts or self.clock, **kw))

    def codes(self, *numbers, **kw):
        return [self.call(number, **kw).code for number in numbers]

    def account(self, user=USER, **fields):
        if self.db.one("SELECT id FROM accounts WHERE user = ? AND domain = ?", (user, DOMAIN)) is None:
            tfps.insert_account(self.db, tfps.default_account(self.cfg, user, DOMAIN, WED_10 - 3600))
        acc = tfps.find_account(self.db, user, DOMAIN)
        tfps.update_account(self.db, acc, WED_10 - 3600, **fields)
        self.engine.check_for_changes()
        return tfps.find_account(self.db, user, DOMAIN)


@pytest.fixture
def make(tmp_path, db_url):
    envs = []

    def make(**policy):
        envs.append(Env(tmp_path, db_url, policy))
        return envs[-1]

    yield make
    for env in envs:
        env.db.close()


# -- 2. destination risk tiers ---------------------------------------------------------------

def test_a_gb_operator_calls_the_crown_dependencies_and_ireland_freely(make):
    env = make(home_country="GB", new_destination_calls="0")
    env.account(dest_countries={"GB"})
    # Jersey, Guernsey and Isle of Man mobiles inside +44, and Ireland: tier low by the home zone
    for number, iso in (("447797123456", "JE"), ("447911123456", "GG"), ("447624123456", "IM"),
                        ("441534123456", "JE"), ("35312345678", "IE"), ("442079460000", "GB")):
        v = env.call(number)
        assert (v.code, v.dest_country) == ("A00", iso), v.reason
    assert env.call("33123456789").code == "R06"              # France is medium: not a free destination


def test_national_numbers_of_a_gb_operator_resolve_to_the_crown_dependencies(make):
    env = make(home_country="GB", national_numbers="yes", new_destination_calls="0")
    env.account(dest_countries={"GB"})
    for dialed, iso in (("07797 123456", "JE"), ("01481 123456", "GG"), ("020 7946 0000", "GB")):
        v = env.call(dialed)
        assert (v.code, v.dest_country) == ("A00", iso), v.reason
    assert env.call("0044 70 1234 5678").code == "R06" and env.call("070 1234 5678").code == "R06"


def test_nanp_islands_are_tiered_on_their_own_for_a_us_operator(make):
    env = make(new_destination_calls="0")
    env.account(dest_countries={"US"})
    for number, iso, code in (("14165551234", "CA", "A00"), ("17875551234", "PR", "A00"),
                              ("18765551234", "JM", "R06"), ("12645551234", "AI", "R06")):
        v = env.call(number)
        assert (v.code, v.dest_country) == (code, iso), v.reason
    assert env.engine.tiers.by_iso["JM"] == "medium" and env.engine.tiers.by_iso["US"] == "low"


def test_high_tier_countries_and_ranges_are_rejected_unless_whitelisted(make):
    env = make()
    env.account(dest_countries={"*", "CU", "CK"})
    cuba = env.call("5312345678")
    assert (cuba.code, cuba.undo) == ("R06", f"{tfps.PROG} whitelist add number +5312345678") and "high-risk country" in cuba.reason
    assert env.codes("68212345", "2905123", "37120000000") == ["R06"] * 3        # Cook Islands, St Helena, Latvia
    satellite = env.call("881612345678")        # no country: the range's tier decides, not R07
    assert satellite.code == "R06" and "range +881" in satellite.reason
    assert env.call("447012345678").code == "R06" and env.call("447400123456").code == "A00"
    tfps.list_add(env.db, "white", "number", ["6821234"], "test", WED_10)
    env.engine.check_for_changes()
    assert env.codes("68212345", "68299999") == ["A00", "R06"]


def test_operator_overrides_by_country_and_by_range(make):
    env = make(low_risk_countries="FR, EE", high_risk_countries="DE", high_risk_prefixes="+33 6",
               low_risk_prefixes="0053 7", new_destination_calls="0")
    env.account()
    assert env.codes("33123456789", "33123456780", "3725123456") == ["A00"] * 3   # low by configuration
    assert env.codes("33612345678", "4930123456") == ["R06", "R06"]             # a high range in a low country
    assert env.codes("5371234567", "5351234567") == ["A00", "R06"]              # a low range in a high country
    tiers = env.engine.tiers
    assert tiers.of("33612345678", "FR") == ("high", "+336") and tiers.of("33123456789", "FR") == ("low", "FR")


def test_a_range_that_is_no_number_is_ignored_not_applied_to_every_number(make, caplog):
    env = make(high_risk_prefixes="00, +44 70")
    assert env.codes("12125551234", "447012345678") == ["A00", "R06"]
    assert "[policy] high_risk_prefixes: '00' is not a number prefix" in caplog.text


def test_a_country_both_low_and_high_is_a_configuration_error(tmp_path):
    path = write_config(tmp_path / "bad.conf", {"policy": {"low_risk_countries": "FR", "high_risk_countries": "CU, FR"}})
    with pytest.raises(tfps.ConfigError, match=r"bad\.conf:3: \[policy\] low_risk_countries and high_risk_countries both list FR"):
        tfps.Config.load(path)
    with pytest.raises(tfps.ConfigError, match=r"high_risk_prefixes = '\+44 7x'"):
        tfps.Config.load(write_config(tmp_path / "bad.conf", {"policy": {"high_risk_prefixes": "+44 7x"}}))
    cfg = tfps.Config.load(write_config(tmp_path / "ok.conf", {"policy": {"low_risk_countries": "EE"}}))
    assert "EE" in cfg.policy.high_risk_countries      # the default list yields: DestinationTiers puts low first


def test_a_denied_low_tier_country_is_rejected(make):
    env = make(home_country="GB")
    env.account(dest_countries={"GB", "!JE"})
    v = env.call("447797123456")
    assert v.code == "R06" and "denied" in v.reason and v.undo == f"{tfps.PROG} allow {USER} {DOMAIN} --dest JE"
    assert env.call("447911123456").code == "A00"


def test_national_premium_rate_ranges_are_high_even_where_the_country_is_allowed(make):
    env = make()
    env.account(dest_countries={"US", "PL", "DE", "FR", "ES"})
    polish = env.call("48701234567")                          # Polish premium rate, +48 70
    assert polish.code == "R06" and "high-risk range" in polish.reason and "+4870" in polish.reason, polish.reason
    assert env.codes("49900123456", "491371234567", "33891234567", "34806123456") == ["R06"] * 4
    # mobile and geographic numbers of the same countries are the allowed countries' as before
    assert env.codes("48601234567", "4915112345678", "33612345678", "34911234567") == ["A00"] * 4
    assert env.call("19005551234").code == "R06"               # the home country's own premium range
    assert env.call("12125551234").code == "A00"


def test_every_default_premium_range_lies_in_its_country(db_url):
    cfg = tfps.Config.load(None)
    db = tfps.open_database(db_url)
    try:
        countries = tfps.country_table(db)
        for iso, ranges in tfps.PREMIUM_RATE_RANGES.items():
            for entry in ranges.split(","):
                digits = tfps.dialed_prefix(entry, cfg.policy, countries)
                assert countries.lookup(digits + "1234567") == iso, entry
                assert tfps.DestinationTiers(cfg.policy, countries).of(digits + "1234567", iso) == ("high", f"+{digits}")
    finally:
        db.close()


def test_a_configured_high_risk_prefixes_list_replaces_the_default_one(make):
    env = make(high_risk_prefixes="+44 70")
    env.account(dest_countries={"US", "PL"})
    assert env.codes("48701234567", "447012345678", "19005551234") == ["A00", "R06", "A00"]


# -- 3. a new destination is not a wall -----------------------------------------------------

def test_new_destination_calls_are_approved_with_an_alert_then_r06(make):
    env = make()
    acc = env.account()
    verdicts = [env.call(f"3312345678{i}") for i in range(4)]
    assert [v.code for v in verdicts] == ["A00", "A00", "A00", "R06"]
    assert verdicts[3].undo == f"{tfps.PROG} allow {USER} {DOMAIN} --dest FR" and "its 3 new-destination calls of today are used" in verdicts[3].reason
    for v in verdicts:
        env.engine.record(v, "302", 0.1)
    alerts = [(e.kind, e.rule, e.subject, e.body) for e in env.engine.alerts.events]
    env.engine.flush(WED_10)
    notices = [a for a in alerts if a[:2] == ("anomaly", "NEW_DST_FR")]
    assert [n[2].split(": ", 2)[2][:44] for n in notices] == [f"new destination FR (France): call {i} of the 3" for i in (1, 2, 3)]
    assert f"To allow it: {tfps.PROG} allow {USER} {DOMAIN} --dest FR" in notices[0][3]
    rejection = next(a for a in alerts if a[0] == "rejection")
    assert f"If this is a false positive: {tfps.PROG} allow {USER} {DOMAIN} --dest FR" in rejection[3]
    assert env.db.scalar("SELECT calls FROM new_destination_days WHERE account_id = ? AND iso = 'FR'", (acc.id,)) == 3
    # approved calls are in the call log with their country: what training learns a country from
    assert env.db.scalar("SELECT COUNT(*) FROM call_log WHERE code = 'A00' AND dest_country = 'FR'") == 3
    tfps.reset_account(env.db, env.cfg, acc, WED_10)                     # reset gives today's allowance back
    assert env.call("3312345679").code == "A00"
    assert env.call("3312345679", ts=WED_10 + DAY).code == "A00"          # a new day, a new allowance
    assert env.call("4930123456").code == "A00"                           # and one per country


def test_allowed_learned_and_low_destinations_use_no_allowance(make):
    env = make(new_destination_calls="1")
    acc = env.account(dest_countries={"US", "FR"})
    assert env.codes("33123456780", "33123456781", "14165551234", "14165551235") == ["A00"] * 4
    assert env.db.scalar("SELECT COUNT(*) FROM new_destination_days") == 0
    assert env.codes("4930123456", "4930123457") == ["A00", "R06"]
    assert env.db.scalar("SELECT calls FROM new_destination_days WHERE account_id = ?", (acc.id,)) == 1


def test_new_destination_allowance_is_soft_while_learning_and_counted_from_memory(make):
    env = make(learning_days="14")
    env.call("12125551234")                                   # enrolled, learning
    codes = [env.call(f"3312345678{i}") for i in range(4)]
    assert [v.code for v in codes] == ["A00"] * 4 and codes[3].would.code == "R06"
    memory = env.engine.decide_from_memory
    env.account(user="2002", state="enforcing")
    assert env.call("12125551234", user="2002").code == "A00"     # the account is in memory now
    outcomes = [memory(tfps.CallAttempt("2002", DOMAIN, f"4930123456{i}", ts=WED_10 + 100 + i)).code for i in range(4)]
    assert outcomes == ["A00", "A00", "A00", "R06"]


def test_an_account_that_dialed_a_high_risk_destination_gets_no_new_destination_allowance(make):
    env = make()
    env.account()
    tfps.list_add(env.db, "black", "number", ["4822"], "test", WED_10)
    env.engine.check_for_changes()
    assert env.call("53123456").code == "R06"                      # CU, tier high: the account is suspect now
    late = env.call("33123456780")
    assert late.code == "R06" and "no new-destination calls since it dialed a high-risk destination" in late.reason
    assert late.undo == f"{tfps.PROG} allow {USER} {DOMAIN} --dest FR"
    assert env.codes("12125551234", "14165551234") == ["A00", "A00"]     # low-tier destinations stay open
    assert env.call("33123456781", ts=WED_10 + DAY + 60).code == "A00"   # a day later the allowance is back
    assert env.codes("4822123456", "4930123456", user="2002") == ["R03", "R06"]   # a blacklisted number too
    assert env.call("4930123457", user="3003").code == "A00"             # other accounts keep theirs
    tfps.list_add(env.db, "white", "number", ["53123"], "test", WED_10)
    env.engine.check_for_changes()
    assert env.codes("53123456", "33123456780", user="4004") == ["A00", "A00"]   # a whitelisted number is not high-risk


def test_check_counts_no_new_destination(make):
    env = make(new_destination_calls="1")
    env.account()
    attempt = tfps.CallAttempt(USER, DOMAIN, "33123456789", ts=WED_10)
    assert [env.engine.decide(attempt, count=False).code for _ in range(3)] == ["A00"] * 3
    assert env.db.scalar("SELECT COUNT(*) FROM new_destination_days") == 0


# -- 4. travellers: calls from a source country not allowed ------------------------------------

ABROAD = "81.2.69.142"


def test_a_traveller_calls_home_usual_destinations_and_where_he_is(make):
    env = make()
    acc = env.account(dest_countries={"US", "FR"})                      # sources: the default, US
    away = [env.call(number, source_ip=ABROAD, source_country="ES")
            for number in ("12125551234", "33123456789", "34911234567", "447400123456")]
    # home (tier low), an allowed country, a local call in Spain, and GB (tier medium, not allowed)
    assert [v.code for v in away] == ["A00", "A00", "A00", "R04"], [v.reason for v in away]
    assert away[0].reason.startswith(tfps.APPROVED_AWAY) and "ES (Spain)" in away[0].reason and away[0].would is None
    assert "a local call there" in away[2].reason
    rejected = away[3]
    assert rejected.undo == f"{tfps.PROG} allow {USER} {DOMAIN} --source ES"
    assert "not GB (United Kingdom)" in rejected.reason and "allowed source countries" in rejected.reason
    # R04 at once: the rejected call took nothing of the new-destination allowance
    assert env.db.scalar("SELECT COUNT(*) FROM new_destination_days") == 0
    assert env.codes("34806123456", "5312345678", source_ip=ABROAD, source_country="ES") == ["R06", "R06"]
    alerts = [e for e in env.engine.alerts.events if e.kind == "anomaly" and e.rule == "NEW_SRC_ES"]
    assert len(alerts) == 3 and "nothing to do" in alerts[0].body
    assert f"{tfps.PROG} allow {USER} {DOMAIN} --source ES" in alerts[0].body
    assert f"{tfps.PROG} block {USER} {DOMAIN}" in alerts[0].body
    env.engine.flush()
    sent = env.db.scalar("SELECT COUNT(*) FROM alert_throttle WHERE account = ? AND rule = 'NEW_SRC_ES'", (acc.name,))
    assert sent == 1                                                     # rate-limited like every alert


def test_a_traveller_keeps_the_limits_of_the_account(make):
    env = make()
    env.account(daily_quota=2)
    assert env.codes("12125550001", "12125550002", "12125550003", source_ip=ABROAD, source_country="ES") == \
        ["A00", "A00", "R11"]


def test_calls_from_abroad_while_learning(make):
    env = make(learning_days="14")
    env.call("12125551234")                                              # the first account: learns freely
    usual = env.call("12125550002", source_ip=ABROAD, source_country="ES")
    assert (usual.code, usual.would, usual.reason) == ("A00", None, "approved")
    other = env.call("4930123456", source_ip=ABROAD, source_country="ES")
    assert other.code == "A00" and other.would.code == "R04" and "learning" in other.reason
    # an account new to a running installation is held to R04 while it learns
    late = "2002"
    assert env.call("12125550003", user=late, ts=WED_10 + 15 * DAY).code == "A00"
    assert tfps.find_account(env.db, late, DOMAIN).state == "learning"
    assert env.call("4930123457", user=late, ts=WED_10 + 15 * DAY + 1, source_ip=ABROAD, source_country="ES").code == "R04"


def test_training_learns_no_source_country_from_calls_away_from_home(make):
    env = make(learning_days="14", train_min_days="1")
    env.account()                                                        # enforcing
    for i in range(3):
        for user in (USER, "2002"):                                      # 2002 enrolls, learning
            verdict = env.call(f"121255500{i}{len(user)}", user=user, source_ip=ABROAD, source_country="ES")
            assert verdict.code == "A00", verdict.reason
            env.engine.record(verdict, "302", 0.1)
    env.engine.flush()
    learned = {p.account.user: {field: new for field, _old, new, _why in p.changes}
               for p in tfps.train(env.cfg, env.db, WED_10 + 2 * DAY, dry_run=True)}
    assert "ES" not in learned[USER].get("source_countries", "")        # enforcing: a traveller's calls
    assert "ES" in learned["2002"]["source_countries"]                  # learning: where its callers are


# -- 7. emergency numbers ----------------------------------------------------------------------

def test_emergency_numbers_are_always_approved_and_never_counted(make):
    env = make()
    env.account(blocked=1)
    for number in ("911", "933", "9-1-1"):
        v = env.call(number, user_agent="friendly-scanner", source_ip="192.0.2.1")
        assert (v.code, v.number, v.dest_country) == ("A00", number.replace("-", ""), "US"), v.reason
        assert "emergency" in v.reason
    assert env.call("911", user="9999").code == "A00"
    assert env.db.scalar("SELECT COUNT(*) FROM accounts") == 1, "an emergency call enrolls nobody"
    assert env.db.scalar("SELECT COUNT(*) FROM daily_counters") == 0
    assert env.call("+911234567890").dest_country == "IN"       # with '+' it is international
    assert not env.call("112").reason.startswith("emergency")    # not an emergency number of a US operator


def test_emergency_numbers_by_home_country_and_by_configuration(make, tmp_path):
    env = make(home_country="GB")
    assert [env.call(n).reason.startswith("emergency") for n in ("999", "112", "911")] == [True, True, False]
    cfg = tfps.Config.load(write_config(tmp_path / "de.conf", {"policy": {"home_country": "DE"}}))
    assert cfg.policy.emergency_numbers == {"112"}
    cfg = tfps.Config.load(write_config(tmp_path / "own.conf", {"policy": {"emergency_numbers": "110, 112"}}))
    assert cfg.policy.emergency_numbers == {"110", "112"}


# -- 8. list and country input -----------------------------------------------------------------

def cli(db_url, *args, **kw):
    return run_cli(*args, db=db_url, **kw)


def test_number_entries_are_read_as_dialed(db_url):
    assert cli(db_url, "initdb").returncode == 0
    out = [cli(db_url, "blacklist", "add", "number", entry).stdout for entry in ("0043", "+43", "43", "01143", "+43 (0)")]
    assert out == ["blacklist number 43: added\n"] + ["blacklist number 43: already present\n"] * 3 + \
        ["blacklist number 430: added\n"]
    for entry in ("00", "0123", "4a"):
        result = cli(db_url, "blacklist", "add", "number", entry)
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert "43" in cli(db_url, "blacklist", "remove", "number", "0043").stdout


def test_country_codes_are_checked_against_the_table(db_url):
    assert cli(db_url, "add", USER, DOMAIN).returncode == 0
    for command in ("add", "allow"):
        result = cli(db_url, command, USER if command == "allow" else "2002", DOMAIN, "--dest", "UK,FR")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.splitlines()[-1].endswith("--dest: not in the country table: UK (nearest: GB, United Kingdom)")
    assert cli(db_url, "allow", USER, DOMAIN, "--source", "ZZ").returncode == 2
    cuba = cli(db_url, "allow", USER, DOMAIN, "--dest", "CU")
    assert cuba.returncode == 0 and "CU (Cuba) is of tier high: calls there stay rejected (R06) unless the number is whitelisted" in cuba.stdout
    assert "tier high" not in cli(db_url, "allow", USER, DOMAIN, "--dest", "FR").stdout


def test_lint_reports_entries_that_never_match(db_url, tmp_path):
    assert cli(db_url, "initdb").returncode == 0
    clean = cli(db_url, "lint")
    assert (clean.returncode, clean.stdout) == (0, "no findings\n")
    db = tfps.open_database(db_url)
    try:
        db.execute("INSERT INTO number_list (kind, prefix, note, created) VALUES ('black', '0043', '', 0)")
        tfps.insert_account(db, tfps.default_account(tfps.Config(), USER, DOMAIN, WED_10))
        db.execute("UPDATE accounts SET dest_countries = 'UK,CU,US'")
    finally:
        db.close()
    conf = write_config(tmp_path / "lint.conf", {"policy": {"low_risk_countries": "XK, QQ", "high_risk_prefixes": "0044, 00"}})
    result = run_cli("lint", "--json", config=conf, db=db_url)
    assert result.returncode == 1
    findings = {(f["where"], f["problem"]): f["fix"] for f in json.loads(result.stdout)}
    assert findings[("blacklist number 0043", "no E.164 number starts with 0, so it never matches; as dialed it is +43")] == \
        "tfps.py blacklist remove number 0043; tfps.py blacklist add number +43"
    assert findings[(f"account {USER}@{DOMAIN}", "not in the country table: UK (nearest: GB, United Kingdom)")] == \
        f"tfps.py deny {USER} {DOMAIN} --dest UK"
    assert any(re.match(r"allows CU of tier high", problem) for _, problem in findings)
    assert ("[policy] low_risk_countries", "not in the country table: QQ") in findings
    assert [problem for where, problem in findings if where == "[policy] high_risk_prefixes"] == \
        ["'00' is not a number prefix (digits as dialed: +43, 0043 or 43)"]              # 0044 is +44 as dialed
    assert cli(db_url, "deny", USER, DOMAIN, "--dest", "UK").returncode == 0     # an unknown code can be removed
    assert "UK" not in json.dumps(json.loads(run_cli("lint", "--json", db=db_url).stdout))


# -- 7. end to end: 911 through a real server ----------------------------------------------------

def test_911_over_sip_from_a_blocked_account_with_a_scanner_user_agent(sqlite_url, start_server):
    server = start_server(sqlite_url)
    assert run_cli("add", USER, DOMAIN, db=sqlite_url).returncode == 0
    assert run_cli("block", USER, DOMAIN, db=sqlite_url).returncode == 0
    for number, code in (("911", "A00"), ("12125551234", "R01")):
        probed = run_cli("probe", number, "--server", f"127.0.0.1:{server.port}", "--from", f"{USER}@{DOMAIN}",
                         "--ua", "friendly-scanner", timeout=30)
        assert probed.returncode == 0 and re.search(rf"^code: {code}$", probed.stdout, re.M), probed.stdout
    assert "Contact: <sip:A00911@" in run_cli("probe", "911", "--server", f"127.0.0.1:{server.port}",
                                               "--transport", "tcp", timeout=30).stdout


def test_911_is_approved_while_the_database_is_frozen_and_failure_is_reject(private_mariadb, start_server):
    server = start_server(private_mariadb.url, sections={"policy": {"learning_days": "0"}, "database": {"failure": "reject"}})
    private_mariadb.signal(signal.SIGSTOP)
    try:
        answers = [run_cli("probe", number, "--server", f"127.0.0.1:{server.port}", timeout=30).stdout
                   for number in ("12125551234", "911", "9-1-1")]
    finally:
        private_mariadb.signal(signal.SIGCONT)
    assert answers[0].startswith("SIP/2.0 500 "), answers[0]
    for answer in answers[1:]:
        assert re.search(r"^code: A00$", answer, re.M) and "emergency number 911" in answer, answer
