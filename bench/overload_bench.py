#!/usr/bin/env python3
"""Overload benchmark: `tfps.py serve` offered 3x its sustainable rate by sipp, with overload
control off ([server] overload_after = 0, how the server behaved before it existed) and on
(overload_after 0.2 s, overload = reject, then approve), side by side in one run.

The sustainable rate (--sustainable auto, the default) is measured first, in the same run: the
machine's speed moves by 2x and more from one hour to the next, so a rate taken from another run
can make "3x" anything from 1.5x to 5x. A server with overload control off is offered
--find-seconds steps: doubling from --find-from until a step fails, then --find-steps bisection
steps (to 100 calls/s); a step passes as in the SIP benchmark (every call answered, 0 failed, at
least 95 % of the offered rate achieved), and after a failed one the server is started again. The
highest rate that passed is the sustainable rate. --sustainable N skips the search.

For each setting: a fresh server (UDP, SQLite WAL, full engine, redirect mode, the SIP benchmark's
configuration and call mix) is warmed up, sipp offers --factor x --sustainable calls/s for
--duration seconds, and right after, sipp offers --sustainable / 2 calls/s for --after seconds.
Reported per setting and phase: calls sent, answered within 500 ms (sipp's INVITE -> 302 time),
failed calls (no 302 within --recv-timeout-ms), checked verdicts (call log rows), R98 answers (from
the "stopped after" line of each worker, for both phases; for a version whose line does not count
them, from the call log: code R98, or A00 with would_code R98), p50/p99 of the answered calls, server CPU µs per call sent, the
server's peak RSS and the datagrams the kernel dropped at full UDP receive buffers (the server's
or sipp's: /proc/net/snmp counts them for the whole machine), and of them those dropped at the
server's sockets (/proc/net/udp counts them per socket).

    python3 bench/overload_bench.py                                # 3 x the sustainable rate found, for 30 s
    python3 bench/overload_bench.py --sustainable 2000 --duration 10
    python3 bench/overload_bench.py --settings reject --profile    # + cProfile of the server's event loop
"""

import argparse
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from benchlib import TFPS, describe_version, fmt, free_port, log, percentile, write_config
from sip_bench import (Server, add_sipp_arguments, interpreter_line, last_call_id, print_profiles, process_tree,
                       rss_mb, run_sipp, server_cpus, write_inputs)

SETTINGS = (("off", "0", "reject"), ("reject", "0.2s", "reject"), ("approve", "0.2s", "approve"))
FIND_MAX = 64000  # calls/s: no search goes past it


def overload_codes(db_path, after_id):
    """Call log rows written since id `after_id`: (checked verdicts, R98 rows of versions that wrote them)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as conn:
        total, shed = conn.execute("SELECT COUNT(*), SUM(CASE WHEN code = 'R98' OR would_code = 'R98' THEN 1 ELSE 0 END) "
                                   "FROM call_log WHERE id > ?", (after_id,)).fetchone()
    return total - (shed or 0), shed or 0


def logged_r98(log_text):
    """R98 answers of a stopped server, summed over its workers' "stopped after" lines; None for
    a version whose line does not count them."""
    counts = re.findall(r"stopped after \d+ verdicts, (\d+) of them R98", log_text)
    return sum(map(int, counts)) if counts else None


def udp_receive_buffer_errors():
    """Datagrams the kernel dropped at a full UDP receive buffer, on every socket of the machine
    (the server's, sipp's): /proc/net/snmp's Udp RcvbufErrors, or None where there is none."""
    try:
        names, values = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")][:2]
        return int(values[names.index("RcvbufErrors")])
    except (OSError, ValueError):
        return None


def udp_socket_drops(port):
    """Datagrams dropped so far at the receive buffers of the UDP sockets bound to `port` (the
    server's listeners, one per worker), from the drops column of /proc/net/udp and udp6; None
    where neither can be read."""
    tables = [Path(name) for name in ("/proc/net/udp", "/proc/net/udp6") if Path(name).is_file()]
    if not tables:
        return None
    rows = [line.split() for table in tables for line in table.read_text().splitlines()[1:]]
    return sum(int(row[-1]) for row in rows if int(row[1].rsplit(":", 1)[1], 16) == port)


def counted_since(before, now):
    """now - before of a kernel counter, None where it cannot be read."""
    return None if None in (before, now) else now - before


