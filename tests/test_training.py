"""Change analysis (issue 6): training from a synthetic call history with a frozen clock, learning
mode and its end, the training lock between two nodes on MariaDB, `tfps.py train`/`learn`, and
the anomaly alerts. Real SQLite files and real MariaDB databases; expected values are computed
here from the synthetic rows with datetime/statistics, not with tfps's own SQL."""

import datetime as dt
import json
import logging
import math
import random
import statistics
import threading
import time
import zoneinfo
from collections import Counter, namedtuple

import pytest

import tfps
from conftest import run_cli, write_config

TOKYO = zoneinfo.ZoneInfo("Asia/Tokyo")     # no DST: the local calendar day is unambiguous
UTC = dt.timezone.utc
HOLIDAYS = (dt.date(2024, 5, 3), dt.date(2024, 5, 6))
NOW = dt.datetime(2024, 7, 15, 10, 30, tzinfo=TOKYO).timestamp()    # a Monday, 10:30 in Tokyo
HIGH_RISK_DEFAULT = set(tfps.HIGH_RISK_DEFAULT.replace(" ", "").split(","))

Row = namedtuple("Row", "ts account_id user domain number dest_country source_country off_hours concurrent_calls code")

NUMBERS = {"JP": "8131234{:04d}", "GB": "44207946{:04d}", "DE": "4930123{:04d}", "CU": "5378{:04d}01",
           "LV": "3716{:04d}123", "US": "1212555{:04d}", "FR": "33142{:04d}00", "IT": "390612{:04d}",
           "NZ": "6493{:04d}000", "SL": "23276{:04d}12"}
FIELDS = ("concurrent_calls", "concurrent_calls_off", "daily_quota", "daily_quota_off")


# -- helpers -----------------------------------------------------------------------------------

def make_config(tmp_path, name="tfps.conf", node="node-a", **policy):
    sections = {"server": {"node_name": node}, "policy": {k: str(v) for k, v in policy.items()}}
    path = write_config(tmp_path / name, sections)
    return tfps.Config.load(path), path


def add_account(db, user, domain, created, *, state="enforcing", learning_until=None, cc=10, cc_off=2,
                quota=100, quota_off=10, src=("JP",), dst=("JP",)):
    acc = tfps.Account(None, user, domain, cc, cc_off, quota, quota_off, set(src), set(dst), False, "",
                       state, learning_until, set(), created, None)
    assert tfps.insert_account(db, acc)
    return tfps.find_account(db, user, domain)


def reload(db, acc):
    return tfps.find_account(db, acc.user, acc.domain)


def account_rows(db):
    return db.query(f"SELECT {tfps.ACCOUNT_COLUMNS} FROM accounts ORDER BY id")


def is_off_hours(local, holidays=HOLIDAYS):
    """Independent of tfps: mon-fri 09:00-18:00 are business hours, except holidays."""
    return not (local.weekday() < 5 and local.date() not in holidays and 9 <= local.hour < 18)


