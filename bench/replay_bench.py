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


def write_config(path):
    Path(path).write_text("""[server]
mode = redirect
log_level = error
[policy]
home_country = US
timezone = America/New_York
business_hours = mon-fri 08:00-19:00
""")


TARGET = 20_000            # CDR rows/s (issue 6)
CALIBRATION_LOOP = 5_000_000


class RunTimedOut(BaseException):
    """Raised by SIGALRM in a timed run; a BaseException so that no `except Exception` in tfps keeps it."""


def calibrate(n=CALIBRATION_LOOP):
    """Seconds a fixed pure-Python loop takes right now: how fast this moment of the machine is."""
    t0 = time.perf_counter()
    total = 0
    for i in range(n):
        total += i
    return time.perf_counter() - t0


def reset_peak_rss():
    """Set this process's peak RSS (ru_maxrss) back to its current RSS, so that the next run's peak is
    its own; False where the kernel does not allow it (then peaks accumulate over the runs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_seconds():
    """(CPU seconds the whole machine has been busy, seconds stolen by the hypervisor, CPU seconds of
    this process and its waited-for children) so far; the machine's figures are None without /proc/stat."""
    mine = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None, None, mine
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz, mine


def others_and_steal(before, after, wall):
    """% of one CPU that other processes used, and that the hypervisor stole, between two cpu_seconds()."""
    if before[0] is None or not wall or wall == float("inf"):
        return float("nan"), float("nan")
    others = (after[0] - before[0]) - (after[2] - before[2])
    return max(0.0, 100 * others / wall), 100 * (after[1] - before[1]) / wall