def phase(args, work, server, port, db_path, rate, seconds, tag):
    before = last_call_id(db_path)
    dropped_before, server_dropped_before = udp_receive_buffer_errors(), udp_socket_drops(port)
    calls = int(rate * seconds)
    log(f"{tag}: {rate} calls/s for {seconds:g} s ...")
    r = run_sipp(args, work, port, "calls.csv", rate, calls, tag, server.proc.pid, args.inputs)
    r["srv_hwm_mb"] = max(rss_mb(pid, "VmHWM") for pid in process_tree(server.proc.pid))
    r["dropped"] = counted_since(dropped_before, udp_receive_buffer_errors())
    r["server_dropped"] = counted_since(server_dropped_before, udp_socket_drops(port))
    time.sleep(2.0)  # the call log is written every flush_interval
    r["checked"], r["r98"] = overload_codes(db_path, before)
    # sipp writes its response times every 1,000 calls: the share is that of the calls it traced
    r["within_500"] = sum(1 for rtt in r["rtt"] if rtt <= 500) / max(1, len(r["rtt"]))
    log(f"  -> sent {r.get('sent')}, answered within 500 ms {100 * r['within_500']:.1f} %, failed {r.get('failed')}, "
        f"{r['checked']} checked verdicts, p99 {fmt(percentile(r['rtt'], 99), 0)} ms, "
        f"server CPU {r['srv_cpu_s']:.1f} s, peak RSS {r['srv_hwm_mb']:.0f} MB, kernel drops {r['dropped']} "
        f"(at the server's sockets {r['server_dropped']})")
    return r


def started_server(args, work, name, overload_after, overload, profile=False):
    """A fresh server in work/name with these overload settings, warmed up: (server, port, db_path)."""
    work = work / name
    work.mkdir()
    port = free_port()
    db_path = work / "tfps.db"
    conf = write_config(work, port, db_path)
    conf.write_text(conf.read_text().replace("[server]\n", f"[server]\noverload_after = {overload_after}\n"
                                                           f"overload = {overload}\nworkers = {args.workers}\n", 1))
    server = Server(work, conf, profile, args.tfps, args.python, server_cpus(args))
    server.start()
    try:
        warm = run_sipp(args, work, port, "warmup.csv", 500, args.users, "warmup", inputs=args.inputs)
    except BaseException:
        server.stop()
        raise
    log(f"[{name}] warm-up: {warm.get('ok')} calls ok ({args.users} accounts enrolled)")
    time.sleep(1.0)
    return server, port, db_path


def find_sustainable(args, work):
    """The highest rate with every call answered in time, overload control off: (rate, steps)."""
    server, port, _ = started_server(args, work, "sustainable", "0", "reject")
    steps = []

    def step(rate):
        r = run_sipp(args, work / "sustainable", port, "calls.csv", rate, int(rate * args.find_seconds), f"step-{len(steps) + 1}-{rate}",
                     None, args.inputs)
        steps.append((rate, r))
        log(f"  sustainable? {rate} calls/s: {'PASS' if r['passed'] else 'FAIL'} (failed {r.get('failed')}, "
            f"achieved {r.get('achieved', 0):.0f}/s, p99 {fmt(percentile(r['rtt'], 99), 0)} ms)")
        if not r["passed"]:  # a fresh start: the backlog of the failed step must not count against the next
            server.stop()
            server.start()
            time.sleep(1.0)
        return r["passed"]

    try:
        lo = hi = None
        rate = args.find_from
        while lo is None and rate >= 100:  # down from --find-from until a step passes
            if step(rate):
                lo = rate
            else:
                hi, rate = rate, rate // 2
        while hi is None and lo is not None and lo < FIND_MAX:
            rate = lo * 2
            if step(rate):
                lo = rate
            else:
                hi = rate
        for _ in range(args.find_steps if lo is not None and hi is not None else 0):
            rate = int(round((lo + hi) / 200.0)) * 100
            if rate <= lo or rate >= hi:
                break
            if step(rate):
                lo = rate
            else:
                hi = rate
    finally:
        server.stop()
    if lo is None:
        raise SystemExit("no sustainable rate found: even 100 calls/s failed")
    return lo, steps


