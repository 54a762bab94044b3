"""The rules only decide: counting happens once, after the verdict, in Engine._count. So the
order of the pipeline decides which rejection wins, never what is counted; and every rule says
which codes it returns."""

import itertools
import random

import pytest

import tfps
from conftest import write_config

WED_10 = 1736935200.0  # 2025-01-15 10:00 UTC, business hours
COUNTER_TABLES = {"daily_counters": "day, bucket, approved",
                  "ab_pairs": "number, times, ab_pairs.blocked_until",
                  "rate_windows": "times",
                  "new_destination_days": "day, iso, calls",
                  "new_destination_windows": "calls",
                  "spend_counters": "day, spend"}
RATE_DECK = "prefix,price_per_minute\n1,0.02\n44,0.10\n49,0.30\n"  # x 5 minutes: US 0.10, GB 0.50, DE 1.50


def traffic(seed):
    """Calls that trip every rule of the pipeline, several accounts, a few minutes."""
    rng = random.Random(seed)
    numbers = ["12125551234", "12125551234", "5312345678", "442079460000", "37122000000", "4930123456", "12125550000",
               "33123456789", "48221234567", "390612345678"]   # FR, PL, IT: new destinations (R06, R16)
    # high-risk destinations take an account's new-destination allowance away: two accounts never dial them
    cautious = [n for n in numbers if n not in ("5312345678", "37122000000")]
    agents = ["Phone 1.0", "Phone 1.0", "friendly-scanner", "sipvicious"]
    calls = []
    for i in range(160):
        user = rng.choice(["1001", "1002", "1003", "blocked"])
        calls.append(dict(user=user, domain="pbx.example.com",
                          number=rng.choice(numbers if user in ("1003", "blocked") else cautious), user_agent=rng.choice(agents),
                          source_ip=rng.choice(["192.0.2.10", "198.51.100.66", "8.8.8.8"]),
                          concurrent_calls=rng.randint(1, 6), ts=WED_10 + i * rng.uniform(0.5, 4)))
    return calls


def run(tmp_path, db_url, screening, account_rules, monkeypatch, calls, lease=0):
    monkeypatch.setattr(tfps, "SCREENING", tuple(screening))
    monkeypatch.setattr(tfps, "ACCOUNT_RULES", tuple(account_rules))
    (tmp_path / "rates.csv").write_text(RATE_DECK)
    conf = write_config(tmp_path / "rules.conf", {"policy": {
        "rate_deck": str(tmp_path / "rates.csv"), "assumed_call_minutes": "5", "default_daily_spend": "2",
        "learning_days": "0", "max_calls_per_minute": "4", "ab_max_calls": "3", "ab_window": "60s",
        "default_daily_quota": "25", "default_concurrent_calls": "4", "default_destination_countries": "US, GB, DE"}})
    cfg = tfps.Config.load(conf)
    db = tfps.open_database(db_url)
    try:
        for table in ("daily_counters", "quota_leases", "ab_pairs", "rate_windows", "new_destination_days",
                      "new_destination_windows", "spend_counters", "accounts", "ip_list", "number_list"):
            db.execute(f"DELETE FROM {table}")
        tfps.list_add(db, "black", "number", ["5312"], "test", WED_10)
        tfps.list_add(db, "black", "ip", ["198.51.100.0/24"], "test", WED_10)
        leased = tfps.LeasedCounters(db, "rules", lease, 30.0) if lease else None
        engine = tfps.Engine(cfg, db, counters=leased)
        tfps.insert_account(db, tfps.default_account(cfg, "blocked", "pbx.example.com", WED_10 - 86400))
        tfps.update_account(db, tfps.find_account(db, "blocked", "pbx.example.com"), WED_10, blocked=True)
        engine.reload()
        approved = []
        for call in calls:
            verdict = engine.decide(tfps.CallAttempt(**call))
            approved.append(verdict.approved)
        if db.in_transaction:
            db.commit()
        if leased:  # what stays in memory, and the quota written behind with the leases given back
            engine.counters.write_behind(WED_10, release=True)
            user = dict(db.query("SELECT id, user FROM accounts"))   # ids differ from run to run on MySQL
            memory = {"pairs": sorted(((user[a], n), v) for (a, n), v in leased.pairs.items()),
                      "rates": sorted((user[a], v) for a, v in leased.rates.items()),
                      "new_destinations": sorted(((user[a], *k), v) for (a, *k), v in leased.new_destinations.items()),
                      "new_destination_windows": sorted((user[a], v) for a, v in leased.new_destination_windows.items()),
                      "quota_leases": list(db.query("SELECT * FROM quota_leases"))}
            tables = {"daily_counters": COUNTER_TABLES["daily_counters"]}
        else:
            memory, tables = {}, COUNTER_TABLES
        counters = {table: sorted(db.query(f"SELECT user, {columns} FROM {table} JOIN accounts ON accounts.id = account_id"))
                    for table, columns in tables.items()}
        counters["r16_blocks"] = sorted(db.query("SELECT user, blocked_until FROM accounts WHERE blocked_until IS NOT NULL"))
        return approved, counters | memory, engine
    finally:
        db.close()


