#!/usr/bin/env python3
"""Replay benchmark: `tfps.replay` (the real engine over CDRs, simulated time, SQLite in memory).

Generates a synthetic, labeled CDR CSV in a temporary directory (default 200,000 rows, 500 accounts,
60 days: office-hours traffic mostly to the account's usual countries, some off-hours calls and a
few night-time IRSF bursts labeled fraud), then

  1. times tfps.replay(cfg, path) in-process (SQLite in memory, the default) and prints rows/s;
  2. times the full CLI `python3 tfps.py replay FILE --json` (interpreter start, CSV parsing, replay,
     JSON output) and prints its wall time.

    python3 bench/replay_bench.py
    python3 bench/replay_bench.py --rows 20000 --skip-cli
    python3 bench/replay_bench.py --profile          # + cProfile of the in-process replay

Target (issue 6): >= 20,000 CDR rows/s on SQLite in memory.
"""

import argparse
import datetime as dt
import json
import os
import random
import resource
import signal
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


def write_config(path):
    Path(path).write_text("""[server]
mode = redirect
log_level = error
[policy]
home_country = US
timezone = America/New_York
business_hours = mon-fri 08:00-19:00
""")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="CDR rows (default 200,000)")
    ap.add_argument("--accounts", type=int, default=500, help="accounts (default 500)")
    ap.add_argument("--days", type=int, default=60, help="days of history (default 60)")
    ap.add_argument("--config", help="a tfps.conf to replay with (default: US office policy, learning defaults)")
    ap.add_argument("--skip-cli", action="store_true", help="skip the `tfps.py replay --json` run")
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process replay, print the top functions")
    ap.add_argument("--timeout", type=int, default=120,
                    help="give up on each run (in-process, CLI) after this many seconds (default 120); the CLI run "
                         "is skipped when the in-process run took more than half of it")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--generate-only", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.generate_only:   # in a child process, so that the generator's memory is not the replay's
        rows, fraud_rows = generate(args.generate_only, args.rows, args.accounts, args.days, args.seed)
        print(rows, fraud_rows)
        return 0

    import tfps
    tfps.logging.getLogger("tfps").setLevel(tfps.logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="tfps-replay-bench-") as tmp:
        cdr = os.path.join(tmp, "cdr.csv")
        conf = args.config or os.path.join(tmp, "tfps.conf")
        if not args.config:
            write_config(conf)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--generate-only", cdr, "--rows", str(args.rows), "--accounts",
                              str(args.accounts), "--days", str(args.days), "--seed", str(args.seed)],
                             stdout=subprocess.PIPE, text=True, check=True, timeout=300).stdout
        rows, fraud_rows = map(int, out.split())
        csv_mb = os.path.getsize(cdr) / 1e6
        log(f"generated {rows:,} CDR rows ({fraud_rows:,} fraud), {args.accounts} accounts, {args.days} days, "
            f"{os.path.getsize(cdr) / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")

        cfg = tfps.Config.load(conf)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        profiler = None
        if args.profile:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        def too_slow(signum, frame):
            raise TimeoutError
        signal.signal(signal.SIGALRM, too_slow)
        signal.alarm(args.timeout)
        t0 = time.perf_counter()
        try:
            report = tfps.replay(cfg, cdr)
        except TimeoutError:
            if profiler:
                profiler.disable()
            print(f"\nTFPS replay benchmark: {rows:,} rows: tfps.replay did not finish within {args.timeout} s, "
                  f"so it runs at < {rows / args.timeout:,.0f} rows/s (target >= 20,000). --timeout 600 gives the figure.")
            return 1
        finally:
            signal.alarm(0)
        elapsed = time.perf_counter() - t0
        if profiler:
            profiler.disable()
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if report["rows"] != rows:
            log(f"warning: replay reported {report['rows']} rows, the file has {rows}")

        cli = None
        if not args.skip_cli and elapsed > args.timeout / 2:
            cli = {"rc": "skipped", "error": f"the in-process run took {elapsed:.0f} s; expect about as long"}
        elif not args.skip_cli:
            cmd = [sys.executable, str(TFPS), "replay", cdr, "--json", "-c", conf]
            t1 = time.perf_counter()
            with open(os.path.join(tmp, "cli.json"), "w") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
                usage, rc = None, None
                deadline = time.time() + args.timeout
                while rc is None:
                    pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        rc, usage = os.waitstatus_to_exitcode(status), ru
                        proc.returncode = rc
                    elif time.time() > deadline:
                        proc.kill()
                        proc.wait()
                        rc = "timeout"
                    else:
                        time.sleep(0.05)
                err = proc.stderr.read()
            wall = time.perf_counter() - t1
            cli = {"rc": rc, "wall_s": wall, "rss_mb": usage.ru_maxrss / 1024 if usage else float("nan")}
            if rc == 0:
                cli_report = json.loads(Path(tmp, "cli.json").read_text())
                cli["rows"] = cli_report.get("rows")
                cli["same_codes"] = cli_report.get("codes") == report["codes"]
            else:
                cli["error"] = (err or "").strip()[-300:]

    if profiler:
        import pstats
        print("--- cProfile of tfps.replay (top 25 by own time) ---")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    print(f"\nTFPS replay benchmark: {rows:,} rows, {args.accounts} accounts, {args.days} days, SQLite in memory")
    print(f"{'run':34} {'seconds':>8} {'rows/s':>9} {'peak RSS MB':>12}")
    print("-" * 66)
    print(f"{'tfps.replay(cfg, path) in-process':34} {elapsed:>8.2f} {rows / elapsed:>9,.0f} "
          f"{(rss_peak) / 1024:>12.1f}")
    if cli:
        if cli["rc"] == 0:
            print(f"{'python3 tfps.py replay FILE --json':34} {cli['wall_s']:>8.2f} {rows / cli['wall_s']:>9,.0f} "
                  f"{cli['rss_mb']:>12.1f}")
        else:
            print(f"{'python3 tfps.py replay FILE --json':34} {'SKIPPED' if cli['rc'] == 'skipped' else 'FAILED'} "
                  f"({cli['rc']}): {cli.get('error', '')}")
    print(f"codes: {report['codes']}")
    print(f"fraud calls blocked: {report['fraud_blocked_pct']}% of {report['fraud_calls']:,}; legitimate calls blocked: "
          f"{report['legit_blocked_pct']}% of {report['legit_calls']:,}; {len(report['episodes'])} fraud episodes"
          + (f"; CLI codes identical: {cli['same_codes']}" if cli and cli.get("rc") == 0 else ""))
    print(f"(in-process peak RSS includes the benchmark process's own {rss0 / 1024:.0f} MB before the replay; "
          f"the CSV is {csv_mb:.1f} MB)")
    print("target: >= 20,000 rows/s in-process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
