#!/usr/bin/env python3
"""SIP benchmark: `tfps.py serve` (UDP, SQLite, full engine, redirect mode) driven by sipp.

Starts the server on a free loopback port with a SQLite file in a temporary directory, enrolls the
benchmark accounts with a short warm-up, then runs sipp (UAC: INVITE -> 302 -> ACK, the ACK
reusing the INVITE's Via branch) with an injection CSV that spreads the calls over many accounts
(P-tfps user field) and numbers:

  * rate steps (default 1000, 2000, 3000, 3500, 4000, 5000 calls/s, --duration seconds each, then up
    to --refine bisection steps between the last rate that passed and the first that failed); a step
    passes when sipp reports every call successful, 0 failed, and achieved >= 95 % of the offered
    rate. A call fails when its 302 is not in within --recv-timeout-ms (default 2000 ms; sipp also
    retransmits the INVITE after 500 ms). Stepping stops at the first failure.
  * response times at --latency-rate (1000 calls/s; it is the first step): sipp's -trace_rtt
    (start_rtd on the INVITE, rtd on the 302; sipp measures in whole milliseconds) -> p50/p99
    computed here, plus the server's own decision latency from the call_log (latency_ms, µs
    resolution; it excludes time spent in the socket buffer).

    bash bench/sip_bench.sh                         # full run, about 5 minutes
    bash bench/sip_bench.sh --duration 5 --rates 1000,2000
    bash bench/sip_bench.sh --profile               # + cProfile of the server, top functions

Targets (issue 2): >= 3,000 calls/s sustained with 0 failed calls, p99 <= 5 ms at 1,000 calls/s,
on the 2-core machine with sipp on the same machine.
"""

import argparse
import csv
import glob
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TFPS = REPO / "tfps.py"

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- TFPS benchmark UAC: INVITE -> (100) -> 302 -> ACK. The ACK of a non-2xx final response is part
     of the INVITE transaction, so it carries the INVITE's Via branch: [branch-3] is the branch of the
     message three steps back (INVITE = message 0, ACK = message 3). CSV: user;number;ip;ua -->
