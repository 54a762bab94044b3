#!/usr/bin/env python3
"""TFPS side by side with a peer: Kamailio 5.6 running bench/kamailio_redirect.cfg (the same checks
in htable, one worker and N) and `tfps.py serve` on SQLite and on MariaDB (one worker and N when
tfps.py knows `[server] workers`), all driven by the same sipp scenario in the same run.

    python3 bench/peer_bench.py --quick        # 3 s per step, about 5 minutes
    python3 bench/peer_bench.py                # 10 s per step
    python3 bench/peer_bench.py --targets kamailio,tfps-sqlite --rates 1000,2000

The scenario and injection CSV are the SIP benchmark's (bench/sip_bench.py): INVITE -> 302 -> ACK,
calls spread over --users accounts (the P-tfps user) and 15 destination countries. The policy lets
all of it through on both servers (no learning, unlimited quotas on TFPS and a quota no run reaches
on Kamailio, 1,000 calls per A->B pair); both hold the same lists: TFPS's countries, high-risk
countries and scanner User-Agents, and --blacklist random blacklisted number prefixes. Before the
load, a handful of INVITEs (a scanner, a blacklisted prefix, a high-risk and an unknown country,
two P-tfps headers, an ordinary call) go to every server, and their codes are printed side by side.
TFPS runs with overload control off (`overload_after = 0`): its R98 answers are 302s that sipp
would count as successful calls, though nothing was checked. It runs on the interpreter that runs
it as a service (--python, default the python3 that systemd finds: Debian's /usr/bin/python3, as
Kamailio is Debian's package); `tfps-sqlite-n@PATH` adds a run on another interpreter.

Each rate of --rates runs on every target in turn (the order flips from one rate to the next,
so that no server always runs right after another one's load). Then, for each target, a search
for the highest rate with 0 failed calls: doubling from its best ladder rate until a step fails
(or --max-rate), then --search bisection steps; the searches take turns, a step of each, so
that a slow or fast phase of the machine falls on all of them alike. A step passes when sipp
reports every call successful, 0 failed and an achieved rate of at least 95 % of the offered one
(a 302 later than --recv-timeout-ms fails its call). A TFPS that failed a step is restarted before its next one.

The table gives, per rate and target: achieved calls/s, failed calls, sipp's INVITE -> 302 p50/p99
(whole ms), the server's CPU per call (all its processes) and the ratio of TFPS's achieved rate and
p99 to Kamailio's with as many workers. The MariaDB runs use a fresh database on --mysql, dropped
afterwards."""

import argparse
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchlib import (TFPS, add_python_argument, fmt, free_port, log, mysql_database, percentile, python_version, turns,
                      write_config)
from galera import GaleraCluster, GaleraError
from sip_bench import Server, run_sipp, tree_cpu_seconds, tree_rss_mb, write_inputs

BENCH = Path(__file__).resolve().parent
KAMAILIO_CFG = BENCH / "kamailio_redirect.cfg"
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
# calling codes that none of the benchmark's destinations (benchlib.DESTINATIONS) starts with
BLACKLIST_CODES = ("234", "880", "92", "20", "62", "254", "963", "970", "675", "239")
HTABLE_HEADER = "id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) expires(int)\n"
WARM_UP_RATE = 200   # calls/s: enrolling is slower than deciding, on MariaDB most of all
QUICK = {"duration": 3.0, "rates": "500,1000,2000,3000", "search": 2}


def config_sections(text):
    """`tfps.py config check` output -> {section: {key: value}}."""
    sections, current = {}, None
    for line in text.splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line.strip())
        if header:
            current = sections.setdefault(header.group(1), {})
        elif current is not None and " = " in line and not line.startswith("#"):
            key, _, value = line.partition(" = ")
            current[key.strip()] = value.strip()
    return sections


def tfps_cli(python, tfps, conf, *argv):
    result = subprocess.run([python, str(tfps), *argv, "-c", str(conf)], capture_output=True, text=True, timeout=120)
    if result.returncode:
        raise SystemExit(f"tfps.py {' '.join(argv)} failed ({result.returncode}): {(result.stderr or result.stdout).strip() or 'no output'}")
    return result.stdout


