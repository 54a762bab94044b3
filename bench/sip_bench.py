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
    resolution; over UDP it includes time spent in the socket buffer, from the kernel's
    receive timestamp).

    bash bench/sip_bench.sh                         # full run, about 5 minutes
    bash bench/sip_bench.sh --duration 5 --rates 1000,2000
    bash bench/sip_bench.sh --profile               # + cProfile of the server, top functions
    bash bench/sip_bench.sh --tfps /tmp/base/tfps.py  # serve another checkout's tfps.py
    bash bench/sip_bench.sh --compare /tmp/base/tfps.py --rounds 2 --duration 10 --rates 1000,2000,3000

--compare PATH runs two versions side by side (PATH as "prev", --tfps as "this"): every round starts
both on fresh databases, then runs each rate step with one version and then the other, the order
flipping from step to step and round to round, and prints one table with both versions' figures.

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
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (TFPS, account_identities, describe_version, fmt, free_port, log, median, percentile,
                      add_python_argument, python_version, random_number, service_python, turns, write_config)

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

def cpu_seconds(pid):
    """User + system CPU time of a running process, from /proc (clock ticks)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def process_tree(pid):
    """`pid` and its descendants: a server's supervisor and its workers."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = task.read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for child in children:
            pids += process_tree(int(child))
    return pids


def tree_cpu_seconds(pid):
    """CPU time of a running process and its descendants (cpu_seconds)."""
    return sum(v for v in map(cpu_seconds, process_tree(pid)) if v == v)


def tree_rss_mb(pid):
    """Peak RSS of a running process and its descendants, added up."""
    return sum(v for v in (rss_mb(p, "VmHWM") for p in process_tree(pid)) if v == v)


def rss_mb(pid, field="VmRSS"):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def write_inputs(work, users, rows, seed):
    rng = random.Random(seed)
    accounts = account_identities(rng, users)
    with open(work / "calls.csv", "w") as fh:
        fh.write("SEQUENTIAL\n")
        for _ in range(rows):
            u, ip, ua = rng.choice(accounts)
            fh.write(f"{u};{random_number(rng)};{ip};{ua}\n")
    with open(work / "warmup.csv", "w") as fh:   # every account once: enrollment happens here
        fh.write("SEQUENTIAL\n")
        for u, ip, ua in accounts:
            fh.write(f"{u};{random_number(rng)};{ip};{ua}\n")
    (work / "uac.xml").write_text(SCENARIO)


# tfps.py before 1.1.0 reads its schema.sql through __loader__, which `python3 -m cProfile tfps.py`
# does not give it: this imports it as __main__ with one, so any version compares. argv: OUTPUT TFPS_PY ARGS...
PROFILED = """import cProfile, importlib.util, sys
out, sys.argv = sys.argv[1], sys.argv[2:]
spec = importlib.util.spec_from_file_location("__main__", sys.argv[0])
module = sys.modules["__main__"] = importlib.util.module_from_spec(spec)
cProfile.runctx("spec.loader.exec_module(module)", globals(), locals(), out)
"""


class Server:
    def __init__(self, work, conf, profile, tfps=TFPS, python=None, cpus=None):
        self.work, self.conf, self.profile, self.tfps = work, conf, profile, tfps
        self.python = python or service_python()
        self.cpus = cpus  # the affinity mask of the server and its workers (None: this process's)
        self.proc = None
        self.runs = 0

    def start(self, timeout=20):
        self.runs += 1
        self.log_path = self.work / f"serve-{self.runs}.log"
        self.log_fh = open(self.log_path, "w")
        cmd = [self.python]
        if self.profile:
            cmd += ["-c", PROFILED, str(self.work / f"serve-{self.runs}.prof")]
        cmd += [str(self.tfps), "serve", "-c", str(self.conf)]
        self.proc = subprocess.Popen(cmd, stdout=self.log_fh, stderr=subprocess.STDOUT, cwd=self.work,
                                     preexec_fn=pinned_to(self.cpus))
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


