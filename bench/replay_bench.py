#!/usr/bin/env python3
"""Replay benchmark: `tfps.replay` (the real engine over CDRs, simulated time, SQLite in memory).

Generates a synthetic, labeled CDR CSV in a temporary directory (default 200,000 rows, 500 accounts,
60 days: office-hours traffic mostly to the account's usual countries, some off-hours calls and a
few night-time IRSF bursts labeled fraud), then

  1. times the in-process replay both ways, --repeat times each (default 3), interleaved so that
     the VM's drift hits both alike: tfps.replay(cfg, path, jobs=1) (one process) and
     tfps.replay(cfg, path) (the default: one forked process per CPU, each over a share of the
     accounts), and prints best and median seconds and rows/s and peak RSS of each;
  2. checks that every report equals the first jobs=1 report ("reports identical: yes/no");
  3. times a fixed pure-Python loop right before each timed run (calibration), so that a slow
     moment of the machine can be told from a slow replay;
  4. times the full CLI `python3 tfps.py replay FILE --json` once (interpreter start, CSV parsing,
     replay with the default jobs, JSON output) and checks that its report is the same.

    python3 bench/replay_bench.py
    python3 bench/replay_bench.py --rows 20000 --repeat 1 --skip-cli
    python3 bench/replay_bench.py --profile          # + cProfile of one extra jobs=1 run

Exit status 1 when a report differs, a run did not finish within --timeout or the CLI run failed;
otherwise 0, whether the target is met or not.

Target (issue 6): >= 20,000 CDR rows/s on SQLite in memory.
"""

import argparse
import datetime as dt
import gc
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TFPS = REPO / "tfps.py"
sys.path.insert(0, str(REPO))

HOME = ("1212", "1415", "1305", "1646", "1718")             # US numbers, by area code
ABROAD = [("44", 10), ("49", 10), ("33", 9), ("52", 10), ("55", 11), ("91", 10)]
IRSF = [("53", 8), ("371", 8), ("216", 8), ("882", 9), ("252", 8), ("685", 6)]
UAS = ["Yealink SIP-T46S 66.86.0.15", "Grandstream GXP2170 1.0.11.23", "PolycomVVX-VVX_411-UA/6.4.3.5018",
       "Zoiper rv2.10.19.3", "snom D785/10.1.159.12", "Cisco-CP8845/12.8.1"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def digits(rng, n):
    return rng.choice("2345678") + "".join(rng.choice("0123456789") for _ in range(n - 1))


def generate(path, rows, accounts, days, seed, tz_offset=-5):
    """A CDR file sorted by time. Returns (rows written, fraud rows)."""
    rng = random.Random(seed)
    tz = dt.timezone(dt.timedelta(hours=tz_offset))
    start = dt.datetime(2026, 1, 5, tzinfo=tz)   # a Monday
    accts = []
    for i in range(accounts):
        weight = rng.paretovariate(1.5)          # a few busy accounts, many quiet ones
        abroad = rng.sample(ABROAD, rng.randint(0, 2))
        accts.append({"user": f"{3000 + i}", "domain": f"pbx{i % 25}.example.com", "w": weight, "abroad": abroad,
                      "ip": f"{rng.randint(11, 200)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                      "ua": rng.choice(UAS), "country": "US" if rng.random() < 0.95 else "CA"})
    total_w = sum(a["w"] for a in accts)
    fraud_rows = int(rows * 0.01)
    legit_rows = rows - fraud_rows
    out = []
    # legitimate traffic: business hours on weekdays, a little in the evening and on weekends
    cum, acc = [], 0.0
    for a in accts:
        acc += a["w"] / total_w
        cum.append(acc)
    import bisect
    for _ in range(legit_rows):
        a = accts[min(bisect.bisect_left(cum, rng.random()), accounts - 1)]
        day = rng.randrange(days)
        date = start + dt.timedelta(days=day)
        if date.weekday() < 5 and rng.random() < 0.9:
            hour = rng.uniform(9, 18)
        else:
            hour = rng.uniform(7, 22)
        when = date + dt.timedelta(hours=hour)
        if a["abroad"] and rng.random() < 0.15:
            cc, n = rng.choice(a["abroad"])
            number = rng.choice(["011", "+", ""]) + cc + digits(rng, n)
        else:
            number = rng.choice(HOME) + digits(rng, 7)
        out.append((when, a, number, a["ip"], a["ua"], rng.randint(1, 3), a["country"], "legit"))
    # fraud: night-time bursts to IRSF ranges from compromised accounts, foreign IPs, a scanner UA now and then
    left = fraud_rows
    while left > 0:
        a = rng.choice(accts)
        when = start + dt.timedelta(days=rng.randrange(20, days), hours=rng.uniform(1, 4))
        burst = min(left, rng.randint(20, 80))
        ip = f"{rng.randint(11, 200)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        ua = "friendly-scanner" if rng.random() < 0.2 else a["ua"]
        for k in range(burst):
            cc, n = rng.choice(IRSF)
            out.append((when + dt.timedelta(seconds=k * rng.uniform(5, 40)), a, "011" + cc + digits(rng, n), ip, ua,
                        rng.randint(1, 8), rng.choice(["RO", "PS", "NL", "US"]), "fraud"))
        left -= burst
    out.sort(key=lambda r: r[0])
    with open(path, "w", newline="") as fh:
        fh.write("time,user,domain,number,source_ip,user_agent,concurrent_calls,source_country,label\n")
        for when, a, number, ip, ua, calls, country, label in out:
            fh.write(f"{when.isoformat(timespec='seconds')},{a['user']},{a['domain']},{number},{ip},{ua},{calls},{country},{label}\n")
    return len(out), fraud_rows


@@BODY@@


if __name__ == "__main__":
    sys.exit(main())
