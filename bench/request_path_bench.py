#!/usr/bin/env python3
"""Request-path benchmark: `Server.on_message` in-process, no sockets, one version against another.

Builds `tfps.Server(cfg, db)` on a SQLite file in a temporary directory (the SIP benchmark's
configuration: full engine, redirect mode, learning_days = 0, unlimited quotas and concurrency,
every destination country allowed, log_verdicts = no; the server is never run, so it opens no
socket) and feeds it SIP messages through `server.on_message(data, endpoint, ("127.0.0.1", 5060))`
with a stand-in endpoint that counts what would be sent. As the event loop of `serve` would, it
runs the timers (retransmissions, transaction ends) every 64 messages, calls `engine.flush()` every
--flush-every messages (default 1,500: 0.25 s at 3,000 calls/s, an INVITE and an ACK per call) and
`engine.check_for_changes()` every 8 flushes. An exception out of on_message or a flush is
counted, as the event loop would log it and go on. Where the version has one, the call log writer
thread runs as in serve (its rows are written before they are counted, outside the timed part);
the flushes' time per INVITE and the longest flush (the stall a call arriving then waits out) are
printed per version.

Workloads (the same messages for every version: the traffic comes from a seeded generator, in
chunks of 1,000 with the clock stopped, so neither its time nor most of its memory counts):
  valid    INVITEs with `P-tfps: user;domain;ip;ua;calls` over --users accounts (1,000) and random
           numbers in 15 countries, each followed by its ACK (same Via branch, the To of the 302)
  hostile  half of the messages as in `valid` (INVITE + ACK), half hostile: malformed messages
           (garbage, no Via, bad CSeq, a line without a colon, a bare CR, a short body, SIP/3.0),
           requests with bytes that are not UTF-8 (Request-URI, From, P-tfps, User-Agent) and
           INVITEs with a duplicated identity header (two P-tfps); a hostile INVITE is never ACKed
  shed     the messages of `valid`, each INVITE having waited 1 s before its turn: overload
           control answers them all R98 (not run by default: --workloads valid,hostile,shed)
Before the clock starts every account makes one call (enrollment), then the garbage collector is set
as serve sets it (`gc.freeze()`, and no full collections where the version has that).

Each (version, workload) runs in a child process of its own, so its peak RSS is its own. The
versions take turns, the order flipping from one run to the next, for --rounds rounds (default 5):
the machine's speed drifts by up to 2x from minute to minute, so only interleaved figures compare.

    python3 bench/request_path_bench.py --baseline /tmp/base/tfps.py      # this checkout vs a baseline
    python3 bench/request_path_bench.py                                   # this checkout alone
    python3 bench/request_path_bench.py --baseline OLD/tfps.py --tfps NEW/tfps.py --rounds 3 --calls 5000
    python3 bench/request_path_bench.py --profile                         # + cProfile of one run per version

Prints per version and workload: messages/s, µs per INVITE (the whole loop's time divided by the
INVITEs fed, valid or hostile: it includes the ACKs, hostile messages, timers and flushes), both
median over the rounds, and the peak RSS (ru_maxrss, largest over the rounds); then what the
server answered, so that one can see both versions did the same work.
"""

import argparse
import gc
import json
import logging
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (TFPS, account_identities, describe_version, free_port, load_tfps, log, median, mysql_database,
                      random_number, turns, write_config)

SOURCE = ("127.0.0.1", 5060)   # where every message comes from (the proxy in front of TFPS)
CHUNK = 1000                   # INVITEs generated at a time, with the clock stopped
TIMERS_EVERY = 64              # messages between timer runs (serve reads up to 64 datagrams per wake-up)
WORKLOADS = ("valid", "hostile", "shed")
TO_RE = re.compile(rb"\r\nTo: ([^\r\n]*)")


class Endpoint:
    """Stands in for the UDP socket: counts what the server sends, keeps the last message."""
    transport = "udp"
    closed = False

    def __init__(self):
        self.reset()

    def reset(self):
        self.sent = self.bytes = 0
        self.last = b""
        self.statuses = {}

    def send(self, data, addr):
        self.sent += 1
        self.bytes += len(data)
        self.last = data
        status = data[8:11]
        self.statuses[status] = self.statuses.get(status, 0) + 1


# -- traffic -------------------------------------------------------------------------------------

MALFORMED = ("garbage", "no-via", "bad-cseq", "no-colon", "bare-cr", "short-body", "version")
NOT_UTF8 = ("utf8-ruri", "utf8-from", "utf8-ptfps", "utf8-ua")
IDENTITY_TWICE = ("dup-user", "dup-ip")
HOSTILE_KINDS = MALFORMED * 4 + NOT_UTF8 * 7 + IDENTITY_TWICE * 14   # a third of each group