# sipp's socket buffers (its default is 64 KB): at thousands of calls a second, a few milliseconds
# without the CPU would make the kernel drop answers at sipp's socket, and sipp counts the
# retransmission that follows against the server.
SIPP_BUFFER = 4 << 20


def run_sipp(args, work, port, csv_name, rate, calls, tag, server_pid=None, inputs=None):
    """One sipp run in work/tag, with the scenario and CSV from `inputs` (default: work)."""
    inputs = inputs or work
    step = work / tag
    step.mkdir()
    shutil.copy(inputs / "uac.xml", step / "uac.xml")
    stats = step / "stats.csv"
    timeout_s = int(calls / rate + 30)
    cmd = [args.sipp, f"127.0.0.1:{port}", "-sf", "uac.xml", "-inf", str(inputs / csv_name), "-i", "127.0.0.1",
           "-p", str(free_port()), "-cp", str(free_port()), "-t", "u1", "-r", str(rate), "-rp", "1000",
           "-m", str(calls), "-l", str(max(200, rate * 3)), "-recv_timeout", str(args.recv_timeout_ms),
           "-timeout", f"{timeout_s}s", "-trace_stat", "-stf", str(stats), "-fd", "1",
           "-trace_rtt", "-rtt_freq", "1000", "-trace_err", "-error_file", str(step / "errors.log"),
           "-max_recv_loops", "10000", "-max_sched_loops", "10000", "-nostdin",
           "-buff_size", str(SIPP_BUFFER)]
    if getattr(args, "sipp_nice", 0):
        cmd = ["nice", "-n", str(args.sipp_nice)] + cmd
    started = time.time()
    srv_cpu0 = tree_cpu_seconds(server_pid) if server_pid else float("nan")
    sipp_cpu = float("nan")
    with open(step / "sipp.out", "w") as out:
        proc = subprocess.Popen(cmd, cwd=step, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=pinned_to(getattr(args, "sipp_cpus", None)))
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
    srv_cpu = (tree_cpu_seconds(server_pid) - srv_cpu0) if server_pid else float("nan")
    srv_hwm = tree_rss_mb(server_pid) if server_pid else float("nan")
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


class Target:
    """One tfps.py under test: its server, SQLite file and UDP port, in a work directory of its own."""

    def __init__(self, args, work, tfps, label=""):
        work.mkdir(exist_ok=True)
        self.work, self.label = work, label
        self.db_path = work / "tfps.db"
        self.port = free_port()
        self.server = Server(work, write_config(work, self.port, self.db_path), args.profile, tfps, args.python,
                             server_cpus(args))

    def warm_up(self, args, inputs):
        self.server.start()
        warm = run_sipp(args, self.work, self.port, "warmup.csv", 500, args.users, "warmup", inputs=inputs)
        log(f"{self.label}warm-up: {warm.get('ok')} calls ok, {warm.get('failed')} failed ({args.users} accounts enrolled)")

    def step(self, args, inputs, rate, latency=False, tag=None):
        """One rate step: sipp at `rate` for --duration seconds, then the server's latencies from
        its call log. A failed step stops the server (it restarts at the next step)."""
        server = self.server
        if server.proc is None:
            server.start()
        time.sleep(1.0)
        before = last_call_id(self.db_path)
        calls = int(rate * args.duration)
        log(f"{self.label}rate {rate} calls/s: {calls} calls over {args.duration:g} s ...")
        r = run_sipp(args, self.work, self.port, "calls.csv", rate, calls, tag or f"rate-{rate}", server.proc.pid, inputs)
        time.sleep(1.5)   # the server writes its call log every second
        try:
            r["srv"], r["codes"] = server_latencies(self.db_path, before)
        except sqlite3.Error as exc:
            r["srv"], r["codes"] = [], {"error": str(exc)}
        r["latency_run"] = latency
        log(f"  -> {'PASS' if r['passed'] else 'FAIL'}: ok {r.get('ok')}, failed {r.get('failed')}, "
            f"retrans {r.get('retrans')}, late 302s after the call ended {r.get('dead_msgs', 0) + r.get('out_of_call', 0)}, achieved {r['achieved']:.0f}/s, sipp rtt p50 {fmt(percentile(r['rtt'], 50), 0)} "
            f"p99 {fmt(percentile(r['rtt'], 99), 0)} ms, server p99 {fmt(percentile(r['srv'], 99), 3)} ms, server CPU {r['srv_cpu_s']:.1f} s "
            f"({us_per_call(r):.0f} µs/call), sipp CPU {r['sipp_cpu_s']:.1f} s, server peak RSS {r['srv_hwm_mb']:.0f} MB, codes {r['codes']}")
        if not r["passed"]:
            server.stop()   # drop the backlog and the retransmission timers before the next step
        return r


