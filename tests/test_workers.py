"""[server] workers = N: worker processes under one supervisor share the SIP port with
SO_REUSEPORT. A peer's retransmissions reach the worker that holds the transaction (answered
from its table, byte for byte), quotas hold across workers on a shared SQLite file, a killed
worker is started again and signals reach every worker."""

import os
import select
import signal
import socket
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

import tfps
from conftest import (TfpsServer, answers_before_options, free_port, recv_response, run_cli, sip_invite, udp_socket,
                      wait_until)
from test_multinode import create_accounts, race_nodes

POLICY = {"learning_days": "0", "business_hours": "mon-sun 00:00-24:00", "max_calls_per_minute": "0"}


def workers_of(server):
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    return sorted(map(int, children))


def start_workers(start_server, url, workers=2, **database):
    server = start_server(url, {"policy": POLICY, "server": {"workers": str(workers), "overload_after": "0"},
                                "database": database})
    wait_until(lambda: server.read_log().count("serving in") == workers, 15, message=server.read_log)
    assert len(workers_of(server)) == workers
    return server


def start_two_workers_with_http(tmp_path, start_server):
    http_port = free_port()
    server = start_server(f"sqlite://{tmp_path / 'tfps.db'}",
                          {"policy": POLICY, "server": {"workers": "2", "overload_after": "0"},
                           "http": {"listen": f"127.0.0.1:{http_port}"}})
    wait_until(lambda: server.read_log().count("serving in") == 2, 15, message=server.read_log)
    return server, http_port


