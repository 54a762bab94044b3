#!/usr/bin/env python3
"""Database outage benchmark: `tfps.py serve` on MariaDB through a TCP proxy on loopback that is
cut for --outage seconds (30) while calls keep coming, then restored; one version or two side by
side (--baseline), taking turns.

Each run gets a fresh MariaDB database on 127.0.0.1:3306 (root, no password; dropped afterwards)
and a temporary directory. Calls go one at a time over UDP at --rate calls/s (100): --warmup
seconds (5) with the database up, the outage, --after seconds (5) with it back. With --restart
the server is stopped (SIGTERM) at the end of the outage and started again once the database is
back (a server does not start while its database is unreachable). Then the benchmark waits up
to 60 s for the call log to hold every answered call.

Prints per version: calls answered / sent in each phase, the INVITE->final response time (p50,
p99, ms) in each phase, call log rows expected (answered calls), found, lost and duplicated, and
the seconds from the restore until the rows of every call answered before it were in (with
--restart, that includes the new start).

    python3 bench/outage_bench.py
    python3 bench/outage_bench.py --baseline /tmp/base/tfps.py --restart --outage 10
"""

import argparse
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import TFPS, CuttableProxy, describe_version, fmt, free_port, log, percentile, turns

MYSQL = ("127.0.0.1", 3306)


def invite(port, local_port, call_id, number):
    return "\r\n".join([
        f"INVITE sip:{number}@127.0.0.1:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK{secrets.token_hex(6)};rport",
        "Max-Forwards: 70", "From: <sip:1001@pbx.example.com>;tag=ft1", f"To: <sip:{number}@127.0.0.1>",
        f"Call-ID: {call_id}", "CSeq: 1 INVITE", "Content-Length: 0", "", ""]).encode()