class TfpsTarget:
    """tfps.py serve on one database with a given number of workers (None: the key is not set).
    Overload control is off where the version has it: an R98 answer is a 302 to sipp, but no
    checked verdict, and must not count as a call the server kept up with."""

    def __init__(self, args, work, name, url, workers, overload_control, python):
        self.name, self.url, self.workers = name, url, workers
        self.work = work / name
        self.work.mkdir()
        self.port = free_port()
        conf = write_config(self.work, self.port, self.work / "tfps.db")
        text = re.sub(r"(?m)^url = .*$", f"url = {url}", conf.read_text())
        if workers is not None:
            text = text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
        if overload_control:
            text = text.replace("[server]\n", "[server]\noverload_after = 0\n", 1)
        conf.write_text(text)
        self.conf = conf
        self.server = Server(self.work, conf, profile=False, tfps=args.tfps, python=python)

    @property
    def pid(self):
        return self.server.proc.pid if self.server.proc else None

    def prepare(self, blacklist_file):
        tfps_cli(self.server.python, self.server.tfps, self.conf, "initdb")
        tfps_cli(self.server.python, self.server.tfps, self.conf, "blacklist", "import", "number", str(blacklist_file))

    def start(self):
        if self.server.proc is None:
            self.server.start(timeout=60)

    def after_failure(self):
        self.server.stop()   # drops its backlog and retransmission timers before the next step

    def stop(self):
        self.server.stop()


class KamailioTarget:
    def __init__(self, work, name, workers, tables):
        self.name, self.workers = name, workers
        self.work = work / name
        self.work.mkdir()
        self.port = free_port()
        self.tables = tables
        self.proc = None
        self.runs = 0

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def command(self):
        defines = {"LISTEN": f"udp:127.0.0.1:{self.port}", "WORKERS": self.workers, "DB_URL": f'"text://{self.tables.directory}"',
                   "UA_GROUPS": f'"{self.tables.ua_groups}"', "BLACKLIST_MAX_LEN": self.tables.blacklist_max_len,
                   "COUNTRY_MAX_LEN": self.tables.country_max_len, "AB_MAX_CALLS": 1000, "DAILY_QUOTA": 1_000_000_000,
                   "MODULES": f'"{KAMAILIO_MODULES}"'}
        return [KAMAILIO, "-f", str(KAMAILIO_CFG), "-DD", "-E", "-Y", str(self.work), "-w", str(self.work),
                "-m", "256", "-M", "16"] + [arg for key, value in defines.items() for arg in ("-A", f"{key}={value}")]

    def prepare(self, blacklist_file):
        check = subprocess.run([KAMAILIO, "-c"] + self.command()[1:], capture_output=True, text=True, timeout=30)
        if check.returncode:
            raise SystemExit(f"kamailio -c rejects {KAMAILIO_CFG}:\n{check.stderr.strip()}")

    def start(self, timeout=20):
        if self.proc is not None:
            return
        self.runs += 1
        self.log_path = self.work / f"kamailio-{self.runs}.log"
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"kamailio exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            if sip_probe(self.port, "0049301234567", "probe;pbx.example.com;;;1", timeout=0.2):
                return
        self.stop()
        raise SystemExit(f"kamailio did not answer within {timeout} s:\n{self.log_path.read_text()}")

    def after_failure(self):
        pass   # stateless between calls: nothing queued survives a step

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


