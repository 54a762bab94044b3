#!/usr/bin/env python3
"""A MariaDB Galera cluster on loopback: N nodes (default 3), one `mariadbd` each with its own
datadir under one directory, distinct SQL, Galera (gcomm), IST and SST ports on 127.0.0.1.

    python3 bench/galera.py up [--nodes 3] [--dir /tmp/tfps-galera]   # prints one URL per node
    python3 bench/galera.py status | kill 3 | restart 3 | down

As a library (tests, benchmarks):

    with GaleraCluster(n=3) as cluster:
        cluster.urls            # ['mysql://root:@127.0.0.1:PORT', ...]
        cluster.create_database("tfps")   # its URL on each node
        cluster.kill(3)         # SIGKILL node 3; the others keep quorum
        cluster.restart(3)      # it rejoins (IST, or SST when it must) and is Synced again

Node 1 is initialised with mariadb-install-db (root without a password, as the test database
on 127.0.0.1:3306) and bootstraps the cluster (--wsrep-new-cluster); the others start with empty
datadirs and receive a full copy by SST (rsync, or mariabackup when rsync is missing). `up`
leaves the nodes running and writes their state to DIR/cluster.json, which the other commands
read. Needs the Debian packages galera-4 and mariadb-server (and rsync); PyMySQL."""

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
DEFAULT_DIR = Path(tempfile.gettempdir()) / "tfps-galera"
STATE_FILE = "cluster.json"
# Failure detection in seconds rather than Galera's default tens of seconds: a killed node leaves
# the cluster view (and the survivors accept writes again) about 3 s after it died.
EVS_TIMEOUTS = ("evs.keepalive_period=PT0.5S;evs.inactive_check_period=PT0.5S;"
                "evs.suspect_timeout=PT2S;evs.inactive_timeout=PT3S;evs.install_timeout=PT3S")
# Seconds the nodes left after a kill may all be without a primary component before kill()
# bootstraps one among them
NON_PRIMARY_GRACE = 10.0


class GaleraError(Exception):
    pass


def free_tcp_ports(count):
    """`count` distinct TCP ports free on 127.0.0.1 (all held open together while they are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def sst_method():
    if shutil.which("rsync"):
        return "rsync"
    if shutil.which("mariabackup") or shutil.which("mariadb-backup"):
        return "mariabackup"
    raise GaleraError("neither rsync nor mariabackup is installed: no way to copy a node's state (apt install rsync)")


def database_user():
    """The user the nodes run as. Not root: the rsync daemon of an SST run by root would switch
    to `nobody`, which cannot write the joiner's datadir."""
    if os.geteuid():
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        return pwd.getpwnam("mysql").pw_name
    except KeyError:
        raise GaleraError("run as root, the nodes need the user mysql (apt install mariadb-server creates it)") from None