def final_status(data, call_id):
    """The status of a final response to `call_id`, else None (a 100 Trying, another call)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    status = int(head[0].split()[1]) if head[0].startswith("SIP/2.0 ") else 0
    if status >= 200 and any(line.lower().startswith("call-id:") and line.split(":", 1)[1].strip() == call_id
                             for line in head[1:]):
        return status
    return None


class Caller:
    """INVITEs one at a time at a steady rate; remembers the answered Call-IDs and response times."""

    def __init__(self, rate):
        self.rate = rate
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.answered = []
        self.from_memory = []  # when answers decided from memory (the database unavailable) came

    def run(self, port, seconds):
        """(sent, answered, response times in ms) of `seconds` of calls."""
        sent, times = 0, []
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            call_id = f"{secrets.token_hex(8)}@outage"
            begin = time.monotonic()
            self.sock.sendto(invite(port, self.sock.getsockname()[1], call_id, "12125550100"), ("127.0.0.1", port))
            sent += 1
            if self._await(call_id, begin + 2.0):
                times.append((time.monotonic() - begin) * 1000)
                self.answered.append(call_id)
            pause = start + sent / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        return sent, len(times), sorted(times)

    def _await(self, call_id, deadline):
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recvfrom(65536)[0]
                if final_status(data, call_id):
                    if b"decided from memory" in data:
                        self.from_memory.append(time.monotonic())
                    return True
            except (socket.timeout, ConnectionRefusedError):
                return False
        return False


def start_server(tfps_path, conf, log_path):
    out = open(log_path, "a")
    proc = subprocess.Popen([sys.executable, str(tfps_path), "serve", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "serving in" not in Path(log_path).read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{tfps_path} did not start:\n{Path(log_path).read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    return proc


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def call_ids(conn):
    cur = conn.cursor()
    cur.execute("SELECT call_id FROM call_log")
    return [r[0] for r in cur.fetchall()]


def wait_for_rows(conn, expected, deadline):
    """When (monotonic) the call log held every Call-ID of `expected`; None if not by `deadline`."""
    while time.monotonic() < deadline:
        if expected <= set(call_ids(conn)):
            return time.monotonic()
        time.sleep(0.05)
    return None


def run(tfps_path, args):
    import pymysql
    name = f"tfps_outage_{secrets.token_hex(4)}"
    admin = pymysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", password="", autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    work = Path(tempfile.mkdtemp(prefix="tfps-outage-"))
    proxy = CuttableProxy(MYSQL)
    proc = None
    try:
        port = free_port()
        spool = f"spool = {work / 'spool.jsonl'}\n" if '"spool_max_mb"' in Path(tfps_path).read_text() else ""
        conf = work / "tfps.conf"
        conf.write_text(f"[server]\nlisten = udp:127.0.0.1:{port}\nworkers = 1\nlog_verdicts = no\n"
                        f"[database]\nurl = mysql://root:@127.0.0.1:{proxy.port}/{name}\n{spool}"
                        "[policy]\nlearning_days = 0\ndefault_daily_quota = unlimited\n"
                        "default_daily_quota_off = unlimited\nab_max_calls = 1000\n")
        log_path = work / "serve.log"
        proc = start_server(tfps_path, conf, log_path)
        caller = Caller(args.rate)
        phases = {"before": caller.run(port, args.warmup)}
        proxy.cut()
        phases["outage"] = caller.run(port, args.outage)
        if args.restart:
            stop_server(proc)
        proxy.restore()
        back = time.monotonic()
        if args.restart:
            proc = start_server(tfps_path, conf, log_path)
        answered_by_then = set(caller.answered)
        after = threading.Thread(target=lambda: phases.__setitem__("after", caller.run(port, args.after)))
        after.start()
        direct = pymysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", password="", database=name, autocommit=True)
        complete = wait_for_rows(direct, answered_by_then, time.monotonic() + 60)
        after.join()
        expected = set(caller.answered)
        wait_for_rows(direct, expected, time.monotonic() + 60)
        logged = call_ids(direct)
        direct.close()
        late = [when - back for when in caller.from_memory if when > back]
        return {"phases": phases, "expected": len(expected), "found": len(logged), "memory_after": late,
                "lost": len(expected - set(logged)), "duplicated": len(logged) - len(set(logged)),
                "complete": None if complete is None else complete - back}
    finally:
        if proc:
            stop_server(proc)
        proxy.cut()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tfps", default=str(TFPS))
    parser.add_argument("--baseline", help="another tfps.py (with its schema.sql beside it) to run side by side")
    parser.add_argument("--rate", type=float, default=100.0, help="calls per second")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--after", type=float, default=5.0)
    parser.add_argument("--restart", action="store_true", help="stop the server at the end of the outage, start it again")
    args = parser.parse_args()
    versions = [args.tfps] + ([args.baseline] if args.baseline else [])
    results = {}
    for path in turns(versions, 0):
        log(f"running {describe_version(path)}: {args.warmup:g} s, outage {args.outage:g} s"
            f"{' + restart' if args.restart else ''}, {args.after:g} s at {args.rate:g} calls/s")
        results[path] = run(path, args)
    print(f"outage {args.outage:g} s at {args.rate:g} calls/s{', restart at its end' if args.restart else ''}")
    print(f"{'version':<40} {'phase':<7} {'answered/sent':>14} {'p50 ms':>7} {'p99 ms':>7}")
    for path in versions:
        r = results[path]
        for phase, (sent, answered, times) in r["phases"].items():
            print(f"{describe_version(path)[-40:]:<40} {phase:<7} {f'{answered}/{sent}':>14} "
                  f"{fmt(percentile(times, 50)):>7} {fmt(percentile(times, 99)):>7}")
        complete = "never (60 s)" if r["complete"] is None else f"{r['complete']:.1f} s after the restore"
        print(f"{'':<40} call log: {r['expected']} expected, {r['found']} found, {r['lost']} lost, "
              f"{r['duplicated']} duplicated; complete {complete}")
        late = r["memory_after"]
        print(f"{'':<40} verdicts from memory after the restore: {len(late)}"
              + (f", the last {max(late):.1f} s after it (the phase lasts {args.after:g} s)" if late else ""))


if __name__ == "__main__":
    main()