def niceness(text):
    """--sipp-nice: an integer from -20 to 19, as nice(1) takes."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not -20 <= value <= 19:
        raise argparse.ArgumentTypeError(f"{text!r} is not a niceness from -20 to 19")
    return value


def sipp_cpus(text):
    """--sipp-cpus: CPUs of this process's affinity mask, leaving at least one to the server."""
    allowed = os.sched_getaffinity(0)
    try:
        cpus = {int(part) for part in text.split(",")}
    except ValueError:
        cpus = set()
    if not cpus or not cpus <= allowed or cpus == allowed:
        raise argparse.ArgumentTypeError(f"{text!r}: CPUs among {','.join(map(str, sorted(allowed)))} separated by "
                                         "commas, leaving at least one to the server")
    return cpus


def server_cpus(args):
    """The CPUs the server runs on: those --sipp-cpus leaves, or None (wherever the kernel puts it)."""
    return os.sched_getaffinity(0) - args.sipp_cpus if getattr(args, "sipp_cpus", None) else None


def pinned_to(cpus):
    """A preexec_fn that confines the child (and its children) to `cpus`; None for no confinement."""
    return None if not cpus else lambda: os.sched_setaffinity(0, cpus)


def add_sipp_arguments(ap):
    """The options of the call mix and of sipp that the SIP benchmarks share."""
    ap.add_argument("--users", type=int, default=1000, help="accounts the calls are spread over (default 1000)")
    ap.add_argument("--csv-rows", type=int, default=20000, help="rows of the injection CSV (default 20,000)")
    ap.add_argument("--recv-timeout-ms", type=int, default=2000, help="a 302 later than this fails the call (default 2000)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, sipp traces, databases)")
    ap.add_argument("--sipp", default=shutil.which("sipp") or "sipp")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--sipp-nice", type=niceness, default=0, metavar="N",
                    help="run sipp at niceness N, -20 to 19 (default 0); -10 gives sipp the CPU it needs before the "
                         "server, as if the PBX had a machine of its own (a negative N needs root)")
    ap.add_argument("--sipp-cpus", type=sipp_cpus, metavar="LIST",
                    help="run sipp on these CPUs (e.g. 0) and the server on the others, so that neither takes the "
                         "other's CPU, as if the PBX had a machine of its own; [server] workers = auto then counts "
                         "the server's CPUs (default: both wherever the kernel puts them)")
    add_python_argument(ap)


def interpreter_line(args):
    """What the report says of the interpreter that ran the server, and of sipp's niceness."""
    return (f"interpreter: Python {python_version(args.python)} {args.python}"
            + (f"; sipp at niceness {args.sipp_nice}" if args.sipp_nice else "")
            + (f"; sipp on CPU {','.join(map(str, sorted(args.sipp_cpus)))}, the server on CPU "
               f"{','.join(map(str, sorted(server_cpus(args))))}" if args.sipp_cpus else ""))


