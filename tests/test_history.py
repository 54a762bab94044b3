"""Training history from daily aggregates (history_days, account_days, account_day_countries):
what aggregate_days sums up and when (SETTLE after midnight), local calendar days across DST
changes, purge and account removal, two nodes aggregating at once on MariaDB, the migration of a
schema-1 database, and training that does not depend on when the days were summed up. Real
SQLite files and real MariaDB databases, frozen clocks; expected values are computed here from
the synthetic rows with datetime, never with tfps's own SQL."""

import datetime as dt
import random
import zoneinfo
from collections import Counter

import pytest

import tfps
from test_training import (FIELDS, HIGH_RISK_DEFAULT, NOW, TOKYO, TRAIN_POLICY, History, Row, add_account, bounds,
                           build_history, expected_training, in_threads, make_config, with_domain_medians)

NY = zoneinfo.ZoneInfo("America/New_York")
EPOCH = dt.date(1970, 1, 1)
AGGREGATE_TABLES = ("history_days", "account_days", "account_day_countries")
TODAY = dt.datetime.fromtimestamp(NOW, TOKYO).date()       # Monday 2024-07-15 in Tokyo


# -- helpers -----------------------------------------------------------------------------------

def day_no(date):
    """Days since 1970-01-01 of a calendar date."""
    return (date - EPOCH).days


def day_of(ts, tz):
    """The day number of the local calendar date of `ts` in `tz`."""
    return day_no(dt.datetime.fromtimestamp(ts, tz).date())


def midnight(date, tz):
    return dt.datetime.combine(date, dt.time(), tz).timestamp()


def config(tmp_path, tz="Asia/Tokyo", **policy):
    """A config without holidays (the synthetic rows use none either)."""
    return make_config(tmp_path, timezone=tz, holidays="", **policy)[0]


def is_business_day(day):
    return dt.date.fromordinal(day + EPOCH.toordinal()).weekday() < 5


def history_days(db):
    return [int(r[0]) for r in db.query("SELECT day FROM history_days ORDER BY day")]


def aggregates(db):
    """account_days and account_day_countries as dicts keyed by their primary keys."""
    days = {(int(a), int(d)): (int(cb), int(co), pb, po) for a, d, cb, co, pb, po in
            db.query("SELECT account_id, day, calls_biz, calls_off, peak_biz, peak_off FROM account_days")}
    countries = {(int(a), int(d), direction, iso): int(calls) for a, d, direction, iso, calls in
                 db.query("SELECT account_id, day, direction, iso, calls FROM account_day_countries")}
    return days, countries


def peak(values):
    known = [v for v in values if v is not None]
    return max(known) if known else None


def approved(rows):
    return [r for r in rows if r.code == "A00" and r.account_id is not None]


def expected_aggregates(rows, tz, days):
    """What account_days and account_day_countries must hold for the day numbers `days`: per
    account and local day, approved calls in and out of business hours, the highest reported
    concurrency of each, and approved calls per destination / source country."""
    per_day, countries = {}, Counter()
    for r in approved(rows):
        day = day_of(r.ts, tz)
        if day not in days:
            continue
        per_day.setdefault((r.account_id, day), ([], []))[r.off_hours].append(r.concurrent_calls)
        for direction, iso in (("dst", r.dest_country), ("src", r.source_country)):
            if iso:
                countries[(r.account_id, day, direction, iso)] += 1
    return ({key: (len(biz), len(off), peak(biz), peak(off)) for key, (biz, off) in per_day.items()},
            dict(countries))


def expected_history(rows, account_id, now, tz, window):
    """AccountHistory of one account as (first, sums, peak, dst, src): approved calls of the local
    days [today - window, today] before `now`; the sums over complete days only (today is not),
    business-hours sums over business days; zero-call days included."""
    today = day_of(now, tz)
    mine = [r for r in approved(rows) if r.account_id == account_id and r.ts < now and day_of(r.ts, tz) >= today - window]
    first = min(day_of(r.ts, tz) for r in mine)
    per_day = {0: Counter(), 1: Counter()}
    for r in mine:
        per_day[r.off_hours][day_of(r.ts, tz)] += 1

    def sums(days, count):
        return [sum(count(d) for d in days), sum(count(d) ** 2 for d in days)]

    complete = range(first, today)
    return (first,
            {"biz": sums([d for d in complete if is_business_day(d)], lambda d: per_day[0][d]),
             "off": sums(complete, lambda d: per_day[1][d]),
             "all": sums(complete, lambda d: per_day[0][d] + per_day[1][d])},
            {bucket: peak([r.concurrent_calls for r in mine if r.off_hours == bucket]) for bucket in (0, 1)},
            dict(Counter(r.dest_country for r in mine if r.dest_country)),
            dict(Counter(r.source_country for r in mine if r.source_country)))