def peak_rss_mb(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss / 1024


def kill_children():
    """Kill and reap this process's child processes: the replay workers a timed-out parallel run
    forked and left behind (nothing else of ours runs while a replay is timed)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path("/proc", entry, "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me:
            try:
                os.kill(int(entry), signal.SIGKILL)
                os.waitpid(int(entry), 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def timed(work, timeout):
    """(seconds, result) of work(), or (inf, None) when it did not finish within timeout seconds."""
    def too_slow(signum, frame):
        raise RunTimedOut
    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(timeout)
    t0 = time.perf_counter()
    try:
        result = work()
    except RunTimedOut:
        signal.alarm(0)
        kill_children()
        return float("inf"), None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return time.perf_counter() - t0, result


def run_cli(cmd, out_path, timeout):
    """(exit code or "timeout", wall seconds, the rusage of the process and its waited-for workers, stderr)."""
    t0 = time.perf_counter()
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
        usage, rc = None, None
        deadline = time.time() + timeout
        while rc is None:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc, usage = os.waitstatus_to_exitcode(status), ru
                proc.returncode = rc
            elif time.time() > deadline:
                proc.kill()   # its forked workers see their pipe close, or finish on their own
                proc.wait()
                rc = "timeout"
            else:
                time.sleep(0.05)
        err = proc.stderr.read()
    return rc, time.perf_counter() - t0, usage, err


def differing_keys(a, b):
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def fmt_s(seconds, timeout):
    return f">{timeout}" if seconds == float("inf") else f"{seconds:.2f}"


def fmt_rate(rows, seconds, timeout):
    return f"<{rows / timeout:,.0f}" if seconds == float("inf") else f"{rows / seconds:,.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="CDR rows (default 200,000)")
    ap.add_argument("--accounts", type=int, default=500, help="accounts (default 500)")
    ap.add_argument("--days", type=int, default=60, help="days of history (default 60)")
    ap.add_argument("--config", help="a tfps.conf to replay with (default: US office policy, learning defaults)")
    ap.add_argument("--repeat", type=int, default=3, metavar="N",
                    help="time each in-process replay (jobs=1, default jobs) N times, interleaved (default 3)")
    ap.add_argument("--skip-cli", action="store_true", help="skip the `tfps.py replay --json` run")
    ap.add_argument("--profile", action="store_true",
                    help="after the timed runs, cProfile one more jobs=1 replay (not timed), print the top functions")
    ap.add_argument("--timeout", type=int, default=120,
                    help="give up on each run after this many seconds (default 120); a way of running that "
                         "timed out is not repeated; the CLI run is skipped when the default in-process run's "
                         "median took more than half of it")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--generate-only", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeat < 1 or args.timeout < 1:
        ap.error("--repeat and --timeout must be at least 1")

    if args.generate_only:   # in a child process, so that the generator's memory is not the replay's
        rows, fraud_rows = generate(args.generate_only, args.rows, args.accounts, args.days, args.seed)
        print(rows, fraud_rows)
        return 0

    import tfps
    tfps.logging.getLogger("tfps").setLevel(tfps.logging.ERROR)
    failed = []
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
            f"{csv_mb:.1f} MB in {time.perf_counter() - t0:.1f} s")

        cfg = tfps.Config.load(conf)
        load_start = os.getloadavg()[0]
        cpus = os.cpu_count() or 1
        default_jobs = cpus if rows >= tfps.PARALLEL_REPLAY_ROWS else 1
        modes = {"jobs=1": ("tfps.replay(cfg, path, jobs=1)", {"jobs": 1}),
                 "default": (f"tfps.replay(cfg, path) [{default_jobs} proc]", {})}
        runs = []                    # in the order run: {mode, calibration, seconds, rss_mb, rss_before_mb}
        timed_out = set()
        reference = None             # the first jobs=1 report; every other report must equal it
        mismatches = []              # (run number, mode, differing keys)
        children_rss_before = peak_rss_mb(resource.RUSAGE_CHILDREN)   # the generator's, so far
        rss_resettable = True
        for _ in range(args.repeat):
            for mode, (label, kwargs) in modes.items():
                if mode in timed_out:
                    continue
                gc.collect()
                calibration = calibrate()
                rss_resettable = reset_peak_rss() and rss_resettable
                rss_before = peak_rss_mb()
                log(f"run {len(runs) + 1}: {label} ...")
                cpu_before = cpu_seconds()
                seconds, report = timed(lambda: tfps.replay(cfg, cdr, **kwargs), args.timeout)
                others, steal = others_and_steal(cpu_before, cpu_seconds(), seconds)
                runs.append({"mode": mode, "calibration": calibration, "seconds": seconds, "rss_mb": peak_rss_mb(),
                             "others": others, "steal": steal,
                             "rss_before_mb": rss_before})
                log(f"run {len(runs)}: {label}: {fmt_s(seconds, args.timeout)} s (calibration {calibration:.3f} s)")
                if report is None:
                    timed_out.add(mode)
                    failed.append(f"{label} did not finish within {args.timeout} s")
                    continue
                if report["rows"] != rows:
                    log(f"warning: replay reported {report['rows']} rows, the file has {rows}")
                if reference is None and mode == "jobs=1":
                    reference = report
                elif reference is not None and report != reference:
                    mismatches.append((len(runs), mode, differing_keys(report, reference)))
                del report
        children_rss = peak_rss_mb(resource.RUSAGE_CHILDREN)

        def stats(mode):
            times = [run["seconds"] for run in runs if run["mode"] == mode]
            return {"n": len(times), "best": min(times), "median": statistics.median(times),
                    "rss_mb": max(run["rss_mb"] for run in runs if run["mode"] == mode)}
        summary = {mode: stats(mode) for mode in modes}

        cli = None
        if not args.skip_cli and summary["default"]["median"] > args.timeout / 2:
            cli = {"rc": "skipped", "error": f"the default in-process run's median is "
                                             f"{fmt_s(summary['default']['median'], args.timeout)} s; expect about as long"}
        elif not args.skip_cli:
            gc.collect()
            calibration = calibrate()
            log(f"run {len(runs) + 1}: python3 tfps.py replay FILE --json ...")
            cpu_before = cpu_seconds()
            rc, wall, usage, err = run_cli([sys.executable, str(TFPS), "replay", cdr, "--json", "-c", conf],
                                           os.path.join(tmp, "cli.json"), args.timeout)
            others, steal = others_and_steal(cpu_before, cpu_seconds(), wall)
            cli = {"rc": rc, "wall_s": wall, "calibration": calibration, "others": others, "steal": steal,
                   "rss_mb": usage.ru_maxrss / 1024 if usage else float("nan")}
            if rc == 0:
                cli_report = json.loads(Path(tmp, "cli.json").read_text())
                cli["same"] = None if reference is None else cli_report == json.loads(json.dumps(reference))
                if cli["same"] is False:
                    failed.append("the CLI report differs from the in-process one: "
                                  + ", ".join(differing_keys(cli_report, json.loads(json.dumps(reference)))))
            else:
                cli["error"] = (err or "").strip()[-300:]
                failed.append(f"the CLI run failed ({rc})")

        profiler = None
        if args.profile:
            import cProfile
            gc.collect()
            log("profiling one more jobs=1 run ...")
            profiler = cProfile.Profile()
            profiler.enable()
            profile_seconds, _ = timed(lambda: tfps.replay(cfg, cdr, jobs=1), args.timeout)
            profiler.disable()

    if profiler:
        import pstats
        extent = f"stopped after {args.timeout} s" if profile_seconds == float("inf") else "the whole run"
        print(f"--- cProfile of tfps.replay(cfg, path, jobs=1), one extra run, not timed ({extent}); "
              f"top 25 by own time ---")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    calibrations = [run["calibration"] for run in runs] + ([cli["calibration"]] if cli and "calibration" in cli else [])
    print(f"\nTFPS replay benchmark: {rows:,} rows, {args.accounts} accounts, {args.days} days, SQLite in memory")
    print(f"CPUs: {cpus} (os.cpu_count(){'' if affinity == cpus else f'; {affinity} usable by this process'}); "
          f"the default replay runs {default_jobs} process{'es' if default_jobs > 1 else ''} "
          f"(PARALLEL_REPLAY_ROWS = {tfps.PARALLEL_REPLAY_ROWS:,}); {args.repeat} run(s) each, interleaved")
    print(f"load average (1 min): {load_start:.2f} before the runs, {os.getloadavg()[0]:.2f} after them (the "
          f"benchmark's own load included)")
    print(f"calibration: a pure-Python loop over range({CALIBRATION_LOOP:,}) before each timed run took "
          f"{min(calibrations):.3f} to {max(calibrations):.3f} s (max/min {max(calibrations) / min(calibrations):.2f})")
    print()
    width = 38
    print(f"{'run':{width}} {'runs':>4} {'best s':>8} {'median s':>9} {'best rows/s':>12} {'median rows/s':>14} "
          f"{'peak RSS MB':>12}")
    print("-" * (width + 64))
    for mode, (label, _) in modes.items():
        s = summary[mode]
        print(f"{label:{width}} {s['n']:>4} {fmt_s(s['best'], args.timeout):>8} {fmt_s(s['median'], args.timeout):>9} "
              f"{fmt_rate(rows, s['best'], args.timeout):>12} {fmt_rate(rows, s['median'], args.timeout):>14} "
              f"{s['rss_mb']:>12.1f}")
    if default_jobs > 1:
        if children_rss > children_rss_before:
            child = f"{children_rss:>12.1f}"
        else:
            child = f"<= {children_rss_before:.1f} (the generator's peak hides it)"
        print(f"{'  its worker processes (max of any)':{width}} {'':>4} {'':>8} {'':>9} {'':>12} {'':>14} {child:>12}")
    if cli:
        label = "python3 tfps.py replay FILE --json"
        if cli["rc"] == 0:
            print(f"{label:{width}} {1:>4} {cli['wall_s']:>8.2f} {'-':>9} {rows / cli['wall_s']:>12,.0f} {'-':>14} "
                  f"{cli['rss_mb']:>12.1f}")
        else:
            print(f"{label:{width}} {'SKIPPED' if cli['rc'] == 'skipped' else 'FAILED'} ({cli['rc']}): "
                  f"{cli.get('error', '')}")
    print()
    print(f"{'#':>2} {'run (in order)':{width - 3}} {'calib. s':>8} {'seconds':>8} {'rows/s':>8} {'peak RSS MB':>11} "
          f"{'others %':>8} {'steal %':>7}")
    for number, run in enumerate(runs, 1):
        print(f"{number:>2} {modes[run['mode']][0]:{width - 3}} {run['calibration']:>8.3f} "
              f"{fmt_s(run['seconds'], args.timeout):>8} {fmt_rate(rows, run['seconds'], args.timeout):>8} "
              f"{run['rss_mb']:>11.1f} {run['others']:>8.0f} {run['steal']:>7.0f}")
    if cli and cli["rc"] == 0:
        print(f"{len(runs) + 1:>2} {'python3 tfps.py replay FILE --json':{width - 3}} {cli['calibration']:>8.3f} "
              f"{cli['wall_s']:>8.2f} {rows / cli['wall_s']:>8,.0f} {cli['rss_mb']:>11.1f} {cli['others']:>8.0f} "
              f"{cli['steal']:>7.0f}")
    print("(others %: CPU time other processes used during the run, in % of one CPU; steal %: time the hypervisor "
          "gave to other VMs. Either well above 10 means the run shared the machine.)")
    print()

    finished = [run for run in runs if run["seconds"] != float("inf")]
    if reference is None:
        print("reports identical: unknown (no jobs=1 run finished)")
    elif mismatches:
        print(f"reports identical: no ({len(finished) - len(mismatches)} of {len(finished)} reports equal the "
              f"first jobs=1 report)")
        for number, mode, keys in mismatches:
            print(f"  run {number} ({modes[mode][0]}) differs in: {', '.join(keys)}")
    else:
        print(f"reports identical: yes (all {len(finished)} in-process reports == the first jobs=1 report"
              + (f"; CLI report too" if cli and cli.get("same") else "") + ")")
    if reference is None or mismatches:
        failed.append("the reports are not identical")
    if reference is not None:
        print(f"codes: {reference['codes']}")
        print(f"fraud calls blocked: {reference['fraud_blocked_pct']}% of {reference['fraud_calls']:,}; legitimate "
              f"calls blocked: {reference['legit_blocked_pct']}% of {reference['legit_calls']:,}; "
              f"{len(reference['episodes'])} fraud episodes")
    before = [run["rss_before_mb"] for run in runs]
    print(f"(peak RSS: the process's high-water mark during each run"
          + (", reset before it through /proc/self/clear_refs" if rss_resettable
             else "; it could not be reset, so it is the peak of all runs so far")
          + f"; the benchmark process held {min(before):.0f} to {max(before):.0f} MB before the runs. A worker's RSS "
          f"counts the pages it shares with its parent after fork. The CLI's figure is the largest of its process and "
          f"its workers. The CSV is {csv_mb:.1f} MB.)")

    def verdict(mode):
        median = summary[mode]["median"]
        rate = fmt_rate(rows, median, args.timeout)
        return f"{rate} rows/s, {'met' if rows / median >= TARGET else 'NOT met'}"
    print(f"target >= {TARGET:,} rows/s in-process (issue 6): default ({default_jobs} proc) median "
          f"{verdict('default')}; jobs=1 median {verdict('jobs=1')}")
    shared = [str(number) for number, run in enumerate(runs + ([cli] if cli and cli["rc"] == 0 else []), 1)
              if run["others"] > 10 or run["steal"] > 10]
    if shared:
        print(f"warning: runs {', '.join(shared)} shared the machine (others % or steal % above 10): their figures "
              f"understate the replay; run again on an idle machine")
    for problem in failed:
        print(f"FAILED: {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