class GaleraNode:
    def __init__(self, index, home, ports, pid=None):
        self.index, self.home = index, Path(home)
        self.datadir = self.home / "data"
        self.sql_port, self.galera_port, self.ist_port, self.sst_port = ports
        self.pid = pid
        self.proc = None

    @property
    def url(self):
        return f"mysql://root:@127.0.0.1:{self.sql_port}"

    @property
    def log_path(self):
        return self.home / "mariadbd.err"

    def command(self, cluster_address, sst, bootstrap):
        return [MARIADBD, "--no-defaults", f"--user={database_user()}", f"--datadir={self.datadir}",
                f"--socket={self.home / 'mariadbd.sock'}", f"--pid-file={self.home / 'mariadbd.pid'}",
                f"--log-error={self.log_path}",
                "--bind-address=127.0.0.1", f"--port={self.sql_port}", "--skip-log-bin",
                "--binlog-format=ROW", "--default-storage-engine=InnoDB", "--innodb-autoinc-lock-mode=2",
                "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M",
                "--wsrep-on=ON", f"--wsrep-provider={PROVIDER}", "--wsrep-cluster-name=tfps-galera",
                f"--wsrep-node-name=node{self.index}", f"--wsrep-cluster-address={cluster_address}",
                f"--wsrep-node-address=127.0.0.1:{self.galera_port}",
                f"--wsrep-node-incoming-address=127.0.0.1:{self.sql_port}",
                f"--wsrep-sst-receive-address=127.0.0.1:{self.sst_port}", f"--wsrep-sst-method={sst}",
                f"--wsrep-provider-options=base_port={self.galera_port};"
                f"gmcast.listen_addr=tcp://127.0.0.1:{self.galera_port};ist.recv_addr=127.0.0.1:{self.ist_port};"
                f"gcache.size=64M;{EVS_TIMEOUTS}"] + (["--wsrep-new-cluster"] if bootstrap else [])

    def alive(self):
        if self.proc is not None:
            return self.proc.poll() is None
        if not self.pid:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:   # a zombie or a reused pid is not this node
            return Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"mariadbd") and \
                Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
        except OSError:
            return False

    def status(self):
        """{'wsrep_cluster_size': '3', 'wsrep_local_state_comment': 'Synced', ...}, or None when
        the node does not answer."""
        rows = self.query("SHOW GLOBAL STATUS LIKE 'wsrep_%'")
        return None if rows is None else dict(rows)

    def execute(self, statement):
        """Run one statement as root; False when the node does not answer or refuses it."""
        return self.query(statement) is not None

    def query(self, statement):
        """The rows of one statement run as root, or None when the node does not answer or refuses it."""
        import pymysql
        try:
            conn = pymysql.connect(host="127.0.0.1", port=self.sql_port, user="root", password="",
                                   connect_timeout=2, read_timeout=5)
        except pymysql.MySQLError:
            return None
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return cur.fetchall()
        except pymysql.MySQLError:
            return None
        finally:
            conn.close()

    def tail(self, lines=15):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class GaleraCluster:
    """N Galera nodes on loopback under `directory` (a new temporary one by default, removed at
    stop). start() returns once every node is Synced in a cluster of N."""

    def __init__(self, n=3, directory=None, start_timeout=120):
        if n < 1:
            raise GaleraError("a cluster needs at least one node")
        for path, package in ((PROVIDER, "galera-4"), (MARIADBD, "mariadb-server"), (INSTALL_DB, "mariadb-server")):
            if not os.path.exists(path):
                raise GaleraError(f"{path} not found: apt install {package}")
        self.directory = Path(directory or tempfile.mkdtemp(prefix="tfps-galera-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self.primary_bootstrapped = 0   # times kill() bootstrapped a primary component among the nodes left
        self.sst = sst_method()
        ports = free_tcp_ports(4 * n)
        self.nodes = [GaleraNode(i + 1, self.directory / f"node{i + 1}", ports[4 * i:4 * i + 4]) for i in range(n)]
        self.startup_seconds = None

    # -- state shared with the CLI -----------------------------------------------------------
    @classmethod
    def load(cls, directory):
        try:
            state = json.loads((Path(directory) / STATE_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise GaleraError(f"{Path(directory) / STATE_FILE}: no cluster there ({exc})") from None
        cluster = cls.__new__(cls)
        cluster.directory = Path(directory)
        cluster.start_timeout, cluster.sst, cluster.startup_seconds = state["start_timeout"], state["sst"], None
        cluster.primary_bootstrapped = 0
        cluster.nodes = [GaleraNode(node["index"], node["home"], node["ports"], node["pid"]) for node in state["nodes"]]
        return cluster

    def save(self):
        state = {"start_timeout": self.start_timeout, "sst": self.sst,
                 "nodes": [{"index": node.index, "home": str(node.home), "pid": node.proc.pid if node.proc else node.pid,
                            "ports": [node.sql_port, node.galera_port, node.ist_port, node.sst_port]}
                           for node in self.nodes]}
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=1))

    # -- life cycle --------------------------------------------------------------------------
    @property
    def urls(self):
        return [node.url for node in self.nodes]

    def create_database(self, name):
        """Creates the database `name` on node 1 (Galera replicates it) and returns its URL on
        every node, for TFPS nodes' [database] url."""
        import pymysql
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name):
            raise GaleraError(f"{name!r}: a database name here is 1 to 64 letters, digits or underscores")
        with pymysql.connect(host="127.0.0.1", port=self.nodes[0].sql_port, user="root", password="",
                             autocommit=True, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        return [f"{node.url}/{name}" for node in self.nodes]

    @property
    def cluster_address(self):
        return "gcomm://" + ",".join(f"127.0.0.1:{node.galera_port}" for node in self.nodes)

    def node(self, index):
        if not 1 <= index <= len(self.nodes):
            raise GaleraError(f"no node {index}: the cluster has nodes 1 to {len(self.nodes)}")
        return self.nodes[index - 1]

    def start(self):
        started = time.monotonic()
        first = self.nodes[0]
        user = database_user()
        self.directory.chmod(0o755)
        closed = next((p for p in self.directory.resolve().parents if not p.stat().st_mode & 0o001), None)
        if closed is not None and os.geteuid() == 0:
            raise GaleraError(f"{self.directory}: the user {user} cannot reach it ({closed} is not searchable by others); "
                              f"choose a directory under {tempfile.gettempdir()}")
        for node in self.nodes:
            node.datadir.mkdir(parents=True, exist_ok=True)
            for path in (node.home, node.datadir):
                shutil.chown(path, user, user)
        init = subprocess.run([INSTALL_DB, "--no-defaults", f"--user={user}", f"--datadir={first.datadir}",
                               "--auth-root-authentication-method=normal", "--skip-test-db"],
                              capture_output=True, text=True)
        if init.returncode:
            raise GaleraError(f"mariadb-install-db failed ({init.returncode}): {(init.stderr or init.stdout).strip()[-500:]}")
        try:
            self._launch(first, bootstrap=True)
            self.wait(lambda: self._synced([first], 1), "node 1 to bootstrap")
            for node in self.nodes[1:]:   # one at a time: each joiner takes its SST from a Synced donor
                self._launch(node)
                self.wait(lambda: self._answers(node), f"node {node.index} to join")
            self.wait(lambda: self._synced(self.nodes, len(self.nodes)), f"{len(self.nodes)} nodes Synced")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self.save()
        return self

    def _launch(self, node, bootstrap=False):
        with open(node.log_path, "ab") as out:
            node.proc = subprocess.Popen(node.command(self.cluster_address, self.sst, bootstrap), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node.pid = node.proc.pid

    @staticmethod
    def _answers(node):
        if not node.alive():
            raise GaleraError(f"node {node.index} exited; the end of {node.log_path}:\n{node.tail()}")
        return node.status()

    def _synced(self, nodes, size):
        for node in nodes:
            status = self._answers(node)
            if not status or status.get("wsrep_local_state_comment") != "Synced" \
                    or status.get("wsrep_cluster_size") != str(size) or status.get("wsrep_ready") != "ON":
                return False
        return True

    def wait(self, condition, what):
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        states = {n.index: (n.status() or {}).get("wsrep_local_state_comment", "down") for n in self.nodes}
        lagging = next(n for n in self.nodes if states[n.index] != "Synced")
        raise GaleraError(f"timed out after {self.start_timeout} s waiting for {what}; "
                          + "; ".join(f"node {index}: {state}" for index, state in states.items())
                          + f"; the end of node {lagging.index}'s log:\n{lagging.tail()}")

    def kill(self, index):
        """SIGKILL node `index` and wait until the others have a cluster without it."""
        node = self.node(index)
        if not node.alive():
            raise GaleraError(f"node {index} is not running")
        os.kill(node.pid, signal.SIGKILL)
        if node.proc:
            node.proc.wait()
        else:
            while node.alive():
                time.sleep(0.05)
        rest = [n for n in self.nodes if n is not node and n.alive()]
        non_primary_since = None

        def left_out():
            nonlocal non_primary_since
            if self._synced(rest, len(rest)):
                return True
            if all((n.status() or {}).get("wsrep_cluster_status") == "non-Primary" for n in rest):
                non_primary_since = non_primary_since or time.monotonic()
                if time.monotonic() - non_primary_since > NON_PRIMARY_GRACE:
                    self._bootstrap_primary(rest)
                    non_primary_since = None
            else:
                non_primary_since = None
            return False
        self.wait(left_out, f"the {len(rest)} other nodes to leave node {index} out")
        self.save()

    def _bootstrap_primary(self, nodes):
        """What an operator does when the nodes left have no primary component (a machine too
        busy for the EVS timeouts split them up as node 3 went): the one with the latest
        transaction bootstraps a new one, and the others join it."""
        latest = max(nodes, key=lambda n: int((n.status() or {}).get("wsrep_last_committed") or -1))
        if latest.execute("SET GLOBAL wsrep_provider_options = 'pc.bootstrap=YES'"):
            self.primary_bootstrapped += 1

    def restart(self, index):
        """Start node `index` again; it rejoins and this returns when all running nodes are Synced."""
        node = self.node(index)
        if node.alive():
            raise GaleraError(f"node {index} is running")
        self._launch(node)
        running = [n for n in self.nodes if n.alive()]
        self.wait(lambda: self._synced(running, len(running)), f"node {index} to rejoin")
        self.save()

    def stop(self):
        """Stops every node (SIGTERM, then SIGKILL after 30 s) and removes the directory."""
        for node in self.nodes:
            if node.alive():
                os.kill(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for node in self.nodes:
            while node.alive() and time.monotonic() < deadline:
                if node.proc:
                    try:
                        node.proc.wait(0.2)
                    except subprocess.TimeoutExpired:
                        pass
                else:
                    time.sleep(0.2)
            if node.alive():
                os.kill(node.pid, signal.SIGKILL)
                if node.proc:
                    node.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status", "kill", "restart"])
    ap.add_argument("node", nargs="?", type=int, help="kill, restart: the node's number (1 to N)")
    ap.add_argument("--nodes", type=int, default=3, help="up: how many nodes (default 3)")
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where the cluster lives (default {DEFAULT_DIR})")
    ap.add_argument("--timeout", type=int, default=120, help="up: seconds to wait for the nodes (default 120)")
    args = ap.parse_args(argv)
    if (args.node is None) == (args.command in ("kill", "restart")):
        ap.error(f"{args.command} takes a node number" if args.node is None else f"{args.command} takes no node number")
    try:
        if args.command == "up":
            if (args.dir / STATE_FILE).exists():
                raise GaleraError(f"{args.dir}: a cluster is already there (python3 bench/galera.py down --dir {args.dir})")
            if args.dir.exists() and any(args.dir.iterdir()):
                raise GaleraError(f"{args.dir}: not empty")
            cluster = GaleraCluster(args.nodes, args.dir, args.timeout).start()
            print(f"{len(cluster.nodes)} nodes Synced in {cluster.startup_seconds:.1f} s (SST {cluster.sst}), in {args.dir}")
        else:
            cluster = GaleraCluster.load(args.dir)
            if args.command == "down":
                cluster.stop()
                print(f"stopped; {args.dir} removed")
                return 0
            if args.command == "kill":
                cluster.kill(args.node)
            elif args.command == "restart":
                cluster.restart(args.node)
        for node in cluster.nodes:
            status = node.status() if node.alive() else None
            state = (f"{status.get('wsrep_local_state_comment')}, cluster size {status.get('wsrep_cluster_size')}"
                     if status else "down")
            print(f"node {node.index}: {node.url}  ({state})")
        return 0
    except GaleraError as exc:
        print(f"galera: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