class Traffic:
    """Seeded SIP traffic: items of (message, ACK head, ACK tail); the ACK is head + the To of the
    response + tail, or the item has no ACK (head None)."""

    def __init__(self, seed, users):
        self.rng = random.Random(seed)
        self.accounts = account_identities(self.rng, users)
        self.serial = 0

    def _ids(self):
        self.serial += 1
        return f"z9hG4bK{self.serial:x}b{self.rng.getrandbits(40):x}", f"{self.serial:x}-{self.rng.getrandbits(48):x}@bench"

    def call(self, account=None, number=None, ptfps=None, extra=(), uri_user=None, from_user=None):
        """Lines of an INVITE like sipp's in the SIP benchmark, and the ACK parts."""
        user, ip, ua = account or self.rng.choice(self.accounts)
        number = number or random_number(self.rng)
        branch, call_id = self._ids()
        tag = f"{self.rng.getrandbits(32):x}"
        ruri = f"sip:{uri_user or number}@127.0.0.1:5060"
        via = f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch};rport"
        from_ = f"From: <sip:{from_user or user}@pbx.example.com>;tag={tag}"
        lines = [f"INVITE {ruri} SIP/2.0", via, from_, f"To: <sip:{number}@127.0.0.1:5060>", f"Call-ID: {call_id}",
                 "CSeq: 1 INVITE", f"Contact: <sip:{user}@127.0.0.1:5060>", "Max-Forwards: 70",
                 "User-Agent: Asterisk PBX 20.5.0", ptfps or f"P-tfps: {user};pbx.example.com;{ip};{ua};1",
                 *extra, "Content-Length: 0"]
        ack_head = f"ACK {ruri} SIP/2.0\r\n{via}\r\n{from_}\r\nTo: ".encode("utf-8", "surrogateescape")
        ack_tail = f"\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n".encode("utf-8", "surrogateescape")
        return lines, ack_head, ack_tail

    def valid(self):
        lines, head, tail = self.call()
        return encode(lines), head, tail

    def hostile(self, kind=None):
        """One hostile message: a third malformed, a third not UTF-8, a third a duplicated identity."""
        rng = self.rng
        kind = kind or rng.choice(HOSTILE_KINDS)
        user, ip, ua = rng.choice(self.accounts)
        if kind == "garbage":
            return rng.randbytes(rng.randint(20, 400)), None, None
        if kind == "utf8-ruri":
            lines, _, _ = self.call(uri_user="44207946\udcff0958")
        elif kind == "utf8-from":
            lines, _, _ = self.call(from_user=f"{user}\udcc3x")
        elif kind == "utf8-ptfps":
            lines, _, _ = self.call(ptfps=f"P-tfps: {user}\udce9;pbx.example.com;{ip};{ua};1")
        elif kind == "utf8-ua":
            lines, _, _ = self.call(extra=["X-Note: caf\udce9"], ptfps=f"P-tfps: {user};pbx.example.com;{ip};Phone \udce9\udcff;1")
        elif kind.startswith("dup-"):
            other_user, other_ip, _ = rng.choice(self.accounts)
            second = (f"P-tfps: {other_user};pbx.example.com;{ip};{ua};1" if kind == "dup-user"
                      else f"P-tfps: {user};pbx.example.com;{other_ip};{ua};1")
            lines, _, _ = self.call(account=(user, ip, ua), extra=[second])
        else:
            lines, _, _ = self.call()
            if kind == "no-via":
                del lines[1]
            elif kind == "bad-cseq":
                lines[5] = "CSeq: one INVITE"
            elif kind == "no-colon":
                lines.insert(4, "This line has no colon")
            elif kind == "bare-cr":
                lines[8] = "User-Agent: Asterisk\rPBX"
            elif kind == "short-body":
                lines[-1] = "Content-Length: 300"
            elif kind == "version":
                lines[0] = lines[0].replace("SIP/2.0", "SIP/3.0")
        return encode(lines), None, None

    def chunk(self, workload, count):
        if workload in ("valid", "shed"):
            return [self.valid() for _ in range(count)]
        # an INVITE with its ACK is two messages: hostile items two times in three make half of the messages hostile
        return [self.hostile() if self.rng.random() < 2 / 3 else self.valid() for _ in range(count)]


def encode(lines):
    """Lines -> bytes; the surrogates stand for bytes that are not UTF-8."""
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


# -- one run, in a child process -----------------------------------------------------------------