def us_per_call(r):
    return 1e6 * r["srv_cpu_s"] / max(1, r.get("ok", 0))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per rate step (default 30)")
    ap.add_argument("--rates", default="1000,2000,3000,3500,4000,5000",
                    help="comma-separated calls/s to try in order (default 1000,2000,3000,3500,4000,5000)")
    ap.add_argument("--latency-rate", type=int, default=1000, help="rate of the response-time figures (default 1000)")
    ap.add_argument("--refine", type=int, default=1, help="bisection steps after the first failing rate (default 1)")
    ap.add_argument("--profile", action="store_true", help="run the server under cProfile and print its top functions")
    add_sipp_arguments(ap)
    ap.add_argument("--tfps", type=Path, default=TFPS, help="the tfps.py to serve (default: this checkout's); "
                    "it reads the schema.sql beside it")
    ap.add_argument("--compare", type=Path, metavar="PATH",
                    help="also run the tfps.py at PATH (e.g. a checkout of the previous commit), alternating with "
                         "--tfps step by step over the same rates, and print both side by side")
    ap.add_argument("--rounds", type=int, default=2, help="with --compare: rounds over the rates (default 2)")
    args = ap.parse_args()
    if not shutil.which(args.sipp):
        raise SystemExit("sipp not found: apt install sip-tester")
    for path in [args.tfps] + ([args.compare] if args.compare else []):
        if not path.is_file() or not (path.parent / "schema.sql").is_file():
            raise SystemExit(f"{path}: no such tfps.py with a schema.sql beside it")

    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    if args.latency_rate in rates:
        rates.remove(args.latency_rate)
    work = Path(tempfile.mkdtemp(prefix="tfps-sip-bench-"))
    write_inputs(work, args.users, args.csv_rows, args.seed)
    started = time.time()
    if args.compare:
        compare(args, work, [args.latency_rate] + sorted(r for r in rates if r > args.latency_rate), started)
    else:
        single(args, work, rates, started)
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_profiles(args, work):
    if args.profile:
        import pstats
        for prof in sorted(work.rglob("serve-*.prof")):
            print(f"--- cProfile of the server ({prof.relative_to(work)}), top 30 by own time ---")
            pstats.Stats(str(prof)).sort_stats("tottime").print_stats(30)


def single(args, work, rates, started):
    """One tfps.py: the rate steps, stepping up until one fails, then bisection."""
    target = Target(args, work, args.tfps)
    results = []
    try:
        log(f"work directory {work}; server on udp:127.0.0.1:{target.port}")
        target.warm_up(args, work)

        def step(rate, latency=False):
            results.append(target.step(args, work, rate, latency))
            return results[-1]["passed"]

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
        target.server.stop()

    # -- report ------------------------------------------------------------------------------
    print_profiles(args, work)
    print(f"\nTFPS SIP benchmark: tfps.py serve (UDP, SQLite WAL, full engine, redirect mode) vs sipp on 127.0.0.1, "
          f"{args.users} accounts, {args.duration:g} s per step, recv timeout {args.recv_timeout_ms} ms, "
          f"{os.cpu_count()} CPUs, total {time.time() - started:.0f} s")
    print(interpreter_line(args))
    if args.tfps.resolve() != TFPS.resolve():
        print(f"server: {describe_version(args.tfps)}")
    head = (f"{'offered/s':>9} {'calls':>7} {'ok':>7} {'failed':>6} {'retrans':>7} {'achieved/s':>10} "
            f"{'rtt p50':>7} {'rtt p99':>7} {'rtt max':>7} {'srv p50':>8} {'srv p99':>8} {'srv max':>8} {'srv CPU%':>8} {'µs/call':>7} {'RSS MB':>6}  result")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['rate']:>9} {r['calls']:>7} {r.get('ok', 0):>7} {r.get('failed', 0):>6} {r.get('retrans', 0):>7} "
              f"{r['achieved']:>10.0f} {fmt(percentile(r['rtt'], 50), 0):>7} {fmt(percentile(r['rtt'], 99), 0):>7} "
              f"{fmt(r['rtt'][-1] if r['rtt'] else None, 0):>7} {fmt(percentile(r['srv'], 50), 3):>8} "
              f"{fmt(percentile(r['srv'], 99), 3):>8} {fmt(r['srv'][-1] if r['srv'] else None, 2):>8} "
              f"{100 * r['srv_cpu_s'] / max(r['wall_s'], 0.1):>8.0f} {us_per_call(r):>7.0f} {r['srv_hwm_mb']:>6.0f}  "
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


