"""`tfps.py replay` (issue 6): the real engine over the labeled synthetic CDR file
tests/data/irsf_burst.csv (made by tests/data/gen_cdr.py) with simulated time, its metrics,
learning and training during the replay, and the error paths of the CSV reader."""

import csv
import datetime as dt
import importlib.util
import json
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import tfps
from conftest import run_cli, write_config

DATA = Path(__file__).resolve().parent / "data"
CDR = DATA / "irsf_burst.csv"
COMPROMISED = "1001@branch.example.net"
HEADER = "time,user,domain,number,source_ip,user_agent,concurrent_calls"


def cdr_rows(path=CDR):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def replay_config(tmp_path, name="replay.conf", alerts=None, **policy):
    keys = {"timezone": "UTC", "home_country": "US", "learning_days": "14"}
    keys.update({k: str(v) for k, v in policy.items()})
    sections = {"policy": keys, "server": {"mode": "redirect", "node_name": "replay"}}
    if alerts:
        sections["alerts"] = alerts
    return write_config(tmp_path / name, sections)


def replay_json(path, conf, *extra):
    r = run_cli("replay", str(path), "--json", *extra, config=conf)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def write_cdr(path, header, lines):
    Path(path).write_text("\n".join([header, *lines]) + "\n")
    return path


# -- the data set ------------------------------------------------------------------------------