class Counting(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.counts = {}

    def emit(self, record):
        key = f"{record.levelname} {str(record.msg)[:50]}"   # by level and format: the values vary
        self.counts[key] = self.counts.get(key, 0) + 1


def run(tfps_path, workload, invites, args):
    tfps = load_tfps(tfps_path)
    counting = Counting()
    tfps.log.handlers[:] = [counting]
    tfps.log.propagate = False
    tfps.log.setLevel(logging.INFO)
    tmp = tempfile.TemporaryDirectory(prefix="tfps-request-path-bench-")
    work = Path(tmp.name)
    try:
        conf = write_config(work, free_port(), work / "tfps.db")
        if args.database_url:
            conf.write_text(conf.read_text().replace(f"url = sqlite://{work / 'tfps.db'}", f"url = {args.database_url}"))
        cfg = tfps.Config.load(str(conf))
        db = tfps.open_database(cfg.database.url)
        server = tfps.Server(cfg, db)
        if hasattr(server, "start_call_log_writer"):   # as serve does: the call log on a thread of its own,
            server.start_call_log_writer()             # taking turns with the loop every 0.5 ms
            sys.setswitchinterval(0.0005)
        endpoint = Endpoint()
        traffic = Traffic(args.seed, args.users)
        feed = Feeder(server, endpoint, args.flush_every)
        feed.waited = 1.0 if workload == "shed" else None
        for account in traffic.accounts:   # enrollment: every account calls once
            lines, head, tail = traffic.call(account=account)
            feed.items([(encode(lines), head, tail)])
        feed.flush()
        gc.collect()
        # as serve does: what is loaded now frozen, and (where the version has it) no full collection on the request path
        getattr(tfps, "keep_full_collections_off_the_request_path", gc.freeze)()
        feed.reset()
        endpoint.reset()
        profiler = None
        if args.profile:
            import cProfile
            profiler = cProfile.Profile()
        done = 0
        while done < invites:
            chunk = traffic.chunk(workload, min(CHUNK, invites - done))
            if profiler:
                profiler.enable()
            feed.items(chunk)
            if profiler:
                profiler.disable()
            done += len(chunk)
            del chunk
        if profiler:
            profiler.enable()
        feed.flush()
        if profiler:
            profiler.disable()
        elapsed = feed.elapsed
        writer = getattr(server.engine, "call_log", None)
        if writer:
            writer.close(60)   # every row in the table before it is counted
        result = {
            "invites": invites, "messages": feed.messages, "elapsed_s": elapsed,
            "msgs_per_s": feed.messages / elapsed, "us_per_invite": 1e6 * elapsed / invites,
            "flush_us_per_invite": 1e6 * feed.flush_s / invites, "flush_max_ms": 1e3 * feed.flush_max,
            "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "statuses": {k.decode("ascii", "replace"): v for k, v in sorted(endpoint.statuses.items())},
            "sent_bytes": endpoint.bytes, "errors": feed.errors, "flush_errors": feed.flush_errors,
            "counters": {k: v for k, v in server.counters.items() if v},
            "transactions_held": len((server.sip.transactions if hasattr(server, "sip") else server.txl).table), "log_lines": counting.counts,
            "call_log_rows": db.scalar("SELECT COUNT(*) FROM call_log", default=0),
            "codes": dict(db.query("SELECT code, COUNT(*) FROM call_log GROUP BY code ORDER BY code")),
        }
        if profiler:
            import io
            import pstats
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(int(os.environ.get("BENCH_TOP", "25")))
            result["profile"] = out.getvalue()
        db.close()
        return result
    finally:
        tmp.cleanup()


class Feeder:
    """Feeds items to on_message as serve's loop would, and times it (only while it feeds)."""

    def __init__(self, server, endpoint, flush_every):
        self.server, self.endpoint, self.flush_every = server, endpoint, flush_every
        self.waited = None  # seconds every INVITE waited before its turn (the shed workload: past overload_after)
        self.reset()

    def reset(self):
        self.messages = self.errors = self.flush_errors = self.flushes = 0
        self.next_flush, self.next_timers = self.flush_every, TIMERS_EVERY
        self.elapsed = self.flush_s = self.flush_max = 0.0

    def items(self, items):
        server, endpoint = self.server, self.endpoint
        on_message = server.on_message
        perf = time.perf_counter
        t0 = perf()
        for message, ack_head, ack_tail in items:
            try:
                on_message(message, endpoint, SOURCE, None if self.waited is None else time.monotonic() - self.waited)
            except Exception:
                self.errors += 1
            self.messages += 1
            if ack_head is not None:
                m = TO_RE.search(endpoint.last)
                try:
                    on_message(ack_head + (m.group(1) if m else b"") + ack_tail, endpoint, SOURCE)
                except Exception:
                    self.errors += 1
                self.messages += 1
            if self.messages >= self.next_timers:
                self.next_timers += TIMERS_EVERY
                server._run_timers()
                if self.messages >= self.next_flush:
                    self.next_flush += self.flush_every
                    self._flush()
        self.elapsed += perf() - t0

    def _flush(self):
        self.flushes += 1
        t0 = time.perf_counter()
        try:
            self.server.engine.flush()
            if self.flushes % 8 == 0:
                self.server.engine.check_for_changes()
        except Exception:
            self.flush_errors += 1
        took = time.perf_counter() - t0
        self.flush_s += took
        self.flush_max = max(self.flush_max, took)

    def flush(self):
        t0 = time.perf_counter()
        self._flush()
        self.elapsed += time.perf_counter() - t0


# -- driver ----------------------------------------------------------------------------------------

def child(args, tfps_path, workload):
    cmd = [sys.executable, __file__, "--child", str(tfps_path), "--workload", workload, "--calls", str(args.calls),
           "--messages", str(args.messages), "--users", str(args.users), "--flush-every", str(args.flush_every),
           "--seed", str(args.seed)] + (["--profile"] if args.profile else [])
    drop = None
    if args.mysql:
        url, drop, _flush = mysql_database(args.mysql)
        cmd += ["--database-url", url]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:g} s"}
    finally:
        if drop:
            drop()
    if proc.returncode != 0:
        return {"error": f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def invites_of(args, workload):
    # valid, shed: --calls INVITEs (2 messages each); hostile: --messages messages, half of them in INVITE + ACK pairs
    return args.calls if workload in ("valid", "shed") else round(args.messages * 3 / 4)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tfps", type=Path, default=TFPS, help="the tfps.py to measure (default: this checkout's)")
    ap.add_argument("--baseline", type=Path, help="a tfps.py to compare with (e.g. a checkout of the previous commit)")
    ap.add_argument("--rounds", type=int, default=5, help="runs of each version and workload, interleaved (default 5)")
    ap.add_argument("--calls", type=int, default=30000, help="INVITEs of the valid workload, each with its ACK (default 30,000)")
    ap.add_argument("--messages", type=int, default=60000, help="messages of the hostile workload (default 60,000)")
    ap.add_argument("--workloads", default="valid,hostile", help="which workloads (default valid,hostile)")
    ap.add_argument("--users", type=int, default=1000, help="accounts the calls are spread over (default 1,000)")
    ap.add_argument("--flush-every", type=int, default=1500,
                    help="messages between engine.flush() calls (default 1,500: 0.25 s at 3,000 calls/s)")
    ap.add_argument("--timeout", type=float, default=300.0, help="a run taking longer is abandoned (default 300 s)")
    ap.add_argument("--profile", action="store_true", help="cProfile the first round's runs and print the top functions")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print every run as JSON")
    ap.add_argument("--mysql", help="run on a fresh database of this MariaDB server (mysql://USER:PASSWORD@HOST:PORT), "
                                    "dropped after each run, instead of a SQLite file")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--database-url", help=argparse.SUPPRESS)
    ap.add_argument("--workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(run(args.child, args.workload, invites_of(args, args.workload), args)))
        return 0

    workloads = [w for w in args.workloads.split(",") if w]
    if any(w not in WORKLOADS for w in workloads):
        raise SystemExit(f"--workloads: one or more of {', '.join(WORKLOADS)}")
    versions = [("baseline", args.baseline)] if args.baseline else []
    versions.append(("this", args.tfps))
    for _, path in versions:
        if not path.is_file() or not (path.parent / "schema.sql").is_file():
            raise SystemExit(f"{path}: no such tfps.py with a schema.sql beside it")
    started = time.time()
    runs = {}   # (workload, label) -> [result per round]
    profile = args.profile
    for rnd in range(args.rounds):
        for w, workload in enumerate(workloads):
            for label, path in turns(versions, rnd, w):
                r = child(args, path, workload)
                r["first"] = turns(versions, rnd, w)[0][0] == label
                runs.setdefault((workload, label), []).append(r)
                if "error" in r:
                    log(f"round {rnd + 1} {workload:7} {label:8}: ERROR {r['error']}")
                else:
                    log(f"round {rnd + 1} {workload:7} {label:8}: {r['msgs_per_s']:,.0f} messages/s, "
                        f"{r['us_per_invite']:.1f} µs/INVITE, peak RSS {r['rss_peak_mb']:.1f} MB")
        args.profile = False   # one profiled run per version and workload is enough
    args.profile = profile
    report(args, versions, workloads, runs, time.time() - started)
    return 1 if any("error" in r for rs in runs.values() for r in rs) else 0


def report(args, versions, workloads, runs, total_s):
    if args.json:
        print(json.dumps({f"{w}/{label}": rs for (w, label), rs in runs.items()}, indent=2))
        return
    for (workload, label), rs in runs.items():
        if rs[0].get("profile"):
            print(f"--- cProfile, {workload} workload, {label} (round 1, top 25 by own time) ---")
            print(rs[0]["profile"])
    print(f"\nTFPS request-path benchmark: Server.on_message in-process (no sockets), {'MariaDB' if args.mysql else 'SQLite'}, full engine, redirect mode, "
          f"{args.users:,} accounts, flush every {args.flush_every:,} messages, {args.rounds} rounds interleaved, "
          f"total {total_s:.0f} s")
    for label, path in versions:
        print(f"{label}: {describe_version(path)}")
    described = {"valid": f"valid = {args.calls:,} INVITEs + ACKs",
                 "hostile": f"hostile = {args.messages:,} messages ({invites_of(args, 'hostile'):,} INVITEs), half of them hostile",
                 "shed": f"shed = the valid INVITEs and ACKs, each INVITE having waited 1 s (answered R98 by overload control)"}
    print("workloads: " + "; ".join(described[w] for w in workloads))
    head = (f"{'workload':8} {'version':8} {'messages/s':>10} {'(min-max)':>17} {'µs/INVITE':>9} {'(min-max)':>13} "
            f"{'peak RSS MB':>11}  per round: µs/INVITE (* = ran first)")
    print(head)
    print("-" * len(head))
    for workload in workloads:
        for label, _ in versions:
            rs = [r for r in runs[workload, label] if "error" not in r]
            if not rs:
                print(f"{workload:8} {label:8} ERROR: {runs[workload, label][0]['error']}")
                continue
            rate = [r["msgs_per_s"] for r in rs]
            us = [r["us_per_invite"] for r in rs]
            rounds = " ".join(f"{r['us_per_invite']:.1f}{'*' if r['first'] else ''}" for r in rs)
            print(f"{workload:8} {label:8} {median(rate):>10,.0f} {f'({min(rate):,.0f}-{max(rate):,.0f})':>17} "
                  f"{median(us):>9.1f} {f'({min(us):.1f}-{max(us):.1f})':>13} {max(r['rss_peak_mb'] for r in rs):>11.1f}  "
                  f"{rounds}")
        if len(versions) == 2:
            # rounds in which both ran: the two runs of a round are next to each other, so their ratio
            # is the least affected by the machine's drift
            pairs = [(a["us_per_invite"], b["us_per_invite"]) for a, b in zip(*(runs[workload, label] for label, _ in versions))
                     if "error" not in a and "error" not in b]
            if pairs:
                ratios = [b / a for a, b in pairs]
                print(f"{workload:8} this/baseline µs per INVITE: medians {median([b for _, b in pairs]) / median([a for a, _ in pairs]):.3f}; "
                      f"round by round {' '.join(f'{q:.2f}' for q in ratios)} (median {median(ratios):.3f}, "
                      f"this faster in {sum(q < 1 for q in ratios)} of {len(ratios)})")
    print("messages/s and µs/INVITE: medians over the rounds (range in brackets); µs/INVITE = the loop's time / INVITEs "
          "fed (with their ACKs, the hostile messages, timers and flushes); peak RSS = ru_maxrss of the run's process, "
          "largest over the rounds")
    print("what the server did (round 1):")
    for workload in workloads:
        for label, _ in versions:
            r = runs[workload, label][0]
            if "error" not in r:
                flushes = median([x["flush_us_per_invite"] for x in runs[workload, label] if "flush_us_per_invite" in x])
                longest = max(x.get("flush_max_ms", 0.0) for x in runs[workload, label])
                print(f"  {workload:8} {label:8} flushes {flushes:.1f} µs/INVITE (median), the longest {longest:.1f} ms, answers {r['statuses']}, call log codes (the {args.users:,} enrollment calls included) {r['codes']}, "
                      f"exceptions {r['errors']} (+{r['flush_errors']} in flushes), counters {r['counters']}, "
                      f"transactions held at the end {r['transactions_held']}, log lines {r['log_lines']}")


if __name__ == "__main__":
    sys.exit(main())