def summary(h):
    """An AccountHistory as the tuple expected_history() returns."""
    return h.first, h.sums, dict(h.peak), h.dst, h.src


def proposals(result):
    return [(pr.account.user, [change[:3] for change in pr.changes], pr.skipped) for pr in result]


def mixed_history(db, tz, today, days_back, seed=11):
    """Three accounts with random calls on each local day from `days_back` days before `today`
    to `today` itself, at any hour (midnight and 23:59:59 included), some with unknown
    concurrency or source country, some rejected; plus an approved row of no account."""
    created = midnight(today, tz) - 400 * 86400
    accs = [add_account(db, name, "mixed.example", created) for name in ("alice", "bob", "carol")]
    h, rng = History(tz), random.Random(seed)
    for k in range(days_back, -1, -1):
        day = today - dt.timedelta(days=k)
        h.call(accs[0], h.at(day, 0, 0, 0), conc=rng.randint(1, 4), holidays=())
        h.call(accs[0], h.at(day, 23, 59, 59), dest="GB", conc=rng.randint(1, 4), holidays=())
        for acc in accs:
            for _ in range(rng.randint(0, 6)):
                h.call(acc, h.at(day, rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)),
                       dest=rng.choice(["JP", "JP", "GB", "US"]), src=rng.choice(["JP", "JP", "US", ""]),
                       conc=rng.choice([None, 1, 2, 3, 5, 8]), code=rng.choice(["A00"] * 5 + ["R06", "R11"]),
                       holidays=())
    h.call(accs[1], h.at(today - dt.timedelta(days=3), 2, 0), conc=None, holidays=())   # off hours, no count known
    h.rows.append(Row(h.at(today - dt.timedelta(days=2), 10, 0).timestamp(), None, "ghost", "mixed.example",
                      "81312340000", "JP", "JP", 0, 1, "A00"))
    h.write(db)
    return accs, h


# -- what is summed up, and when ---------------------------------------------------------------

def test_aggregates_are_the_approved_calls_of_each_complete_day_of_the_window(tmp_path, db_url):
    cfg = config(tmp_path, train_window_days=20)
    db = tfps.open_database(db_url)
    accs, h = mixed_history(db, TOKYO, TODAY, 24)
    today = day_no(TODAY)
    window = list(range(today - 20, today))
    # the data has what the test is about: rejected calls, calls today and before the window
    assert any(r.code != "A00" and day_of(r.ts, TOKYO) in window for r in h.rows)
    assert any(day_of(r.ts, TOKYO) == today and r.ts < NOW for r in approved(h.rows))
    assert any(day_of(r.ts, TOKYO) < window[0] for r in approved(h.rows))

    assert tfps.aggregate_days(cfg, db, NOW) == today
    assert history_days(db) == window
    days, countries = aggregates(db)
    expected = expected_aggregates(h.rows, TOKYO, set(window))
    assert days == expected[0]
    assert countries == expected[1]
    assert {d for _, d in days} <= set(window), "today or days before the window were summed up"
    assert any((cb and pb is None) or (co and po is None) for cb, co, pb, po in days.values()), "no unknown concurrency"
    # the rejected rows are really left out: counting them would give other numbers
    with_rejected = expected_aggregates([r._replace(code="A00") for r in h.rows], TOKYO, set(window))
    assert with_rejected[0] != days

    # again (later the same day): nothing more, nothing twice
    stamps = db.query("SELECT day, aggregated FROM history_days ORDER BY day")
    assert tfps.aggregate_days(cfg, db, NOW + 3600) == today
    assert db.query("SELECT day, aggregated FROM history_days ORDER BY day") == stamps
    assert aggregates(db) == (days, countries)
    # the next day (past SETTLE): only the day that ended is added
    tomorrow = midnight(TODAY + dt.timedelta(days=1), TOKYO) + tfps.SETTLE + 1
    assert tfps.aggregate_days(cfg, db, tomorrow) == today + 1
    assert history_days(db) == window + [today]
    assert aggregates(db) == tuple({**old, **new} for old, new in zip((days, countries),
                                                                       expected_aggregates(h.rows, TOKYO, {today})))
    db.close()


