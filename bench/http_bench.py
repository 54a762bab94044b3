#!/usr/bin/env python3
"""HTTP decision API benchmark: `python3 tfps.py serve` with [http] listen on a free loopback port
and a SQLite file, driven by keep-alive HTTP/1.1 clients sending GET /check over the 1,000
benchmark accounts and 15 destination countries.

Two phases:
  1. throughput: --connections keep-alive clients, each sending its next check as soon as the
     answer is in, for --seconds; checks/s and latency percentiles;
  2. paced: one keep-alive client at --rate checks/s for --seconds; latency percentiles
     (the target: p99 <= 5 ms at 500/s).

The server runs --workers processes (default 1: one process, one event loop). --compare PATH runs
the tfps.py at PATH ("prev") and the one of --tfps ("this") alternately for --rounds rounds, each
on a fresh database, so that both see the same machine load.

Targets: >= 2,000 checks/s on SQLite, p99 <= 5 ms at 500/s."""

import argparse
import http.client
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import (TFPS, account_identities, fmt, free_port, log, median, percentile, random_number,
                      write_config)


def start_server(work, tfps, workers):
    sip_port, http_port = free_port(), free_port(kind=__import__("socket").SOCK_STREAM)
    conf = write_config(work, sip_port, Path(work) / "tfps.db")
    text = conf.read_text().replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
    conf.write_text(text + f"\n[http]\nlisten = 127.0.0.1:{http_port}\n")
    log_file = open(Path(work) / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, str(tfps), "serve", "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while "serving in" not in (Path(work) / "serve.log").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"serve did not start:\n{(Path(work) / 'serve.log').read_text()}")
        time.sleep(0.05)
    return proc, http_port


HIGH_RISK_RANGE = "4470"  # of the default [policy] high_risk_prefixes: R06, not the approved path measured here


def check_paths(count, seed=1):
    rng = random.Random(seed)
    accounts = account_identities(rng, 1000)
    paths = []
    while len(paths) < count:
        user, ip, ua = rng.choice(accounts)
        number = random_number(rng)
        if number.startswith(HIGH_RISK_RANGE):
            continue
        paths.append(f"/check?dialed_number={number}&from_user={user}&domain=bench.example.com"
                     f"&source_ip={ip}&user_agent={ua.replace(' ', '%20')}&sim_calls=1")
    return paths


def one_check(conn, path):
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200 or b'"code": "A00"' not in body:
        raise SystemExit(f"unexpected answer {response.status}: {body[:300]!r}")
    return (time.perf_counter() - started) * 1000


def throughput(port, connections, seconds, paths):
    latencies, counts = [], []
    stop_at = time.monotonic() + seconds

    def client(offset):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine, i = [], offset
        while time.monotonic() < stop_at and i < len(paths):
            mine.append(one_check(conn, paths[i]))
            i += connections
        conn.close()
        latencies.extend(mine)
        counts.append(len(mine))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started), sorted(latencies)


def paced(port, rate, seconds, paths):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies = []
    started = time.monotonic()
    for i in range(min(int(rate * seconds), len(paths))):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        latencies.append(one_check(conn, paths[i]))
    conn.close()
    return sorted(latencies)


def cpu_seconds(pid):
    """User and system CPU time so far of a process and its children, the workers (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(map(cpu_seconds, children))


def report(name, rate, latencies, cpu):
    print(f"{name:34} {fmt(rate, 0):>8} checks/s   p50 {fmt(median(latencies))} ms   "
          f"p99 {fmt(percentile(latencies, 99))} ms   max {fmt(latencies[-1] if latencies else None)} ms   "
          f"server CPU {fmt(cpu * 1e6 / max(1, len(latencies)), 0)} us/check   ({len(latencies)} checks)")


def run(args, tfps, label, paths):
    work = tempfile.mkdtemp(prefix="tfps-http-bench-")
    proc, port = start_server(work, tfps, args.workers)
    try:
        log(f"{label}: warm-up, enrolling the 1,000 accounts")
        throughput(port, 1, 30.0, paths[:1000])
        cpu = cpu_seconds(proc.pid)
        rate, latencies = throughput(port, args.connections, args.seconds, paths[1000:])
        cpu, spent = cpu_seconds(proc.pid), cpu_seconds(proc.pid) - cpu
        report(f"{label}throughput, {args.connections} keep-alive client(s)", rate, latencies, spent)
        latencies = paced(port, args.rate, args.seconds, paths[1000:])
        report(f"{label}paced at {args.rate:g}/s, 1 keep-alive client", len(latencies) / args.seconds, latencies,
               cpu_seconds(proc.pid) - cpu)
    finally:
        proc.terminate()
        proc.wait(10)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase (default 5)")
    parser.add_argument("--connections", type=int, default=2, help="keep-alive clients of the throughput phase (default 2)")
    parser.add_argument("--rate", type=float, default=500.0, help="checks/s of the paced phase (default 500)")
    parser.add_argument("--workers", type=int, default=1, help="[server] workers of the server (default 1)")
    parser.add_argument("--tfps", default=str(TFPS), help="the tfps.py to serve (default this checkout's)")
    parser.add_argument("--compare", metavar="PATH", help="another tfps.py, run alternately with --tfps")
    parser.add_argument("--rounds", type=int, default=2, help="with --compare: rounds (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (log, database)")
    args = parser.parse_args()
    paths = check_paths(int(max(args.rate, 20000) * args.seconds) + 1000)
    if not args.compare:
        run(args, args.tfps, "", paths)
        return
    for round_number in range(1, args.rounds + 1):
        for label, tfps in (("prev", args.compare), ("this", args.tfps)):
            run(args, tfps, f"{label} {round_number}: ", paths)


if __name__ == "__main__":
    main()
