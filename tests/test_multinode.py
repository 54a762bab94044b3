"""Two TFPS nodes (two real `tfps.py serve` processes) sharing one real MariaDB database race for
the same account's daily quota: together they never approve more than the quota."""

import secrets
import threading
import time
from collections import Counter

import tfps
from conftest import recv_response, run_cli, sip_invite, udp_socket
from test_engine_sip import code_of, invite, poll

DOMAIN = "race.example.com"
USERS = tuple(str(2001 + i) for i in range(8))   # eight accounts: eight fresh counter rows to race for
QUOTA = 12
THREADS_PER_NODE = 6
INVITES_PER_THREAD = 16         # 2 nodes x 6 threads x 16 = 192 INVITEs, 24 per account, quota 12 each


def fire(port, calls, barrier, results, errors):
    """Send all INVITEs at once, then collect the final answers (retransmitting like a UAC)."""
    sock = udp_socket(timeout=0.3)
    try:
        local = sock.getsockname()[1]
        pending, user_of = {}, {}
        for user, number in calls:
            call_id = secrets.token_hex(8) + "@race"
            pending[call_id] = sip_invite(number, port, user=user, domain=DOMAIN, local_port=local, call_id=call_id)
            user_of[call_id] = user
        barrier.wait(timeout=30)
        for data in pending.values():
            sock.sendto(data, ("127.0.0.1", port))
        deadline = time.monotonic() + 30
        last_send = time.monotonic()
        while pending and time.monotonic() < deadline:
            try:
                msg, _raw = recv_response(sock)
            except TimeoutError:
                if time.monotonic() - last_send > 1.0:
                    for data in pending.values():
                        sock.sendto(data, ("127.0.0.1", port))
                    last_send = time.monotonic()
                continue
            call_id = msg.header("call-id")
            if msg.status >= 200 and call_id in pending:
                del pending[call_id]
                results.append((port, user_of[call_id], msg.status, msg.header("x-tfps-code"), msg.header("x-tfps-reason")))
        if pending:
            errors.append(f"{len(pending)} INVITEs to port {port} got no final answer")
    except Exception as exc:  # reported by the test thread
        errors.append(repr(exc))
    finally:
        sock.close()


def two_threads(target, timeout=30):
    """target(k, barrier) for k = 0 and 1 on two threads that share a two-party barrier."""
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=target, args=(k, barrier)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)


