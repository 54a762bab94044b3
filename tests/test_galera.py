"""The local Galera cluster of bench/galera.py: three real mariadbd nodes on loopback replicate
synchronously (a row written on node 1 is read on nodes 2 and 3), keep accepting writes on two
nodes after the third is killed with SIGKILL, and take the third back with what it missed.
About 30 s: most of it is the cluster's start (SST of node 1's datadir to nodes 2 and 3)."""

import subprocess
import sys

import pymysql
import pytest

from conftest import REPO

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
