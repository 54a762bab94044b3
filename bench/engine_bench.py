#!/usr/bin/env python3
"""Engine benchmark: the TFPS fraud pipeline alone, in-process, no SIP.

Builds a database with 10,000 accounts, 20,000 blacklisted number prefixes, 500 User-Agent
patterns and 200 blacklisted IP networks, then runs N verdicts through engine.decide + engine.record
with engine.flush every [database] flush_interval and engine.check_for_changes every 2 s (what `tfps.py serve` does),
over a realistic mix of random accounts, numbers (mostly allowed countries, some blacklisted
prefixes, some high-risk or not-allowed countries) and User-Agents (a few scanners).

Prints verdicts/s, per-verdict latency p50/p99 and process peak RSS, per backend. Each backend runs
in its own child process so that its RSS is its own.

    python3 bench/engine_bench.py                      # SQLite and MariaDB, 50,000 verdicts each
    python3 bench/engine_bench.py --backend sqlite --verdicts 5000
    python3 bench/engine_bench.py --backend mysql --mysql mysql://root:@127.0.0.1:3306
    python3 bench/engine_bench.py --backend sqlite --profile   # + cProfile top functions
    python3 bench/engine_bench.py --backend mysql --lease 32   # quota leases, as `serve` with workers

Targets (issue 5): >= 10,000 verdicts/s on SQLite, MariaDB figure reported, RSS <= 100 MB.
"""

import argparse
import json
import os
import random
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import zlib
from array import array
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ACCOUNTS = 10_000
BLACK_PREFIXES = 20_000
UA_PATTERNS = 500
IP_CIDRS = 200
CHUNK = 2000
DOMAINS = [f"pbx{i}.example.com" for i in range(20)]
# (country calling code + leading national digits of normal numbers, national length)
ALLOWED = [("1212", 7), ("1415", 7), ("1305", 7), ("1713", 7), ("44", 10), ("49", 10), ("33", 9),
           ("34", 9), ("39", 10), ("55", 11), ("52", 10), ("1416", 7)]