@pytest.mark.parametrize("seed, lease", [(1, 0), (2, 0), (1, 4)])
def test_permuting_the_pipeline_changes_no_counter(tmp_path, db_url, monkeypatch, seed, lease):
    """Also with quota leases ([database] quota_lease): the windows kept in memory and the daily
    counters written behind."""
    calls = traffic(seed)
    base = run(tmp_path, db_url, tfps.SCREENING, tfps.ACCOUNT_RULES, monkeypatch, calls, lease)
    assert any(base[0]) and not all(base[0])
    assert all(v for k, v in base[1].items() if k not in ("quota_leases", "new_destinations", "r16_blocks")), \
        "every counter was written"
    assert base[1]["r16_blocks"] or seed != 1, "the first traffic blocks accounts (R16)"
    assert base[1].get("quota_leases", []) == [], "leases given back"
    rng = random.Random(seed)
    for _ in range(3):
        screening, account_rules = list(tfps.SCREENING), list(tfps.ACCOUNT_RULES)
        rng.shuffle(screening)
        rng.shuffle(account_rules)
        approved, counters, _ = run(tmp_path, db_url, screening, account_rules, monkeypatch, calls, lease)
        assert approved == base[0]
        assert counters == base[1]


def test_every_rule_returns_only_the_codes_it_declares(tmp_path, sqlite_url, monkeypatch):
    seen = {}

    def checked(rule):
        def wrapper(engine, call):
            rejection = rule(engine, call)
            if rejection is not None:
                assert rejection.code in rule.codes, (rule.__name__, rejection.code)
                seen.setdefault(rule.__name__, set()).add(rejection.code)
            return rejection
        wrapper.codes = rule.codes
        return wrapper

    run(tmp_path, sqlite_url, map(checked, tfps.SCREENING), map(checked, tfps.ACCOUNT_RULES), monkeypatch,
        traffic(4))
    assert len(seen) >= 7 and "spend_budget" in seen, seen
    codes = list(itertools.chain.from_iterable(rule.codes for rule in tfps.PIPELINE))
    assert len(codes) == len(set(codes)), "a code belongs to one rule"


def test_no_rule_writes(tmp_path, sqlite_url, monkeypatch):
    """Every statement a rule runs is a read."""
    statements = []

    def watched(rule):
        def wrapper(engine, call):
            execute = engine.db.execute
            engine.db.execute = lambda sql, *args: statements.append((rule.__name__, sql)) or execute(sql, *args)
            try:
                return rule(engine, call)
            finally:
                del engine.db.execute
        wrapper.codes = rule.codes
        return wrapper

    run(tmp_path, sqlite_url, map(watched, tfps.SCREENING), map(watched, tfps.ACCOUNT_RULES), monkeypatch, traffic(4))
    assert statements, "the rules read counters"
    assert all(sql.lstrip().upper().startswith("SELECT") for _rule, sql in statements), statements