def run_setting(args, work, name, overload_after, overload):
    server, port, db_path = started_server(args, work, name, overload_after, overload, args.profile)
    work = work / name
    try:
        overloaded = phase(args, work, server, port, db_path, args.factor * args.sustainable, args.duration, "overload")
        after = phase(args, work, server, port, db_path, args.sustainable // 2, args.after, "after")
    finally:
        server.stop()
    counted = logged_r98(server.log_path.read_text(errors="replace"))
    if counted is not None:  # one count for both phases: R98 answers are no call log rows
        overloaded["r98"], after["r98"] = counted, "-"
    return overloaded, after


def workers(text):
    """--workers: auto or a number of worker processes, as [server] workers takes."""
    if text != "auto" and not (text.isdigit() and 1 <= int(text) <= 256):
        raise argparse.ArgumentTypeError(f"{text!r}: auto or a number from 1 to 256")
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sustainable", default="auto",
                    help="calls/s the server sustains, or auto: measured first in this run (default auto)")
    ap.add_argument("--find-from", type=int, default=1000, help="first rate of the search for the sustainable rate (default 1000)")
    ap.add_argument("--find-seconds", type=float, default=10.0, help="seconds of each step of the search (default 10)")
    ap.add_argument("--find-steps", type=int, default=3, help="bisection steps of the search (default 3)")
    ap.add_argument("--factor", type=int, default=3, help="offered rate = factor x sustainable (default 3)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of overload (default 30)")
    ap.add_argument("--after", type=float, default=10.0, help="seconds at sustainable / 2 right after (default 10)")
    ap.add_argument("--workers", type=workers, default="1",
                    help="[server] workers: a number, or auto (one per CPU the server may use) (default 1)")
    ap.add_argument("--settings", default="off,reject,approve", help="which of off, reject, approve to run (default all)")
    add_sipp_arguments(ap)
    ap.add_argument("--tfps", type=Path, default=TFPS, help="the tfps.py to serve (default: this checkout's)")
    ap.add_argument("--profile", action="store_true",
                    help="run the server under cProfile and print its top functions (the event loop of --workers 1)")
    args = ap.parse_args()
    if not shutil.which(args.sipp):
        raise SystemExit("sipp not found: apt install sip-tester")
    chosen = [s for s in SETTINGS if s[0] in args.settings.split(",")]
    if not chosen:
        raise SystemExit(f"--settings: choose among {', '.join(s[0] for s in SETTINGS)}")
    if args.sustainable != "auto" and not (args.sustainable.isdigit() and 100 <= int(args.sustainable) <= FIND_MAX):
        raise SystemExit(f"--sustainable: auto or a rate from 100 to {FIND_MAX} calls/s")
    if not 100 <= args.find_from <= FIND_MAX or args.find_seconds <= 0 or args.find_steps < 0:
        raise SystemExit(f"--find-from: 100 to {FIND_MAX} calls/s; --find-seconds above 0; --find-steps 0 or more")
    work = Path(tempfile.mkdtemp(prefix="tfps-overload-bench-"))
    args.inputs = work
    write_inputs(work, args.users, args.csv_rows, args.seed)
    started = time.time()
    results = {}
    steps = []
    try:
        if args.sustainable == "auto":
            args.sustainable, steps = find_sustainable(args, work)
        else:
            args.sustainable = int(args.sustainable)
        for name, overload_after, overload in chosen:
            results[name] = run_setting(args, work, name, overload_after, overload)
        print_profiles(args, work)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nTFPS overload benchmark: {describe_version(args.tfps)}, UDP, SQLite WAL, redirect mode, sipp on 127.0.0.1; "
          f"{args.factor} x {args.sustainable} calls/s for {args.duration:g} s, then {args.sustainable // 2} calls/s for "
          f"{args.after:g} s; workers {args.workers}; recv timeout {args.recv_timeout_ms} ms; {os.cpu_count()} CPUs; total {time.time() - started:.0f} s")
    print(interpreter_line(args))
    head = (f"{'setting':<8} {'phase':<8} {'rate/s':>6} {'sent':>7} {'<=500ms':>8} {'failed':>7} {'R98':>7} "
            f"{'checked':>8} {'p50':>5} {'p99':>5} {'max':>5} {'>500ms':>6} {'µs/call':>7} {'RSS MB':>6} {'drops':>7} {'server':>7}")
    if steps:
        print(f"sustainable rate: {args.sustainable} calls/s, the highest that passed with overload control off "
              f"({args.find_seconds:g} s steps: " + ", ".join(f"{rate} {'pass' if r['passed'] else 'FAIL'}" for rate, r in steps) + ")")
    print(head)
    print("-" * len(head))
    for name, runs in results.items():
        for label, r in zip(("overload", "after"), runs):
            print(f"{name:<8} {label:<8} {r['rate']:>6} {r.get('sent', 0):>7} {100 * r['within_500']:>7.1f}% {r.get('failed', 0):>7} "
                  f"{r['r98']:>7} {r['checked']:>8} {fmt(percentile(r['rtt'], 50), 0):>5} {fmt(percentile(r['rtt'], 99), 0):>5} "
                  f"{fmt(max(r['rtt'], default=float('nan')), 0):>5} {sum(1 for rtt in r['rtt'] if rtt > 500):>6} "
                  f"{1e6 * r['srv_cpu_s'] / max(1, r.get('sent', 0)):>7.0f} {r['srv_hwm_mb']:>6.0f} {'-' if r['dropped'] is None else r['dropped']:>7} "
                  f"{'-' if r['server_dropped'] is None else r['server_dropped']:>7}")
    print("off = overload_after 0 (no overload control); reject/approve = overload_after 0.2 s with that answer. "
          "<=500ms = share of the calls sipp traced (every full 1,000) whose 302 came within 500 ms of the first INVITE; failed = no 302 within "
          "the recv timeout; R98 = R98 answers (counted by the workers, both phases in the overload row; for a version whose stop line does not count them, the call log rows with code or would_code R98); checked = verdicts of the engine (call log rows); p50/p99/max = sipp INVITE -> 302 (ms, "
          "answered calls); >500ms = traced calls answered later than 500 ms; µs/call = server CPU per call sent; RSS MB = peak RSS (VmHWM) so far of the largest server process; "
          "drops = datagrams the kernel dropped at a full UDP receive buffer during the phase (all sockets: the server's and sipp's); "
          "server = those of them dropped at the server's sockets (the rest were sipp's).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