def race_nodes(nodes, users, calls_per_thread, threads_per_node):
    """INVITEs from `threads_per_node` threads per node, all sent at once: accounts interleaved,
    a distinct number each (no R13). Returns (port, user, status, code, reason) per INVITE."""
    threads, results, errors = [], [], []
    barrier = threading.Barrier(len(nodes) * threads_per_node)
    serial = 0
    for node in nodes:
        for _ in range(threads_per_node):
            calls = []
            for _ in range(calls_per_thread):
                calls.append((users[serial % len(users)], f"1212{serial:07d}"))
                serial += 1
            threads.append(threading.Thread(target=fire, args=(node.port, calls, barrier, results, errors)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def create_accounts(url, users, **limits):
    cfg = tfps.Config.load(None)
    cfg.set("policy", "learning_days", "0")
    db = tfps.open_database(url)
    now = time.time()
    ids = {}
    for user in users:
        tfps.insert_account(db, tfps.default_account(cfg, user, DOMAIN, now - 60))
        acc = tfps.find_account(db, user, DOMAIN)
        tfps.update_account(db, acc, now, **limits)
        ids[user] = acc.id
    db.close()
    return ids


def test_two_nodes_never_exceed_the_daily_quota(mysql_url, start_server):
    ids = create_accounts(mysql_url, USERS, daily_quota=QUOTA, daily_quota_off=QUOTA)
    policy = {"learning_days": "0", "business_hours": "mon-sun 00:00-24:00", "max_calls_per_minute": "0"}
    nodes = [start_server(mysql_url, {"policy": policy, "server": {"node_name": name, "overload_after": "0"}})
             for name in ("node-a", "node-b")]

    total = 2 * THREADS_PER_NODE * INVITES_PER_THREAD
    per_account = total // len(USERS)
    results = race_nodes(nodes, USERS, INVITES_PER_THREAD, THREADS_PER_NODE)
    assert len(results) == total

    db = tfps.open_database(mysql_url)
    try:
        # the quota is never exceeded: per account, exactly QUOTA approvals across both nodes
        for user in USERS:
            approved = sum(1 for _p, u, _s, code, _r in results if u == user and code == "A00")
            assert approved == QUOTA, (user, Counter(code for _p, u, _s, code, _r in results if u == user))
        # and every INVITE got its verdict: no 500 (e.g. a database deadlock) instead of A00/R11
        statuses = Counter(status for _p, _u, status, _c, _r in results)
        assert statuses == {302: total}, [r for r in results if r[2] != 302][:3]
        codes = Counter(code for _p, _u, _s, code, _r in results)
        assert codes == {"A00": QUOTA * len(USERS), "R11": total - QUOTA * len(USERS)}
        assert all(f"daily quota of {QUOTA}" in reason for _p, _u, _s, code, reason in results if code == "R11")
        assert set(Counter(port for port, *_ in results).values()) == {total // 2}

        for node in nodes:
            assert node.stop() == 0
        for user in USERS:   # on MySQL the nodes lease quota and write their counts behind: stopped, all are in
            counters = db.query("SELECT bucket, approved FROM daily_counters WHERE account_id = ?", (ids[user],))
            assert [(bucket, int(n)) for bucket, n in counters] == [("biz", QUOTA)], user
        assert db.scalar("SELECT COUNT(*) FROM quota_leases WHERE calls > 0") == 0
        rows = db.query("SELECT node, code, COUNT(*) FROM call_log GROUP BY node, code")
        by_code = Counter()
        for _node, code, n in rows:
            by_code[code] += int(n)
        assert by_code == {"A00": QUOTA * len(USERS), "R11": total - QUOTA * len(USERS)}
        assert {r[0] for r in rows} == {"node-a", "node-b"}
        assert per_account * len(USERS) == total
    finally:
        db.close()


def test_concurrent_engines_race_for_a_fresh_counter(mysql_url):
    """Two engines (two nodes' worth of connections) decide calls of the same fresh account at the
    same moment, round after round: every call gets a verdict (no deadlock error escapes
    `decide`) and each account gets exactly its quota."""
    rounds, calls_per_engine, quota = 12, 5, 3
    users = [f"r{i}" for i in range(rounds)]
    ids = create_accounts(mysql_url, users, daily_quota=quota, daily_quota_off=quota)
    cfg = tfps.Config.load(None)
    cfg.set("policy", "business_hours", "mon-sun 00:00-24:00")
    cfg.set("policy", "max_calls_per_minute", "0")
    engines = [tfps.Engine(cfg, tfps.open_database(mysql_url)) for _ in range(2)]
    verdicts, errors = [], []

    def work(engine, user, k, barrier):
        barrier.wait(timeout=30)
        for i in range(calls_per_engine):
            try:
                v = engine.decide(tfps.CallAttempt(user, DOMAIN, f"1212{k}{i:06d}", ts=time.time()))
                verdicts.append((user, v.code))
            except Exception as exc:
                errors.append(f"{user}: {exc!r}")

    try:
        for user in users:
            two_threads(lambda k, barrier: work(engines[k], user, k, barrier))
        db = engines[0].db
        for user in users:
            approved = db.scalar("SELECT SUM(approved) FROM daily_counters WHERE account_id = ?", (ids[user],), default=0)
            assert int(approved) <= quota, user
        assert not errors, f"{len(errors)} of {rounds * 2 * calls_per_engine} decisions failed, e.g. {errors[0]}"
        for user in users:
            codes = Counter(code for u, code in verdicts if u == user)
            assert codes == {"A00": quota, "R11": 2 * calls_per_engine - quota}, (user, codes)
    finally:
        for engine in engines:
            engine.db.close()


def race_two_engines(mysql_url, user, policy, number_of):
    """Two engines decide calls of `user` at the same moment, each `number_of` (a list of numbers
    per engine, k -> [numbers]); returns the verdict codes and the engines (to be closed)."""
    cfg = tfps.Config.load(None)
    cfg.set("policy", "business_hours", "mon-sun 00:00-24:00")
    for key, value in policy.items():
        cfg.set("policy", key, str(value))
    engines = [tfps.Engine(cfg, tfps.open_database(mysql_url)) for _ in range(2)]
    start, verdicts, errors = time.time(), [], []

    def work(k, barrier):
        barrier.wait(timeout=30)
        for i, number in enumerate(number_of(k)):
            try:
                verdicts.append(engines[k].decide(tfps.CallAttempt(user, DOMAIN, number, ts=start + i)).code)
            except Exception as exc:
                errors.append(repr(exc))

    two_threads(work)
    assert not errors, errors[0]
    return Counter(verdicts), engines, start


def test_max_calls_per_minute_holds_across_two_engines(mysql_url):
    """R15 is counted in the database: two engines racing calls of one fresh account approve at
    most max_calls_per_minute of them within 60 s between them, not that many each."""
    limit, calls = 4, 6
    create_accounts(mysql_url, ["m1"], daily_quota=None, daily_quota_off=None)
    codes, engines, start = race_two_engines(mysql_url, "m1", {"max_calls_per_minute": limit},
                                             lambda k: [f"1212{k}{i:06d}" for i in range(calls)])
    try:
        assert codes == {"A00": limit, "R15": 2 * calls - limit}, codes
        late = engines[1].decide(tfps.CallAttempt("m1", DOMAIN, "12129990000", ts=start + 61 + calls))
        assert late.code == "A00", late.reason     # a minute later the window has moved on
    finally:
        for engine in engines:
            engine.db.close()


def test_a_to_b_window_of_a_new_pair_holds_across_two_engines(mysql_url):
    """The first attempts at a new A->B pair race on two engines: none is lost, so exactly
    ab_max_calls of them pass and the rest are R13."""
    create_accounts(mysql_url, ["p1"], daily_quota=None, daily_quota_off=None)
    codes, engines, _ = race_two_engines(mysql_url, "p1", {"ab_max_calls": 2}, lambda k: ["12125550100"] * 3)
    try:
        assert codes == {"A00": 2, "R13": 4}, codes
    finally:
        for engine in engines:
            engine.db.close()


def test_two_nodes_flush_call_logs_at_once(mysql_url):
    """Two nodes serving the same accounts flush their call logs at the same moment (every
    flush_interval): neither flush fails (e.g. with a deadlock) and no row is lost."""
    users = [f"f{i}" for i in range(6)]
    create_accounts(mysql_url, users)
    cfg = tfps.Config.load(None)
    cfg.set("policy", "business_hours", "mon-sun 00:00-24:00")
    cfg.set("policy", "max_calls_per_minute", "0")
    engines = [tfps.Engine(cfg, tfps.open_database(mysql_url)) for _ in range(2)]
    rounds, errors = 10, []
    one_at_a_time = threading.Lock()   # the verdicts do not race here; only the flushes do

    def work(k, barrier):
        engine = engines[k]
        order = users if k == 0 else users[::-1]     # each node saw the accounts in its own order
        for r in range(rounds):
            with one_at_a_time:
                for j, user in enumerate(order):
                    verdict = engine.decide(tfps.CallAttempt(user, DOMAIN, f"1212{k}{r:03d}{j:03d}", ts=time.time()))
                    assert verdict.code == "A00", verdict.reason
                    engine.record(verdict, "302 A00", 0.1)
            barrier.wait(timeout=30)
            try:
                engine.flush()
            except Exception as exc:
                errors.append(f"node {k} round {r}: {exc!r}")

    def run(k, barrier):
        try:
            work(k, barrier)
        except Exception as exc:
            errors.append(f"node {k}: {exc!r}")
            barrier.abort()

    try:
        two_threads(run, timeout=60)
        assert not errors, f"{len(errors)} of {2 * rounds} flushes failed, e.g. {errors[0]}"
        assert engines[0].db.scalar("SELECT COUNT(*) FROM call_log") == 2 * rounds * len(users)
    finally:
        for engine in engines:
            engine.db.close()


def test_cli_change_reaches_every_node(mysql_url, start_server):
    create_accounts(mysql_url, ["3001"])
    policy = {"learning_days": "0", "business_hours": "mon-sun 00:00-24:00", "max_calls_per_minute": "0"}
    nodes = [start_server(mysql_url, {"policy": policy, "server": {"node_name": name}}) for name in ("node-a", "node-b")]
    calls = (f"1212{i:07d}" for i in range(10000000))
    kw = {"user": "3001", "domain": DOMAIN}
    for node in nodes:
        assert code_of(invite(node, next(calls), **kw)) == "A00"
    for args in (("block", "3001", DOMAIN), ("unblock", "3001", DOMAIN), ("blacklist", "add", "number", "121277")):
        run_cli(*args, config=nodes[0].config, db=mysql_url, check=True)
        done = time.monotonic()
        expect = {"block": "R14", "unblock": "A00", "blacklist": "R03"}[args[0]]
        for node in nodes:                        # each node within 5 s of the CLI command
            numbers = (f"121277{i:05d}" for i in range(100000)) if expect == "R03" else calls
            assert poll(node, expect, numbers, since=done, **kw) <= 5.0, (args, node.port)
