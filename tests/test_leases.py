"""Quota leases ([database] quota_lease): each node claims blocks of an account's daily quota in
one transaction and spends them from memory, writing behind. Nodes racing on a real MariaDB (and
engines on SQLite) never approve more than the quota; leases are given back when a server stops
and, after a node is killed with -9, when they expire."""

import signal
import threading
import time
from collections import Counter

import pytest

import tfps
from conftest import built_server, wait_until, write_config
from test_multinode import DOMAIN, create_accounts, race_nodes


def leased_engine(url, node, block, ttl="30s", spool=None, timeout=None):
    """An engine with leases; with a `spool` path, a call log thread as a server has, which
    writes the counters behind too."""
    cfg = tfps.Config.load(None)
    cfg.set("policy", "business_hours", "mon-sun 00:00-24:00")
    cfg.set("policy", "max_calls_per_minute", "0")
    cfg.set("database", "quota_lease", str(block))
    cfg.set("database", "lease_ttl", ttl)
    db = tfps.open_database(url)
    engine = tfps.Engine(cfg, db, counters=tfps.LeasedCounters(db, node, block, cfg.database.lease_ttl))
    if spool:
        engine.call_log = tfps.CallLogWriter(url, tfps.CallLogSpool(str(spool), 1 << 20), 100000, timeout)
        engine.counters.writer = engine.call_log
    return engine


def close_engine(engine):
    if engine.call_log:
        engine.call_log.close(10)
    engine.db.close()


def approved_in_database(url, account_id):
    db = tfps.open_database(url)
    try:
        return int(db.scalar("SELECT SUM(approved) FROM daily_counters WHERE account_id = ?", (account_id,), default=0))
    finally:
        db.close()


def leases_in_database(url):
    db = tfps.open_database(url)
    try:
        return [tuple(row) for row in db.query("SELECT node, calls FROM quota_leases WHERE calls > 0")]
    finally:
        db.close()


@pytest.mark.parametrize("behind", ["loop", "thread"])
@pytest.mark.parametrize("nodes", [2, 3])
def test_engines_racing_with_leases_never_exceed_the_quota(db_url, nodes, behind, tmp_path):
    """Engines on threads, each with its own connection and leases, decide calls of the same
    accounts at the same moment and write behind as a server does (on its own connection, or on
    a call log thread's): never more approvals than the quota; once every engine gave its leases
    back, the database counts exactly what was approved, and what was left of the quota is
    there for the taking."""
    quota, block, calls_per_engine = 10, 3, 12
    users = ["l1", "l2", "l3"]
    ids = create_accounts(db_url, users, daily_quota=quota, daily_quota_off=quota)
    engines = [leased_engine(db_url, f"node-{k}", block, spool=tmp_path / f"spool-{k}" if behind == "thread" else None)
               for k in range(nodes)]
    verdicts, errors = [], []
    barrier = threading.Barrier(nodes)

    def work(k):
        engine = engines[k]
        barrier.wait(timeout=30)
        for i in range(calls_per_engine):
            for user in users:
                try:
                    v = engine.decide(tfps.CallAttempt(user, DOMAIN, f"1212{k}{i:06d}", ts=time.time()))
                    verdicts.append((user, v.code))
                except Exception as exc:
                    errors.append(f"{user}: {exc!r}")
            if i % 3 == 2:
                engine.flush()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(nodes)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        for engine in engines:
            engine.flush()
            engine.counters.write_behind(time.time(), release=True)
        assert leases_in_database(db_url) == []
        for user in users:
            codes = Counter(code for u, code in verdicts if u == user)
            assert codes["A00"] <= quota, (user, codes)
            assert set(codes) <= {"A00", "R11"}, (user, codes)
            assert approved_in_database(db_url, ids[user]) == codes["A00"], user
        # the rest of each quota is still there: one engine takes exactly that much more
        late = leased_engine(db_url, "late", block)
        for user in users:
            before = approved_in_database(db_url, ids[user])
            codes = Counter(late.decide(tfps.CallAttempt(user, DOMAIN, f"12129{i:06d}", ts=time.time())).code
                            for i in range(quota + 2))
            assert codes["A00"] == quota - before, (user, before, codes)
        late.flush()
        late.counters.write_behind(time.time(), release=True)
        for user in users:
            assert approved_in_database(db_url, ids[user]) == quota
        late.db.close()
    finally:
        for engine in engines:
            close_engine(engine)