class KamailioTables:
    """TFPS's lists as Kamailio's htable tables (db_text) and regex group file: country prefixes,
    high-risk countries and blacklisted number prefixes, and the scanner User-Agents."""

    def __init__(self, directory, db_path, high_risk):
        self.directory = directory
        directory.mkdir()
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
            countries = conn.execute("SELECT iso, prefixes, risk FROM countries").fetchall()
            blacklist = [r[0] for r in conn.execute("SELECT prefix FROM number_list WHERE kind = 'black'")]
            patterns = [r[0] for r in conn.execute("SELECT pattern FROM ua_list")]
        prefixes = {p.strip(): iso for iso, listed, _ in countries for p in listed.split(",") if p.strip()}
        high = set(high_risk) | {iso for iso, _, risk in countries if risk == "high"}
        self.write("country", prefixes.items())
        self.write("highrisk", ((iso, "1") for iso in sorted(high)))
        self.write("blacklist", ((prefix, "R03") for prefix in blacklist))
        self.ua_groups = directory / "ua.groups"
        self.ua_groups.write_text("[0]\n" + "".join(f"{p}\n" for p in patterns))
        self.country_max_len = max(len(p) for p in prefixes)
        self.blacklist_max_len = max((len(p) for p in blacklist), default=1)

    def write(self, table, items):
        with open(self.directory / table, "w") as fh:
            fh.write(HTABLE_HEADER)
            for n, (key, value) in enumerate(items, 1):
                fh.write(f"{n}:{key}:0:0:{value}:0\n")


