"""The local Galera cluster of bench/galera.py: three real mariadbd nodes on loopback replicate
synchronously (a row written on node 1 is read on nodes 2 and 3), keep accepting writes on two
nodes after the third is killed with SIGKILL, and take the third back with what it missed.

Then three TFPS servers, each on its own Galera node, race for the same accounts' daily quotas
(counters in the database, where Galera's certification conflicts come back as error 1213 and
the verdict is evaluated again, and quota leases), and keep answering and logging every call
while a Galera node is killed under them. One cluster for the module: about a minute in
all, a fifth of it the cluster's start (SST of node 1's datadir to nodes 2 and 3)."""

import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter

import pymysql
import pytest

from conftest import REPO, recv_response, sip_invite, udp_socket, wait_until
from test_multinode import DOMAIN, create_accounts, race_nodes

sys.path.insert(0, str(REPO / "bench"))

from galera import GaleraCluster, GaleraError  # noqa: E402


def connect(node):
    return pymysql.connect(host="127.0.0.1", port=node.sql_port, user="root", password="", database="tfps_galera",
                           autocommit=True, connect_timeout=5, read_timeout=10, write_timeout=10)


def rows(node):
    with connect(node) as conn, conn.cursor() as cur:
        cur.execute("SELECT node, n FROM t ORDER BY node, n")
        return cur.fetchall()


def write(node, n):
    with connect(node) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO t (node, n) VALUES (%s, %s)", (node.index, n))


@pytest.fixture(scope="module")
def cluster():
    with GaleraCluster(n=3) as started:
        yield started


def test_a_write_on_one_node_is_read_on_the_others(cluster):
    assert cluster.startup_seconds < 90
    assert cluster.urls == [f"mysql://root:@127.0.0.1:{node.sql_port}" for node in cluster.nodes]
    assert len({port for node in cluster.nodes
                for port in (node.sql_port, node.galera_port, node.ist_port, node.sst_port)}) == 12
    first = cluster.node(1)
    assert cluster.create_database("tfps_galera") == [f"{url}/tfps_galera" for url in cluster.urls]
    with connect(first) as conn:
        conn.cursor().execute("CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, node INT NOT NULL, n INT NOT NULL)")
    for n in range(5):
        write(first, n)
    # Galera certifies on commit and applies on the others before they answer a read that
    # waits for causality (wsrep_sync_wait), so no polling is needed.
    for node in cluster.nodes[1:]:
        with connect(node) as conn, conn.cursor() as cur:
            cur.execute("SET SESSION wsrep_sync_wait = 1")
            cur.execute("SELECT node, n FROM t ORDER BY n")
            assert cur.fetchall() == tuple((1, n) for n in range(5))


def test_two_nodes_accept_writes_after_the_third_is_killed_and_it_catches_up(cluster):
    third = cluster.node(3)
    cluster.kill(3)
    assert not third.alive()
    status = cluster.node(1).status()
    assert status["wsrep_cluster_size"] == "2" and status["wsrep_cluster_status"] == "Primary"
    for n in range(5, 10):
        write(cluster.node(1), n)
        write(cluster.node(2), n)
    expected = tuple((1, n) for n in range(10)) + tuple((2, n) for n in range(5, 10))
    assert rows(cluster.node(1)) == rows(cluster.node(2)) == expected
    cluster.restart(3)
    assert third.status()["wsrep_cluster_size"] == "3"
    assert rows(third) == expected
    write(third, 10)
    with connect(cluster.node(1)) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION wsrep_sync_wait = 1")
        cur.execute("SELECT COUNT(*) FROM t WHERE node = 3")
        assert cur.fetchone() == (1,)


def test_bad_node_numbers_are_refused(cluster):
    for index in (0, 4):
        with pytest.raises(GaleraError, match=f"no node {index}: the cluster has nodes 1 to 3"):
            cluster.node(index)
    with pytest.raises(GaleraError, match="node 1 is running"):
        cluster.restart(1)
    with pytest.raises(GaleraError, match="a database name here is 1 to 64 letters"):
        cluster.create_database("x; DROP DATABASE mysql")


