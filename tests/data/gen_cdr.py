#!/usr/bin/env python3
"""Generate tests/data/irsf_burst.csv: a labeled synthetic CDR file for `tfps.py replay`.

Deterministic (seeded), standard library only, independent of tfps.py. Regenerate with

    python3 tests/data/gen_cdr.py            # writes tests/data/irsf_burst.csv
    python3 tests/data/gen_cdr.py OUT.csv    # or somewhere else

What is in it (all times UTC; business hours mon-fri 09:00-18:00):

* Four accounts on two PBXs with about nine weeks of legitimate office traffic
  (2024-03-04 .. 2024-05-08), business hours on weekdays only, home-country (US) numbers,
  reported concurrency up to a per-account maximum that is reached on the first day.
  sales@hq.example.com also calls the United Kingdom and Germany every week, from its first
  days on, so those destinations get learned while the account is in learning mode.
* A night-time IRSF burst from the compromised account 1001@branch.example.net on Tuesday
  2024-05-07 from 02:05 UTC: two test calls to a US number, then premium-rate numbers in
  Sierra Leone (+232, a country the account never called), one call every 20-70 s with rising
  concurrency, from a source IP in Romania, with a softphone User-Agent. Labeled `fraud`.
* Every other row is labeled `legit`. Legitimate traffic goes on around the burst (also from
  the compromised account, before and after), so a replay can show that nothing legitimate
  is blocked.
"""

import csv
import datetime as dt
import random
import sys
from pathlib import Path

SEED = 20240507
FIRST_DAY = dt.date(2024, 3, 4)      # a Monday
LAST_DAY = dt.date(2024, 5, 8)       # a Wednesday
BURST_START = dt.datetime(2024, 5, 7, 2, 5, tzinfo=dt.timezone.utc)
BURST_CALLS = 32
UTC = dt.timezone.utc

US_AREAS = ["212", "312", "415", "617", "206", "303", "404", "512", "713", "305"]

# user, domain, source IP, User-Agent, calls a day (US), highest concurrency,
# extra destinations: {calling code: (min, max) calls a day}
ACCOUNTS = [
    ("reception", "hq.example.com", "198.51.100.20", "FPBX-16.0.40(18.20.0)", (6, 12), 2, {}),
    ("sales", "hq.example.com", "198.51.100.20", "FPBX-16.0.40(18.20.0)", (12, 22), 4, {"44": (1, 3), "49": (0, 2)}),
    ("support", "hq.example.com", "198.51.100.20", "FPBX-16.0.40(18.20.0)", (20, 35), 5, {}),
    ("1001", "branch.example.net", "198.51.100.77", "Asterisk PBX 18.20.0", (3, 8), 2, {}),
]
COMPROMISED = ("1001", "branch.example.net")
ATTACKER_IP, ATTACKER_COUNTRY, ATTACKER_UA = "192.0.2.66", "RO", "Zoiper rv2.10.20.2"

COLUMNS = ["time", "user", "domain", "number", "source_ip", "user_agent", "concurrent_calls", "source_country", "label"]


def us_number(rng):
    return f"+1{rng.choice(US_AREAS)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"


def foreign_number(rng, code):
    if code == "44":
        return f"+4420{rng.randint(7000, 8999)}{rng.randint(0, 9999):04d}"
    if code == "49":
        return f"+4930{rng.randint(1000, 9999)}{rng.randint(0, 999):03d}"
    raise ValueError(code)


def office_day(rng, day, account, day_index):
    """The legitimate calls of one account on one weekday."""
    user, domain, ip, ua, (low, high), peak, extra = account
    numbers = [us_number(rng) for _ in range(rng.randint(low, high))]
    for code, (lo, hi) in extra.items():
        count = rng.randint(lo, hi)
        if day_index < 5:        # the first week: every extra destination at least once a day
            count = max(count, 1)
        numbers += [foreign_number(rng, code) for _ in range(count)]
    rng.shuffle(numbers)
    start = dt.datetime.combine(day, dt.time(9, 5), UTC)
    seconds = sorted(rng.sample(range(0, 8 * 3600 + 45 * 60), len(numbers)))   # 09:05 .. 17:50
    rows = []
    for i, (offset, number) in enumerate(zip(seconds, numbers)):
        calls = min(peak, 1 + int(rng.expovariate(1.2)))
        if day_index == 0 and i == len(numbers) // 2:
            calls = peak         # the account's busiest moment happens on its first day
        rows.append((start + dt.timedelta(seconds=offset), user, domain, number, ip, ua, calls, "US", "legit"))
    return rows


def burst(rng):
    user, domain = COMPROMISED
    rows, when = [], BURST_START
    test_number = f"+1{rng.choice(US_AREAS)}555{rng.randint(0, 9999):04d}"
    for i in range(BURST_CALLS):
        if i < 2:
            number = test_number
        else:
            number = f"+232{rng.choice(['76', '77', '30', '88'])}{rng.randint(100000, 999999)}"
        calls = min(1 + i // 3, 9)
        rows.append((when, user, domain, number, ATTACKER_IP, ATTACKER_UA, calls, ATTACKER_COUNTRY, "fraud"))
        when += dt.timedelta(seconds=rng.randint(20, 70))
    return rows


def generate():
    rng = random.Random(SEED)
    rows = []
    day, index = FIRST_DAY, 0
    while day <= LAST_DAY:
        if day.weekday() < 5:
            for account in ACCOUNTS:
                rows += office_day(rng, day, account, index)
            index += 1
        day += dt.timedelta(days=1)
    rows += burst(rng)
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return rows


def write(path):
    rows = generate()
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(COLUMNS)
        for when, *rest in rows:
            out.writerow([when.isoformat(timespec="seconds"), *rest])
    return len(rows)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "irsf_burst.csv"
    print(f"{target}: {write(target)} rows")