class History:
    """Synthetic call_log rows, written with plain INSERTs."""

    def __init__(self, tz):
        self.tz = tz
        self.rows = []
        self.serial = 0

    def call(self, acc, local, *, dest="JP", src="JP", conc=1, code="A00", holidays=HOLIDAYS):
        self.serial += 1
        self.rows.append(Row(local.timestamp(), acc.id, acc.user, acc.domain, NUMBERS[dest].format(self.serial % 10000),
                             dest, src, int(is_off_hours(local, holidays)), conc, code))

    def at(self, day, hour, minute=0, second=0):
        return dt.datetime.combine(day, dt.time(hour, minute, second), self.tz)

    def office(self, rng, acc, first, last, *, biz=(8, 25), off=(0, 3), peak=6, peak_off=2, skip=(), holidays=HOLIDAYS):
        """Business-day traffic in business hours plus a few off-hours calls, early morning
        (the previous UTC day in Tokyo), evenings and weekends."""
        day = first
        while day <= last:
            if day not in skip:
                business = day.weekday() < 5 and day not in holidays
                if business:
                    for _ in range(rng.randint(*biz)):
                        self.call(acc, self.at(day, rng.randint(9, 17), rng.randint(0, 59), rng.randint(0, 59)),
                                  conc=rng.randint(1, max(1, peak - 1)), holidays=holidays)
                for _ in range(rng.randint(*off)):
                    hour = rng.choice([0, 3, 6, 7, 8, 18, 19, 21, 23] if business else range(24))
                    self.call(acc, self.at(day, hour, rng.randint(0, 59)), conc=rng.randint(1, peak_off), holidays=holidays)
            day += dt.timedelta(days=1)
        # the busiest business-hours moment: once, on a business day in the middle
        middle = first + dt.timedelta(days=(last - first).days // 2)
        while middle.weekday() >= 5 or middle in holidays or middle in skip:
            middle += dt.timedelta(days=1)
        self.call(acc, self.at(middle, 11, 11), conc=peak, holidays=holidays)

    def write(self, db):
        db.executemany("INSERT INTO call_log (ts, account_id, user, domain, number, dest_country, source_country, "
                       "off_hours, concurrent_calls, code) VALUES (?,?,?,?,?,?,?,?,?,?)", [tuple(r) for r in self.rows])


def expected_training(rows, acc, now, tz, p, holidays=HOLIDAYS, high_risk=HIGH_RISK_DEFAULT):
    """What training must propose for `acc`, computed from the synthetic rows: approved calls in
    [now - window, now), local calendar days from the first one to yesterday, zero-call days
    included; business days are weekdays that are not holidays. None = skipped."""
    since = now - p["window"] * 86400
    mine = [r for r in rows if r.account_id == acc.id and r.code == "A00" and since <= r.ts < now]
    if not mine:
        return None
    day_of = lambda ts: dt.datetime.fromtimestamp(ts, tz).date()  # noqa: E731
    today = day_of(now)
    first = min(day_of(r.ts) for r in mine)
    days = [first + dt.timedelta(days=k) for k in range((today - first).days)]
    if len(days) < p["min_days"]:
        return None
    business = [d for d in days if d.weekday() < 5 and d not in holidays]
    biz = Counter(day_of(r.ts) for r in mine if not r.off_hours)
    off = Counter(day_of(r.ts) for r in mine if r.off_hours)

    def quota(counts, over, headroom, low, high):
        values = [counts.get(d, 0) for d in over]
        spread = math.ceil(statistics.fmean(values) + p["sigma"] * statistics.pstdev(values))
        return min(max(spread, math.ceil(max(values) * headroom), low), high)

    # business hours: at least 1.5 x the busiest day and the highest concurrency; off hours: no headroom
    out = {"daily_quota": quota(biz, business, 1.5, p["min_q"], p["max_q"]),
           "daily_quota_off": quota(off, days, 0, p["min_q_off"], p["max_q_off"])}
    peaks = {0: [r.concurrent_calls for r in mine if not r.off_hours], 1: [r.concurrent_calls for r in mine if r.off_hours]}
    if peaks[0]:
        out["concurrent_calls"] = min(max(math.ceil(max(peaks[0]) * 1.5), max(peaks[0]) + 1, p["min_c"]), p["max_c"])
    if peaks[1]:
        out["concurrent_calls_off"] = min(max(max(peaks[1]) + 1, p["min_c_off"]), p["max_c_off"])
    for field, column in (("dest_countries", "dest_country"), ("source_countries", "source_country")):
        used = Counter(getattr(r, column) for r in mine)
        out[field] = {iso for iso, n in used.items() if n >= p["min_country"] and iso not in high_risk}
    totals = [biz.get(d, 0) + off.get(d, 0) for d in days]
    out["anomaly_daily"] = math.floor(statistics.fmean(totals) + p["anomaly_sigma"] * statistics.pstdev(totals))
    return out


def lower_median(values):
    return sorted(values)[(len(values) - 1) // 2]


def with_domain_medians(expected, domains):
    """`expected` ({name: expected_training()}) with every limit at least the lower median of the
    same limit over the trained accounts of the domain ({name: domain}): training per domain."""
    out = {name: None if e is None else dict(e) for name, e in expected.items()}
    for domain in set(domains.values()):
        trained = [out[n] for n in out if domains[n] == domain and out[n] is not None]
        for field in FIELDS:
            values = [e[field] for e in trained if field in e]
            for e in trained:
                if field in e:
                    e[field] = max(e[field], lower_median(values))
    return out


def bounds(cfg):
    p = cfg.policy
    return {"window": p.train_window_days, "min_days": p.train_min_days, "sigma": p.train_sigma,
            "min_q": p.train_min_daily_quota, "max_q": p.train_max_daily_quota,
            "min_q_off": p.train_min_daily_quota_off, "max_q_off": p.train_max_daily_quota_off,
            "min_c": p.train_min_concurrent, "max_c": p.train_max_concurrent,
            "min_c_off": p.train_min_concurrent_off, "max_c_off": p.train_max_concurrent_off,
            "min_country": p.train_min_country_calls, "anomaly_sigma": p.anomaly_sigma}


def check_account(acc, before, expected):
    """acc (after training) against the expected values; fields that training must leave alone
    keep their `before` value."""
    for field in FIELDS + ("anomaly_daily",):
        want = expected.get(field, getattr(before, field))
        if field in before.pinned:
            want = getattr(before, field)
        assert getattr(acc, field) == want, f"{acc.name} {field}: {getattr(acc, field)} != {want}"
    for field in ("dest_countries", "source_countries"):
        want = getattr(before, field) if field in before.pinned else getattr(before, field) | expected[field]
        assert getattr(acc, field) == want, f"{acc.name} {field}: {getattr(acc, field)} != {want}"


# -- the 90-day synthetic history --------------------------------------------------------------

TRAIN_POLICY = dict(timezone="Asia/Tokyo", home_country="JP", holidays="2024-05-03, 2024-05-06",
                    train_min_concurrent=3, train_max_daily_quota=60, train_max_daily_quota_off=6,
                    train_max_concurrent=20, train_max_concurrent_off=4)


def build_history(db, cfg):
    created = NOW - 120 * 86400
    accs = {name: add_account(db, name, "tokyo.example", created, cc_off=7 if name == "dave" else 2)
            for name in ("alice", "bob", "carol", "dave", "erin")}
    # bob's business-hours quota and destinations were set by hand: pinned
    tfps.update_account(db, accs["bob"], created, daily_quota=77, dest_countries={"JP"})
    accs["bob"] = reload(db, accs["bob"])
    assert accs["bob"].pinned == {"daily_quota", "dest_countries"}

    h, rng = History(TOKYO), random.Random(6)
    alice, bob, carol, dave, erin = (accs[n] for n in ("alice", "bob", "carol", "dave", "erin"))
    d = dt.date
    vacation = {d(2024, 6, 10) + dt.timedelta(days=k) for k in range(5)}
    h.office(rng, alice, d(2024, 4, 17), d(2024, 7, 14), skip=vacation)
    for day, dest, n in ((d(2024, 5, 8), "GB", 5), (d(2024, 5, 9), "DE", 2), (d(2024, 5, 20), "CU", 6),
                         (d(2024, 6, 3), "LV", 3)):
        for k in range(n):      # learned: GB (5 calls); not learned: DE (2 calls), CU and LV (high risk)
            h.call(alice, h.at(day, 10, k), dest=dest, conc=2)
    for k in range(3):
        h.call(alice, h.at(d(2024, 5, 14), 15, k), src="US")       # source US: 3 calls, learned
    for k in range(2):
        h.call(alice, h.at(d(2024, 5, 15), 15, k), src="RO")       # source RO: 2 calls, not learned
    for k in range(5):   # rejected calls count for nothing: neither FR nor their concurrency
        h.call(alice, h.at(d(2024, 6, 4), 12, k), dest="FR", conc=30, code="R06")
        h.call(alice, h.at(d(2024, 4, 1), 12, k), dest="IT", conc=31)              # before the window
        h.call(alice, dt.datetime.fromtimestamp(NOW + 60 + k, TOKYO), dest="NZ", conc=32)   # after `now`
    for k in range(4):   # today's calls so far: not a complete day, no quota effect
        h.call(alice, h.at(d(2024, 7, 15), 9, 10 * k), conc=2)

    h.office(rng, bob, d(2024, 4, 20), d(2024, 7, 14), biz=(5, 15), off=(0, 2), peak=4)
    for k in range(4):
        h.call(bob, h.at(d(2024, 6, 5), 14, k), dest="GB")
    h.office(rng, carol, d(2024, 7, 10), d(2024, 7, 14), biz=(10, 12))    # 5 days: fewer than train_min_days
    for k in range(5):
        h.call(carol, h.at(d(2024, 7, 11), 16, k), dest="GB")
    h.office(rng, dave, d(2024, 5, 1), d(2024, 7, 14), biz=(0, 2), off=(0, 0), peak=1)   # clamped low
    h.office(rng, erin, d(2024, 6, 1), d(2024, 7, 14), biz=(50, 60), off=(8, 12), peak=25, peak_off=9)  # clamped high
    h.write(db)
    return accs, h


@pytest.fixture
def trained_setup(tmp_path, db_url):
    cfg, path = make_config(tmp_path, **TRAIN_POLICY)
    db = tfps.open_database(db_url)
    accs, h = build_history(db, cfg)
    yield cfg, db, accs, h
    db.close()


def test_learned_limits_follow_the_formula_with_bounds_pins_and_high_risk(trained_setup):
    cfg, db, accs, h = trained_setup
    p = bounds(cfg)
    own = {n: expected_training(h.rows, a, NOW, TOKYO, p) for n, a in accs.items()}
    assert own["carol"] is None          # 5 days of history
    # the synthetic data exercises what it claims to
    alice = own["alice"]
    assert p["min_q"] < alice["daily_quota"] < p["max_q"] and p["min_q_off"] < alice["daily_quota_off"] < p["max_q_off"]
    assert alice["dest_countries"] == {"JP", "GB"} and alice["source_countries"] == {"JP", "US"}
    assert alice["concurrent_calls"] == 9 and alice["concurrent_calls_off"] == 3
    assert (own["dave"]["daily_quota"], own["dave"]["daily_quota_off"], own["dave"]["concurrent_calls"]) == (10, 2, 3)
    assert "concurrent_calls_off" not in own["dave"]
    assert [own["erin"][f] for f in FIELDS] == [20, 4, 60, 6]
    # one domain: quiet dave learns at least what its accounts typically learn (the lower median
    # of alice, bob, dave and erin: the second lowest), busy erin raises nobody
    expected = with_domain_medians(own, {n: "tokyo.example" for n in accs})
    for field in FIELDS:
        if field in own["dave"]:
            assert expected["dave"][field] == lower_median([own[n][field] for n in ("alice", "bob", "dave", "erin")])
    assert expected["dave"]["daily_quota"] > own["dave"]["daily_quota"]
    assert expected["dave"]["concurrent_calls"] > own["dave"]["concurrent_calls"]
    assert all(expected[n][f] < own["erin"][f] for n in ("alice", "bob", "dave") for f in ("daily_quota", "concurrent_calls"))

    before = {n: reload(db, a) for n, a in accs.items()}
    snapshot = account_rows(db)
    proposals = tfps.train(cfg, db, NOW, dry_run=True)
    assert account_rows(db) == snapshot, "a dry run changed accounts"
    by_name = {pr.account.user: pr for pr in proposals}
    assert set(by_name) == set(accs)
    assert by_name["carol"].changes == [] and "train_min_days" in by_name["carol"].skipped

    # the proposal of alice, field by field: (field, current, proposed, why)
    changes = {c[0]: c for c in by_name["alice"].changes}
    for field in FIELDS + ("anomaly_daily",):
        assert changes[field][1] == getattr(before["alice"], field) and changes[field][2] == alice[field], changes[field]
        assert changes[field][3], "every change says why"
    assert tfps.country_set(changes["dest_countries"][2]) == {"GB", "JP"}
    # pinned fields are not even proposed
    assert not {c[0] for c in by_name["bob"].changes} & {"daily_quota", "dest_countries"}

    tfps.train(cfg, db, NOW)
    rows_before = {r[0]: r for r in snapshot}
    for name, acc in accs.items():
        if expected[name] is None:
            assert {r[0]: r for r in account_rows(db)}[acc.id] == rows_before[acc.id], "a skipped account changed"
        else:
            check_account(reload(db, acc), before[name], expected[name])
    after = {n: reload(db, a) for n, a in accs.items()}
    assert after["bob"].daily_quota == 77 and after["bob"].dest_countries == {"JP"}       # pinned
    assert after["bob"].daily_quota_off == expected["bob"]["daily_quota_off"]             # not pinned: learned
    assert after["dave"].concurrent_calls_off == 7                                        # no off-hours calls: kept
    for acc in after.values():
        assert not (acc.dest_countries | acc.source_countries) & HIGH_RISK_DEFAULT
    assert not {"DE", "FR", "IT", "NZ"} & after["alice"].dest_countries

    # a second run over the same history finds nothing more to change
    again = tfps.train(cfg, db, NOW)
    assert all(pr.changes == [] for pr in again), [(pr.account.name, pr.changes) for pr in again if pr.changes]


def test_rare_campaign_days_keep_their_busiest_day_with_headroom(tmp_path, db_url):
    """A dialer's campaign day every two weeks among quiet ones: mean + 2 x stddev of its days
    stays below a campaign day; the learned quota and concurrency leave room above the busiest day, which is
    what lets them rise with a customer whose calls over the limit never reach the history."""
    cfg, _ = make_config(tmp_path, timezone="Asia/Tokyo", home_country="JP", holidays="2024-05-03, 2024-05-06")
    db = tfps.open_database(db_url)
    dialer = add_account(db, "trunk1", "dialer.example", NOW - 120 * 86400, cc=5, quota=20)
    h, day, per_day = History(TOKYO), dt.date(2024, 6, 3), []
    while day < dt.date(2024, 7, 15):
        if day.weekday() < 5:
            campaign = len(per_day) % 10 == 9          # every tenth business day
            per_day.append(100 if campaign else 4)
            for k in range(per_day[-1]):
                h.call(dialer, h.at(day, 10 + k // 25, (k % 25) * 2), conc=16 if campaign and k % 25 == 24 else 1)
        day += dt.timedelta(days=1)
    h.write(db)
    assert math.ceil(statistics.fmean(per_day) + 2 * statistics.pstdev(per_day)) < 100, "the old formula falls short"
    tfps.train(cfg, db, NOW)
    dialer = reload(db, dialer)
    assert dialer.daily_quota == 150 and dialer.concurrent_calls == 24
    db.close()


def campaign_history(db, domain, users, campaigns, created=NOW - 120 * 86400):
    """Accounts of `domain` with 4 calls every business day from 3 June, and on the business days
    numbered in campaigns[user] (0 = 3 June) a campaign instead: 4 bursts of 25 calls 4 s apart
    (25 calls in 100 s, 15 of them within 60 s), 16 reported concurrent calls at each burst's end."""
    accs = {user: add_account(db, user, domain, created, cc=5, quota=20) for user in users}
    h, day, n = History(TOKYO), dt.date(2024, 6, 3), 0
    while day < dt.date(2024, 7, 15):
        if day.weekday() < 5:
            for user, acc in accs.items():
                if n in campaigns.get(user, ()):
                    for burst in range(4):
                        for k in range(25):
                            h.call(acc, h.at(day, 10 + 2 * burst, 0, 0) + dt.timedelta(seconds=4 * k),
                                   conc=16 if k == 24 else 1 + k % 3)
                else:
                    for k in range(4):
                        h.call(acc, h.at(day, 10 + 2 * k, 30), conc=1)
            n += 1
        day += dt.timedelta(days=1)
    h.write(db)
    return accs, h


def test_a_trunk_without_campaigns_learns_at_least_its_domain_median(tmp_path, db_url):
    """A dialer's three trunks: two ran campaigns (100 calls a day, 16 at once, 15 in a minute),
    the third only quiet days so far. Trained alone (as at the end of its learning), the third
    learns its domain's median business-hours quota, concurrency and calls per minute, not an
    office phone's; a value pinned by hand stays, and a value set on the domain still wins."""
    cfg, _ = make_config(tmp_path, timezone="Asia/Tokyo", home_country="JP", holidays="2024-05-03, 2024-05-06")
    db = tfps.open_database(db_url)
    accs, h = campaign_history(db, "dialer.example", ("trunk1", "trunk2", "trunk3"),
                               {"trunk1": (4, 17), "trunk2": (9, 21)})
    tfps.update_account(db, accs["trunk3"], NOW - 86400, concurrent_calls=8)   # pinned by hand
    own = {user: expected_training(h.rows, acc, NOW, TOKYO, bounds(cfg)) for user, acc in accs.items()}
    assert (own["trunk1"]["daily_quota"], own["trunk1"]["concurrent_calls"]) == (150, 24) == \
        (own["trunk2"]["daily_quota"], own["trunk2"]["concurrent_calls"])
    assert (own["trunk3"]["daily_quota"], own["trunk3"]["concurrent_calls"]) == (10, 2)      # an office phone's

    [proposal] = tfps.train(cfg, db, NOW, account=reload(db, accs["trunk3"]))
    trunk3 = reload(db, accs["trunk3"])
    assert (trunk3.daily_quota, trunk3.calls_per_minute) == (150, 30)     # 15 calls in a minute x 2
    assert trunk3.concurrent_calls == 8 and trunk3.pinned == {"concurrent_calls"}
    assert trunk3.daily_quota_off == own["trunk3"]["daily_quota_off"]   # no trunk calls off hours: the minimum
    why = dict((f, w) for f, _, _, w in proposal.changes)
    assert "median of the 3 accounts of domain dialer.example" in why["daily_quota"]
    assert "concurrent_calls" not in why
    for user in ("trunk1", "trunk2"):       # not trained
        assert (reload(db, accs[user]).daily_quota, reload(db, accs[user]).concurrent_calls) == (20, 5)

    tfps.update_domain(db, "dialer.example", {"daily_quota": 40}, NOW)
    effective, sources = tfps.effective_policy(trunk3, tfps.find_domain(db, "dialer.example"), cfg.policy)
    assert (effective.daily_quota, sources["daily_quota"]) == (40, "domain")
    assert (effective.concurrent_calls, sources["concurrent_calls"]) == (8, "account")
    db.close()


def test_one_busy_or_hacked_account_raises_nobody(tmp_path, db_url):
    """An office of five phones and a busy receptionist, and a domain of two accounts: nobody
    learns the busy account's limits; a quiet phone learns what the office's phones typically do."""
    cfg, _ = make_config(tmp_path, **TRAIN_POLICY)
    db = tfps.open_database(db_url)
    created = NOW - 120 * 86400
    h, rng = History(TOKYO), random.Random(12)
    office = {u: add_account(db, u, "office.example", created) for u in ("101", "102", "103", "104", "quiet", "reception")}
    pair = {u: add_account(db, u, "pair.example", created) for u in ("busy", "calm")}
    for user, acc in office.items():
        if user == "reception":
            h.office(rng, acc, dt.date(2024, 5, 1), dt.date(2024, 7, 14), biz=(35, 45), off=(2, 6), peak=12, peak_off=4)
        elif user == "quiet":
            h.office(rng, acc, dt.date(2024, 5, 1), dt.date(2024, 7, 14), biz=(0, 2), off=(0, 1), peak=1, peak_off=1)
        else:
            h.office(rng, acc, dt.date(2024, 5, 1), dt.date(2024, 7, 14), biz=(6, 12), off=(0, 2), peak=3)
    h.office(rng, pair["busy"], dt.date(2024, 5, 1), dt.date(2024, 7, 14), biz=(40, 50), off=(3, 6), peak=15, peak_off=3)
    h.office(rng, pair["calm"], dt.date(2024, 5, 1), dt.date(2024, 7, 14), biz=(1, 3), off=(0, 1), peak=1, peak_off=1)
    h.write(db)
    accs = {**office, **pair}
    own = {name: expected_training(h.rows, acc, NOW, TOKYO, bounds(cfg)) for name, acc in accs.items()}
    expected = with_domain_medians(own, {name: acc.domain for name, acc in accs.items()})
    tfps.train(cfg, db, NOW)
    learned = {name: reload(db, acc) for name, acc in accs.items()}
    for name, acc in learned.items():
        for field in FIELDS:
            assert getattr(acc, field) == expected[name][field], (name, field)
    phones = ("101", "102", "103", "104")
    for field in ("daily_quota", "concurrent_calls"):
        assert getattr(learned["quiet"], field) > own["quiet"][field]                       # raised ...
        assert getattr(learned["quiet"], field) <= max(own[p][field] for p in phones)      # ... to a phone's
        assert all(getattr(learned[p], field) < own["reception"][field] for p in (*phones, "quiet"))
        assert getattr(learned["calm"], field) == own["calm"][field]                          # two accounts: own
    assert learned["reception"].daily_quota == own["reception"]["daily_quota"]
    db.close()


def test_train_one_account(trained_setup):
    cfg, db, accs, h = trained_setup
    snapshot = {r[0]: r for r in account_rows(db)}
    proposals = tfps.train(cfg, db, NOW, account=accs["erin"])
    assert [pr.account.user for pr in proposals] == ["erin"]
    erin = reload(db, accs["erin"])
    assert [getattr(erin, f) for f in FIELDS] == [20, 4, 60, 6]
    for row in account_rows(db):
        if row[0] != erin.id:
            assert row == snapshot[row[0]]


def test_days_are_local_calendar_days(tmp_path, db_url):
    """Every Tokyo day has 4 calls: a (0 or 4) at 07:00 and 4 - a at 12:00. 07:00 in Tokyo is 22:00
    UTC of the day before, so per UTC day the totals swing between 0 and 8: only local days give
    a steady normal (stddev 0)."""
    cfg, _ = make_config(tmp_path, **TRAIN_POLICY)
    db = tfps.open_database(db_url)
    acc = add_account(db, "tz", "tokyo.example", NOW - 60 * 86400)
    h = History(TOKYO)
    for k in range(28):
        day = dt.date(2024, 6, 17) + dt.timedelta(days=k)
        early = 4 * (k % 2)
        for n in range(early):
            h.call(acc, h.at(day, 7, n))
        for n in range(4 - early):
            h.call(acc, h.at(day, 12, n))
    h.write(db)
    expected = expected_training(h.rows, acc, NOW, TOKYO, bounds(cfg))
    assert expected["anomaly_daily"] == 4
    tfps.train(cfg, db, NOW)
    learned = reload(db, acc)
    assert learned.anomaly_daily == 4
    assert (learned.daily_quota, learned.daily_quota_off) == (expected["daily_quota"], expected["daily_quota_off"])
    db.close()


def test_countries_marked_high_risk_in_the_country_table_are_never_learned(tmp_path, sqlite_url):
    """schema.sql: risk 'high' makes the country's tier high, whatever [policy] high_risk_countries lists. With the list
    in the config replaced, Cuba is still high risk through the country table: the engine rejects
    calls to it (R06), so training must not add it to an account's destinations either."""
    cfg, _ = make_config(tmp_path, timezone="UTC", high_risk_countries="SL")
    db = tfps.open_database(sqlite_url)
    acc = add_account(db, "hq", "example.com", NOW - 60 * 86400, src=("US",), dst=("US",))
    h = History(UTC)
    for k in range(20):
        day = dt.date(2024, 6, 20) + dt.timedelta(days=k)
        h.call(acc, h.at(day, 10), dest="US", src="US")
        h.call(acc, h.at(day, 11), dest="CU", src="US")     # e.g. a whitelisted number in Cuba
        h.call(acc, h.at(day, 12), dest="SL", src="US")
    h.write(db)
    engine = tfps.Engine(cfg, db)
    assert engine.tiers.by_iso["CU"] == "high"
    verdict = engine.decide(tfps.CallAttempt("hq", "example.com", "+5372345678", ts=NOW, source_country="US"), count=False)
    assert verdict.code == "R06"
    tfps.train(cfg, db, NOW)
    learned = reload(db, acc).dest_countries
    assert "SL" not in learned
    assert "CU" not in learned, f"training learned the high-risk (country table) destination CU: {learned}"


# -- learning mode ---------------------------------------------------------------------------

def office_calls(engine, user, domain, day, rng, count, extra=()):
    """Business-hours calls of one day through the real engine: decide + record, then flush."""
    verdicts = []
    start = dt.datetime.combine(day, dt.time(9, 30), UTC).timestamp()
    numbers = [f"+1212555{rng.randint(0, 9999):04d}" for _ in range(count)] + list(extra)
    for i, number in enumerate(numbers):
        a = tfps.CallAttempt(user, domain, number, "198.51.100.20", "FPBX", 1 + i % 3, start + 300 * i, source_country="US")
        v = engine.decide(a)
        engine.record(v, "302", 0.1)
        verdicts.append(v)
    engine.flush(start)
    return verdicts


def test_learning_mode_then_enforcing_on_day_learning_days(tmp_path, db_url):
    cfg, _ = make_config(tmp_path, timezone="UTC", learning_days=14, new_destination_calls=0)
    db = tfps.open_database(db_url)
    engine = tfps.Engine(cfg, db)
    jobs = tfps.DailyJobs(cfg, db, engine)
    rng = random.Random(14)
    t0 = dt.datetime(2024, 3, 4, 9, 0, tzinfo=UTC).timestamp()        # Monday
    first = engine.decide(tfps.CallAttempt("hq", "example.com", "+12125550100", ts=t0, source_country="US"))
    engine.record(first, "302", 0.1)
    assert first.code == "A00"
    acc = tfps.find_account(db, "hq", "example.com")
    assert acc.state == "learning" and acc.learning_until == pytest.approx(t0 + 14 * 86400)
    # a second account enrolled an hour later ends its learning an hour later
    second = engine.decide(tfps.CallAttempt("branch", "example.com", "+12125550101", ts=t0 + 3600, source_country="US"))
    engine.record(second, "302", 0.1)
    engine.flush(t0 + 3600)

    counts = {}
    for k in range(14):
        day = dt.date(2024, 3, 4) + dt.timedelta(days=k)
        if day.weekday() >= 5:
            continue
        counts[day] = rng.randint(12, 20)
        extra = ["+442079460001"] if k < 4 else []     # GB: 4 approved calls while learning -> learned
        vs = office_calls(engine, "hq", "example.com", day, rng, counts[day], extra)
        assert all(v.code == "A00" for v in vs)
        if extra:   # not allowed yet: approved, but logged as a would-be rejection
            assert vs[-1].would is not None and vs[-1].would.code == "R06" and "learning" in vs[-1].reason
        office_calls(engine, "branch", "example.com", day, rng, 3)

    # while learning, change-analysis rules only log; blacklist rules enforce
    t_learn = t0 + 10 * 86400 + 7200          # Thursday 11:00
    v = engine.decide(tfps.CallAttempt("hq", "example.com", "+23276123456", "192.0.2.66", "Zoiper", 1, t_learn,
                                       source_country="RO"))
    assert v.code == "A00" and v.would.code in ("R06", "R04")
    engine.record(v, "302", 0.1)
    v = engine.decide(tfps.CallAttempt("hq", "example.com", "+37161234567", ts=t_learn + 60, source_country="US"))
    assert v.code == "R06", "a high-risk destination is rejected even while learning"
    engine.record(v, "302", 0.1)
    v = engine.decide(tfps.CallAttempt("hq", "example.com", "+12125550199", "198.51.100.20", "FPBX", 12, t_learn + 120,
                                       source_country="US"))
    assert v.code == "A00" and v.would.code == "R10"
    engine.record(v, "302", 0.1)
    engine.flush(t_learn + 120)

    end = t0 + 14 * 86400
    assert tfps.finish_learning(cfg, db, end - 1) == 0
    assert tfps.find_account(db, "hq", "example.com").learning(end - 1)
    assert tfps.finish_learning(cfg, db, end) == 1
    acc = tfps.find_account(db, "hq", "example.com")
    assert acc.state == "enforcing" and not acc.learning(end)
    assert tfps.find_account(db, "branch", "example.com").state == "learning"
    # trained at the switch, from the learning period's approved calls
    business = [dt.date(2024, 3, 4) + dt.timedelta(days=k) for k in range(14)]
    business = [d for d in business if d.weekday() < 5]
    per_day = [counts[d] + (1 if d < dt.date(2024, 3, 8) else 0) for d in business]
    per_day[0] += 1                                    # the very first call
    per_day[8] += 2                                    # day 10 (Thursday 2024-03-14): SL/RO and the R10 would-be
    assert acc.daily_quota == max(10, math.ceil(statistics.fmean(per_day) + 2 * statistics.pstdev(per_day)),
                                  math.ceil(max(per_day) * 1.5))
    assert acc.dest_countries == {"US", "GB"}
    assert acc.concurrent_calls == 18            # the highest reported concurrency (12, approved while learning) x 1.5

    # enforcing now: a new destination is rejected, the learned one is approved
    assert engine.check_for_changes()
    v = engine.decide(tfps.CallAttempt("hq", "example.com", "+23276123457", ts=end + 60, source_country="US"))
    assert v.code == "R06" and v.would is None
    v = engine.decide(tfps.CallAttempt("hq", "example.com", "+442079460002", ts=end + 120, source_country="US"))
    assert v.code == "A00" and v.would is None
    engine.flush(end + 120)

    # the server's path: DailyJobs.run_due ends the second account's learning at its own time
    jobs.run_due(end + 3599)
    assert tfps.find_account(db, "branch", "example.com").state == "learning"
    jobs.run_due(end + 3600)
    assert tfps.find_account(db, "branch", "example.com").state == "enforcing"
    db.close()


def test_cli_learn_days_and_stop(tmp_path, sqlite_url):
    _, conf = make_config(tmp_path, learning_days=14)
    run_cli("add", "1001", "pbx.example.com", config=conf, db=sqlite_url, check=True)
    listed = json.loads(run_cli("list", "--json", config=conf, db=sqlite_url, check=True).stdout)
    assert listed[0]["state"] == "learning"

    r = run_cli("learn", "1001", "pbx.example.com", "--stop", config=conf, db=sqlite_url)
    assert r.returncode == 0 and "is enforcing" in r.stdout, r.stderr
    assert json.loads(run_cli("list", "--json", config=conf, db=sqlite_url, check=True).stdout)[0]["state"] == "enforcing"
    show = json.loads(run_cli("show", "1001", "pbx.example.com", "--json", config=conf, db=sqlite_url, check=True).stdout)
    assert show["state"] == "enforcing" and show["learning_until"] == ""

    before = time.time()
    r = run_cli("learn", "1001", "pbx.example.com", "--days", "3", config=conf, db=sqlite_url)
    after = time.time()
    assert r.returncode == 0 and "is learning until" in r.stdout, r.stderr
    show = json.loads(run_cli("show", "1001", "pbx.example.com", "--json", config=conf, db=sqlite_url, check=True).stdout)
    assert show["state"] == "learning" and show["learning_until"]
    db = tfps.open_database(sqlite_url)
    acc = tfps.find_account(db, "1001", "pbx.example.com")
    assert acc.state == "learning" and before + 3 * 86400 - 1 <= acc.learning_until <= after + 3 * 86400 + 1
    cfg = tfps.Config.load(conf)
    assert tfps.finish_learning(cfg, db, acc.learning_until - 1) == 0
    assert tfps.finish_learning(cfg, db, acc.learning_until) == 1
    assert tfps.find_account(db, "1001", "pbx.example.com").state == "enforcing"
    db.close()

    # set/allow by hand also end learning, and pin what they set
    run_cli("learn", "1001", "pbx.example.com", "--days", "5", config=conf, db=sqlite_url, check=True)
    run_cli("set", "1001", "pbx.example.com", "--daily-quota", "42", config=conf, db=sqlite_url, check=True)
    show = json.loads(run_cli("show", "1001", "pbx.example.com", "--json", config=conf, db=sqlite_url, check=True).stdout)
    assert show["state"] == "enforcing" and "daily_quota" in show["pinned"].split(",")

    r = run_cli("learn", "nobody", "pbx.example.com", "--days", "3", config=conf, db=sqlite_url)
    assert r.returncode == 1 and "unknown account" in r.stderr
    r = run_cli("learn", "1001", "pbx.example.com", config=conf, db=sqlite_url)
    assert r.returncode == 2        # --days or --stop is required


# -- tfps.py train -----------------------------------------------------------------------------

def recent_history(db, now):
    """Two accounts with a month of history ending yesterday (UTC), for the CLI, whose clock is real."""
    today = dt.datetime.fromtimestamp(now, UTC).date()
    alice = add_account(db, "alice", "example.com", now - 60 * 86400, src=("US",), dst=("US",))
    bob = add_account(db, "bob", "example.com", now - 60 * 86400, src=("US",), dst=("US",))
    tfps.update_account(db, bob, now - 60 * 86400, concurrent_calls=9)
    bob = reload(db, bob)
    h, rng = History(UTC), random.Random(7)
    h.office(rng, alice, today - dt.timedelta(days=30), today - dt.timedelta(days=1), biz=(15, 30), holidays=())
    h.office(rng, bob, today - dt.timedelta(days=20), today - dt.timedelta(days=1), biz=(3, 6), peak=5, holidays=())
    for k in range(3):
        h.call(alice, h.at(today - dt.timedelta(days=5), 10, k), dest="GB", src="US", holidays=())
    h.write(db)
    return {"alice": alice, "bob": bob}, h


def test_cli_train_dry_run_prints_current_and_proposed_and_changes_nothing(tmp_path, db_url):
    cfg, conf = make_config(tmp_path, timezone="UTC", home_country="US", holidays="")
    db = tfps.open_database(db_url)
    if time.time() % 86400 > 86400 - 120:       # the CLI's clock is real: keep the run within one UTC day
        time.sleep(86400 - time.time() % 86400 + 1)
    now = time.time()
    accs, h = recent_history(db, now)
    p = bounds(cfg)
    expected = {n: expected_training(h.rows, a, now, UTC, p, holidays=()) for n, a in accs.items()}
    assert "GB" in expected["alice"]["dest_countries"]
    snapshot = account_rows(db)
    db.close()

    r = run_cli("train", "--dry-run", config=conf, db=db_url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["account", "field", "current", "proposed", "why"]
    table = {(line.split()[0], line.split()[1]): line.split()[2:4] for line in lines[1:]}
    for field in FIELDS:
        current = getattr(accs["alice"], field)
        assert table[("alice@example.com", field)] == [str(current), str(expected["alice"][field])], field
    assert ("bob@example.com", "concurrent_calls") not in table             # pinned by `set`
    assert table[("bob@example.com", "daily_quota")][1] == str(expected["bob"]["daily_quota"])
    assert "GB" in next(line for line in lines if "dest_countries" in line and "alice" in line)

    as_json = json.loads(run_cli("train", "--dry-run", "--json", config=conf, db=db_url, check=True).stdout)
    got = {(row["account"], row["field"]): row for row in as_json}
    assert got[("alice@example.com", "daily_quota")]["proposed"] == expected["alice"]["daily_quota"]
    assert got[("alice@example.com", "daily_quota")]["current"] == accs["alice"].daily_quota
    assert all(row["why"] for row in as_json)

    db = tfps.open_database(db_url)
    assert account_rows(db) == snapshot, "train --dry-run changed the accounts"
    db.close()

    # --account trains one account; without --dry-run the values are written
    r = run_cli("train", "--account", "bob@example.com", config=conf, db=db_url)
    assert r.returncode == 0 and r.stdout.splitlines()[0].split() == ["account", "field", "current", "learned", "why"]
    assert "alice" not in r.stdout
    db = tfps.open_database(db_url)
    bob = reload(db, accs["bob"])
    assert bob.daily_quota == expected["bob"]["daily_quota"] and bob.concurrent_calls == 9
    assert reload(db, accs["alice"]).daily_quota == accs["alice"].daily_quota
    # another node holds the CLI's training lock: refused, nothing written
    db.execute("INSERT INTO locks (name, holder, expires) VALUES ('train', 'other-node', ?)", (time.time() + 3600,))
    db.close()
    r = run_cli("train", config=conf, db=db_url)
    assert r.returncode == 1 and "another node is training" in r.stderr
    db = tfps.open_database(db_url)
    assert reload(db, accs["alice"]).daily_quota == accs["alice"].daily_quota
    db.execute("DELETE FROM locks WHERE name = 'train'")
    db.close()
    run_cli("train", config=conf, db=db_url, check=True)
    db = tfps.open_database(db_url)
    alice = reload(db, accs["alice"])
    check_account(alice, accs["alice"], expected["alice"])
    assert db.scalar("SELECT COUNT(*) FROM locks WHERE name = 'train'") == 0, "the CLI keeps its lock"
    db.close()


# -- the training lock: two nodes, one MariaDB ---------------------------------------------------

def in_threads(*calls):
    """Run the callables at the same moment, one thread each; returns their results."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)
    errors = []

    def run(i, fn):
        try:
            barrier.wait()
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, fn), name=f"node-{'ab'[i]}") for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def test_acquire_lock_has_one_holder_on_mariadb(mysql_url):
    a, b = tfps.open_database(mysql_url), tfps.Database(mysql_url)
    now = NOW
    for k in range(20):
        name = f"train:2024-07-{k + 1:02d}"
        got = in_threads(lambda: tfps.acquire_lock(a, name, "node-a", now, 3600),
                         lambda: tfps.acquire_lock(b, name, "node-b", now, 3600))
        assert sorted(got) == [False, True], (name, got)
        holder = a.scalar("SELECT holder FROM locks WHERE name = ?", (name,))
        assert holder == ("node-a" if got[0] else "node-b")
    # held until it expires, then the other node may take it
    name = "train:2024-07-01"
    holder = a.scalar("SELECT holder FROM locks WHERE name = ?", (name,))
    other, other_db = ("node-b", b) if holder == "node-a" else ("node-a", a)
    assert not tfps.acquire_lock(other_db, name, other, now + 3599, 3600)
    assert tfps.acquire_lock(other_db, name, other, now + 3600, 3600)
    assert a.scalar("SELECT holder FROM locks WHERE name = ?", (name,)) == other
    a.close()
    b.close()


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append((record.threadName, record.getMessage()))


def test_daily_jobs_on_two_nodes_train_once(tmp_path, mysql_url):
    cfg_a, _ = make_config(tmp_path, "a.conf", node="node-a", **TRAIN_POLICY)
    cfg_b, _ = make_config(tmp_path, "b.conf", node="node-b", **TRAIN_POLICY)
    db_a = tfps.open_database(mysql_url)
    accs, h = build_history(db_a, cfg_a)
    db_b = tfps.open_database(mysql_url)
    jobs = [tfps.DailyJobs(cfg, db, tfps.Engine(cfg, db)) for cfg, db in ((cfg_a, db_a), (cfg_b, db_b))]
    handler = Collect()
    tlog = logging.getLogger("tfps")
    old_level = tlog.level
    tlog.addHandler(handler)
    tlog.setLevel(logging.INFO)
    try:
        # 2024-07-16 03:31 in Tokyo: past train_at (03:30), before summary_at (08:00)
        at = dt.datetime(2024, 7, 16, 3, 31, tzinfo=TOKYO).timestamp()
        in_threads(lambda: jobs[0].run_due(at), lambda: jobs[1].run_due(at))
        trained = [t for t, m in handler.records if m.startswith("daily training")]
        purged = [t for t, m in handler.records if m.startswith("daily purge")]
        assert len(trained) == 1, handler.records
        assert len(purged) == 1, handler.records
        assert not [m for _, m in handler.records if m.startswith("daily summary")]
        holder = db_a.scalar("SELECT holder FROM locks WHERE name = 'train:2024-07-16'")
        assert holder == trained[0], (holder, trained)
        # and the training happened: alice has her learned quota
        expected = expected_training(h.rows, accs["alice"], at, TOKYO, bounds(cfg_a))
        assert reload(db_a, accs["alice"]).daily_quota == expected["daily_quota"]

        # both nodes again, later the same day: training is done for the day; the summary runs once
        handler.records.clear()
        later = at + 5 * 3600
        in_threads(lambda: jobs[0].run_due(later), lambda: jobs[1].run_due(later))
        assert [m for _, m in handler.records if m.startswith("daily summary")].__len__() == 1, handler.records
        assert not [m for _, m in handler.records if m.startswith("daily training")]

        # the next day: one node trains again, under the next day's lock
        handler.records.clear()
        next_day = at + 86400
        in_threads(lambda: jobs[0].run_due(next_day), lambda: jobs[1].run_due(next_day))
        assert len([m for _, m in handler.records if m.startswith("daily training")]) == 1, handler.records
        assert db_a.scalar("SELECT COUNT(*) FROM locks WHERE name LIKE 'train:%'") == 2
    finally:
        tlog.removeHandler(handler)
        tlog.setLevel(old_level)
        db_a.close()
        db_b.close()


def test_daily_summary_alert_is_queued(tmp_path, db_url):
    """The daily job at summary_at sends one summary per account with rejections the day before,
    through the rate-limited channel (alert_throttle, alert_outbox) on either backend."""
    cfg, _ = make_config(tmp_path, timezone="UTC")
    cfg.set("alerts", "alert_webhook", "http://127.0.0.1:9/hook")      # queued only: no dispatcher runs
    db = tfps.open_database(db_url)
    acc = add_account(db, "hq", "example.com", NOW - 30 * 86400, src=("US",), dst=("US",))
    h = History(UTC)
    yesterday = dt.date(2024, 3, 5)
    for k in range(3):
        h.call(acc, h.at(yesterday, 10, k), dest="SL", src="US", code="R06")
    h.write(db)
    engine = tfps.Engine(cfg, db)
    jobs = tfps.DailyJobs(cfg, db, engine)
    at = dt.datetime(2024, 3, 6, 8, 1, tzinfo=UTC).timestamp()
    jobs.run_due(at)
    engine.flush(at)
    rows = db.query("SELECT kind, account, payload FROM alert_outbox")
    assert [(k, a) for k, a, _ in rows] == [("summary", "hq@example.com")]
    assert json.loads(rows[0][2])["codes"] == {"R06": 3}
    assert db.scalar("SELECT COUNT(*) FROM alert_throttle WHERE account = 'hq@example.com'") == 1
    db.close()


# -- anomaly alerts --------------------------------------------------------------------------------

def anomalies(engine):
    return [e.rule for e in engine.alerts.events if e.kind == "anomaly"]


def test_anomaly_first_call_to_a_new_destination_or_from_a_new_source(tmp_path, sqlite_url):
    cfg, _ = make_config(tmp_path, timezone="UTC", learning_days=0)
    db = tfps.open_database(sqlite_url)
    t = dt.datetime(2024, 3, 6, 10, 0, tzinfo=UTC).timestamp()
    add_account(db, "old", "example.com", t - 3 * 86400, src=("US", "CA"), dst=("US", "GB", "DE"))
    add_account(db, "young", "example.com", t - 3600, src=("US",), dst=("US", "GB", "DE"))
    engine = tfps.Engine(cfg, db)

    def call(user, number, ts, src="US"):
        engine.alerts.events.clear()
        v = engine.decide(tfps.CallAttempt(user, "example.com", number, "198.51.100.9", "ua", 1, ts, source_country=src))
        assert v.code == "A00", v.reason
        engine.record(v, "302", 0.1)
        return anomalies(engine)

    assert sorted(call("old", "+12125550100", t)) == ["NEW_DST_US", "NEW_SRC_US"]
    assert call("old", "+12125550101", t + 60) == []
    assert call("old", "+442079460000", t + 120) == ["NEW_DST_GB"]
    assert call("old", "+442079460001", t + 180) == []
    assert call("old", "+12125550102", t + 240, src="CA") == ["NEW_SRC_CA"]
    # an account younger than a day has no normal to differ from
    assert call("young", "+442079460002", t + 300) == []
    assert call("young", "+12125550103", t + 360) == []
    engine.flush(t + 360)
    # first-ever is remembered in the database: another engine (a restart, another node) agrees
    engine = tfps.Engine(cfg, db)
    assert call("old", "+442079460003", t + 420) == []
    assert call("young", "+4930123456", t + 86400) == ["NEW_DST_DE"]       # a day later it has one
    engine.flush(t + 86400)
    db.close()


def test_anomaly_daily_volume_above_the_learned_threshold(tmp_path, db_url):
    cfg, _ = make_config(tmp_path, timezone="UTC", home_country="US", learning_days=0)
    db = tfps.open_database(db_url)
    now = dt.datetime(2024, 3, 25, 8, 0, tzinfo=UTC).timestamp()    # Monday 08:00
    acc = add_account(db, "hq", "example.com", now - 30 * 86400, src=("US",), dst=("US",))
    h = History(UTC)
    for k in range(14):
        day = dt.date(2024, 3, 11) + dt.timedelta(days=k)
        for n in range((2, 3, 4, 3, 2, 0, 1)[k % 7]):
            h.call(acc, h.at(day, 10, n), dest="US", src="US", holidays=())
    h.write(db)
    tfps.train(cfg, db, now)
    threshold = reload(db, acc).anomaly_daily
    totals = [(2, 3, 4, 3, 2, 0, 1)[k % 7] for k in range(14)]
    assert threshold == math.floor(statistics.fmean(totals) + 3 * statistics.pstdev(totals)) == 5

    engine = tfps.Engine(cfg, db)
    seen = []
    for i in range(threshold + 3):
        v = engine.decide(tfps.CallAttempt("hq", "example.com", f"+1212555{i:04d}", "198.51.100.9", "ua", 1,
                                           now + 3600 + 600 * i, source_country="US"))
        assert v.code == "A00", v.reason
        engine.record(v, "302", 0.1)
        seen.append("DAILY_VOLUME" in anomalies(engine))
        engine.flush(now + 3600 + 600 * i)          # alerts go through the outbox channel
    assert seen.index(True) == threshold, "the alert comes with call threshold + 1"
    assert seen.count(True) == 1
    db.close()


def test_anomaly_off_hours_burst_goes_through_the_rate_limited_channel(tmp_path, sqlite_url):
    cfg, _ = make_config(tmp_path, timezone="UTC", learning_days=0, offhours_burst=5)
    cfg.set("alerts", "alert_webhook", "http://127.0.0.1:9/hook")      # queued only: no dispatcher runs
    db = tfps.open_database(sqlite_url)
    night = dt.datetime(2024, 3, 6, 2, 0, tzinfo=UTC).timestamp()       # Wednesday 02:00: off hours
    for user in ("burst", "slow", "day"):
        add_account(db, user, "example.com", night - 30 * 86400, cc_off=None, quota_off=None, src=("US",), dst=("US",))
    engine = tfps.Engine(cfg, db)
    db.execute("INSERT INTO account_seen (account_id, direction, iso, first_seen) "
               "SELECT id, 'dst', 'US', 0 FROM accounts UNION ALL SELECT id, 'src', 'US', 0 FROM accounts")

    def calls(user, start, gap, n):
        fired = []
        for i in range(n):
            engine.alerts.events.clear()
            v = engine.decide(tfps.CallAttempt(user, "example.com", f"+1212555{i:04d}", "198.51.100.9", "ua", 1,
                                               start + gap * i, source_country="US"))
            assert v.code == "A00", v.reason
            engine.record(v, "302", 0.1)
            fired += [(i + 1, r) for r in anomalies(engine)]
            engine.flush(start + gap * i)
        return fired

    assert calls("burst", night, 90, 7) == [(5, "OFFHOURS_BURST")]     # the 5th call within 10 minutes
    assert calls("slow", night, 160, 6) == []                          # never 5 within 10 minutes
    day = dt.datetime(2024, 3, 6, 10, 0, tzinfo=UTC).timestamp()
    assert calls("day", day, 30, 6) == []                              # business hours
    outbox = db.query("SELECT account, code FROM alert_outbox WHERE kind = 'anomaly'")
    assert outbox == [("burst@example.com", "OFFHOURS")]
    # a second burst (the first one's calls have left the 10-minute window) within alert_interval
    # (15 min) of the first alert is suppressed by the rate limit
    assert calls("burst", night + 1150, 20, 5) == [(5, "OFFHOURS_BURST")]
    assert db.scalar("SELECT COUNT(*) FROM alert_outbox WHERE kind = 'anomaly'") == 1
    assert db.scalar("SELECT suppressed FROM alert_throttle WHERE account = 'burst@example.com' AND rule = 'OFFHOURS_BURST'") == 1
    db.close()