COMPARED = (("rate/s", lambda r: f"{r['achieved']:.0f}", 6), ("fail", lambda r: f"{r.get('failed', 0)}", 5),
            ("p50", lambda r: fmt(percentile(r["rtt"], 50), 0), 4), ("p99", lambda r: fmt(percentile(r["rtt"], 99), 0), 4),
            ("µs/call", lambda r: f"{us_per_call(r):.0f}", 7), ("RSS", lambda r: f"{r['srv_hwm_mb']:.0f}", 4))


def compare(args, work, ladder, started):
    """Two tfps.py side by side: each round starts both servers on fresh databases (and warms
    both up), then runs every rate of the ladder with both, one after the other, the order
    flipping from step to step and round to round. No stepping stops at a failure and there is
    no bisection: both versions see the same steps."""
    versions = [("prev", args.compare), ("this", args.tfps)]
    results = {}   # (round, rate, label) -> result
    for rnd in range(args.rounds):
        targets = {label: Target(args, work / f"round{rnd + 1}-{label}", path, f"[round {rnd + 1}, {label}] ")
                   for label, path in versions}
        try:
            for label, _ in turns(versions, rnd):
                targets[label].warm_up(args, work)
            for i, rate in enumerate(ladder):
                for label, _ in turns(versions, rnd, i):
                    results[rnd, rate, label] = targets[label].step(args, work, rate, latency=i == 0)
                    results[rnd, rate, label]["first"] = turns(versions, rnd, i)[0][0] == label
        finally:
            for target in targets.values():
                target.server.stop()

    print_profiles(args, work)
    print(f"\nTFPS SIP benchmark, two versions side by side: tfps.py serve (UDP, SQLite WAL, full engine, redirect mode) "
          f"vs sipp on 127.0.0.1, {args.users} accounts, {args.duration:g} s per step, recv timeout {args.recv_timeout_ms} ms, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs, total {time.time() - started:.0f} s")
    print(interpreter_line(args))
    for label, path in versions:
        print(f"{label}: {describe_version(path)}")
    cells = " ".join(f"{name:>{width}}" for name, _, width in COMPARED)
    head = f"{'offered/s':>9} {'round':>5} | {cells} | {cells}"
    print(f"{'':>15} | {'prev':^{len(cells)}} | {'this':^{len(cells)}}")
    print(head)
    print("-" * len(head))
    for rate in ladder:
        for rnd in range(args.rounds):
            row = [" ".join(f"{get(results[rnd, rate, label]):>{width}}" for _, get, width in COMPARED)
                   + ("*" if results[rnd, rate, label]["first"] else " ") for label, _ in versions]
            print(f"{rate:>9} {rnd + 1:>5} | {row[0]}| {row[1]}")
        summary = []
        for label, _ in versions:
            runs = [results[rnd, rate, label] for rnd in range(args.rounds)]
            values = (f"{median([r['achieved'] for r in runs]):.0f}", f"{sum(r.get('failed', 0) for r in runs)}",
                      fmt(median([percentile(r["rtt"], 50) for r in runs]), 0),
                      fmt(median([percentile(r["rtt"], 99) for r in runs]), 0),
                      f"{median([us_per_call(r) for r in runs]):.0f}", f"{max(r['srv_hwm_mb'] for r in runs):.0f}")
            summary.append(" ".join(f"{v:>{width}}" for v, (_, _, width) in zip(values, COMPARED)))
        print(f"{rate:>9} {'all':>5} | {summary[0]} | {summary[1]}")
    print("rate/s = achieved calls/s (sipp's trace); fail = failed calls; p50/p99 = sipp response time INVITE -> 302 "
          "(whole ms); µs/call = server CPU per successful call; RSS = server peak RSS (VmHWM) so far, MB; "
          "* = this version ran the step first. Rows 'all': medians over the rounds, failed calls summed, RSS the largest.")


if __name__ == "__main__":
    sys.exit(main())