def test_yesterday_is_read_from_call_log_until_settle_seconds_after_midnight(tmp_path, db_url):
    cfg = config(tmp_path, train_window_days=20)
    db = tfps.open_database(db_url)
    wednesday = dt.date(2024, 7, 17)                         # yesterday is a business day
    accs, h = mixed_history(db, TOKYO, wednesday - dt.timedelta(days=1), 24)
    today, start = day_no(wednesday), midnight(wednesday, TOKYO)
    yesterday_calls = [r for r in approved(h.rows) if day_of(r.ts, TOKYO) == today - 1]
    assert max(r.ts for r in yesterday_calls) == start - 1
    assert {r.off_hours for r in yesterday_calls} == {0, 1}

    early = start + tfps.SETTLE - 1
    assert tfps.aggregate_days(cfg, db, early) == today - 1
    assert history_days(db) == list(range(today - 20, today - 1))
    assert not [d for _, d in aggregates(db)[0] if d == today - 1]
    got = tfps.history(cfg, db, early)
    assert set(got) == {a.id for a in accs}
    for acc in accs:   # yesterday counts, as a complete day, from call_log
        assert summary(got[acc.id]) == expected_history(h.rows, acc.id, early, TOKYO, 20), acc.user
    assert set(tfps.history(cfg, db, early, [accs[1].id])) == {accs[1].id}
    assert tfps.history(cfg, db, early, []) == {}

    late = start + tfps.SETTLE + 1
    assert tfps.aggregate_days(cfg, db, late) == today
    assert history_days(db) == list(range(today - 20, today))
    assert aggregates(db) == expected_aggregates(h.rows, TOKYO, set(range(today - 20, today)))
    after = tfps.history(cfg, db, late)
    for acc in accs:
        assert summary(after[acc.id]) == summary(got[acc.id]) == expected_history(h.rows, acc.id, late, TOKYO, 20)
    db.close()


# -- local calendar days across DST changes -----------------------------------------------------

def local(y, m, d, hh, mm=0, ss=0, fold=0):
    return dt.datetime(y, m, d, hh, mm, ss, tzinfo=NY, fold=fold)


# New York: 2024-03-10 has 23 hours (02:00 EST -> 03:00 EDT), 2024-11-03 has 25 (01:00-02:00 twice)
DST_CALLS = [local(2024, 3, 9, 23, 30), local(2024, 3, 10, 0, 30), local(2024, 3, 10, 1, 59, 59),
             local(2024, 3, 10, 3, 0), local(2024, 3, 10, 23, 30), local(2024, 3, 10, 23, 59, 59),
             local(2024, 3, 11, 0, 30),
             local(2024, 11, 2, 23, 30), local(2024, 11, 3, 0, 30), local(2024, 11, 3, 1, 30),
             local(2024, 11, 3, 1, 30, fold=1), local(2024, 11, 3, 1, 45, fold=1), local(2024, 11, 3, 23, 30),
             local(2024, 11, 4, 0, 30)]


def test_dst_days_are_summed_up_by_local_calendar_day(tmp_path, db_url):
    cfg = config(tmp_path, "America/New_York", train_window_days=300)
    db = tfps.open_database(db_url)
    now = local(2024, 11, 10, 12).timestamp()
    acc = add_account(db, "ny", "example.com", now - 400 * 86400, src=("US",), dst=("US",))
    h = History(NY)
    for when in DST_CALLS:
        h.call(acc, when, dest="US", src="US", holidays=())
    h.write(db)
    for when in DST_CALLS:
        assert tfps.day_number(when.timestamp(), NY) == day_no(when.date()), when
    for date, hours in ((dt.date(2024, 3, 10), 23), (dt.date(2024, 11, 3), 25), (dt.date(2024, 3, 11), 24)):
        start, end = tfps.day_bounds(day_no(date), NY)
        assert (start, end) == (midnight(date, NY), midnight(date + dt.timedelta(days=1), NY))
        assert end - start == hours * 3600, date

    tfps.aggregate_days(cfg, db, now)
    days, countries = aggregates(db)
    window = set(range(day_of(now, NY) - 300, day_of(now, NY)))
    assert (days, countries) == expected_aggregates(h.rows, NY, window)
    off_calls = {date: days[(acc.id, day_no(date))][1] for date in
                 (dt.date(2024, 3, 9), dt.date(2024, 3, 10), dt.date(2024, 3, 11), dt.date(2024, 11, 2),
                  dt.date(2024, 11, 3), dt.date(2024, 11, 4))}
    assert list(off_calls.values()) == [1, 5, 1, 1, 5, 1]      # every call is off hours (weekend, night)
    db.close()