def test_generator_reproduces_the_kept_csv(tmp_path):
    out = tmp_path / "again.csv"
    r = subprocess.run([sys.executable, str(DATA / "gen_cdr.py"), str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == CDR.read_bytes(), "tests/data/irsf_burst.csv differs from what gen_cdr.py makes"


def test_the_data_set_is_what_it_claims():
    rows = cdr_rows()
    times = [dt.datetime.fromisoformat(r["time"]) for r in rows]
    assert all(t.utcoffset() is not None for t in times)
    assert times == sorted(times)
    legit = [(t, r) for t, r in zip(times, rows) if r["label"] == "legit"]
    fraud = [(t, r) for t, r in zip(times, rows) if r["label"] == "fraud"]
    assert len(legit) + len(fraud) == len(rows) and len(fraud) >= 20
    # about two months of office traffic: weekdays, 09:00-18:00, several accounts, US callers
    assert (legit[-1][0] - legit[0][0]).days >= 60
    assert all(t.weekday() < 5 and 9 <= t.hour < 18 for t, _ in legit)
    assert len({(r["user"], r["domain"]) for _, r in legit}) >= 3
    assert {r["source_country"] for _, r in legit} == {"US"}
    assert {r["number"][:3] for _, r in legit if r["user"] == "sales"} >= {"+44", "+49"}
    assert {r["number"][:2] for _, r in legit if r["user"] != "sales"} == {"+1"}
    # one night-time burst of one account from abroad, mostly to Sierra Leone (+232), rising concurrency
    assert {f"{r['user']}@{r['domain']}" for _, r in fraud} == {COMPROMISED}
    assert all(t.hour < 6 for t, _ in fraud) and (fraud[-1][0] - fraud[0][0]).total_seconds() < 3600
    assert {r["source_country"] for _, r in fraud} == {"RO"}
    assert sum(r["number"].startswith("+232") for _, r in fraud) >= 20
    assert max(int(r["concurrent_calls"]) for _, r in fraud) > max(
        int(r["concurrent_calls"]) for _, r in legit if f"{r['user']}@{r['domain']}" == COMPROMISED)
    # the compromised account has legitimate calls before and after the burst
    own = [t for t, r in legit if f"{r['user']}@{r['domain']}" == COMPROMISED]
    assert min(own) < fraud[0][0] < fraud[-1][0] < max(own)


# -- replay over it ------------------------------------------------------------------------------

def test_replay_blocks_the_burst_early_and_no_legitimate_call(tmp_path):
    rows = cdr_rows()
    report = replay_json(CDR, replay_config(tmp_path))
    for key in ("rows", "codes", "fraud_calls", "fraud_blocked_pct", "legit_calls", "legit_blocked_pct", "episodes"):
        assert key in report, key
    assert report["rows"] == len(rows)
    assert sum(report["codes"].values()) == len(rows)
    assert report["fraud_calls"] == sum(r["label"] == "fraud" for r in rows)
    assert report["legit_calls"] == sum(r["label"] == "legit" for r in rows)
    assert report["legit_blocked"] == 0 and report["legit_blocked_pct"] == 0.0, report["rejected_accounts"]
    assert report["fraud_blocked_pct"] == round(100 * report["fraud_blocked"] / report["fraud_calls"], 2)
    assert report["fraud_blocked_pct"] >= 90
    first_fraud = next(r for r in rows if r["label"] == "fraud")
    assert len(report["episodes"]) == 1
    episode = report["episodes"][0]
    assert episode["account"] == COMPROMISED and episode["start"] == first_fraud["time"]
    assert episode["calls"] == report["fraud_calls"]
    assert episode["blocked"] is True
    assert episode["leaked_before_first_block"] <= 4, "the burst was not blocked within its first 5 calls"
    # the rejections are the compromised account's, for change-analysis reasons
    assert set(report["rejected_accounts"]) == {COMPROMISED}
    assert set(report["rejected_accounts"][COMPROMISED]) <= {"R04", "R06", "R08", "R09", "R15"}
    assert report["codes"]["A00"] == report["legit_calls"] + report["fraud_calls"] - report["fraud_blocked"]


def test_replay_text_output_shows_the_metrics(tmp_path):
    report = replay_json(CDR, replay_config(tmp_path))
    r = run_cli("replay", str(CDR), config=replay_config(tmp_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"{report['rows']} CDR rows replayed" in out
    for code, calls in report["codes"].items():
        assert any(line.split() == [code, str(calls)] for line in out.splitlines()), code
    assert COMPROMISED in out
    assert (f"fraud calls blocked: {report['fraud_blocked']}/{report['fraud_calls']} "
            f"({report['fraud_blocked_pct']}%)") in out
    assert f"legitimate calls blocked: 0/{report['legit_calls']} (0.0%)" in out
    episode = report["episodes"][0]
    line = next(line for line in out.splitlines() if line.startswith(COMPROMISED) and episode["start"] in line)
    assert line.split()[1:] == [episode["start"], str(episode["calls"]), str(episode["leaked_before_first_block"]), "True"]


def test_replay_runs_in_time_order_whatever_the_file_order(tmp_path):
    lines = CDR.read_text().splitlines()
    body = lines[1:]
    random.Random(3).shuffle(body)
    shuffled = write_cdr(tmp_path / "shuffled.csv", lines[0], body)
    conf = replay_config(tmp_path)
    assert replay_json(shuffled, conf) == replay_json(CDR, conf)


def test_replay_learns_during_the_history_into_a_database(tmp_path, sqlite_url):
    """--db keeps what the replay did: every verdict logged, accounts enforcing with limits learned
    from their own traffic, sales allowed to call GB and DE (learned while learning)."""
    rows = cdr_rows()
    conf = replay_config(tmp_path)
    report = replay_json(CDR, conf, "--db", sqlite_url)
    assert report["legit_blocked"] == 0
    db = tfps.open_database(sqlite_url)
    assert db.scalar("SELECT COUNT(*) FROM call_log") == len(rows)
    accounts = {a.name: a for a in (tfps.Account.from_row(r) for r in db.query(f"SELECT {tfps.ACCOUNT_COLUMNS} FROM accounts"))}
    assert set(accounts) == {f"{r['user']}@{r['domain']}" for r in rows}
    last = dt.datetime.fromisoformat(rows[-1]["time"]).timestamp()
    own_concurrency = {}   # business hours: 1.5 x the highest legitimate concurrency, at least + 1 and 2
    for name in accounts:
        peak = max(int(r["concurrent_calls"]) for r in rows if f"{r['user']}@{r['domain']}" == name and r["label"] == "legit")
        own_concurrency[name] = max(math.ceil(peak * 1.5), peak + 1, 2)
    for name, acc in accounts.items():
        first = min(dt.datetime.fromisoformat(r["time"]).timestamp() for r in rows if f"{r['user']}@{r['domain']}" == name)
        assert acc.created == pytest.approx(first) and acc.learning_until == pytest.approx(first + 14 * 86400)
        assert acc.state == "enforcing" and not acc.learning(last)
        assert acc.anomaly_daily is not None, f"{name} was never trained"
        assert acc.daily_quota != 100 or acc.concurrent_calls != 10, f"{name} keeps the defaults"
        assert "SL" not in acc.dest_countries and "RO" not in acc.source_countries
        # at least the lower median of its domain's accounts (training per domain)
        domain = sorted(v for n, v in own_concurrency.items() if n.endswith(f"@{acc.domain}"))
        assert acc.concurrent_calls == max(own_concurrency[name], domain[(len(domain) - 1) // 2])
    assert accounts["sales@hq.example.com"].dest_countries == {"US", "GB", "DE"}
    assert accounts["reception@hq.example.com"].dest_countries == {"US"}
    # daily training ran under the day's lock on the simulated days
    assert db.scalar("SELECT COUNT(*) FROM locks WHERE name = ?", (f"train:{rows[-1]['time'][:10]}",)) == 1
    db.close()


def test_replay_on_mariadb_gives_the_same_report(tmp_path, mysql_url):
    conf = replay_config(tmp_path)
    in_memory = replay_json(CDR, conf)
    on_mariadb = replay_json(CDR, conf, "--db", mysql_url)
    assert on_mariadb == in_memory


def test_learning_mode_only_logs_and_no_learning_blocks_legitimate_calls(tmp_path):
    """The contrast that shows what the learned limits do: accounts still learning (a year) let the
    burst through, with the would-be rejections logged; enforcing the defaults at once
    (learning_days = 0) stops the burst, and blocks sales' calls abroad only without the
    new-destination calls (new_destination_calls = 0)."""
    learning = replay_json(CDR, replay_config(tmp_path, "learning.conf", learning_days=365))
    assert learning["codes"] == {"A00": learning["rows"]}
    assert learning["fraud_blocked"] == 0 and learning["episodes"][0]["blocked"] is False
    assert learning["episodes"][0]["leaked_before_first_block"] == learning["fraud_calls"]

    walled = replay_json(CDR, replay_config(tmp_path, "walled.conf", learning_days=0, new_destination_calls=0))
    # the burst's two test calls to a US number from Romania pass as a traveller's calls home would;
    # its first call to Sierra Leone is rejected
    assert walled["episodes"][0]["leaked_before_first_block"] == 2
    assert walled["legit_blocked"] > 0
    assert set(walled["rejected_accounts"]) == {COMPROMISED, "sales@hq.example.com"}
    assert set(walled["rejected_accounts"]["sales@hq.example.com"]) == {"R06"}
    # a few calls a day to a new country pass, with an alert: sales is not blocked, the burst still is
    at_once = replay_json(CDR, replay_config(tmp_path, "at-once.conf", learning_days=0))
    assert at_once["episodes"][0]["leaked_before_first_block"] == 2
    assert at_once["legit_blocked"] == 0 and set(at_once["rejected_accounts"]) == {COMPROMISED}


def test_a_home_country_burst_from_the_pbx_is_stopped_by_the_learned_off_hours_limits(tmp_path):
    """The same burst, but dialled to US numbers from the PBX's own address: no country rule
    fires, the learned off-hours quota and concurrency (the account never calls at night) do."""
    rows = cdr_rows()
    legit_branch = next(r for r in rows if r["user"] == "1001" and r["label"] == "legit")
    for i, r in enumerate(rows):
        if r["label"] == "fraud":
            r.update(number=f"+1212555{i % 10000:04d}", source_ip=legit_branch["source_ip"], source_country="US",
                     user_agent=legit_branch["user_agent"])
    path = tmp_path / "home_burst.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        out.writeheader()
        out.writerows(rows)
    report = replay_json(path, replay_config(tmp_path))
    episode = report["episodes"][0]
    assert episode["blocked"] and 0 < episode["leaked_before_first_block"] <= 4
    assert report["legit_blocked"] == 0
    assert set(report["rejected_accounts"][COMPROMISED]) <= {"R08", "R09"}


def test_replay_without_labels(tmp_path):
    path = write_cdr(tmp_path / "plain.csv", HEADER, [
        "2024-03-04T10:00:00+01:00,1001,pbx.example.com,+12125550100,198.51.100.1,FPBX,1",
        "2024-03-04T10:05:00+01:00,1001,pbx.example.com,+37161234567,198.51.100.1,FPBX,1",
    ])
    report = replay_json(path, replay_config(tmp_path))
    assert report["rows"] == 2 and report["codes"] == {"A00": 1, "R06": 1}
    assert report["fraud_calls"] == report["legit_calls"] == 0
    assert report["fraud_blocked_pct"] is None and report["legit_blocked_pct"] is None and report["episodes"] == []
    r = run_cli("replay", str(path), config=replay_config(tmp_path))
    assert r.returncode == 0 and "fraud calls blocked" not in r.stdout and "1001@pbx.example.com" in r.stdout


# -- error paths ---------------------------------------------------------------------------------

GOOD = "2024-03-04T10:00:00+00:00,1001,pbx.example.com,+12125550100,198.51.100.1,FPBX,1"


def replay_error(tmp_path, path):
    r = run_cli("replay", str(path), config=replay_config(tmp_path))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""
    return r.stderr


@pytest.mark.parametrize("missing", ["time", "user", "domain", "number"])
def test_missing_column_is_named(tmp_path, missing):
    columns = HEADER.split(",")
    keep = [i for i, c in enumerate(columns) if c != missing]
    line = GOOD.split(",")
    path = write_cdr(tmp_path / "cdr.csv", ",".join(columns[i] for i in keep), [",".join(line[i] for i in keep)])
    err = replay_error(tmp_path, path)
    assert str(path) in err and missing in err and "missing column" in err


def test_optional_columns_may_be_left_out(tmp_path):
    path = write_cdr(tmp_path / "short.csv", "number,time,domain,user", ["+12125550100,2024-03-04T10:00:00+00:00,pbx.example.com,1001"])
    rows = tfps.read_cdrs(str(path))
    assert [(r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows] == [("1001", "pbx.example.com", "+12125550100", "", "", None)]


def test_missing_columns_and_no_header(tmp_path):
    err = replay_error(tmp_path, write_cdr(tmp_path / "two.csv", "time,number,source_ip", ["x,1,2"]))
    assert "user, domain" in err
    err = replay_error(tmp_path, write_cdr(tmp_path / "headless.csv", GOOD, [GOOD]))
    assert "missing column" in err and "header" in err


@pytest.mark.parametrize("bad_time", ["yesterday", "2024-13-01T10:00:00+00:00", ""])
def test_bad_time_names_file_and_line(tmp_path, bad_time):
    bad = GOOD.replace("2024-03-04T10:00:00+00:00", bad_time)
    path = write_cdr(tmp_path / "cdr.csv", HEADER, [GOOD, GOOD.replace("0100", "0101"), bad])
    err = replay_error(tmp_path, path)
    assert f"{path}:4:" in err and "time" in err


def test_time_without_offset_is_refused(tmp_path):
    """The format says ISO 8601 *with offset* (and the error message says so). A time without
    one would silently be read in the replaying machine's local timezone, shifting every call's
    business/off-hours bucket and day: it must be refused like any other bad time."""
    path = write_cdr(tmp_path / "cdr.csv", HEADER, [GOOD, "2024-03-04 10:05:00,1001,pbx.example.com,+12125550101,198.51.100.1,FPBX,1"])
    err = replay_error(tmp_path, path)
    assert f"{path}:3:" in err and "offset" in err


def test_bad_concurrent_calls_names_file_and_line(tmp_path):
    path = write_cdr(tmp_path / "cdr.csv", HEADER, [GOOD, GOOD.rsplit(",", 1)[0] + ",two"])
    err = replay_error(tmp_path, path)
    assert f"{path}:3:" in err and "concurrent_calls" in err


@pytest.mark.parametrize("field,value,needle", [
    ("concurrent_calls", "\u00b2", "concurrent_calls"),           # a digit to str.isdigit(), not to int()
    ("concurrent_calls", str(10**23), "concurrent_calls"),
    ("time", "9999-12-31T23:59:59-12:00", "between 1970-01-01 and 9999-12-30"),
    ("time", "0001-01-01T00:00:00+14:00", "between 1970-01-01 and 9999-12-30"),
    ("user", "u" * 129, "user"),
    ("domain", "pbx\x1b.example.com", "domain"),
    ("user_agent", "Y" * 131073, "field larger than field limit"),
], ids=["superscript-two", "10**23", "year-10000", "year-1", "long-user", "escape-in-domain", "huge-field"])
def test_out_of_bounds_field_names_file_and_line(tmp_path, field, value, needle):
    bad = dict(zip(HEADER.split(","), GOOD.split(",")), **{field: value})
    path = write_cdr(tmp_path / "cdr.csv", HEADER, [GOOD, GOOD.replace("0100", "0101"), ",".join(bad.values())])
    err = replay_error(tmp_path, path)
    assert err.startswith(f"tfps: {path}:4: ") and needle in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_file_not_in_utf8_names_file_and_line(tmp_path, encoding):
    path = tmp_path / "cdr.csv"
    path.write_bytes("\n".join([HEADER, GOOD, GOOD.replace("FPBX", "Téléphone")]).encode(encoding))
    err = replay_error(tmp_path, path)
    line = 3 if encoding == "latin-1" else 1
    assert err.startswith(f"tfps: {path}:{line}: not UTF-8 text"), err


def test_byte_order_mark_is_read_as_utf8(tmp_path):
    path = tmp_path / "cdr.csv"
    path.write_text("\n".join([HEADER, GOOD]) + "\n", encoding="utf-8-sig")
    assert tfps.read_cdrs(path)[0][2:4] == ("1001", "pbx.example.com")


def test_short_row_names_file_and_line(tmp_path):
    """A truncated row (fewer fields than the header) is a data error like a bad time: a message
    with file:line, not a Python traceback."""
    path = write_cdr(tmp_path / "cdr.csv", HEADER, [GOOD, "2024-03-04T10:05:00+00:00,1001"])
    err = replay_error(tmp_path, path)
    assert f"{path}:3" in err


def test_unreadable_file(tmp_path):
    err = replay_error(tmp_path, tmp_path / "nope.csv")
    assert "nope.csv" in err and "cannot read" in err


# -- in memory or into a database, one process or several ------------------------------------------

def load_cdr_generator():
    spec = importlib.util.spec_from_file_location("gen_cdr", DATA / "gen_cdr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_rows(path, rows):
    """CDR rows (datetime, user, domain, number, ip, ua, calls, source country, label) -> a CSV file."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["time", "user", "domain", "number", "source_ip", "user_agent", "concurrent_calls",
                      "source_country", "label"])
        for when, *rest in rows:
            out.writerow([when.isoformat(timespec="seconds"), *rest])
    return path


BURST_ACCOUNTS = (("1001", "branch.example.net"), ("support", "hq.example.com"))


def many_accounts_cdr(path):
    """Eight weeks of office traffic of six accounts (gen_cdr's four and two more, one of them
    written with its domain in mixed case), a call of every account at 12:00:00 each weekday (the
    same second), and two night-time bursts that start at the same second: the small account
    1001@branch.example.net (first in the file) and the biggest one, support@hq.example.com."""
    gen = load_cdr_generator()
    accounts = gen.ACCOUNTS + [("2001", "branch2.example.net", "198.51.100.88", "Yealink SIP-T46S", (4, 9), 3, {}),
                               ("noc", "hq.example.com", "198.51.100.20", "FPBX-16.0.40(18.20.0)", (2, 6), 2, {})]
    rng, rows = random.Random(77), []
    day, index = dt.date(2024, 3, 4), 0
    while day <= dt.date(2024, 4, 26):
        if day.weekday() < 5:
            for account in accounts:
                rows += gen.office_day(rng, day, account, index)
                user, domain, ip, ua = account[:4]
                noon = dt.datetime.combine(day, dt.time(12), gen.UTC)
                rows.append((noon, user, domain, gen.us_number(rng), ip, ua, 1, "US", "legit"))
            index += 1
        day += dt.timedelta(days=1)
    rows = [(r[0], r[1], r[2].upper() if r[1] == "2001" and i % 2 else r[2], *r[3:]) for i, r in enumerate(rows)]
    when = dt.datetime(2024, 4, 16, 2, 5, tzinfo=gen.UTC)
    for i in range(20):
        for user, domain in BURST_ACCOUNTS:
            rows.append((when, user, domain, f"+23276{rng.randint(100000, 999999)}", "192.0.2.66", "Zoiper", 1 + i // 3,
                         "RO", "fraud"))
        when += dt.timedelta(seconds=rng.randint(20, 70))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return write_rows(path, rows)


@pytest.mark.parametrize("backend", ["sqlite_url", "mysql_url"])
def test_in_memory_replay_reports_what_a_replay_into_a_database_does(tmp_path, request, backend):
    """PrivateCounters (in memory) and SharedCounters (SQL, on either backend) count the same."""
    cfg = tfps.Config.load(replay_config(tmp_path))
    in_memory = tfps.replay(cfg, CDR)
    assert in_memory["codes"]["A00"] < in_memory["rows"] and in_memory["episodes"]
    assert tfps.replay(cfg, CDR, request.getfixturevalue(backend)) == in_memory


def test_the_many_accounts_file_is_what_it_claims(tmp_path):
    rows = tfps.read_cdrs(many_accounts_cdr(tmp_path / "many.csv"))
    accounts = Counter((r[2], r[3].lower()) for r in rows)
    assert len(accounts) == 6 and len(rows) > 3000
    assert len({r[3] for r in rows if r[2] == "2001"}) == 2                    # one account, two spellings
    per_second = Counter(r[0] for r in rows)
    assert sum(n == 6 for n in per_second.values()) >= 40                       # every account at 12:00:00
    fraud = [r for r in rows if r[9] == "fraud"]
    assert [(r[2], r[3]) for r in fraud[:2]] == list(BURST_ACCOUNTS) and fraud[0][0] == fraud[1][0]
    owners, _ = tfps.shard_by_domain(rows, 2)
    first_shard = {(row[2], row[3].lower()) for row, owner in zip(rows, owners) if owner == 0}
    assert BURST_ACCOUNTS[1] in first_shard and BURST_ACCOUNTS[0] not in first_shard


@pytest.mark.parametrize("jobs", [2, 3])
def test_replay_in_several_processes_gives_the_report_of_one(tmp_path, jobs):
    cfg = tfps.Config.load(replay_config(tmp_path))
    many = many_accounts_cdr(tmp_path / "many.csv")
    for path in (CDR, many):
        single = tfps.replay(cfg, path, jobs=1)
        assert tfps.replay(cfg, path, jobs=jobs) == single, path
    # the bigger file's report has what the comparison is about
    assert [e["account"] for e in single["episodes"]] == [f"{u}@{d}" for u, d in BURST_ACCOUNTS]
    assert single["episodes"][0]["start"] == single["episodes"][1]["start"]
    assert all(e["blocked"] for e in single["episodes"]) and single["legit_blocked"] == 0
    assert single["alerts"]["enrolled"] == 6 and single["alerts"]["summary"] > 0


def cdr_line(when, user, number):
    return f"{when}+00:00,{user},a.example,{number},198.51.100.1,UA,1"


# x is rejected on Monday (R06: Cuba is high risk), silent on Tuesday when y calls after 08:00
IDLE_DAY = [cdr_line("2024-03-04T10:00:00", "x", "+12125550100"), cdr_line("2024-03-04T10:01:00", "x", "+5312345678"),
            cdr_line("2024-03-04T10:02:00", "y", "+12125550101"), cdr_line("2024-03-05T10:00:00", "y", "+12125550102"),
            cdr_line("2024-03-07T10:00:00", "x", "+12125550103")]
# x learns for a day from Monday 10:00: 20 off-hours calls on Monday, none on Tuesday; y calls on
# Tuesday at 10:30, after x's learning ended; x places 25 calls on Wednesday night, before train_at
LEARNING_END = ([cdr_line("2024-03-04T10:00:00", "x", "+12125550999")]
                + [cdr_line(f"2024-03-04T19:{k:02d}:00", "x", f"+1212555{k:04d}") for k in range(20)]
                + [cdr_line("2024-03-05T10:30:00", "y", "+12125551000")]
                + [cdr_line(f"2024-03-06T02:{k:02d}:00", "x", f"+1212556{k:04d}") for k in range(25)])


@pytest.mark.parametrize("lines, policy, single", [
    (IDLE_DAY, {}, {"codes": {"A00": 4, "R06": 1}, "summary": 1}),
    (LEARNING_END, {"learning_days": 1, "train_min_days": 1}, {"codes": {"A00": 42, "R09": 5}, "summary": 1}),
], ids=["summary-of-an-idle-account", "learning-end-of-an-idle-account"])
def test_replay_in_several_processes_runs_the_daily_jobs_when_one_process_does(tmp_path, lines, policy, single):
    """The daily jobs (end of learning with its training, training at train_at, the summary at
    summary_at) run on the first row at or after their time. In one process that is anybody's
    row, as on a server, which runs them every 30 s; a process given a share of the accounts must
    run them at every row's time too. Were it to run them at its own accounts' next row only,
    x's summary of Monday's rejection would never be raised (the job would run on Thursday, for
    Wednesday), and x's learning would end on Wednesday night instead of Tuesday 10:30, training
    on Tuesday too (0 calls): an off-hours quota of 30 (mean 10 + 2 x stddev 10) instead of 20,
    and the 21st to 25th calls of Wednesday night approved instead of rejected (R09). The merged
    report must be the one process's."""
    path = write_cdr(tmp_path / "two.csv", HEADER, lines)
    cfg = tfps.Config.load(replay_config(tmp_path, **policy))
    one = tfps.replay(cfg, path, jobs=1)
    assert (one["codes"], one["alerts"].get("summary")) == (single["codes"], single["summary"])
    assert tfps.replay(cfg, path, jobs=2) == one


def test_shard_by_domain_keeps_domains_whole_and_balanced(tmp_path):
    rows = tfps.read_cdrs(many_accounts_cdr(tmp_path / "many.csv"))
    rows += [(rows[-1][0] + k, *rows[-1][1:2], "solo", f"Solo{k}.Example", *rows[-1][4:]) for k in range(1, 8)]
    per_domain = Counter(r[3].lower() for r in rows)
    for count in (1, 2, 3, 4, 5, 16):
        owners, shards = tfps.shard_by_domain(rows, count)
        assert len(owners) == len(rows) and shards == min(count, len(per_domain))
        assert set(owners) == set(range(shards)), "no empty shard"
        owner = {}
        for row, n in zip(rows, owners):
            assert owner.setdefault(row[3].lower(), n) == n, f"{row[3]} split"
        loads = Counter(owners)
        assert max(loads.values()) <= len(rows) / count + max(per_domain.values()), loads
    loads = sorted(Counter(tfps.shard_by_domain(rows, 2)[0]).values())
    assert loads[1] - loads[0] <= max(per_domain.values())


def test_replay_into_a_database_tallies_alerts_and_queues_none(tmp_path, sqlite_url):
    conf = replay_config(tmp_path, alerts={"alert_webhook": "http://127.0.0.1:9/hook", "alert_interval": "0s"},
                         new_destination_calls=0)
    report = tfps.replay(tfps.Config.load(conf), CDR, sqlite_url)
    rows = cdr_rows()
    db = tfps.open_database(sqlite_url)
    try:
        assert db.scalar("SELECT COUNT(*) FROM alert_outbox") == 0, "a replay queued alerts for delivery"
        assert db.scalar("SELECT COUNT(*) FROM alert_throttle") == 0
        would = db.scalar("SELECT COUNT(*) FROM call_log WHERE code = 'A00' AND would_code <> ''")
    finally:
        db.close()
    alerts = report["alerts"]
    assert alerts["enrolled"] == len({(r["user"], r["domain"]) for r in rows}) == 4
    assert alerts["rejection"] == report["rows"] - report["codes"]["A00"]
    assert alerts["would-reject"] == would > 0
    assert list(alerts) == sorted(alerts)


@pytest.mark.parametrize("jobs", ["0", "x", "-1", "1.5"])
def test_cli_replay_jobs_must_be_a_whole_number_from_1(tmp_path, jobs):
    r = run_cli("replay", str(CDR), "--jobs", jobs, config=replay_config(tmp_path))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith("usage:") and "--jobs" in r.stderr and r.stdout == ""


def test_cli_replay_jobs_2(tmp_path):
    conf = replay_config(tmp_path)
    assert replay_json(CDR, conf, "--jobs", "2") == replay_json(CDR, conf)


# -- read_cdrs: columns by name, short and long rows -------------------------------------------------

def test_read_cdrs_finds_the_optional_columns_by_name_in_any_order(tmp_path):
    path = write_cdr(tmp_path / "shuffled.csv",
                     "label,concurrent_calls, source_country ,user_agent,source_ip,number,domain,user,time", [
                         'FRAUD,3,RO,"Zoiper, rv2",192.0.2.66,+23276123456,Branch.Example.net,1001,2024-03-04T02:05:00+00:00',
                         "legit,,US,FPBX,198.51.100.1,+12125550100,pbx.example.com,1001,2024-03-04T01:00:00-05:00"])
    assert tfps.read_cdrs(path) == [
        (dt.datetime(2024, 3, 4, 2, 5, tzinfo=dt.timezone.utc).timestamp(), "2024-03-04T02:05:00+00:00", "1001",
         "Branch.Example.net", "+23276123456", "192.0.2.66", "Zoiper, rv2", 3, "RO", "fraud"),
        (dt.datetime(2024, 3, 4, 6, 0, tzinfo=dt.timezone.utc).timestamp(), "2024-03-04T01:00:00-05:00", "1001",
         "pbx.example.com", "+12125550100", "198.51.100.1", "FPBX", None, "US", "legit")]


def test_read_cdrs_takes_long_rows_and_rows_short_of_optional_fields_only(tmp_path):
    lines = [GOOD + ",US,legit,extra,more",          # longer than the header: the rest is ignored
             GOOD.replace("10:00", "10:01") + ",DE",  # no label
             GOOD.replace("10:00", "10:02")]          # neither source_country nor label
    path = write_cdr(tmp_path / "ragged.csv", HEADER + ",source_country,label", lines)
    assert [(r[1][11:16], r[7], r[8], r[9]) for r in tfps.read_cdrs(path)] == [
        ("10:00", 1, "US", "legit"), ("10:01", 1, "DE", ""), ("10:02", 1, "", "")]
    # one required field short is an error naming the file and line, with or without optional columns
    for before, after in (("", ""), ("", ",source_country,label"), ("source_country,", "")):
        full = ("US," if before else "") + GOOD
        short = ",".join(full.split(",")[:3 + bool(before)])  # the number missing
        path = write_cdr(tmp_path / "short.csv", before + HEADER + after, [full, full, short])
        with pytest.raises(tfps.UserError) as err:
            tfps.read_cdrs(path)
        assert str(err.value) == f"{path}:4: fewer fields than the header", (before, after)


def test_in_processes_returns_results_in_order_and_reports_a_failing_worker():
    assert tfps.in_processes(lambda x: {"square": x * x}, [1, 2, 3]) == [{"square": 1}, {"square": 4}, {"square": 9}]
    with pytest.raises(tfps.UserError, match="replay worker failed: ZeroDivisionError"):
        tfps.in_processes(lambda x: 1 / x, [1, 0])          # in a child
    with pytest.raises(ZeroDivisionError):
        tfps.in_processes(lambda x: 1 / x, [0, 1])          # in this process: the child is stopped
    with pytest.raises(tfps.UserError, match="replay worker failed: TypeError"):
        tfps.in_processes(lambda x: {x}, [1, 2])            # a result JSON cannot carry


@pytest.mark.parametrize("backend", [None, "sqlite_url"])
def test_r16_blocks_and_unblocks_on_the_replay_clock(tmp_path, request, backend):
    """The new destination countries counted in memory (or in the database) on the CDR's own
    times: the block ends anomaly_block after the call that caused it, not after the replay."""
    path = write_cdr(tmp_path / "r16.csv", HEADER, [
        "2024-03-04T10:00:00+00:00,1001,pbx.example.com,+33123456789,198.51.100.1,FPBX,1",
        "2024-03-04T10:02:00+00:00,1001,pbx.example.com,+4930123456,198.51.100.1,FPBX,1",
        "2024-03-04T10:04:00+00:00,1001,pbx.example.com,+48221234567,198.51.100.1,FPBX,1",   # the third: R16
        "2024-03-04T10:30:00+00:00,1001,pbx.example.com,+12125550100,198.51.100.1,FPBX,1",   # blocked
        "2024-03-04T10:31:00+00:00,1002,pbx.example.com,+12125550100,198.51.100.1,FPBX,1",   # another account
        "2024-03-04T11:04:01+00:00,1001,pbx.example.com,+12125550101,198.51.100.1,FPBX,1",   # the hour is over
    ])
    cfg = tfps.Config.load(replay_config(tmp_path, anomaly_block="1h", learning_days=0))
    report = tfps.replay(cfg, path, request.getfixturevalue(backend) if backend else None, jobs=1)
    assert report["codes"] == {"A00": 4, "R16": 2}