def sip_probe(port, number, p_tfps, user_agent="Yealink SIP-T46S 66.86.0.15", timeout=2.0):
    """The X-TFPS-Code of the 302 a server answers to one INVITE (extra P-tfps headers after a
    newline in `p_tfps`), or None without an answer; the 302 is ACKed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        local = sock.getsockname()[1]
        branch, call_id = f"z9hG4bK{uuid.uuid4().hex}", uuid.uuid4().hex
        common = [f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport",
                  "From: <sip:1001@pbx.example.com>;tag=peer", f"To: <sip:{number}@127.0.0.1:{port}>", f"Call-ID: {call_id}"]
        invite = [f"INVITE sip:{number}@127.0.0.1:{port} SIP/2.0"] + common + [
            "CSeq: 1 INVITE", f"Contact: <sip:1001@127.0.0.1:{local}>", "Max-Forwards: 70", f"User-Agent: {user_agent}"]
        invite += [f"P-tfps: {value}" for value in p_tfps.split("\n")]
        sock.sendto(("\r\n".join(invite + ["Content-Length: 0", "", ""])).encode(), ("127.0.0.1", port))
        try:
            answer = sock.recv(65535).decode(errors="replace")
        except OSError:
            return None
        to_tag = re.search(r"(?mi)^To:.*$", answer)
        ack = [f"ACK sip:{number}@127.0.0.1:{port} SIP/2.0"] + common[:2] + [to_tag.group(0) if to_tag else common[2], common[3],
                                                                            "CSeq: 1 ACK", "Max-Forwards: 70"]
        sock.sendto(("\r\n".join(ack + ["Content-Length: 0", "", ""])).encode(), ("127.0.0.1", port))
        code = re.search(r"(?mi)^X-TFPS-Code:\s*(\S+)", answer)
        return code.group(1) if code else answer.partition("\r\n")[0]


# (what the call is, number, P-tfps, User-Agent): both servers must give each the same code
PROBES = (("an ordinary call", "004930123456", "7001;pbx.example.com;10.1.2.3;Yealink SIP-T46S;1", "Yealink SIP-T46S"),
          ("a scanner User-Agent", "004930123457", "7002;pbx.example.com;10.1.2.3;friendly-scanner;1", "friendly-scanner"),
          ("a blacklisted prefix", None, "7003;pbx.example.com;10.1.2.3;Yealink SIP-T46S;1", "Yealink SIP-T46S"),
          ("a high-risk country (CU)", "005355512345", "7004;pbx.example.com;10.1.2.3;Yealink SIP-T46S;1", "Yealink SIP-T46S"),
          ("no known country code", "00999123456", "7005;pbx.example.com;10.1.2.3;Yealink SIP-T46S;1", "Yealink SIP-T46S"),
          ("two P-tfps headers", "004930123458", "7006;pbx.example.com;;;1\n7007;pbx.example.com;;;1", "Yealink SIP-T46S"),
          ("a quote in the number", "0049301'23", "7008;pbx.example.com;10.1.2.3;Yealink SIP-T46S;1", "Yealink SIP-T46S"))


def compare_verdicts(targets, blacklisted_number):
    print("verdicts of the same INVITEs (X-TFPS-Code):")
    print(f"  {'call':<26}" + "".join(f"{t.name:>18}" for t in targets))
    agree = True
    for what, number, p_tfps, user_agent in PROBES:
        codes = [sip_probe(t.port, number or blacklisted_number, p_tfps, user_agent) for t in targets]
        agree &= len(set(codes)) == 1
        print(f"  {what:<26}" + "".join(f"{str(c):>18}" for c in codes))
    print("  the same on every server" if agree else "  THE SERVERS DISAGREE")


def write_blacklist(path, count, rng):
    prefixes = sorted({rng.choice(BLACKLIST_CODES) + "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 6)))
                       for _ in range(count)})
    path.write_text("".join(f"{p}\n" for p in prefixes))
    return prefixes


def wait_idle(pid, limit=30.0):
    """Until the server has used less than 5 % of a CPU over half a second (its backlog is gone),
    for `limit` seconds at the most."""
    deadline = time.time() + limit
    while time.time() < deadline:
        before = tree_cpu_seconds(pid)
        time.sleep(0.5)
        if tree_cpu_seconds(pid) - before < 0.025:
            return


def run_step(args, work, target, rate, tag):
    target.start()
    wait_idle(target.pid)
    cpu0 = tree_cpu_seconds(target.pid)
    calls = int(rate * args.duration)
    r = run_sipp(args, work, target.port, "calls.csv", rate, calls, tag)
    r["srv_cpu_s"] = tree_cpu_seconds(target.pid) - cpu0 if target.pid else float("nan")
    r["srv_rss_mb"] = tree_rss_mb(target.pid) if target.pid else float("nan")
    log(f"  {target.name:<24} {rate:>6}/s: {'PASS' if r['passed'] else 'FAIL'} ok {r.get('ok')} failed {r.get('failed')} "
        f"achieved {answered_rate(r):.0f}/s p50 {fmt(percentile(r['rtt'], 50), 0)} p99 {fmt(percentile(r['rtt'], 99), 0)} ms "
        f"server CPU {r['srv_cpu_s']:.1f} s")
    if not r["passed"]:
        target.after_failure()
    return r


def search_max(args, ladder_results):
    """Doubling from the best passing ladder rate, then bisection: the highest rate with 0 failed.
    A generator: it yields the rate of each step and is sent the step's result; its return value
    (StopIteration.value) is the highest rate that passed, or None."""
    passed = [rate for rate, r in ladder_results.items() if r["passed"]]
    failed = [rate for rate, r in ladder_results.items() if not r["passed"]]
    lo = max(passed, default=None)
    hi = min((rate for rate in failed if lo is None or rate > lo), default=None)
    while hi is None and lo is not None and lo < args.max_rate:
        rate = min(args.max_rate, lo * 2)
        if (yield rate)["passed"]:
            lo = rate
        else:
            hi = rate
    for _ in range(args.search if lo is not None and hi is not None else 0):
        rate = int(round((lo + hi) / 2 / 100.0) * 100)
        if rate <= lo or rate >= hi:
            break
        if (yield rate)["passed"]:
            lo = rate
        else:
            hi = rate
    return lo


def search_all(args, work, targets, ladder):
    """The max-rate searches of all targets, a step of each in turn: the machine's speed drifts
    over minutes, and a search run after another's would meet another phase of it. Returns
    ({target: highest rate with 0 failed}, {target: {rate: result}})."""
    best, searched, searches, pending = {}, {}, {}, {}
    for target in targets:
        searched[target.name] = {}
        searches[target.name] = search_max(args, ladder[target.name])
        try:
            pending[target.name] = next(searches[target.name])
        except StopIteration as stop:
            best[target.name] = stop.value
    while pending:
        for target in targets:
            if target.name not in pending:
                continue
            rate = pending.pop(target.name)
            result = searched[target.name][rate] = run_step(args, work, target, rate, f"{target.name}-max-{rate}")
            try:
                pending[target.name] = searches[target.name].send(result)
            except StopIteration as stop:
                best[target.name] = stop.value
    return best, searched


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s per step, rates 500,1000,2000,3000, 2 bisection steps")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per step (default 10)")
    ap.add_argument("--rates", default="500,1000,2000,3000", help="the rate ladder, calls/s (default 500,1000,2000,3000)")
    ap.add_argument("--search", type=int, default=3, help="bisection steps of the max-rate search (default 3; 0: no search)")
    ap.add_argument("--max-rate", type=int, default=16000, help="the max-rate search goes no higher (default 16,000)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="N of the N-worker variants (default: the CPUs)")
    ap.add_argument("--targets", default="kamailio,kamailio-n,tfps-sqlite,tfps-sqlite-n,tfps-mysql,tfps-mysql-n",
                    help="which servers, comma-separated (default: these six; tfps-galera and tfps-galera-n are "
                         "TFPS on node 1 of a local three-node Galera cluster, bench/galera.py)")
    ap.add_argument("--mysql", default="mysql://root:@127.0.0.1:3306", help="the MariaDB server of the tfps-mysql runs")
    ap.add_argument("--blacklist", type=int, default=2000, help="blacklisted number prefixes on both servers (default 2,000)")
    ap.add_argument("--users", type=int, default=1000, help="accounts the calls are spread over (default 1,000)")
    ap.add_argument("--csv-rows", type=int, default=20000, help="rows of the injection CSV (default 20,000)")
    ap.add_argument("--recv-timeout-ms", type=int, default=2000, help="a 302 later than this fails the call (default 2000)")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--sipp", default=shutil.which("sipp") or "sipp")
    ap.add_argument("--tfps", type=Path, default=TFPS, help="the tfps.py to serve (default: this checkout's)")
    add_python_argument(ap, "; a TFPS target may name its own after an @, e.g. "
                            "tfps-sqlite-n@/usr/local/bin/python3.12, to run two interpreters side by side")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, sipp traces, databases)")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rates, args.search = QUICK["duration"], QUICK["rates"], QUICK["search"]
    try:
        rates = sorted({int(r) for r in args.rates.split(",") if r.strip()})
    except ValueError:
        ap.error(f"--rates {args.rates}: expected calls/s separated by commas")
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    known = ("kamailio", "kamailio-n", "tfps-sqlite", "tfps-sqlite-n", "tfps-mysql", "tfps-mysql-n", "tfps-galera",
             "tfps-galera-n")
    unknown = [t for t in names if t.partition("@")[0] not in known or (t.startswith("kamailio") and "@" in t)]
    if unknown or not names:
        ap.error(f"--targets: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        ap.error(f"--targets: {', '.join(twice)} given twice")
    if not rates or min(rates) < 1 or args.duration <= 0 or args.workers < 1:
        ap.error("rates, --duration and --workers must be positive")
    if not shutil.which(args.sipp):
        raise SystemExit("sipp not found: apt install sip-tester")
    if any(n.startswith("kamailio") for n in names) and not os.path.exists(KAMAILIO):
        raise SystemExit("kamailio not found: apt install kamailio")
    if not args.tfps.is_file() or not (args.tfps.parent / "schema.sql").is_file():
        raise SystemExit(f"{args.tfps}: no such tfps.py with a schema.sql beside it")

    started, args.load_before = time.time(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="tfps-peer-bench-"))
    try:
        report(args, *measure(args, work, rates, names), time.time() - started)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def measure(args, work, rates, names):
    """Sets up the targets, checks their verdicts, runs the ladder and the searches; returns
    (targets, ladder results, best rates, search results, skipped-target lines)."""
    rng = random.Random(args.seed)
    write_inputs(work, args.users, args.csv_rows, args.seed)
    blacklisted = write_blacklist(work / "blacklist.txt", args.blacklist, rng)

    # the lists every server holds come from a TFPS database set up as the TFPS runs' are
    reference = work / "reference"
    reference.mkdir()
    conf = write_config(reference, free_port(), reference / "tfps.db")
    tfps_cli(args.python, args.tfps, conf, "initdb")
    tfps_cli(args.python, args.tfps, conf, "blacklist", "import", "number", str(work / "blacklist.txt"))
    effective = config_sections(tfps_cli(args.python, args.tfps, conf, "config", "check"))
    high_risk = [c.strip() for c in effective.get("policy", {}).get("high_risk_countries", "").split(",") if c.strip()]
    has_workers = "workers" in effective.get("server", {})
    has_overload_control = "overload_after" in effective.get("server", {})
    tables = KamailioTables(work / "kamailio-tables", reference / "tfps.db", high_risk)

    cleanups, targets, skipped = [], [], []
    cluster = None
    n = args.workers
    try:
        for name in names:
            name, _, python = name.partition("@")
            if name.startswith("kamailio"):
                workers = n if name.endswith("-n") else 1
                targets.append(KamailioTarget(work, f"kamailio-{workers}w", workers, tables))
                continue
            if name.endswith("-n") and not has_workers:
                skipped.append(f"{name}: skipped, {args.tfps} has no [server] workers key (tfps.py config check shows none)")
                log(skipped[-1])
                continue
            workers = (n if name.endswith("-n") else 1) if has_workers else None
            label = f"{name.removesuffix('-n')}-{workers or 1}w"
            if python:
                label += f"@{python_version(python)}"
                if label in {t.name for t in targets}:   # another interpreter of the same version
                    label += f"-{len(targets) + 1}"
            python = python or args.python
            if ("mysql" in name or "galera" in name) and subprocess.run([python, "-c", "import pymysql"],
                                                                          capture_output=True).returncode:
                raise SystemExit(f"{name}: {python} has no PyMySQL (apt-get install python3-pymysql, or pip)")
            if "galera" in name:
                if cluster is None:
                    cluster = GaleraCluster(n=3)
                    cleanups.append(cluster.stop)
                    try:
                        cluster.start()
                    except GaleraError as exc:
                        raise SystemExit(f"the Galera cluster did not start: {exc}") from None
                    log(f"Galera: 3 nodes Synced in {cluster.startup_seconds:.1f} s")
                url = cluster.create_database(f"tfps_peer_{secrets.token_hex(4)}")[0]
            elif "mysql" in name:
                url, drop, flush = mysql_database(args.mysql)
                cleanups.append(drop)
                log(f"MariaDB {args.mysql}: innodb_flush_log_at_trx_commit = {flush}")
            else:
                url = f"sqlite://{work / label / 'tfps.db'}"
            targets.append(TfpsTarget(args, work, label, url, workers, has_overload_control, python))
        for target in targets:
            target.prepare(work / "blacklist.txt")
            target.start()
        compare_verdicts(targets, blacklisted[0] + "123456")
        for target in targets:   # every account calls once (TFPS enrolls it)
            warm = run_sipp(args, work, target.port, "warmup.csv", WARM_UP_RATE, args.users, f"{target.name}-warmup")
            log(f"{target.name} warm-up: {warm.get('ok')} calls ok, {warm.get('failed')} failed ({args.users} accounts)")
        ladder = {t.name: {} for t in targets}
        for i, rate in enumerate(rates):
            for target in turns(targets, i):
                ladder[target.name][rate] = run_step(args, work, target, rate, f"{target.name}-{rate}")
        best = {t.name: max((r for r, res in ladder[t.name].items() if res["passed"]), default=None) for t in targets}
        searched = {}
        if args.search:
            best, searched = search_all(args, work, targets, ladder)
    finally:
        for target in targets:
            target.stop()
        for cleanup in cleanups:
            cleanup()
    return targets, ladder, best, searched, skipped


def peer_of(target, targets):
    """The Kamailio run a TFPS run is compared with: the one with as many workers, else the first."""
    peers = [t for t in targets if isinstance(t, KamailioTarget)]
    return next((p for p in peers if p.workers == (getattr(target, "workers", None) or 1)), peers[0] if peers else None)


def report(args, targets, ladder, best, searched, skipped, seconds):
    print(f"\nTFPS and Kamailio side by side: sipp on 127.0.0.1 (INVITE -> 302 -> ACK), {args.users} accounts, "
          f"{args.duration:g} s per step, recv timeout {args.recv_timeout_ms} ms, {os.cpu_count()} CPUs, "
          f"{args.blacklist} blacklisted prefixes, total {seconds:.0f} s; load average (1 min) "
          f"{args.load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    for python in sorted({t.server.python for t in targets if isinstance(t, TfpsTarget)}):
        print(f"TFPS interpreter: Python {python_version(python)} {python}")
    for line in skipped:
        print(line)
    head = (f"{'offered/s':>9} {'server':<24} {'achieved/s':>10} {'failed':>6} {'p50 ms':>6} {'p99 ms':>6} {'max ms':>6} "
            f"{'µs/call':>7} {'RSS MB':>6} {'sipp µs':>7}  {'vs Kamailio: rate, p99':<24}")
    print(head)
    print("-" * len(head))
    for rate in sorted({rate for results in ladder.values() for rate in results}):
        for target in targets:
            r = ladder[target.name].get(rate)
            if r:
                print(row(rate, target, r, ladder[peer_of(target, targets).name].get(rate) if peer_of(target, targets) else None))
    print("achieved/s = successful calls/s (from sipp's response-time trace, else successful calls / step duration); p50/p99/max = sipp's INVITE -> 302 response time (whole ms); µs/call = "
          "server CPU (all its processes) per successful call; RSS = the server's peak RSS (all its processes); sipp µs = "
          "sipp's CPU per successful call (sipp shares the 2 cores); "
          "vs Kamailio = achieved rate / Kamailio's with as many workers, then p99 - Kamailio's p99.")
    print("\nhighest rate with 0 failed calls (ladder, then doubling and bisection):")
    for target in targets:
        steps = ", ".join(f"{rate} {'ok' if r['passed'] else 'FAIL'}" for rate, r in sorted(searched.get(target.name, {}).items()))
        peer = peer_of(target, targets)
        ratio = (f"  ({best[target.name] / best[peer.name]:.2f} x {peer.name})"
                 if peer and peer is not target and best.get(target.name) and best.get(peer.name) else "")
        print(f"  {target.name:<24} {best.get(target.name) or 'none':>6} calls/s{ratio}"
              + (f"   search: {steps}" if steps else ""))


def answered_rate(r):
    """Calls/s answered in time: from sipp's response-time trace, or, when sipp wrote none (fewer
    than 1,000 successful calls), the successful calls over the step's planned duration."""
    return r["achieved"] if r["rtt"] else r.get("ok", 0) * r["rate"] / max(1, r["calls"])


def row(rate, target, r, peer):
    compared = ""
    if peer is not None and peer is not r:
        p99, peer_p99 = percentile(r["rtt"], 99), percentile(peer["rtt"], 99)
        compared = f"{answered_rate(r) / max(answered_rate(peer), 1):.2f}, {'+' if p99 >= peer_p99 else ''}{fmt(p99 - peer_p99, 0)} ms"
    us, sipp_us = (1e6 * r[key] / max(1, r.get("ok", 0)) for key in ("srv_cpu_s", "sipp_cpu_s"))
    return (f"{rate:>9} {target.name:<24} {answered_rate(r):>10.0f} {r.get('failed', 0):>6} {fmt(percentile(r['rtt'], 50), 0):>6} "
            f"{fmt(percentile(r['rtt'], 99), 0):>6} {fmt(r['rtt'][-1] if r['rtt'] else None, 0):>6} {us:>7.0f} "
            f"{r['srv_rss_mb']:>6.0f} {sipp_us:>7.0f}  {compared}")


if __name__ == "__main__":
    sys.exit(main())