def test_the_cli_refuses_bad_input_in_one_line(tmp_path):
    for argv, message in ((["kill"], "kill takes a node number"), (["up", "2"], "up takes no node number"),
                          (["status", "--dir", str(tmp_path)], f"{tmp_path}/cluster.json: no cluster there")):
        result = subprocess.run([sys.executable, str(REPO / "bench" / "galera.py")] + argv,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert message in result.stderr and "Traceback" not in result.stderr


# -- TFPS servers on the cluster ------------------------------------------------------------

POLICY = {"learning_days": "0", "business_hours": "mon-sun 00:00-24:00", "max_calls_per_minute": "0"}


def tfps_database(cluster):
    """A fresh TFPS database on the cluster: its URL on each Galera node."""
    return cluster.create_database(f"tfps_{secrets.token_hex(4)}")


def read_synced(node, database, text, params=()):
    """Rows of a query on Galera node `node`, once it has applied every write the cluster committed."""
    with pymysql.connect(host="127.0.0.1", port=node.sql_port, user="root", password="", database=database,
                         autocommit=True, connect_timeout=5, read_timeout=30) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION wsrep_sync_wait = 1")
        cur.execute(text, params)
        return cur.fetchall()


def retries(server):
    """Verdicts a server evaluated again after a conflict (Galera's 1213 or a quota taken
    meanwhile): their count, and the most tries of one verdict."""
    again = Counter(re.findall(r"call-id=(\S+): .*; evaluating again", server.read_log()))
    return sum(again.values()), max(again.values(), default=0)


@pytest.mark.parametrize("quota_lease", ["0", "2"])
def test_three_servers_on_three_galera_nodes_never_exceed_the_quota(cluster, start_server, quota_lease):
    """Each server has a Galera node of its own; INVITEs of two accounts reach the three at the
    same moment, 18 at a time. With counters in the database, two nodes approving its calls
    conflict on its counter row and the later commit fails certification (1213): that verdict
    is evaluated again on the count the other node committed, up to 20 times: every INVITE is
    answered 302 (five tries left a verdict unanswered now and then) and each account is approved
    exactly its quota. With leases, claims write the counter row and conflict the same way (a
    locking read alone is not certified across the cluster: claims on two nodes both took the
    last calls, a few over the quota). What the cluster counted is what the servers approved, and
    the call log has a row for every INVITE."""
    quota, users, threads_per_node, calls_per_thread = 150, ("3101", "3102"), 6, 40
    urls = tfps_database(cluster)
    ids = create_accounts(urls[0], users, daily_quota=quota, daily_quota_off=quota)
    database = {"quota_lease": quota_lease, "flush_interval": "0.05s"}
    servers = [start_server(url, {"policy": POLICY, "database": database, "server": {"node_name": f"galera-{k + 1}", "overload_after": "0"}})
               for k, url in enumerate(urls)]
    started = time.monotonic()
    results = race_nodes(servers, users, calls_per_thread, threads_per_node)
    duration = time.monotonic() - started
    total = len(servers) * threads_per_node * calls_per_thread
    approved = {user: sum(1 for _p, u, _s, code, _r in results if u == user and code == "A00") for user in users}
    overshoot = sum(max(0, calls - quota) for calls in approved.values())
    print(f"\nquota_lease = {quota_lease}: {total} INVITEs on 3 Galera nodes in {duration:.2f} s; approved {approved} "
          f"(quota {quota}, overshoot {overshoot}); verdicts evaluated again, and most retries of one, per server: "
          f"{[retries(server) for server in servers]}")
    assert Counter(status for _p, _u, status, _c, _r in results) == {302: total}
    assert overshoot == 0, approved
    for user in users:
        assert set(code for _p, u, _s, code, _r in results if u == user) == {"A00", "R11"}, user
    if quota_lease == "0":   # counted at each verdict: exactly the quota (leases may leave it short a moment)
        assert approved == {user: quota for user in users}
    for server in servers:
        assert server.stop() == 0
        assert "Traceback" not in server.read_log()
    name = urls[0].rsplit("/", 1)[1]
    for node in cluster.nodes:
        counted = dict(read_synced(node, name, "SELECT account_id, SUM(approved) FROM daily_counters GROUP BY account_id"))
        assert {user: int(counted.get(ids[user], 0)) for user in users} == approved, node.index
    assert read_synced(cluster.node(1), name, "SELECT node, calls FROM quota_leases WHERE calls > 0") == ()
    # the last flush of a stopping server conflicts with the others' as well: tried again, every row written
    answered = Counter(f"galera-{[server.port for server in servers].index(port) + 1}" for port, *_rest in results)
    assert dict(read_synced(cluster.node(1), name, "SELECT node, COUNT(*) FROM call_log GROUP BY node")) == answered


class Caller(threading.Thread):
    """A UAC sending INVITEs to one server one after the other until stopped, retransmitting
    each every 0.5 s until its final answer; keeps (status, code) per call."""

    def __init__(self, server, users, prefix):
        super().__init__(daemon=True)
        self.server, self.users, self.prefix = server, users, prefix
        self.answers, self.unanswered = [], 0
        self.halt = threading.Event()

    def run(self):
        sock = udp_socket(timeout=0.5)
        local = sock.getsockname()[1]
        try:
            n = 0
            while not self.halt.is_set():
                call_id = f"{self.prefix}-{n}@galera"
                data = sip_invite(f"1212{self.prefix}{n:05d}", self.server.port, user=self.users[n % len(self.users)],
                                  domain=DOMAIN, local_port=local, call_id=call_id)
                self.answers.append(self._call(sock, data, call_id))
                n += 1
        finally:
            sock.close()

    def _call(self, sock, data, call_id):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sock.sendto(data, ("127.0.0.1", self.server.port))
            try:
                while True:
                    msg, _raw = recv_response(sock)
                    if msg.header("call-id") == call_id and msg.status >= 200:
                        return msg.status, msg.header("x-tfps-code"), msg.header("x-tfps-reason")
            except TimeoutError:
                continue
        return None, None, "no final answer within 10 s"


def test_a_galera_node_killed_mid_run_loses_no_verdict_and_no_call_log_row(cluster, start_server):
    """Calls flow to three servers, one per Galera node; Galera node 3 is killed with -9 midway.
    Servers 1 and 2 answer every INVITE throughout (while the cluster evicts node 3 their writes
    wait, and past [database] timeout they decide from memory and keep the rows) and their call
    log rows are all in the cluster. Server 3 follows [database] failure = continue: it answers
    from memory and writes its rows once its Galera node is back. Runs last: it leaves node 3
    restarted."""
    users = ("3201", "3202", "3203")
    urls = tfps_database(cluster)
    name = urls[0].rsplit("/", 1)[1]
    create_accounts(urls[0], users, daily_quota=100000, daily_quota_off=100000)
    database = {"failure": "continue", "flush_interval": "0.1s"}
    servers = [start_server(url, {"policy": POLICY, "database": database, "server": {"node_name": f"galera-{k + 1}", "overload_after": "0"}})
               for k, url in enumerate(urls)]
    callers = [Caller(server, users, f"{k + 1}{j}") for k, server in enumerate(servers) for j in range(2)]
    for caller in callers:
        caller.start()
    time.sleep(2.0)
    killed = time.monotonic()
    cluster.kill(3)
    evicted = time.monotonic() - killed
    time.sleep(2.0)
    for caller in callers:
        caller.halt.set()
    for caller in callers:
        caller.join(30)
    answered = {k + 1: [a for caller in callers[2 * k:2 * k + 2] for a in caller.answers] for k in range(3)}
    for index, answers in answered.items():
        assert answers and all(status == 302 for status, _code, _reason in answers), \
            (index, Counter(status for status, _c, _r in answers))
    from_memory = {index: sum("database unavailable" in (reason or "") for _s, _c, reason in answers)
                   for index, answers in answered.items()}
    for server in servers[:2]:
        assert server.stop() == 0
    logged = dict(read_synced(cluster.node(1), name, "SELECT node, COUNT(*) FROM call_log GROUP BY node"))
    print(f"\ncluster evicted node 3 in {evicted:.1f} s (a primary component bootstrapped {cluster.primary_bootstrapped} "
          f"time(s) among the two left); calls answered per server "
          f"{ {i: len(a) for i, a in answered.items()} }, of them from memory {from_memory}; "
          f"call log rows {logged}")
    for index in (1, 2):
        assert logged.get(f"galera-{index}") == len(answered[index]), (index, logged)
    assert from_memory[3] > 0, "server 3 lost its Galera node: it decided from memory"
    restarted = time.monotonic()
    cluster.restart(3)
    wait_until(lambda: dict(read_synced(cluster.node(1), name, "SELECT node, COUNT(*) FROM call_log GROUP BY node")
                            ).get("galera-3") == len(answered[3]), 30,
               message=lambda: f"server 3 to write its {len(answered[3])} rows:\n{servers[2].read_log()[-3000:]}")
    print(f"node 3 rejoined and server 3 wrote its rows {time.monotonic() - restarted:.1f} s after the restart")
    assert servers[2].stop() == 0
    for server in servers:
        assert "Traceback" not in server.read_log(), server.read_log()[-3000:]
