"""Cost: a rate deck ([policy] rate_deck), the estimated cost of a call (price x
assumed_call_minutes) and the daily spend budget (R17) of [policy], the domain and the account;
the spend is a counter in the database, so it holds across nodes. The engine through the module
on both backends, the CLI as a subprocess."""

import json
import re

import pytest

import tfps
from conftest import run_cli, wait_until, write_config

WED_10 = 1736935200.0  # 2025-01-15 10:00 UTC, business hours
DOMAIN = "acme.example"
DECK = "prefix,price_per_minute\n# premium and satellite first\n+44,0.01\n0033,0.05\n33 8,0.80\n882,2.50\n"
UK, FR, FR_PREMIUM, JP = "442079460000", "33123456789", "33812345678", "81312345678"


def config(tmp_path, deck=DECK, **policy):
    (tmp_path / "rates.csv").write_text(deck)
    conf = {"policy": {"learning_days": "0", "home_country": "GB", "default_destination_countries": "*",
                       "rate_deck": str(tmp_path / "rates.csv"), "assumed_call_minutes": "2", "ab_max_calls": "1000",
                       "max_calls_per_minute": "0", **policy}}
    return tfps.Config.load(write_config(tmp_path / "cost.conf", conf)), str(tmp_path / "cost.conf")


@pytest.fixture
def engines(tmp_path, db_url):
    opened = []

    def make(**policy):
        cfg, _ = config(tmp_path, **policy)
        db = tfps.open_database(db_url)
        opened.append(db)
        return tfps.Engine(cfg, db)

    yield make
    for db in opened:
        db.close()


def call(engine, number, ts, user="1001"):
    return engine.decide(tfps.CallAttempt(user, DOMAIN, number, ts=ts))


def test_the_longest_prefix_prices_a_call_and_prefixes_read_as_dialed(tmp_path):
    cfg, _ = config(tmp_path)
    db = tfps.open_database(f"sqlite://{tmp_path / 't.db'}")
    try:
        deck = tfps.read_rate_deck(cfg.policy, tfps.country_table(db))
    finally:
        db.close()
    assert deck.prices == {"44": 0.01, "33": 0.05, "338": 0.80, "882": 2.50}
    assert (deck.price(FR), deck.price(FR_PREMIUM), deck.price(UK), deck.price(JP), deck.price(None)) == (0.05, 0.80, 0.01, None, None)


@pytest.mark.parametrize("deck, problem", [
    ("44,0.01\nfoo,2\n", "rates.csv:2: 'foo' is not a number prefix"),
    ("44,0.01\n44,0.02\n", "rates.csv:2: prefix +44 is priced twice"),
    ("+44,0.01,extra\n", "rates.csv:1: expected prefix,price_per_minute, found 3 field(s)"),
    ("44,cheap\n", "rates.csv:1: "),
    ("44,-1\n", "rates.csv:1: must be between 0 and"),
    ("0044,0.1\n044,0.1\n", "rates.csv:2: '044': no country code starts with 0"),
])
def test_a_bad_rate_deck_line_names_file_and_line(tmp_path, deck, problem):
    cfg, _ = config(tmp_path, deck=deck)
    db = tfps.open_database(f"sqlite://{tmp_path / 't.db'}")
    try:
        with pytest.raises(tfps.ConfigError) as raised:
            tfps.Engine(cfg, db)
    finally:
        db.close()
    assert problem in str(raised.value) and str(tmp_path) in str(raised.value)


def test_a_missing_rate_deck_is_one_clear_error(tmp_path):
    cfg, _ = config(tmp_path)
    (tmp_path / "rates.csv").unlink()
    db = tfps.open_database(f"sqlite://{tmp_path / 't.db'}")
    try:
        with pytest.raises(tfps.ConfigError, match=r"\[policy\] rate_deck: cannot read .*rates.csv"):
            tfps.Engine(cfg, db)
    finally:
        db.close()


def test_over_the_daily_spend_budget_is_r17_and_unpriced_calls_pass(engines):
    engine = engines(default_daily_spend="1.00")      # a French call costs 0.05 x 2 = 0.10, premium 1.60
    verdicts = [call(engine, FR, WED_10 + k) for k in range(11)]
    assert [v.code for v in verdicts] == ["A00"] * 10 + ["R17"]
    assert verdicts[0].cost == pytest.approx(0.10)
    assert "daily spend budget of 1.00" in verdicts[-1].reason and "--daily-spend" in verdicts[-1].undo
    assert call(engine, JP, WED_10 + 20).code == "A00"   # no price: no cost
    assert call(engine, FR_PREMIUM, WED_10 + 21, user="2002").code == "R17"   # 1.60 alone passes 1.00
    engine.flush()
    acc = tfps.find_account(engine.db, "1001", DOMAIN)
    assert tfps.load_spend(engine.db, acc.id, "2025-01-15", lock=False)[0] == pytest.approx(1.00)
    assert tfps.load_spend(engine.db, acc.id, "2025-01-16", lock=False) is None
    assert call(engine, FR, WED_10 + 86400).code == "A00"   # a new day, a new budget


def test_domain_and_account_budgets_override_the_default(engines):
    engine = engines(default_daily_spend="unlimited")
    assert call(engine, FR_PREMIUM, WED_10).code == "A00"
    tfps.update_domain(engine.db, DOMAIN, {"daily_spend": 2.0}, WED_10)
    engine.check_for_changes()
    assert call(engine, FR_PREMIUM, WED_10 + 1).code == "R17"          # 1.60 spent + 1.60 > 2.00
    assert call(engine, FR_PREMIUM, WED_10 + 2, user="2002").code == "A00"
    tfps.update_account(engine.db, tfps.find_account(engine.db, "1001", DOMAIN), WED_10, daily_spend=10.0)
    engine.check_for_changes()
    assert call(engine, FR_PREMIUM, WED_10 + 3).code == "A00"
    tfps.update_domain(engine.db, DOMAIN, {"daily_spend": None}, WED_10)   # unlimited for the domain
    engine.check_for_changes()
    assert [call(engine, FR_PREMIUM, WED_10 + 10 + k, user="2002").code for k in range(5)] == ["A00"] * 5


