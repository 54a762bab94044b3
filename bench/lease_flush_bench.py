#!/usr/bin/env python3
"""Quota lease benchmark: the database work of a worker with [database] quota_lease on MariaDB,
in steady state, for two tfps.py side by side in one run.

A worker's verdicts spend calls from leases held in memory; what reaches the database is the
lease claims (one transaction when an account's lease runs out) and the write-behind every
flush_interval (LeasedCounters.write_behind: calls spent move to daily_counters, leases are
renewed). This runs LeasedCounters alone over --accounts accounts (all holding a lease after
warm-up), --calls calls spread at random between write-behinds, as a worker answering
calls/flush_interval verdicts a second would, and prints per write-behind and per claim the
time and the statements the server received (SHOW SESSION STATUS 'Questions').

    python3 bench/lease_flush_bench.py --baseline OLD/tfps.py
    python3 bench/lease_flush_bench.py --baseline OLD/tfps.py --accounts 10000 --calls 250
"""

import argparse
import json
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def questions(db):
    return int(db.one("SHOW SESSION STATUS LIKE 'Questions'")[1])


def run_child(path, mysql_base, accounts, calls, flushes, block, seed):
    tfps = benchlib.load_tfps(path)
    import pymysql
    u = urlsplit(mysql_base)
    admin = pymysql.connect(host=u.hostname or "127.0.0.1", port=u.port or 3306, user=unquote(u.username or "root"),
                            password=unquote(u.password or ""), autocommit=True)
    name = f"tfps_lease_bench_{secrets.token_hex(4)}"
    admin.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    try:
        db = tfps.open_database(f"{mysql_base.rstrip('/')}/{name}")
        counters = tfps.LeasedCounters(db, "bench/1", block, 30.0)
        rng = random.Random(seed)
        day = time.strftime("%Y-%m-%d")
        limit = 1_000_000

        def spend(n):
            claim_s, claims_before = 0.0, counters.claims
            for _ in range(n):
                account_id = rng.randrange(1, accounts + 1)
                t0 = time.perf_counter()
                counters.take_quota(account_id, day, "biz", limit)
                claim_s += time.perf_counter() - t0
            return claim_s, counters.claims - claims_before

        for account_id in range(1, accounts + 1):   # warm-up: every account holds a lease
            counters.take_quota(account_id, day, "biz", limit)
        counters.write_behind(time.time())
        flush_s, flush_q, claim_s, claims, claim_q = [], [], 0.0, 0, 0
        for _ in range(flushes):
            q0 = questions(db)
            s, c = spend(calls)
            q1 = questions(db)
            claim_s, claims, claim_q = claim_s + s, claims + c, claim_q + (q1 - q0 - 1)
            t0 = time.perf_counter()
            counters.write_behind(time.time())
            flush_s.append(time.perf_counter() - t0)
            flush_q.append(questions(db) - q1 - 1)
        spent = int(db.scalar("SELECT SUM(approved) FROM daily_counters", default=0))
        held = int(db.scalar("SELECT SUM(calls) FROM quota_leases", default=0))
        db.close()
        flush_s.sort()
        return {"flush_ms_median": round(flush_s[len(flush_s) // 2] * 1000, 2),
                "flush_ms_mean": round(sum(flush_s) / len(flush_s) * 1000, 2),
                "flush_statements": round(sum(flush_q) / len(flush_q), 1),
                "claims": claims, "claim_ms": round(claim_s / claims * 1000, 2) if claims else None,
                "claim_statements": round(claim_q / claims, 1) if claims else None,
                "worker_db_ms_per_s": round((sum(flush_s) + claim_s) / (flushes * 0.25) * 1000, 1),
                "approved": spent, "held": held}
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="the tfps.py to compare with")
    ap.add_argument("--candidate", default=str(benchlib.TFPS), help="default: this checkout's tfps.py")
    ap.add_argument("--mysql", default="mysql://root:@127.0.0.1:3306")
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=106, help="calls per write-behind (default 106: 425 verdicts/s, 0.25 s)")
    ap.add_argument("--flushes", type=int, default=200)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if min(args.accounts, args.calls, args.flushes, args.block, args.rounds) < 1:
        ap.error("--accounts, --calls, --flushes, --block and --rounds must be positive")
    if args.child:
        print(json.dumps(run_child(args.child, args.mysql, args.accounts, args.calls, args.flushes, args.block, args.seed)))
        return
    versions = {"baseline": args.baseline, "candidate": args.candidate}
    results = {label: [] for label in versions}
    for round_index in range(args.rounds):
        for label in benchlib.turns(list(versions), round_index):
            cmd = [sys.executable, __file__, "--child", versions[label], "--mysql", args.mysql, "--accounts",
                   str(args.accounts), "--calls", str(args.calls), "--flushes", str(args.flushes), "--block",
                   str(args.block), "--seed", str(args.seed)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{label}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'}")
            results[label].append(json.loads(out.stdout))
            benchlib.log(f"round {round_index + 1} {label}: {results[label][-1]}")
    print(f"\nQuota lease write-behind on MariaDB: {args.accounts} accounts holding leases of {args.block}, "
          f"{args.calls} calls between write-behinds, {args.flushes} write-behinds, {args.rounds} round(s), medians")
    print(f"{'version':<10} {'flush ms':>9} {'stmts/flush':>12} {'claim ms':>9} {'stmts/claim':>12} {'db ms per s @0.25s':>19}")
    for label, path in versions.items():
        rows = results[label]

        def med(field):
            values = sorted(r[field] for r in rows if r[field] is not None)
            return values[len(values) // 2] if values else float("nan")
        print(f"{label:<10} {med('flush_ms_median'):>9.2f} {med('flush_statements'):>12.1f} {med('claim_ms'):>9.2f} "
              f"{med('claim_statements'):>12.1f} {med('worker_db_ms_per_s'):>19.1f}   {benchlib.describe_version(path)}")


if __name__ == "__main__":
    main()