@pytest.mark.parametrize("now", [local(2024, 11, 3, 12).timestamp(), local(2024, 11, 4, 0, 2).timestamp()],
                         ids=["today-so-far", "yesterday-within-settle"])
def test_calls_of_the_25_hour_day_read_from_call_log_count_on_that_day(tmp_path, db_url, now):
    """history() reads the days not summed up yet (today; yesterday within SETTLE) from call_log.
    On 2024-11-03 in New York the calls of the first hour (00:00-01:00 EDT) belong to that day,
    whatever the UTC offset at `now` (EST): they must count neither as a complete day of their
    own before it nor with 2024-11-02."""
    cfg = config(tmp_path, "America/New_York", train_window_days=30)
    db = tfps.open_database(db_url)
    acc = add_account(db, "ny", "example.com", now - 60 * 86400, src=("US",), dst=("US",))
    h = History(NY)
    for k in range(7):                                       # one call a day 2024-10-27 .. 2024-11-02
        h.call(acc, local(2024, 10, 27, 12) + dt.timedelta(days=k), dest="US", src="US", holidays=())
    for when in (local(2024, 11, 3, 0, 10), local(2024, 11, 3, 0, 30), local(2024, 11, 3, 0, 50), local(2024, 11, 3, 10)):
        h.call(acc, when, dest="US", src="US", holidays=())
    h.write(db)
    got = tfps.history(cfg, db, now)[acc.id]
    assert summary(got) == expected_history(h.rows, acc.id, now, NY, 30)
    db.close()


# -- purge and removal --------------------------------------------------------------------------

def test_purge_drops_aggregates_of_days_before_the_cutoff_and_remove_account_its_own(tmp_path, db_url):
    cfg = config(tmp_path, train_window_days=20)
    db = tfps.open_database(db_url)
    accs, h = mixed_history(db, TOKYO, TODAY, 22)
    tfps.aggregate_days(cfg, db, NOW)
    days_before, countries_before = aggregates(db)
    history_before = history_days(db)
    older_than = 7.5 * 86400
    cutoff = day_no(dt.datetime.fromtimestamp(NOW - older_than, TOKYO).date())
    assert history_before[0] < cutoff < history_before[-1]

    counts = tfps.purge(cfg, db, NOW, older_than)
    assert history_days(db) == [d for d in history_before if d >= cutoff]
    days, countries = aggregates(db)
    assert days == {k: v for k, v in days_before.items() if k[1] >= cutoff}
    assert countries == {k: v for k, v in countries_before.items() if k[1] >= cutoff}
    assert (counts["history_days"], counts["account_days"], counts["account_day_countries"]) == (
        len(history_before) - len(history_days(db)), len(days_before) - len(days), len(countries_before) - len(countries))
    assert counts["account_days"] > 0 and counts["account_day_countries"] > 0

    gone, kept = accs[0], accs[1:]
    tfps.remove_account(db, gone)
    assert aggregates(db) == ({k: v for k, v in days.items() if k[0] != gone.id},
                              {k: v for k, v in countries.items() if k[0] != gone.id})
    assert all(any(k[0] == acc.id for k in aggregates(db)[0]) for acc in kept)
    assert history_days(db) == [d for d in history_before if d >= cutoff]      # days stay summed up
    db.close()


# -- two nodes on one MariaDB ---------------------------------------------------------------------

def test_two_nodes_aggregating_at_once_sum_each_day_once(tmp_path, mysql_url):
    cfg = config(tmp_path)                                   # the default 90-day window: 90 days to sum up
    db_a = tfps.open_database(mysql_url)
    accs, h = mixed_history(db_a, TOKYO, TODAY, 92)
    db_b = tfps.open_database(mysql_url)
    today = day_no(TODAY)
    window = list(range(today - 90, today))
    expected = expected_aggregates(h.rows, TOKYO, set(window))
    try:
        for _ in range(3):
            for table in AGGREGATE_TABLES:
                db_a.execute(f"DELETE FROM {table}")
            results = in_threads(lambda: tfps.aggregate_days(cfg, db_a, NOW), lambda: tfps.aggregate_days(cfg, db_b, NOW))
            assert results == [today, today]
            assert history_days(db_a) == window
            assert aggregates(db_a) == expected
            history = tfps.history(cfg, db_b, NOW)
            for acc in accs:
                assert summary(history[acc.id]) == expected_history(h.rows, acc.id, NOW, TOKYO, 90)
    finally:
        db_a.close()
        db_b.close()