OTHER = [("61", 9), ("81", 10), ("91", 10), ("27", 9), ("31", 9), ("46", 9), ("48", 9), ("90", 10)]
HIGH_RISK = [("53", 8), ("371", 8), ("216", 8), ("213", 9), ("212", 9), ("93", 9), ("964", 10)]
ALLOWED_ISO = "US,CA,GB,DE,FR,ES,IT,BR,MX"
GOOD_UAS = ["Asterisk PBX {}.{}.{}", "FPBX-{}.{}.{}(18.13.0)", "Yealink SIP-T46S 66.{}.{}.{}",
            "Grandstream GXP2170 1.0.{}.{}{}", "Zoiper rv2.10.{}.{}-{}", "Linphone/4.{}.{} (belle-sip/{}.0)",
            "FreeSWITCH-mod_sofia/1.10.{}-release-{}-{}", "PolycomVVX-VVX_411-UA/6.{}.{}.{}"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[k]


def vmrss_kb():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- data -----------------------------------------------------------------------------------------

def national(rng, length, first="2345678"):
    """A national significant number that never starts with 9 (blacklisted ranges do)."""
    return rng.choice(first) + "".join(rng.choice("0123456789") for _ in range(length - 1))


def make_number(rng, cc, length):
    # NANP entries already carry the area code: 3 of the 7 remaining digits are the exchange
    return cc + national(rng, length)


def black_prefixes(rng, n):
    """Random 6-9 digit prefixes in various country codes, all with a '9' after the country
    code prefix, so they never match the normal numbers generated above."""
    ccs = [cc for cc, _ in ALLOWED + OTHER + HIGH_RISK]
    out = set()
    while len(out) < n:
        cc = rng.choice(ccs)
        total = rng.randint(6, 9)
        rest = max(1, total - len(cc) - 1)
        out.add(cc + "9" + "".join(rng.choice("0123456789") for _ in range(rest)))
    return sorted(out)


def ua_patterns(n):
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            out.append(f"scanner-tool-{i}")
        elif kind == 1:
            out.append(f"^evil-agent-{i}/[0-9]+\\.[0-9]+")
        elif kind == 2:
            out.append(f"warcaller.*build{i}$")
        elif kind == 3:
            out.append(f"sip-?probe {i}(\\s|$)")
        else:
            out.append(f"bot{i}-[a-z]+-v\\d")
    return out


def scanner_ua(rng, n):
    i = rng.randrange(n)
    return {0: f"scanner-tool-{i} 1.2", 1: f"evil-agent-{i}/3.4", 2: f"WarCaller pro build{i}",
            3: f"sip-probe {i}", 4: f"bot{i}-alpha-v2"}[i % 5]


def good_ua(rng):
    return rng.choice(GOOD_UAS).format(rng.randint(0, 20), rng.randint(0, 99), rng.randint(0, 9))


def public_ip(rng):
    while True:
        a = rng.randint(1, 223)
        if a not in (10, 127, 172, 192, 100, 169):
            return f"{a}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def make_attempts(tfps, rng, n, black, accounts, ua_pool):
    """The benchmark traffic, generated before the clock starts."""
    attempts = []
    for i in range(n):
        r = rng.random()
        if r < 0.005:   # an account never seen before: enrolled on its first call
            user, domain = f"new{rng.randrange(10**9)}", rng.choice(DOMAINS)
        else:
            user, domain = rng.choice(accounts)
        r = rng.random()
        if r < 0.85:
            number = make_number(rng, *rng.choice(ALLOWED))
        elif r < 0.90:
            number = make_number(rng, *rng.choice(OTHER))          # R06 unless the account allows it
        elif r < 0.93:
            number = make_number(rng, *rng.choice(HIGH_RISK))      # R06 high risk
        else:
            prefix = rng.choice(black)                             # R03
            number = prefix + "".join(rng.choice("0123456789") for _ in range(max(0, 12 - len(prefix))))
        if rng.random() < 0.3:
            number = rng.choice(["+", "00", "011"]) + number
        ua = scanner_ua(rng, UA_PATTERNS) if rng.random() < 0.02 else (rng.choice(ua_pool) if ua_pool else good_ua(rng))
        if rng.random() < 0.05:   # roaming or an attacker: an address never seen before
            ip = public_ip(rng)
        else:                     # the account's usual address: its site's NAT or a LAN phone
            h = zlib.crc32(f"{user}@{domain}".encode()) & 0xFFFFFF
            ip = f"10.{h >> 16}.{(h >> 8) & 255}.{h & 255 or 1}" if h % 3 else f"{h % 200 + 11}.{(h >> 8) & 255}.{h & 255}.{rng.choice((10, 20))}"
        attempts.append(tfps.CallAttempt(user=user, domain=domain, number=number, source_ip=ip, user_agent=ua,
                                         concurrent_calls=rng.randint(1, 4), call_id=f"{secrets.token_hex(8)}@bench",
                                         from_uri=f"sip:{user}@{domain}"))
    return attempts


def write_config(path, db_url):
    Path(path).write_text(f"""[server]
log_verdicts = no
log_level = warning
[database]
url = {db_url}
[policy]
home_country = US
timezone = UTC
learning_days = 0
default_daily_quota = 100000
default_daily_quota_off = 100000
default_concurrent_calls = 10
default_concurrent_calls_off = 10
default_destination_countries = {ALLOWED_ISO}
default_source_countries = *
max_calls_per_minute = 0
""")


def tx_begin(db):
    if not (db.dialect == "sqlite" and db.conn.in_transaction):
        db.begin()


def tx_commit(db):
    if not (db.dialect == "sqlite" and not db.conn.in_transaction):
        db.commit()


def populate(tfps, db, rng, now):
    """10,000 accounts, 20,000 number prefixes, 500 UA patterns, 200 IP networks."""
    t0 = time.perf_counter()
    accounts = []
    tx_begin(db)
    for i in range(ACCOUNTS):
        user, domain = f"{1000 + i}", DOMAINS[i % len(DOMAINS)]
        dest = set(ALLOWED_ISO.split(","))
        if i % 10 == 0:
            dest |= {"AU", "JP", "IN", "ZA"}
        acc = tfps.Account(None, user, domain, 10, 10, 100000, 100000, {"*"}, dest, False, "", "enforcing",
                           None, set(), now - 30 * 86400, None)
        tfps.insert_account(db, acc)
        accounts.append((user, domain))
    tx_commit(db)
    # a deployment with history: the accounts have called their usual destinations before, so
    # only a really new destination country raises a "first call to" anomaly alert
    ids = [r[0] for r in db.query("SELECT id FROM accounts")]
    tx_begin(db)
    db.executemany("INSERT INTO account_seen (account_id, direction, iso, first_seen) VALUES (?, ?, ?, ?)",
                   [(i, "dst", iso, now - 20 * 86400) for i in ids for iso in ALLOWED_ISO.split(",")])
    tx_commit(db)
    black = black_prefixes(rng, BLACK_PREFIXES)
    tx_begin(db)
    tfps.list_add(db, "black", "number", black, "bench", now)
    tfps.list_add(db, "black", "ua", ua_patterns(UA_PATTERNS), "bench", now)
    cidrs = sorted({f"{public_ip(rng)}/{rng.choice([24, 28, 32])}" for _ in range(IP_CIDRS)})
    tfps.list_add(db, "black", "ip", [tfps.normalize_list_value("ip", c) for c in cidrs], "bench", now)
    tx_commit(db)
    return accounts, black, time.perf_counter() - t0


# -- one backend, in this process ---------------------------------------------------------------

def run_backend(backend, n, mysql_base, max_seconds, profile, seed, distinct_uas, lease=0):
    import tfps
    tfps.logging.getLogger("tfps").setLevel(tfps.logging.ERROR)
    rng = random.Random(seed)
    tmp = tempfile.TemporaryDirectory(prefix="tfps-engine-bench-")
    admin = dbname = None
    if backend == "sqlite":
        db_url = f"sqlite://{tmp.name}/tfps.db"
    else:
        import pymysql
        from urllib.parse import urlsplit, unquote
        u = urlsplit(mysql_base)
        admin = pymysql.connect(host=u.hostname or "127.0.0.1", port=u.port or 3306, user=unquote(u.username or "root"),
                                password=unquote(u.password or ""), autocommit=True)
        dbname = f"tfps_bench_{secrets.token_hex(4)}"
        admin.cursor().execute(f"CREATE DATABASE {dbname} CHARACTER SET utf8mb4")
        db_url = f"{mysql_base.rstrip('/')}/{dbname}"
    try:
        conf = os.path.join(tmp.name, "tfps.conf")
        write_config(conf, db_url)
        cfg = tfps.Config.load(conf)
        db = tfps.open_database(db_url)
        now = time.time()
        accounts, black, setup_s = populate(tfps, db, rng, now)
        counters = tfps.LeasedCounters(db, "bench", lease, cfg.database.lease_ttl) if lease else None
        engine = tfps.Engine(cfg, db, counters=counters)
        ua_pool = [good_ua(rng) for _ in range(distinct_uas)] if distinct_uas else None
        rss_before = vmrss_kb()
        log(f"[{backend}] setup {setup_s:.1f} s ({ACCOUNTS} accounts, {len(engine.lists.number_black.items)} prefixes, "
            f"{len(engine.lists.user_agents.patterns)} UA patterns); running {n} verdicts")

        profiler = None
        if profile:
            import cProfile
            profiler = cProfile.Profile()
        lat = array("d")
        codes = {}
        flush_s, flushes, done, paused = 0.0, 0, 0, 0.0
        perf = time.perf_counter
        start = perf()
        flush_every = cfg.database.flush_interval
        next_flush = start + flush_every
        next_reload = start + 2.0
        deadline = start + max_seconds
        stop = False
        while done < n and not stop:
            # traffic is generated in chunks with the clock stopped, so that neither its time
            # nor its memory counts as the engine's
            g0 = perf()
            chunk = make_attempts(tfps, rng, min(CHUNK, n - done), black, accounts, ua_pool)
            g1 = perf()
            paused += g1 - g0
            next_flush += g1 - g0
            next_reload += g1 - g0
            deadline += g1 - g0
            if profiler:
                profiler.enable()
            for attempt in chunk:
                attempt.ts = time.time()
                t0 = perf()
                verdict = engine.decide(attempt)
                engine.record(verdict, f"302 {verdict.code}", 0.0)
                t1 = perf()
                lat.append(t1 - t0)
                codes[verdict.code] = codes.get(verdict.code, 0) + 1
                done += 1
                if t1 >= next_flush:
                    engine.flush()
                    flushes += 1
                    t2 = perf()
                    flush_s += t2 - t1
                    next_flush = t2 + flush_every
                    if t2 >= next_reload:
                        engine.check_for_changes()
                        next_reload = perf() + 2.0
                    if t2 > deadline:
                        stop = True
                        break
            if profiler:
                profiler.disable()
            del chunk
        if profiler:
            profiler.enable()
        t1 = perf()
        engine.flush()
        elapsed = perf() - start - paused
        flush_s += perf() - t1
        if profiler:
            profiler.disable()
        logged = db.scalar("SELECT COUNT(*) FROM call_log", default=0)
        db.close()
        lat = sorted(lat)
        result = {
            "backend": backend, "verdicts": done, "elapsed_s": round(elapsed, 3),
            "verdicts_per_s": round(done / elapsed, 1),
            "p50_ms": round(percentile(lat, 50) * 1000, 3), "p99_ms": round(percentile(lat, 99) * 1000, 3),
            "p999_ms": round(percentile(lat, 99.9) * 1000, 3),
            "max_ms": round(lat[-1] * 1000, 3) if lat else None,
            "flushes": flushes + 1, "flush_total_s": round(flush_s, 3),
            "call_log_rows": logged, "codes": dict(sorted(codes.items())),
            "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_run_mb": round(rss_before / 1024, 1), "rss_end_mb": round(vmrss_kb() / 1024, 1),
            "setup_s": round(setup_s, 1), "stopped_early": done < n,
        }
        if profiler:
            import io
            import pstats
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            result["profile"] = out.getvalue()
        return result
    finally:
        if admin is not None:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {dbname}")
            admin.close()
        tmp.cleanup()


# -- driver ---------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("sqlite", "mysql", "both"), default="both")
    ap.add_argument("--verdicts", type=int, default=50_000, help="verdicts per backend (default 50,000)")
    ap.add_argument("--mysql", default="mysql://root:@127.0.0.1:3306",
                    help="MariaDB server URL without a database; a fresh database is created and dropped")
    ap.add_argument("--max-seconds", type=float, default=75.0,
                    help="stop a backend's verdict loop after this long (default 75 s)")
    ap.add_argument("--profile", action="store_true", help="cProfile the verdict loop and print the top functions")
    ap.add_argument("--distinct-uas", type=int, default=1000,
                    help="size of the pool of legitimate User-Agent strings (default 1,000, as many phone models and "
                         "firmware versions); 0 = a fresh random User-Agent on every call (worst case for the UA cache)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--lease", type=int, default=0,
                    help="quota calls claimed at a time ([database] quota_lease), as a server with leases; 0 = a statement per verdict")
    ap.add_argument("--child", choices=("sqlite", "mysql"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        result = run_backend(args.child, args.verdicts, args.mysql, args.max_seconds, args.profile, args.seed,
                             args.distinct_uas, args.lease)
        print(json.dumps(result))
        return 0

    backends = ["sqlite", "mysql"] if args.backend == "both" else [args.backend]
    results = []
    for backend in backends:
        cmd = [sys.executable, __file__, "--child", backend, "--verdicts", str(args.verdicts), "--mysql", args.mysql,
               "--max-seconds", str(args.max_seconds), "--seed", str(args.seed),
               "--distinct-uas", str(args.distinct_uas), "--lease", str(args.lease)] + (["--profile"] if args.profile else [])
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.max_seconds + 150)
        except subprocess.TimeoutExpired:
            log(f"[{backend}] timed out")
            results.append({"backend": backend, "error": "timed out"})
            continue
        if proc.returncode != 0:
            log(f"[{backend}] failed with exit code {proc.returncode}")
            results.append({"backend": backend, "error": f"exit {proc.returncode}"})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        if r.get("profile"):
            print(f"--- cProfile, {r['backend']} (top 25 by own time) ---")
            print(r["profile"])
    sys.stdout.flush()
    print(f"\nTFPS engine benchmark: {ACCOUNTS:,} accounts, {BLACK_PREFIXES:,} blacklisted prefixes, "
          f"{UA_PATTERNS} UA patterns, {IP_CIDRS} IP networks, learning_days = 0, flush every [database] flush_interval as serve does")
    header = f"{'backend':8} {'verdicts':>9} {'seconds':>8} {'verdicts/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} {'peak RSS MB':>12}"
    print(header)
    print("-" * len(header))
    for r in results:
        if "error" in r:
            print(f"{r['backend']:8} ERROR: {r['error']}")
            continue
        print(f"{r['backend']:8} {r['verdicts']:>9,} {r['elapsed_s']:>8.2f} {r['verdicts_per_s']:>11,.0f} "
              f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['p999_ms']:>9.3f} {r['max_ms']:>8.2f} {r['rss_peak_mb']:>12.1f}")
    for r in results:
        if "error" not in r:
            print(f"{r['backend']}: codes {r['codes']}; flush total {r['flush_total_s']} s in {r['flushes']} flushes; "
                  f"call_log rows {r['call_log_rows']:,}; RSS before run {r['rss_before_run_mb']} MB, end {r['rss_end_mb']} MB"
                  + ("; STOPPED EARLY at --max-seconds" if r["stopped_early"] else ""))
    print("targets: >= 10,000 verdicts/s on SQLite; MariaDB reported; peak RSS <= 100 MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