<scenario name="tfps-uac-302">
  <send retrans="500" start_rtd="invite">
    <![CDATA[
      INVITE sip:[field1]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[field0]@pbx.example.com>;tag=[pid]T[call_number]
      To: <sip:[field1]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:[field0]@[local_ip]:[local_port]>
      Max-Forwards: 70
      User-Agent: Asterisk PBX 20.5.0
      P-tfps: [field0];pbx.example.com;[field2];[field3];1
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="302" rtd="invite"/>
  <send>
    <![CDATA[
      ACK sip:[field1]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3];rport
      From: <sip:[field0]@pbx.example.com>;tag=[pid]T[call_number]
      To: <sip:[field1]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""

# destinations that are neither high-risk nor blacklisted: (country code + area, national digits)
DESTINATIONS = [("1212", 7), ("1415", 7), ("1305", 7), ("1416", 7), ("44", 10), ("49", 10), ("33", 9),
                ("34", 9), ("39", 10), ("55", 11), ("52", 10), ("61", 9), ("81", 10), ("31", 9), ("46", 9)]
USER_AGENTS = ["Yealink SIP-T46S 66.86.0.15", "Grandstream GXP2170 1.0.11.23", "PolycomVVX-VVX_411-UA/6.4.3.5018",
               "Zoiper rv2.10.19.3", "Linphone/5.2.0 (belle-sip/5.2.0)", "Cisco-CP8845/12.8.1", "snom D785/10.1.159.12",
               "Fanvil X6U 2.12.1", "MicroSIP/3.21.3", "FPBX-16.0.40(18.20.0)"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port(kind=socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a running process, from /proc (clock ticks)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def rss_mb(pid, field="VmRSS"):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[k]


def write_inputs(work, users, rows, seed):
    rng = random.Random(seed)
    user_names = [f"{2000 + i}" for i in range(users)]
    ip_of = {u: f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for u in user_names}
    ua_of = {u: rng.choice(USER_AGENTS) for u in user_names}

    def number():
        cc, length = rng.choice(DESTINATIONS)
        return cc + rng.choice("2345678") + "".join(rng.choice("0123456789") for _ in range(length - 1))

    with open(work / "calls.csv", "w") as fh:
        fh.write("SEQUENTIAL\n")
        for _ in range(rows):
            u = rng.choice(user_names)
            fh.write(f"{u};{number()};{ip_of[u]};{ua_of[u]}\n")
    with open(work / "warmup.csv", "w") as fh:   # every account once: enrollment happens here
        fh.write("SEQUENTIAL\n")
        for u in user_names:
            fh.write(f"{u};{number()};{ip_of[u]};{ua_of[u]}\n")
    (work / "uac.xml").write_text(SCENARIO)


def write_config(work, port, db_path):
    conf = work / "tfps.conf"
    conf.write_text(f"""[server]
listen = udp:127.0.0.1:{port}
mode = redirect
log_verdicts = no
log_level = info
node_name = bench
[database]
url = sqlite://{db_path}
[policy]
learning_days = 0
default_daily_quota = unlimited
default_daily_quota_off = unlimited
default_concurrent_calls = unlimited
default_concurrent_calls_off = unlimited
default_destination_countries = *
default_source_countries = *
ab_max_calls = 1000
max_calls_per_minute = 0
""")
    return conf


class Server:
    def __init__(self, work, conf, profile):
        self.work, self.conf, self.profile = work, conf, profile
        self.proc = None
        self.runs = 0

    def start(self, timeout=20):
        self.runs += 1
        self.log_path = self.work / f"serve-{self.runs}.log"
        self.log_fh = open(self.log_path, "w")
        cmd = [sys.executable]
        if self.profile:
            cmd += ["-m", "cProfile", "-o", str(self.work / f"serve-{self.runs}.prof")]
        cmd += [str(TFPS), "serve", "-c", str(self.conf)]
        self.proc = subprocess.Popen(cmd, stdout=self.log_fh, stderr=subprocess.STDOUT, cwd=self.work)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"tfps.py serve exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            if "serving in" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"tfps.py serve did not start within {timeout} s:\n{self.log_path.read_text()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log_fh.close()
        self.proc = None


def last_call_id(db_path):
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute("SELECT COALESCE(MAX(id), 0) FROM call_log").fetchone()[0]


def server_latencies(db_path, after_id):
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as conn:
        rows = conn.execute("SELECT latency_ms, code FROM call_log WHERE id > ?", (after_id,)).fetchall()
    codes = {}
    for _, code in rows:
        codes[code] = codes.get(code, 0) + 1
    return sorted(r[0] for r in rows), codes


def run_sipp(args, work, port, csv_name, rate, calls, tag, server_pid=None):
    step = work / tag
    step.mkdir()
    shutil.copy(work / "uac.xml", step / "uac.xml")
    stats = step / "stats.csv"
    timeout_s = int(calls / rate + 30)
    cmd = [args.sipp, f"127.0.0.1:{port}", "-sf", "uac.xml", "-inf", str(work / csv_name), "-i", "127.0.0.1",
           "-p", str(free_port()), "-cp", str(free_port()), "-t", "u1", "-r", str(rate), "-rp", "1000",
           "-m", str(calls), "-l", str(max(200, rate * 3)), "-recv_timeout", str(args.recv_timeout_ms),
           "-timeout", f"{timeout_s}s", "-trace_stat", "-stf", str(stats), "-fd", "1",
           "-trace_rtt", "-rtt_freq", "1000", "-trace_err", "-error_file", str(step / "errors.log"),
           "-max_recv_loops", "10000", "-max_sched_loops", "10000", "-nostdin"]
    started = time.time()
    srv_cpu0 = cpu_seconds(server_pid) if server_pid else float("nan")
    sipp_cpu = float("nan")
    with open(step / "sipp.out", "w") as out:
        proc = subprocess.Popen(cmd, cwd=step, stdout=out, stderr=subprocess.STDOUT)
        deadline = started + timeout_s + 30
        rc = None
        while rc is None:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc = os.waitstatus_to_exitcode(status)
                proc.returncode = rc
                sipp_cpu = usage.ru_utime + usage.ru_stime
            elif time.time() > deadline:
                proc.kill()
                proc.wait()
                rc = "timeout"
            else:
                time.sleep(0.05)
    wall = time.time() - started
    srv_cpu = (cpu_seconds(server_pid) - srv_cpu0) if server_pid else float("nan")
    srv_hwm = rss_mb(server_pid, "VmHWM") if server_pid else float("nan")
    result = {"rate": rate, "calls": calls, "rc": rc, "wall_s": round(wall, 1), "srv_cpu_s": srv_cpu,
              "sipp_cpu_s": sipp_cpu, "srv_hwm_mb": srv_hwm}
    try:
        with open(stats, newline="") as fh:
            rows = list(csv.reader(fh, delimiter=";"))
        head, last = rows[0], rows[-1]
        value = dict(zip(head, last))
        for key, name in (("SuccessfulCall(C)", "ok"), ("FailedCall(C)", "failed"), ("OutgoingCall(C)", "sent"),
                          ("Retransmissions(C)", "retrans"), ("DeadCallMsgs(C)", "dead_msgs"),
                          ("OutOfCallMsgs(C)", "out_of_call"), ("FailedTimeoutOnRecv(C)", "recv_timeouts"),
                          ("FailedMaxUDPRetrans(C)", "max_retrans")):
            result[name] = int(value.get(key) or 0)
        result["sipp_rate"] = float(value.get("CallRate(C)") or 0)
    except (OSError, IndexError, ValueError) as exc:
        result.update(ok=0, failed=calls, sent=0, retrans=0, dead_msgs=0, out_of_call=0, error=f"no sipp statistics: {exc}")
    rtt, dates = [], []
    for path in glob.glob(str(step / "uac_*_rtt.csv")):
        with open(path) as fh:
            next(fh, None)
            for line in fh:
                parts = line.strip().split(";")
                if len(parts) >= 2 and parts[1]:
                    dates.append(float(parts[0]))
                    rtt.append(float(parts[1]))
    rtt.sort()
    result["rtt"] = rtt
    if len(dates) > 1:
        span = (max(dates) - min(dates)) / 1000.0
        result["achieved"] = round((len(dates) - 1) / span, 1) if span > 0 else float(len(dates))
    else:
        result["achieved"] = result.get("sipp_rate", 0.0)
    result["passed"] = (result.get("failed", 1) == 0 and result.get("ok", 0) == calls
                        and result["achieved"] >= 0.95 * rate)
    return result


def fmt(v, digits=2):
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per rate step (default 30)")
    ap.add_argument("--rates", default="1000,2000,3000,3500,4000,5000",
                    help="comma-separated calls/s to try in order (default 1000,2000,3000,3500,4000,5000)")
    ap.add_argument("--latency-rate", type=int, default=1000, help="rate of the response-time figures (default 1000)")
    ap.add_argument("--refine", type=int, default=1, help="bisection steps after the first failing rate (default 1)")
    ap.add_argument("--users", type=int, default=1000, help="accounts the calls are spread over (default 1000)")
    ap.add_argument("--csv-rows", type=int, default=20000, help="rows of the injection CSV (default 20,000)")
    ap.add_argument("--recv-timeout-ms", type=int, default=2000, help="a 302 later than this fails the call (default 2000)")
    ap.add_argument("--profile", action="store_true", help="run the server under cProfile and print its top functions")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, sipp traces, database)")
    ap.add_argument("--sipp", default=shutil.which("sipp") or "sipp")
    ap.add_argument("--seed", type=int, default=2)
    args = ap.parse_args()
    if not shutil.which(args.sipp):
        raise SystemExit("sipp not found: apt install sip-tester")

    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    if args.latency_rate in rates:
        rates.remove(args.latency_rate)
    work = Path(tempfile.mkdtemp(prefix="tfps-sip-bench-"))
    db_path = work / "tfps.db"
    port = free_port()
    conf = write_config(work, port, db_path)
    write_inputs(work, args.users, args.csv_rows, args.seed)
    server = Server(work, conf, args.profile)
    results = []
    started = time.time()
    try:
        log(f"work directory {work}; server on udp:127.0.0.1:{port}")
        server.start()
        warm = run_sipp(args, work, port, "warmup.csv", 500, args.users, "warmup")
        log(f"warm-up: {warm.get('ok')} calls ok, {warm.get('failed')} failed ({args.users} accounts enrolled)")

        def step(rate, latency=False):
            if server.proc is None:
                server.start()
            time.sleep(1.0)
            before = last_call_id(db_path)
            calls = int(rate * args.duration)
            log(f"rate {rate} calls/s: {calls} calls over {args.duration:g} s ...")
            r = run_sipp(args, work, port, "calls.csv", rate, calls, f"rate-{rate}", server.proc.pid)
            time.sleep(1.5)   # the server writes its call log every second
            try:
                r["srv"], r["codes"] = server_latencies(db_path, before)
            except sqlite3.Error as exc:
                r["srv"], r["codes"] = [], {"error": str(exc)}
            r["latency_run"] = latency
            results.append(r)
            log(f"  -> {'PASS' if r['passed'] else 'FAIL'}: ok {r.get('ok')}, failed {r.get('failed')}, "
                f"retrans {r.get('retrans')}, late 302s after the call ended {r.get('dead_msgs', 0) + r.get('out_of_call', 0)}, achieved {r['achieved']:.0f}/s, sipp rtt p50 {fmt(percentile(r['rtt'], 50), 0)} "
                f"p99 {fmt(percentile(r['rtt'], 99), 0)} ms, server p99 {fmt(percentile(r['srv'], 99), 3)} ms, server CPU {r['srv_cpu_s']:.1f} s "
                f"({1e6 * r['srv_cpu_s'] / max(1, r.get('ok', 0)):.0f} µs/call), sipp CPU {r['sipp_cpu_s']:.1f} s, server peak RSS {r['srv_hwm_mb']:.0f} MB, codes {r['codes']}")
            if not r["passed"]:
                server.stop()   # drop the backlog and the retransmission timers before the next step
            return r["passed"]

        step(args.latency_rate, latency=True)
        best = args.latency_rate if results[-1]["passed"] else None
        first_fail = None if best else args.latency_rate
        for rate in sorted(r for r in rates if r > args.latency_rate):
            if first_fail:
                break
            if step(rate):
                best = rate
            else:
                first_fail = rate
        lo, hi = best, first_fail
        for _ in range(args.refine if (lo and hi) else 0):
            mid = int(round((lo + hi) / 2 / 100.0) * 100)
            if mid <= lo or mid >= hi:
                break
            if step(mid):
                lo = best = mid
            else:
                hi = mid
    finally:
        server.stop()

    # -- report ------------------------------------------------------------------------------
    if args.profile:
        import pstats
        for prof in sorted(work.glob("serve-*.prof")):
            print(f"--- cProfile of the server ({prof.name}), top 30 by own time ---")
            pstats.Stats(str(prof)).sort_stats("tottime").print_stats(30)
    print(f"\nTFPS SIP benchmark: tfps.py serve (UDP, SQLite WAL, full engine, redirect mode) vs sipp on 127.0.0.1, "
          f"{args.users} accounts, {args.duration:g} s per step, recv timeout {args.recv_timeout_ms} ms, "
          f"{os.cpu_count()} CPUs, total {time.time() - started:.0f} s")
    head = (f"{'offered/s':>9} {'calls':>7} {'ok':>7} {'failed':>6} {'retrans':>7} {'achieved/s':>10} "
            f"{'rtt p50':>7} {'rtt p99':>7} {'rtt max':>7} {'srv p50':>8} {'srv p99':>8} {'srv max':>8} {'srv CPU%':>8} {'µs/call':>7} {'RSS MB':>6}  result")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['rate']:>9} {r['calls']:>7} {r.get('ok', 0):>7} {r.get('failed', 0):>6} {r.get('retrans', 0):>7} "
              f"{r['achieved']:>10.0f} {fmt(percentile(r['rtt'], 50), 0):>7} {fmt(percentile(r['rtt'], 99), 0):>7} "
              f"{fmt(r['rtt'][-1] if r['rtt'] else None, 0):>7} {fmt(percentile(r['srv'], 50), 3):>8} "
              f"{fmt(percentile(r['srv'], 99), 3):>8} {fmt(r['srv'][-1] if r['srv'] else None, 2):>8} "
              f"{100 * r['srv_cpu_s'] / max(r['wall_s'], 0.1):>8.0f} {1e6 * r['srv_cpu_s'] / max(1, r.get('ok', 0)):>7.0f} {r['srv_hwm_mb']:>6.0f}  "
              f"{'PASS' if r['passed'] else 'FAIL'}{'  ' + r['error'] if r.get('error') else ''}")
    print("rtt = sipp response time INVITE -> 302 (whole ms, sipp's clock); srv = server decision latency from "
          "call_log.latency_ms (ms); srv CPU% = server CPU time / step wall time (100 = one core saturated); "
          "µs/call = server CPU per successful call; RSS MB = server peak RSS (VmHWM) so far")
    passed = [r for r in results if r["passed"]]
    best = max(passed, key=lambda r: r["rate"]) if passed else None
    lat = next((r for r in results if r["latency_run"]), None)
    print("max sustained rate with 0 failed calls: "
          + (f"{best['rate']} calls/s offered, {best['achieved']:.0f} calls/s achieved" if best else "none of the rates passed")
          + "   (target >= 3000)")
    if lat:
        print(f"response time at {lat['rate']} calls/s: sipp p50 {fmt(percentile(lat['rtt'], 50), 0)} ms, "
              f"p99 {fmt(percentile(lat['rtt'], 99), 0)} ms; server p50 {fmt(percentile(lat['srv'], 50), 3)} ms, "
              f"p99 {fmt(percentile(lat['srv'], 99), 3)} ms   (target p99 <= 5 ms)")
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
