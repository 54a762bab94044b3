"""Helpers shared by the benchmarks that run one tfps.py or two side by side (sip_bench.py,
request_path_bench.py, outage_bench.py): the benchmark configuration, the call mix, loading a
tfps.py by path, the order in which two versions take turns, and a database connection that
can be cut."""

import argparse
import importlib.util
import random
import re
import secrets
import select
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TFPS = REPO / "tfps.py"

# destinations that are neither high-risk nor blacklisted: (country code + area, national digits)
DESTINATIONS = [("1212", 7), ("1415", 7), ("1305", 7), ("1416", 7), ("44", 10), ("49", 10), ("33", 9),
                ("34", 9), ("39", 10), ("55", 11), ("52", 10), ("61", 9), ("81", 10), ("31", 9), ("46", 9)]
USER_AGENTS = ["Yealink SIP-T46S 66.86.0.15", "Grandstream GXP2170 1.0.11.23", "PolycomVVX-VVX_411-UA/6.4.3.5018",
               "Zoiper rv2.10.19.3", "Linphone/5.2.0 (belle-sip/5.2.0)", "Cisco-CP8845/12.8.1", "snom D785/10.1.159.12",
               "Fanvil X6U 2.12.1", "MicroSIP/3.21.3", "FPBX-16.0.40(18.20.0)"]


# systemd's search path for a service's commands: the zipapp's `#!/usr/bin/env python3` finds the
# interpreter of `tfps serve` there
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def service_python():
    """The python3 that runs TFPS as install.sh's systemd unit does: on Debian its python3
    package's /usr/bin/python3, built with profile-guided and link-time optimization. A python3
    built from source without them (pyenv's default) runs TFPS a fifth to a third slower. The
    benchmark's own interpreter when there is none."""
    return shutil.which("python3", path=SERVICE_PATH) or sys.executable


def python_version(python):
    """The version of an interpreter ('3.11.2'), which a benchmark prints with its path."""
    try:
        out = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise SystemExit(f"{python}: cannot run it: {exc}") from None
    version = out.stdout.strip()
    if out.returncode or not re.fullmatch(r"\d+\.\d+\.\d+\S*", version):
        raise SystemExit(f"{python}: not a Python interpreter ({(out.stderr or out.stdout).strip() or 'no output'})")
    return version


def add_python_argument(ap, also=""):
    """--python: the interpreter that runs tfps.py, checked before anything starts."""
    def interpreter(path):
        try:
            python_version(path)
        except SystemExit as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return path
    ap.add_argument("--python", type=interpreter, default=service_python(),
                    help="the interpreter that runs tfps.py (default: the python3 a systemd service finds, as "
                         f"install.sh's unit runs it: %(default)s){also}")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port(kind=socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_outside_ephemeral_range():
    """A free TCP port on loopback below the kernel's ephemeral range: a port that is closed for
    a while (a cut proxy) and then bound again must not be taken meanwhile as the source port of
    an outgoing connection, nor by a client's connect to it (a TCP self-connect)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            lowest = int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        lowest = 32768
    candidates = list(range(10000, max(10001, lowest)))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free TCP port below the ephemeral range")


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[k]


def median(values):
    values = sorted(v for v in values if v == v)
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def fmt(v, digits=2):
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def random_number(rng):
    """A dialed number in one of DESTINATIONS."""
    cc, length = rng.choice(DESTINATIONS)
    return cc + rng.choice("2345678") + "".join(rng.choice("0123456789") for _ in range(length - 1))


def account_identities(rng, users):
    """(user, source IP, User-Agent) of each benchmark account: every account calls from one
    address with one phone. (The addresses are drawn before the User-Agents: the SIP benchmark's
    injection CSV stays what it was for a given seed.)"""
    names = [f"{2000 + i}" for i in range(users)]
    ips = [f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in names]
    uas = [rng.choice(USER_AGENTS) for _ in names]
    return list(zip(names, ips, uas))


def write_config(work, port, db_path):
    """A configuration that never rejects the benchmark traffic. It uses only keys that every
    tfps.py since the SIP benchmark exists knows, so that two versions can run it alike."""
    conf = Path(work) / "tfps.conf"
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


def load_tfps(path):
    """Imports the tfps.py at `path` as the module `tfps` (its dataclasses look their module up
    in sys.modules); it reads the schema.sql beside it."""
    spec = importlib.util.spec_from_file_location("tfps", str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules["tfps"] = module
    spec.loader.exec_module(module)
    return module


def describe_version(path):
    """'PATH (commit abc1234)', with '+ uncommitted changes' when tfps.py differs from it."""
    path = Path(path).resolve()
    try:
        commit = subprocess.run(["git", "-C", str(path.parent), "log", "-1", "--format=%h"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path.parent), "status", "--porcelain", "--", path.name],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = dirty = ""
    if not commit:
        return str(path)
    return f"{path} (commit {commit}{' + uncommitted changes' if dirty else ''})"


def turns(versions, round_index, step_index=0):
    """The versions in the order they run a given step of a given round: the order flips from
    one step to the next and from one round to the next, so that neither version always runs
    first (right after a pause) or second (right after the other one's load)."""
    return list(versions) if (round_index + step_index) % 2 == 0 else list(reversed(versions))


class CuttableProxy:
    """TCP on a loopback port relayed to `target` (MariaDB's host and port), on threads; cut()
    closes the port and every relayed connection (connections are then refused, as by a stopped
    server), restore() opens the same port again. The tests and the outage benchmark take the
    database away with it, while the machine's MariaDB stays up for everyone else."""

    def __init__(self, target):
        self.target = target
        self.port = port_outside_ephemeral_range()
        self.lock = threading.Lock()
        self.listener = None
        self.sockets = set()
        self.restore()

    def restore(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self):
        """Close the port (a no-op when it is closed): shut down, not only closed, since a
        listening socket closed while a thread waits in accept() on it keeps listening."""
        with self.lock:
            listener, self.listener = self.listener, None
            doomed, self.sockets = self.sockets, set()
        for sock in ([listener] if listener else []) + list(doomed):
            with_shutdown(sock)

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                with_shutdown(client)
                continue
            with self.lock:
                if self.listener is not listener:
                    with_shutdown(client)
                    with_shutdown(server)
                    return
                self.sockets |= {client, server}
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, a, b):
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            with_shutdown(a)
            with_shutdown(b)


def with_shutdown(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def mysql_database(url):
    """A fresh database on the MariaDB server of `url`: (its URL, a function that drops it, the
    server's innodb_flush_log_at_trx_commit)."""
    import pymysql
    m = re.fullmatch(r"mysql://([^:@/]*)(?::([^@/]*))?@([^:/]+)(?::(\d+))?/?", url)
    if not m:
        raise SystemExit(f"--mysql {url}: expected mysql://USER:PASSWORD@HOST:PORT")
    user, password, host, port = m.group(1), m.group(2) or "", m.group(3), int(m.group(4) or 3306)
    name = f"tfps_peer_{secrets.token_hex(4)}"
    try:
        admin = pymysql.connect(host=host, port=port, user=user, password=password, autocommit=True, connect_timeout=5)
    except pymysql.MySQLError as exc:
        raise SystemExit(f"--mysql {url}: cannot connect: {exc}") from None
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        cur.execute("SELECT @@innodb_flush_log_at_trx_commit")
        flush = cur.fetchone()[0]

    def drop():
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()
    return f"mysql://{user}:{password}@{host}:{port}/{name}", drop, flush