def test_a_write_behind_on_the_call_log_thread_never_waits_on_the_loop(tmp_path):
    """SQLite: while another connection holds the file's write lock, flush() hands the
    write-behind (and the rows, last-seen times and alerts) to the call log thread and returns
    at once; the next one takes in its outcome.
    One that fails (the lock held past the thread's busy timeout) raises at the next flush, as a
    write-behind on the loop would, and its calls go with the one after: none is lost or counted
    twice. A lease claimed while a write-behind is on its way is kept when its outcome comes in."""
    url = f"sqlite://{tmp_path / 'tfps.db'}"
    ids = create_accounts(url, ["t1", "t2"], daily_quota=100, daily_quota_off=100)
    engine = leased_engine(url, "t", 10, spool=tmp_path / "spool", timeout=0.3)
    other = tfps.open_database(url)
    try:
        for i in range(3):
            verdict = engine.decide(tfps.CallAttempt("t1", DOMAIN, f"1212300000{i}", ts=time.time()))
            assert verdict.code == "A00"
            engine.record(verdict, "302 A00", 1.0)
        engine.alerts.add(tfps.AlertEvent("anomaly", f"t1@{DOMAIN}", "TEST", "subject", "body", {}))
        other.begin()   # the write lock, held by another connection
        started = time.monotonic()
        engine.flush()
        assert time.monotonic() - started < 0.25   # handed over: the loop does not wait for the lock
        assert engine.counters.settling is not None
        assert engine.counters.settling.finished.wait(5)
        with pytest.raises(tfps.sqlite3.OperationalError, match="locked"):
            engine.flush()   # the outcome: the thread gave up after its busy timeout
        other.rollback()
        assert approved_in_database(url, ids["t1"]) == 0
        engine.flush()   # the calls kept back go now, with the lease renewed
        assert engine.counters.settling.finished.wait(5)
        assert engine.decide(tfps.CallAttempt("t2", DOMAIN, "12123100000", ts=time.time())).code == "A00"
        assert ("t", 10) in leases_in_database(url) and len(leases_in_database(url)) == 2
        engine.flush()   # takes in the outcome, which does not know t2's lease, claimed since
        assert approved_in_database(url, ids["t1"]) == 3
        assert wait_until(lambda: other.scalar("SELECT COUNT(*) FROM alert_throttle WHERE rule = 'TEST'") == 1)
        assert wait_until(lambda: other.scalar("SELECT last_seen FROM accounts WHERE id = ?", (ids["t1"],)))
        assert wait_until(lambda: other.scalar("SELECT COUNT(*) FROM call_log") == 3)   # spooled meanwhile, then written
        assert [calls for key, calls in engine.counters.held.items() if key[0] == ids["t2"]] == [9]
        engine.counters.write_behind(time.time(), release=True)
        assert approved_in_database(url, ids["t1"]) == 3 and approved_in_database(url, ids["t2"]) == 1
        assert leases_in_database(url) == []
    finally:
        other.close()
        close_engine(engine)


def test_a_node_that_finds_the_quota_leased_gets_it_back_from_the_holder(db_url):
    """Node a holds the whole quota in a lease; node b's claim finds nothing left and asks for it;
    at a's next write-behind the unspent calls go back and b approves them."""
    quota = 6
    ids = create_accounts(db_url, ["w1"], daily_quota=quota, daily_quota_off=quota)
    a, b = leased_engine(db_url, "a", 100), leased_engine(db_url, "b", 100)
    try:
        assert a.decide(tfps.CallAttempt("w1", DOMAIN, "12121000001", ts=time.time())).code == "A00"
        assert leases_in_database(db_url) == [("a", quota)]
        assert b.decide(tfps.CallAttempt("w1", DOMAIN, "12121000002", ts=time.time())).code == "R11"
        a.flush()   # spent 1 written, the 5 unspent given back: b asked
        b.flush()   # b reads the count again
        codes = Counter(b.decide(tfps.CallAttempt("w1", DOMAIN, f"1212200000{i}", ts=time.time())).code for i in range(7))
        assert codes == {"A00": quota - 1, "R11": 2}
        for engine in (a, b):
            engine.flush()
            engine.counters.write_behind(time.time(), release=True)
        assert approved_in_database(db_url, ids["w1"]) == quota
        assert leases_in_database(db_url) == []
    finally:
        a.db.close()
        b.db.close()


def test_first_seen_countries_are_written_behind_with_their_alert(db_url):
    """With leases a verdict writes nothing: the account's first call to a country is marked in
    account_seen, and its NEW_DST notice queued, by the next flush."""
    ids = create_accounts(db_url, ["f1"], daily_quota=5, daily_quota_off=5)
    db = tfps.open_database(db_url)
    db.execute("UPDATE accounts SET created = created - 3 * 86400")
    db.close()
    engine = leased_engine(db_url, "f", 4)
    engine.cfg.alerts.alert_webhook = "http://127.0.0.1:9/hook"   # queued in the outbox, never sent here
    try:
        assert engine.decide(tfps.CallAttempt("f1", DOMAIN, "12125550100", ts=time.time())).code == "A00"
        seen = "SELECT direction, iso FROM account_seen WHERE account_id = ?"
        assert list(engine.db.query(seen, (ids["f1"],))) == []
        assert not [e for e in engine.alerts.events if e.rule == "NEW_DST_US"]
        engine.flush()
        assert [tuple(row) for row in engine.db.query(seen, (ids["f1"],))] == [("dst", "US")]
        assert engine.db.scalar("SELECT COUNT(*) FROM alert_outbox WHERE subject LIKE '%first call to the new destination%'") == 1
    finally:
        engine.db.close()