def test_the_spend_holds_across_nodes(engines):
    node_a, node_b = engines(default_daily_spend="0.30"), engines(default_daily_spend="0.30")
    codes = []
    for k, node in enumerate((node_a, node_b, node_a, node_b)):
        codes.append(call(node, FR, WED_10 + k).code)
        node.flush()
    assert codes == ["A00", "A00", "A00", "R17"]


def test_rejected_calls_spend_nothing_and_stats_shows_the_spend_blocked(engines, tmp_path, db_url):
    engine = engines(default_daily_spend="2.00")
    for k, number in enumerate((FR_PREMIUM, FR_PREMIUM, "5312345678", FR)):   # 1.60 approved, 1.60 R17, CU R06, 0.10
        verdict = call(engine, number, WED_10 + k)
        engine.record(verdict, "302", 0.5)
    engine.flush()
    acc = tfps.find_account(engine.db, "1001", DOMAIN)
    assert tfps.load_spend(engine.db, acc.id, "2025-01-15", lock=False)[0] == pytest.approx(1.70)
    assert tfps.estimated_spend(engine.db, 0) == (pytest.approx(1.70), pytest.approx(1.60))
    _, conf = config(tmp_path, default_daily_spend="1.00")
    result = run_cli("stats", "--since", "36000d", "--json", config=conf, db=db_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["estimated_spend"] == {"approved": 1.7, "blocked": 1.6}
    text = run_cli("stats", "--since", "36000d", config=conf, db=db_url).stdout
    assert "estimated spend (rate deck x 2 min a call): 1.70 approved, 1.60 blocked" in text


def test_spend_from_memory_is_charged_when_the_database_is_back(engines):
    engine = engines(default_daily_spend="2.00")
    assert call(engine, FR, WED_10).code == "A00"
    engine.flush()
    verdict = engine.decide_from_memory(tfps.CallAttempt("1001", DOMAIN, FR_PREMIUM, ts=WED_10 + 1))
    assert verdict.code == "A00"         # memory starts from zero
    engine.charge_outage_counts()
    engine.flush()
    acc = tfps.find_account(engine.db, "1001", DOMAIN)
    assert tfps.load_spend(engine.db, acc.id, "2025-01-15", lock=False)[0] == pytest.approx(1.70)
    assert call(engine, FR_PREMIUM, WED_10 + 2).code == "R17"   # 1.70 + 1.60 > 2.00


def test_cli_daily_spend_set_check_lint_and_bad_input(tmp_path, db_url):
    _, conf = config(tmp_path)
    assert run_cli("add", "1001", DOMAIN, config=conf, db=db_url).returncode == 0
    out = run_cli("set", "1001", DOMAIN, "--daily-spend", "0.5", config=conf, db=db_url)
    assert out.returncode == 0 and "daily spend 0.5" in out.stdout
    checked = run_cli("check", "1001", DOMAIN, "+33 8 12 34 56 78", "--json", config=conf, db=db_url)
    assert json.loads(checked.stdout)["code"] == "R17"
    shown = json.loads(run_cli("show", "1001", DOMAIN, "--json", config=conf, db=db_url).stdout)
    assert shown["daily_spend"] == 0.5 and shown["sources"]["daily_spend"] == "account"
    bad = run_cli("set", "1001", DOMAIN, "--daily-spend", "lots", config=conf, db=db_url)
    assert bad.returncode == 2 and "--daily-spend" in bad.stderr.strip().splitlines()[-1] and "Traceback" not in bad.stderr
    (tmp_path / "rates.csv").write_text("44,0.01\nfoo,1\n")
    linted = run_cli("lint", "--json", config=conf, db=db_url)
    assert "rates.csv:2" in linted.stdout
    failed = run_cli("check", "1001", DOMAIN, "+441234", config=conf, db=db_url)
    assert failed.returncode == 1 and failed.stderr.strip().count("\n") == 0 and "rates.csv:2" in failed.stderr


def test_a_running_server_answers_r17_and_follows_a_domain_budget(tmp_path, sqlite_url, start_server):
    (tmp_path / "rates.csv").write_text(DECK)
    server = start_server(sqlite_url, sections={"policy": {
        "learning_days": "0", "default_destination_countries": "*", "rate_deck": str(tmp_path / "rates.csv"),
        "assumed_call_minutes": "2", "default_daily_spend": "unlimited", "ab_max_calls": "1000",
        "max_calls_per_minute": "0", "default_daily_quota": "unlimited", "default_daily_quota_off": "unlimited"}})
    # the probes go on until the server has read the change (reload_interval): no quota may stop them first

    def probe(number):
        probed = run_cli("probe", number, "--server", f"127.0.0.1:{server.port}", "--from", f"1001@{DOMAIN}", timeout=30)
        assert probed.returncode == 0, probed.stderr
        return re.search(r"^code: (\w+)$", probed.stdout, re.M).group(1)

    assert probe("+33812345678") == "A00"                               # 1.60, no budget
    assert run_cli("domain", "set", DOMAIN, "--daily-spend", "3", db=sqlite_url).returncode == 0
    assert wait_until(lambda: probe("+33812345678") == "R17", timeout=10)  # 1.60 + 1.60 > 3 once the server has read the change
    assert probe("+81312345678") == "A00"                               # Japan: the deck does not price it