# -- a database of schema version 1 ---------------------------------------------------------------

def call_log_indexes(db):
    if db.dialect == "sqlite":
        return {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'call_log'")}
    return {r[0] for r in db.query("SELECT index_name FROM information_schema.statistics "
                                   "WHERE table_schema = DATABASE() AND table_name = 'call_log'")}


def test_a_schema_1_database_is_upgraded_on_open_and_trains(tmp_path, db_url):
    cfg, _ = make_config(tmp_path, **TRAIN_POLICY)
    db = tfps.open_database(db_url)
    for table in AGGREGATE_TABLES + ("rate_windows", "quota_leases"):
        db.execute(f"DROP TABLE {table}")
    db.execute("DROP INDEX idx_call_log_user" + (" ON call_log" if db.dialect == "mysql" else ""))
    db.execute("CREATE INDEX idx_call_log_account ON call_log (account_id, ts)")   # version 1's, retired
    db.execute("UPDATE meta SET value = 1 WHERE name = 'schema_version'")
    accs, h = build_history(db, cfg)        # the history of a node that ran version 1
    db.close()

    db = tfps.open_database(db_url)
    assert db.schema_version() == 6
    assert set(AGGREGATE_TABLES) | {"rate_windows", "quota_leases", "approvals"} <= db.names("table")
    assert "idx_call_log_user" in call_log_indexes(db), "the index behind `show` and `calls --account`"
    assert "idx_call_log_account" not in call_log_indexes(db), "a retired index still costs every insert"
    assert {"day", "aggregated"} <= db.columns("history_days")
    assert {"account_id", "day", "calls_biz", "calls_off", "peak_biz", "peak_off"} <= db.columns("account_days")
    assert db.scalar("SELECT COUNT(*) FROM call_log") == len(h.rows), "the upgrade lost call log rows"
    result = {pr.account.user: pr for pr in tfps.train(cfg, db, NOW, dry_run=True)}
    assert len(history_days(db)) == cfg.policy.train_window_days
    for name in ("alice", "erin"):
        want = expected_training(h.rows, accs[name], NOW, TOKYO, bounds(cfg))
        changes = {field: proposed for field, _, proposed, _ in result[name].changes}
        assert {f: changes.get(f, getattr(accs[name], f)) for f in FIELDS} == {f: want[f] for f in FIELDS}, name
    db.close()


# -- training does not depend on when days were summed up --------------------------------------------

def test_training_is_the_same_whenever_the_days_were_summed_up(tmp_path, db_url):
    cfg, _ = make_config(tmp_path, **TRAIN_POLICY)
    db = tfps.open_database(db_url)
    accs, h = build_history(db, cfg)
    assert db.scalar("SELECT COUNT(*) FROM history_days") == 0
    fresh = proposals(tfps.train(cfg, db, NOW, dry_run=True))         # days summed up during the call
    today = day_no(TODAY)
    assert history_days(db) == list(range(today - 90, today))
    assert proposals(tfps.train(cfg, db, NOW, dry_run=True)) == fresh  # from the sums alone
    db.close()

    # another node's database, its days summed up as they ended, SETTLE s after each midnight
    other = tfps.open_database(f"sqlite://{tmp_path / 'daily.db'}")
    build_history(other, cfg)
    for k in range(100, 0, -1):
        day = TODAY - dt.timedelta(days=k - 1)
        assert tfps.aggregate_days(cfg, other, midnight(day, TOKYO) + tfps.SETTLE + 1) == day_no(day)
    assert proposals(tfps.train(cfg, other, NOW, dry_run=True)) == fresh
    other.close()

    # and it is the training the history calls for
    by_name = {name: changes for name, changes, _ in fresh}
    expected = with_domain_medians({name: expected_training(h.rows, acc, NOW, TOKYO, bounds(cfg)) for name, acc in accs.items()},
                                   {name: acc.domain for name, acc in accs.items()})
    for name in ("alice", "bob", "dave", "erin"):
        want = expected[name]
        got = {field: proposed for field, _, proposed in by_name[name]}
        for field in FIELDS + ("anomaly_daily",):
            if field in got:
                assert got[field] == want[field], (name, field)
    assert not HIGH_RISK_DEFAULT & tfps.country_set(dict((f, p) for f, _, p in by_name["alice"])["dest_countries"])