def race(nodes, users, calls_per_thread, threads_per_node=3):
    return race_nodes(nodes, users, calls_per_thread, threads_per_node)


@pytest.mark.parametrize("count", [2, 3])
def test_servers_racing_with_leases_never_exceed_the_quota_and_give_leases_back(mysql_url, start_server, count):
    quota, users = 12, ("2101", "2102", "2103", "2104")
    ids = create_accounts(mysql_url, users, daily_quota=quota, daily_quota_off=quota)
    policy = {"learning_days": "0", "business_hours": "mon-sun 00:00-24:00", "max_calls_per_minute": "0"}
    database = {"quota_lease": "4", "flush_interval": "0.05s"}
    nodes = [start_server(mysql_url, {"policy": policy, "database": database, "server": {"node_name": f"node-{k}", "overload_after": "0"}})
             for k in range(count)]
    results = race(nodes, users, 48 // count)
    assert Counter(status for _p, _u, status, _c, _r in results) == {302: 3 * count * (48 // count)}
    for user in users:
        codes = Counter(code for _p, u, _s, code, _r in results if u == user)
        assert codes["A00"] <= quota, (user, codes)
        assert set(codes) <= {"A00", "R11"}, (user, codes)
    for node in nodes:
        assert node.stop() == 0
    assert leases_in_database(mysql_url) == [], "a stopped server gives its leases back"
    for user in users:
        approved = sum(1 for _p, u, _s, code, _r in results if u == user and code == "A00")
        assert approved_in_database(mysql_url, ids[user]) == approved, user


def test_the_lease_of_a_killed_node_expires_and_is_claimed_back(mysql_url, start_server):
    quota = 12
    ids = create_accounts(mysql_url, ["k1"], daily_quota=quota, daily_quota_off=quota)
    policy = {"learning_days": "0", "business_hours": "mon-sun 00:00-24:00", "max_calls_per_minute": "0"}
    database = {"quota_lease": "10", "lease_ttl": "3s", "flush_interval": "0.05s"}
    a, b = (start_server(mysql_url, {"policy": policy, "database": database, "server": {"node_name": name, "overload_after": "0"}})
            for name in ("a", "b"))
    first = race([a], ["k1"], 1, threads_per_node=1)
    assert [code for *_x, code, _r in first] == ["A00"]
    wait_until(lambda: approved_in_database(mysql_url, ids["k1"]) == 1, 5, message="a's write-behind")
    a.signal(signal.SIGKILL)
    a.proc.wait(10)
    assert [calls for _node, calls in leases_in_database(mysql_url)] == [9], "a's unspent lease outlives it"
    before = Counter(r[3] for r in race([b], ["k1"], 4, threads_per_node=1))
    assert before == {"A00": 2, "R11": 2}, "b takes only what a's live lease leaves"
    time.sleep(3.2)
    after = Counter(r[3] for r in race([b], ["k1"], 12, threads_per_node=1))
    assert after == {"A00": 9, "R11": 3}, "a's expired lease went back to b"
    assert b.stop() == 0
    assert approved_in_database(mysql_url, ids["k1"]) == quota
    assert leases_in_database(mysql_url) == []


def test_a_schema_3_database_gains_the_claims_column_and_each_claim_writes_it(db_url):
    """Version 4 counts the claims on the counter row: on a Galera cluster that write is what
    makes claims racing on two nodes conflict (a locking read is not certified)."""
    db = tfps.open_database(db_url)
    db.execute("ALTER TABLE daily_counters DROP COLUMN claims")
    db.execute("UPDATE meta SET value = 3 WHERE name = 'schema_version'")
    db.close()
    ids = create_accounts(db_url, ["m1"], daily_quota=5, daily_quota_off=5)   # opens it: migrated in place
    engine = leased_engine(db_url, "m", 2)
    try:
        assert engine.db.schema_version() == 6 and "claims" in engine.db.columns("daily_counters")
        codes = [engine.decide(tfps.CallAttempt("m1", DOMAIN, f"1212300000{i}", ts=time.time())).code for i in range(6)]
        assert codes == ["A00"] * 5 + ["R11"]
        claims = "SELECT SUM(claims) FROM daily_counters WHERE account_id = ?"
        assert int(engine.db.scalar(claims, (ids["m1"],))) == 3   # of 2, 2 and 1 calls; the sixth finds none left
    finally:
        engine.db.close()


def test_a_verdict_evaluated_again_after_a_claim_conflict_counts_its_attempt_once(mysql_url):
    """The claim of a lease waits for a counter row another transaction holds, past the lock
    wait timeout (1205, transient: the verdict is evaluated again). The A->B attempt is counted
    in memory once, not once per try: the quota is taken before anything is counted."""
    ids = create_accounts(mysql_url, ["c1"], daily_quota=5, daily_quota_off=5)
    engine = leased_engine(mysql_url, "c", 2)
    engine.db.execute("SET SESSION innodb_lock_wait_timeout = 1")
    day = engine._local_day(time.time())[0]
    holder = tfps.open_database(mysql_url)
    holder.execute("INSERT INTO daily_counters (account_id, day, bucket, approved) VALUES (?, ?, 'biz', 0), (?, ?, 'off', 0)",
                   (ids["c1"], day, ids["c1"], day))
    holder.begin()
    holder.query("SELECT approved FROM daily_counters WHERE account_id = ? FOR UPDATE", (ids["c1"],))
    release = threading.Timer(1.5, holder.commit)
    release.start()
    try:
        verdict = engine.decide(tfps.CallAttempt("c1", DOMAIN, "12123000001", ts=time.time()))
        assert verdict.code == "A00"
        assert release.finished.is_set(), "the claim waited for the lock"
        times, _blocked_until, _existed = engine.counters.pair(ids["c1"], "12123000001", time.time(), 3600, False)
        assert len(times) == 1
    finally:
        release.join()
        holder.close()
        engine.db.close()


def test_a_write_behind_takes_calls_out_of_its_own_leases_only_in_one_statement_per_500(db_url):
    """Calls spent or given back leave exactly the leases they came from: not another bucket or
    day of the same account, nor another node's lease of the same key; 600 leases given back at
    once (two statements) all go."""
    db = tfps.open_database(db_url)
    try:
        day, before = "2026-05-04", "2026-05-03"
        leases = {("a", 1, day, "biz"): 10, ("a", 1, day, "off"): 10, ("a", 1, before, "biz"): 4,
                  ("a", 2, day, "biz"): 5, ("b", 1, day, "biz"): 7}
        leases.update({("a", account_id, day, "biz"): 1 for account_id in range(100, 700)})
        for (node, account_id, lease_day, bucket), calls in leases.items():
            db.insert("quota_leases", {"account_id": account_id, "day": lease_day, "bucket": bucket, "node": node,
                                       "calls": calls, "expires": 1.0})
        returned = {(2, day, "biz"): 5, **{(account_id, day, "biz"): 1 for account_id in range(100, 700)}}
        held, given, wanted = tfps.settle_quota_leases(db, "a", {(1, day, "biz"): 3}, {}, returned, {}, 2.0)
        assert held == {(1, day, "biz"), (1, day, "off"), (1, before, "biz")} and given == {} and wanted == set()
        rows = db.query("SELECT node, account_id, day, bucket, calls, expires FROM quota_leases")
        assert sorted(tuple(row) for row in rows) == [("a", 1, before, "biz", 4, 2.0), ("a", 1, day, "biz", 7, 2.0),
                                                       ("a", 1, day, "off", 10, 2.0), ("b", 1, day, "biz", 7, 1.0)]
        assert approved_in_database(db_url, 1) == 3
    finally:
        db.close()


@pytest.mark.parametrize("url_kind, workers, quota_lease, leases", [
    ("sqlite", 1, None, 32), ("sqlite", 2, None, 32), ("mysql", 1, None, 32), ("sqlite", 1, "0", 0),
    ("mysql", 2, "0", 0), ("sqlite", 1, "5", 5)])
def test_every_server_leases_unless_told_not_to(tmp_path, url_kind, workers, quota_lease, leases):
    """With quota_lease = auto, one process on SQLite leases too: the call log goes to its thread
    instead of the event loop, which a group transaction holding the file would leave it on."""
    database = {"url": f"sqlite://{tmp_path / 'tfps.db'}" if url_kind == "sqlite" else "mysql://root@127.0.0.1/tfps"}
    if quota_lease is not None:
        database["quota_lease"] = quota_lease
    conf = write_config(tmp_path / "tfps.conf", {"server": {"workers": str(workers)}, "database": database})
    assert tfps.lease_block(tfps.Config.load(str(conf))) == leases
    if url_kind == "sqlite" and workers == 1:
        with built_server(conf) as server:
            server.start_call_log_writer()
            try:
                assert isinstance(server.engine.counters, tfps.LeasedCounters) == bool(leases)
                assert (server.engine.call_log is not None) == bool(leases)
            finally:
                if server.engine.call_log:
                    server.engine.call_log.close(5)