def scrape(http_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        return response.read().decode()


def metric_sum(http_port, prefix):
    """The sum of the samples whose line starts with `prefix`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in scrape(http_port).splitlines() if line.startswith(prefix))


def final_answer(sock, data, port):
    sock.sendto(data, ("127.0.0.1", port))
    while True:
        msg, raw = recv_response(sock)
        if msg.status >= 200:
            return msg, raw


def test_retransmissions_reach_the_worker_that_holds_the_transaction(tmp_path, start_server):
    url = f"sqlite://{tmp_path / 'tfps.db'}"
    server = start_workers(start_server, url)
    sockets = [udp_socket() for _ in range(24)]
    try:
        firsts = {}
        for k, sock in enumerate(sockets):   # 24 source ports: the kernel spreads them over both workers
            data = sip_invite(f"1212555{k:04d}", server.port, user=f"30{k:02d}", local_port=sock.getsockname()[1])
            msg, raw = final_answer(sock, data, server.port)
            assert msg.status == 302 and msg.header("x-tfps-code") == "A00", raw
            firsts[k] = (data, raw)
        for k, sock in enumerate(sockets):
            data, raw = firsts[k]
            again = final_answer(sock, data, server.port)[1]
            assert again == raw, "a retransmission got a new verdict instead of the transaction's answer"
    finally:
        for sock in sockets:
            sock.close()
    assert server.stop() == 0
    db = tfps.open_database(url)
    try:
        assert db.scalar("SELECT COUNT(*) FROM call_log") == 24, "one verdict per INVITE, retransmissions included"
        pids = {node.split("/")[1] for (node,) in db.query("SELECT DISTINCT node FROM quota_leases")}
        assert pids == set(), "leases given back at stop"
    finally:
        db.close()


@pytest.mark.parametrize("from_header", [b"From:", b"f:"])
def test_requests_from_one_port_are_shared_by_caller_and_retransmissions_answered_alike(tmp_path, start_server,
                                                                                        from_header):
    """A PBX sends every request from one port, which SO_REUSEPORT alone would give to one
    worker: each request still goes to the worker its From URI hashes to, so both workers decide
    calls, each caller's on one worker, and the retransmissions and ACK of a call reach the worker
    that holds its transaction. The kernel steers a request with a `From:` header to that worker
    itself; one in the compact form `f:` reaches whichever worker the kernel picks, which hands
    it over."""
    server, http_port = start_two_workers_with_http(tmp_path, start_server)
    call_ids = [f"shared-{k}@test" for k in range(40)]
    users = [f"40{k % 20:02d}" for k in range(40)]   # 20 callers, two calls each
    of_worker_0 = sum(1 for user in users if tfps.uri_worker(f"sip:{user}@pbx.example.com".encode(), 2) == 0)
    assert 0 < of_worker_0 < len(call_ids)
    sock = udp_socket()
    try:
        port = sock.getsockname()[1]
        for k, call_id in enumerate(call_ids):
            data = sip_invite(f"1212777{k:04d}", server.port, local_port=port, call_id=call_id, user=users[k])
            data = data.replace(b"\r\nFrom:", b"\r\n" + from_header, 1)
            msg, raw = final_answer(sock, data, server.port)
            assert msg.status == 302 and msg.header("x-tfps-code") == "A00", raw
            assert final_answer(sock, data, server.port)[1] == raw, "a retransmission got a verdict of its own"
            to_tag = msg.header("to").split("tag=")[1]
            ack = data.replace(b"INVITE sip:", b"ACK sip:", 1).replace(b"1 INVITE", b"1 ACK").replace(
                b"To: <sip:1212777%04d@127.0.0.1>" % k, b"To: <sip:1212777%04d@127.0.0.1>;tag=%s" % (k, to_tag.encode()))
            sock.sendto(ack, ("127.0.0.1", server.port))
        assert answers_before_options(sock, server.port) == [], "an ACK did not reach the transaction's worker"
    finally:
        sock.close()
    wait_until(lambda: metric_sum(http_port, "tfps_verdicts_total{") == len(call_ids), 10,
               message=lambda: f"worker 0's /metrics to count every worker's verdicts:\n{scrape(http_port)}")
    assert metric_sum(http_port, 'tfps_worker_verdicts_total{worker="0"}') == of_worker_0, \
        "worker 0 decided the calls of its own callers, and only those"
    assert metric_sum(http_port, 'tfps_worker_verdicts_total{worker="1"}') == len(call_ids) - of_worker_0
    assert metric_sum(http_port, 'tfps_sip_requests_total{method="INVITE"}') == 2 * len(call_ids)
    assert metric_sum(http_port, "tfps_workers_reporting") == 2
    handed_over = metric_sum(http_port, "tfps_sip_handed_over_total")
    if from_header == b"From:":
        assert handed_over == 0, "the kernel steered every request to the worker of its caller"
    else:
        assert handed_over > 0
    assert server.stop() == 0, server.read_log()
    db = tfps.open_database(f"sqlite://{tmp_path / 'tfps.db'}")
    try:
        assert db.scalar("SELECT COUNT(*) FROM call_log") == len(call_ids)
    finally:
        db.close()


def test_the_calls_of_one_caller_are_counted_whole_by_one_worker(tmp_path, start_server):
    """max_calls_per_minute is counted in each worker's memory: spread over two workers, the
    calls of one account would get twice the limit."""
    policy = dict(POLICY, max_calls_per_minute="3")
    server = start_server(f"sqlite://{tmp_path / 'tfps.db'}",
                          {"policy": policy, "server": {"workers": "2", "overload_after": "0"}})
    wait_until(lambda: server.read_log().count("serving in") == 2, 15, message=server.read_log)
    codes = []
    sock = udp_socket()
    try:
        for k in range(8):
            data = sip_invite(f"1212888{k:04d}", server.port, local_port=sock.getsockname()[1], user="4100")
            codes.append(final_answer(sock, data, server.port)[0].header("x-tfps-code"))
    finally:
        sock.close()
    assert Counter(codes) == {"A00": 3, "R15": 5}, codes


def test_two_workers_on_one_sqlite_file_never_exceed_the_quota(tmp_path, start_server):
    url = f"sqlite://{tmp_path / 'tfps.db'}"
    quota, users = 10, ("3101", "3102", "3103")
    tfps.open_database(url).close()
    ids = create_accounts(url, users, daily_quota=quota, daily_quota_off=quota)
    server = start_workers(start_server, url, quota_lease="3", flush_interval="0.05s")
    results = race_nodes([server] * 2, users, 10, 4)   # 8 source ports, 80 INVITEs, 26-27 per account
    assert Counter(r[2] for r in results) == {302: 80}
    for user in users:
        codes = Counter(r[3] for r in results if r[1] == user)
        assert 0 < codes["A00"] <= quota and set(codes) <= {"A00", "R11"}, (user, codes)
    assert server.stop() == 0
    db = tfps.open_database(url)
    try:
        for user in users:
            approved = sum(1 for r in results if r[1] == user and r[3] == "A00")
            counted = db.scalar("SELECT SUM(approved) FROM daily_counters WHERE account_id = ?", (ids[user],))
            assert int(counted) == approved, user
        assert db.scalar("SELECT COUNT(*) FROM quota_leases WHERE calls > 0") == 0
    finally:
        db.close()


def test_a_killed_worker_is_started_again_and_signals_reach_every_worker(tmp_path, start_server):
    server = start_workers(start_server, f"sqlite://{tmp_path / 'tfps.db'}")
    first, second = workers_of(server)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len(workers_of(server)) == 2 and first not in workers_of(server), 10,
               message=lambda: f"a new worker:\n{server.read_log()}")
    assert "was killed by signal 9; starting it again" in server.read_log()
    wait_until(lambda: server.read_log().count("serving in") == 3, 15, message=server.read_log)
    for k in range(8):   # both workers answer, whichever the kernel picks
        sock = udp_socket()
        try:
            data = sip_invite(f"1212666{k:04d}", server.port, local_port=sock.getsockname()[1])
            try:
                assert final_answer(sock, data, server.port)[0].status == 302
            except (AssertionError, OSError) as exc:
                raise AssertionError(f"INVITE {k}: {exc!r}\n{server.read_log()}") from exc
        finally:
            sock.close()
    server.signal(signal.SIGHUP)
    wait_until(lambda: server.read_log().count("SIGHUP: configuration and lists reloaded") == 2, 10,
               message=server.read_log)
    assert server.stop() == 0, server.read_log()
    assert server.read_log().count("stopped after") == 2, server.read_log()


def test_auto_runs_one_worker_per_cpu_the_server_may_use(tmp_path, start_server):
    """workers = auto counts the CPUs of the server's affinity mask (taskset, systemd's
    CPUAffinity=), not every CPU of the machine."""
    sections = {"policy": POLICY, "server": {"workers": "auto"}}
    pinned = start_server(f"sqlite://{tmp_path / 'pinned.db'}", sections, cpus={min(os.sched_getaffinity(0))})
    cpus = len(os.sched_getaffinity(0))
    unpinned = start_server(f"sqlite://{tmp_path / 'unpinned.db'}", sections)
    wait_until(lambda: unpinned.read_log().count("serving in") == cpus, 15, message=unpinned.read_log)
    assert workers_of(pinned) == [] and "supervising" not in pinned.read_log(), pinned.read_log()
    assert len(workers_of(unpinned)) == (cpus if cpus > 1 else 0), unpinned.read_log()
    with udp_socket() as sock:
        assert final_answer(sock, sip_invite("12126660001", pinned.port, local_port=sock.getsockname()[1]),
                            pinned.port)[0].status == 302


def write_cgroup(root, group, cpu_max):
    """A cgroup v2 tree under `root`: `cpu_max` maps a cgroup path (\"\" = the root) to its cpu.max."""
    for path, text in cpu_max.items():
        directory = root / "fs" / path
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpu.max").write_text(text)
    (root / "cgroup").write_text(f"1:name=systemd:/{group}\n0::/{group}\n")
    return str(root / "cgroup"), str(root / "fs")


@pytest.mark.parametrize("cpu_max, expected", [
    ({}, None),                                                                   # no CPU controller: the affinity mask
    ({"system.slice/tfps.service": "max 100000\n"}, None),                        # no quota
    ({"system.slice/tfps.service": "50000 100000\n"}, 1),                         # half a CPU: one worker
    ({"system.slice": "100000 100000\n", "system.slice/tfps.service": "max 100000\n"}, 1),  # a parent's quota
    ({"system.slice/tfps.service": "6400000 100000\n"}, None),                    # more than the mask allows
    ({"system.slice/tfps.service": "lots 100000\n", "system.slice": "0 100000"}, None),    # not a quota
])
def test_a_cgroup_cpu_quota_lowers_the_cpus_auto_counts(tmp_path, cpu_max, expected):
    proc_cgroup, root = write_cgroup(tmp_path, "system.slice/tfps.service", cpu_max)
    assert tfps.usable_cpus(proc_cgroup, root) == (expected or len(os.sched_getaffinity(0)))


def test_without_cgroup_v2_auto_counts_the_affinity_mask(tmp_path):
    (tmp_path / "cgroup").write_bytes(b"4:cpu,cpuacct:/tfps\n2:memory:/\xff\n")
    assert tfps.usable_cpus(str(tmp_path / "cgroup"), str(tmp_path)) == len(os.sched_getaffinity(0))
    assert tfps.usable_cpus(str(tmp_path / "missing"), str(tmp_path)) == len(os.sched_getaffinity(0))


def test_workers_refuse_a_port_another_server_holds(tmp_path):
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", port))
        server = TfpsServer(tmp_path, f"sqlite://{tmp_path / 'tfps.db'}", {"server": {"workers": "2"}}, port=port)
        result = run_cli("serve", config=server.config, timeout=30)
    assert result.returncode == 1, result.stderr   # as one process does: the port is taken
    assert f"cannot listen on udp:127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_datagrams_of_one_read_reach_their_owner_in_one_handoff_and_come_back_when_it_has_no_room():
    pairs = tfps.WorkerHandoff.sockets(2)
    try:
        reader = tfps.WorkerHandoff(pairs, 0, None)
        sent = [(0, ("127.0.0.1", 5060 + k), 100.0 + k, b"INVITE %d" % k) for k in range(3)]
        for listener, addr, arrived, data in sent:
            assert reader.forward(1, listener, addr, arrived, data) == []
        assert reader.send() == [] and reader.batches == {}
        inbox = pairs[1][0]
        assert tfps.WorkerHandoff.unpack(inbox.recv(1 << 20)) == sent
        assert tfps.WorkerHandoff.unpack(b"\0" * 5) == [], "a packet too short holds nothing"
        with_ipv6 = (1, ("2001:db8::1", 5070), 7.5, b"x" * 40000)  # over HANDOFF_BATCH: sent at once
        assert reader.forward(1, *with_ipv6) == [] and reader.batches == {}
        assert tfps.WorkerHandoff.unpack(inbox.recv(1 << 20)) == [with_ipv6]
        for size in (60000, 1):  # the owner stops reading: its inbox fills
            while True:
                try:
                    pairs[1][1].send(b"\0" * size)
                except BlockingIOError:
                    break
        assert reader.forward(1, *sent[0]) == [] and reader.send() == [sent[0]], "the reader answers it itself"
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_metrics_add_up_every_worker_and_never_go_down_when_a_worker_is_killed(tmp_path, start_server):
    """Worker 0 serves /metrics with the other worker's reports added in; once worker 1 is killed
    (-9) and started again, what it counted before its last report stays in the sums."""
    server, http_port = start_two_workers_with_http(tmp_path, start_server)
    users = [f"42{k:02d}" for k in range(30)]
    of_worker_1 = [user for user in users if tfps.uri_worker(f"sip:{user}@pbx.example.com".encode(), 2) == 1]

    def calls(tag, callers):
        with udp_socket() as sock:
            for k, user in enumerate(callers):
                data = sip_invite(f"1212999{k:04d}", server.port, local_port=sock.getsockname()[1],
                                  call_id=f"{tag}-{k}@test", user=user)
                assert final_answer(sock, data, server.port)[0].status == 302
    calls("before", users)
    wait_until(lambda: metric_sum(http_port, "tfps_verdicts_total{") == len(users), 10, message=lambda: scrape(http_port))
    assert metric_sum(http_port, "tfps_database_up") == 1 and metric_sum(http_port, "tfps_workers_reporting") == 2
    histogram = metric_sum(http_port, 'tfps_decision_duration_seconds_count{via="sip"}')
    assert histogram == len(users), "the latency histograms are added up too"
    worker_1 = workers_of(server)[1]
    os.kill(worker_1, signal.SIGKILL)
    wait_until(lambda: len(workers_of(server)) == 2 and worker_1 not in workers_of(server), 10, message=server.read_log)
    wait_until(lambda: server.read_log().count("serving in") == 3, 15, message=server.read_log)
    assert metric_sum(http_port, "tfps_verdicts_total{") == len(users), "the killed worker's verdicts stay counted"
    calls("after", of_worker_1)
    wait_until(lambda: metric_sum(http_port, 'tfps_worker_verdicts_total{worker="1"}') == 2 * len(of_worker_1), 10,
               message=lambda: scrape(http_port))
    assert metric_sum(http_port, "tfps_verdicts_total{") == len(users) + len(of_worker_1)
    assert metric_sum(http_port, "tfps_workers_reporting") == 2
    assert metric_sum(http_port, "tfps_sip_handed_over_total") == 0, "the new worker holds the socket of the old one"
    assert server.stop() == 0, server.read_log()


def test_the_kernel_steers_each_datagram_to_the_socket_of_the_worker_of_its_from_uri():
    """steering_program on a real SO_REUSEPORT group of three sockets, datagrams from one port:
    where it finds the From header it picks the socket that uri_worker names, for the forms PBXs
    write; where it does not (the compact form, a From past STEERING_WINDOW), the datagram still
    arrives, on a socket the kernel picks, for the worker that reads it to hand over."""
    workers = 3
    group = []
    for _ in range(workers):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", group[0].getsockname()[1] if group else 0))
        group.append(sock)
    sender = udp_socket()
    try:
        assert tfps.steer_by_caller(group, workers)
        port = group[0].getsockname()[1]
        handoff = tfps.WorkerHandoff([None] * workers, 0)

        def arrives_at(data):
            sender.sendto(data, ("127.0.0.1", port))
            ready, _, _ = select.select(group, [], [], 2)
            assert len(ready) == 1, "one datagram, one socket"
            assert ready[0].recv(65536) == data
            return group.index(ready[0])
        forms = ["From: <sip:{u}@pbx.example.com>;tag=1", 'From: "Desk {u}" <sip:{u}@PBX.example.com>;tag=2',
                 "FROM: sips:{u}@pbx.example.com;tag=3", "from: <sip:{u}-with-a-user-name-longer-than-32-bytes@pbx>",
                 "From: <sip:{u}@pbx.example.com?subject=x>", "From: <SIP:{u}@pbx.example.com>;tag=4"]
        picked = Counter()
        for k in range(240):
            head = "INVITE sip:4420794600@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{k}\r\n"
            data = (head.format(k=k) + forms[k % len(forms)].format(u=1000 + k * 7) +
                    f"\r\nTo: <sip:4420794600@127.0.0.1>\r\nCall-ID: steer-{k}\r\nCSeq: 1 INVITE\r\n\r\n").encode()
            worker = handoff.owner(data)
            assert arrives_at(data) == worker, data
            picked[worker] += 1
        assert set(picked) == {0, 1, 2}, picked
        far = b"INVITE sip:1@127.0.0.1 SIP/2.0\r\nX-Padding: " + b"p" * tfps.STEERING_WINDOW + b"\r\nFrom: <sip:9@h>\r\n\r\n"
        for unsteered in (b"INVITE sip:1@127.0.0.1 SIP/2.0\r\nf: <sip:9@h>;tag=5\r\n\r\n", far, b"\r\n\r\n", b"x"):
            assert arrives_at(unsteered) in range(workers)
    finally:
        sender.close()
        for sock in group:
            sock.close()
