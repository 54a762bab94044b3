"""The call log spool: while MariaDB is unreachable (a TCP proxy on loopback that the test cuts
and restores, so the shared MariaDB stays up), verdicts go on, the call log rows go to a local
file and reach the database once, when it is back or at the next start; a torn line is skipped."""

import json
import os
import secrets
import sys
import time
from types import SimpleNamespace
import urllib.error
import urllib.request

import pytest

from conftest import MYSQL_HOST, MYSQL_PORT, REPO, TfpsServer, built_server, free_port, sip_invite, tfps, udp_socket, wait_until, write_config

sys.path.insert(0, str(REPO / "bench"))
from benchlib import CuttableProxy  # noqa: E402  (shared with bench/outage_bench.py)

POLICY = {"learning_days": "0", "business_hours": "mon-sun 00:00-24:00", "default_daily_quota": "unlimited",
          "ab_max_calls": "1000"}


@pytest.fixture
def proxied(mysql_url):
    """(proxy, URL of the test's database through it, URL straight to MariaDB)."""
    proxy = CuttableProxy((MYSQL_HOST, MYSQL_PORT))
    db = tfps.open_database(mysql_url)  # the schema, made before TFPS meets it
    db.close()
    yield proxy, mysql_url.replace(f":{MYSQL_PORT}/", f":{proxy.port}/"), mysql_url
    proxy.cut()


def spool_server(tmp_path, url, workers=1):
    http_port = free_port()
    sections = {"server": {"workers": workers}, "policy": POLICY, "http": {"listen": f"127.0.0.1:{http_port}"},
                "database": {"url": url, "spool": str(tmp_path / "spool.jsonl")}}
    server = TfpsServer(tmp_path, url, sections)
    server.http_port = http_port
    return server


def call(sock, port, user="1001"):
    """One INVITE with a Call-ID of its own, answered with a final response; its Call-ID."""
    call_id = f"{secrets.token_hex(8)}@spool"
    sock.sendto(sip_invite("12125550100", port, call_id=call_id, local_port=sock.getsockname()[1], user=user),
                ("127.0.0.1", port))
    while True:
        msg = tfps.parse_message(sock.recvfrom(65536)[0])
        if msg.header("call-id") == call_id and msg.status >= 200:
            assert msg.status == 302, f"answered {msg.status}"
            return call_id


def calls(port, count, user="1001"):
    sock = udp_socket(timeout=5.0)
    try:
        return [call(sock, port, user) for _ in range(count)]
    finally:
        sock.close()


def readyz(server):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/readyz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def logged_call_ids(url):
    db = tfps.Database(url)
    try:
        return [r[0] for r in db.query("SELECT call_id FROM call_log")]
    finally:
        db.close()


def every_call_logged_once(url, call_ids):
    logged = logged_call_ids(url)
    assert len(logged) == len(set(logged)), f"{len(logged) - len(set(logged))} call log row(s) written twice"
    return set(logged) == set(call_ids)


def outage(server, proxy):
    """Cut the database and wait until the server has noticed (a flush failed)."""
    proxy.cut()
    wait_until(lambda: "unavailable" in server.read_log(), 10, message=server.read_log)


def test_an_outage_keeps_answering_and_writes_every_call_once_when_the_database_is_back(tmp_path, proxied):
    proxy, url, direct = proxied
    server = spool_server(tmp_path, url).start()
    try:
        assert readyz(server)[0] == 200
        before = calls(server.port, 20)
        wait_until(lambda: every_call_logged_once(direct, before), 10)
        outage(server, proxy)
        during = calls(server.port, 60)
        status, body = readyz(server)
        assert status == 503 and "database unavailable" in body
        wait_until(lambda: os.path.exists(tmp_path / "spool.jsonl"), 5)
        proxy.restore()
        after = calls(server.port, 20)
        wait_until(lambda: every_call_logged_once(direct, before + during + after), 30,
                   message=lambda: f"every call logged once; log:\n{server.read_log()}")
        wait_until(lambda: readyz(server)[0] == 200, 10)
        log_text = server.read_log()
        assert "call log rows go to the spool" in log_text and "row(s) written to the database" in log_text
        assert not (tmp_path / "spool.jsonl").exists() and not (tmp_path / "spool.jsonl.replay").exists()
    finally:
        server.stop()
    assert "Traceback" not in server.read_log()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_restart_during_an_outage_loses_and_duplicates_no_call(tmp_path, proxied, workers):
    proxy, url, direct = proxied
    first = spool_server(tmp_path, url, workers).start()
    before = calls(first.port, 10)
    wait_until(lambda: every_call_logged_once(direct, before), 10)
    outage(first, proxy)
    # 20 callers (workers share calls by caller): every worker has some
    during = [call_id for k in range(20) for call_id in calls(first.port, 3, user=f"50{k:02d}")]
    assert first.stop() == 0   # SIGTERM
    assert "Traceback" not in first.read_log() and "0 call log rows lost" in first.read_log()
    spools = ["spool.jsonl"] if workers == 1 else [f"spool.jsonl.{n}" for n in range(workers)]
    spooled = [line for name in spools for line in (tmp_path / name).read_text().splitlines()]
    assert len(spooled) == len(during)   # all of them: none was written before the outage was noticed
    proxy.restore()
    second = spool_server(tmp_path, url, workers)
    second.start()
    try:
        # written at the start, before serving
        assert every_call_logged_once(direct, before + during)
        after = calls(second.port, 10)
        wait_until(lambda: every_call_logged_once(direct, before + during + after), 10)
    finally:
        second.stop()
    assert "Traceback" not in second.read_log()


def test_a_stop_just_after_the_database_is_back_writes_the_rows_instead_of_spooling_them(tmp_path, proxied):
    """The reconnecting thread waits longer between tries as an outage goes on: a stop that comes
    after the database is back but before that thread's next try writes the rows kept meanwhile
    to the database, not to the spool for the next start."""
    proxy, url, direct = proxied
    server = spool_server(tmp_path, url).start()
    outage(server, proxy)
    during = calls(server.port, 30)
    wait_until(lambda: "next try in 2 s" in server.read_log(), 10, message=server.read_log)
    proxy.restore()
    assert server.stop() == 0
    log_text = server.read_log()
    assert "database back after" in log_text and "0 call log rows lost" in log_text, log_text
    assert every_call_logged_once(direct, during)
    assert not (tmp_path / "spool.jsonl").exists() and not (tmp_path / "spool.jsonl.replay").exists()
    assert "Traceback" not in log_text


def test_the_reconnecting_thread_tries_the_database_every_2_s_at_most(tmp_path, proxied):
    """Until it is back, verdicts count quotas from zero in memory: a server must notice the
    database is back within seconds even after a long outage, not after a back-off grown long."""
    proxy, url, _direct = proxied
    server = spool_server(tmp_path, url).start()
    try:
        outage(server, proxy)
        wait_until(lambda: server.read_log().count("next try in 2 s") >= 2, 15, message=server.read_log)
        proxy.restore()
        restored = time.monotonic()
        wait_until(lambda: "database back after" in server.read_log(), 10, message=server.read_log)
        assert time.monotonic() - restored < 3.5
        assert readyz(server)[0] == 200
    finally:
        server.stop()
    assert "Traceback" not in server.read_log()


def spool_rows(count):
    return [(1700000000.0 + i, f"call-{i}@spool", None, "1001", "pbx.example.com", "", "4420", "442079460000",
             "192.0.2.7", "TestPBX", "US", "GB", 0, 1, "A00", "", "", "302", None, "node-a", 0.3, "", None,
             tfps.row_key()) for i in range(count)]


def test_a_torn_line_is_skipped_and_counted_and_the_rest_is_written_at_start(tmp_path, mysql_url):
    rows = spool_rows(5)
    lines = [json.dumps(row) + "\n" for row in rows]
    torn = json.dumps(spool_rows(6)[5])[:40]   # cut short by a crash while it was being written
    nested = json.dumps([{"ts": 1}] + list(rows[0][1:])) + "\n"   # the length of a row, not its values
    (tmp_path / "spool.jsonl").write_text("".join(lines[:3]) + "not a row\n" + nested + "".join(lines[3:]) + torn)
    server = spool_server(tmp_path, mysql_url).start()
    try:
        assert every_call_logged_once(mysql_url, [row[1] for row in rows])
        log_text = server.read_log()
        assert "3 damaged line(s) skipped" in log_text and "5 row(s) written to the database" in log_text
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5).read().decode()
        assert "tfps_call_log_spool_damaged_lines_total 3" in metrics
    finally:
        server.stop()
    assert "Traceback" not in server.read_log()
    assert not (tmp_path / "spool.jsonl").exists()


def test_a_replay_cut_short_after_its_commit_writes_no_row_twice(tmp_path, db_url):
    """The rows reached the database, then the process died before the spool was removed: the
    next replay finds them all in place."""
    spool = tfps.CallLogSpool(str(tmp_path / "spool.jsonl"), 1 << 20)
    rows = spool_rows(1200)
    assert spool.append(rows) == 1200
    kept = (tmp_path / "spool.jsonl").read_bytes()
    db = tfps.open_database(db_url)
    try:
        assert spool.replay(db, batch=500) == (1200, 0)
        (tmp_path / "spool.jsonl.replay").write_bytes(kept)   # as if the unlink had not happened
        spool.append(rows[:1])   # and a row spooled since, again
        assert spool.replay(db) == (1200, 0) and spool.replay(db) == (1, 0)
        assert db.scalar("SELECT COUNT(*) FROM call_log") == 1200
        assert db.scalar("SELECT COUNT(DISTINCT row_key) FROM call_log") == 1200
    finally:
        db.close()


def test_a_full_spool_takes_what_fits_and_the_rest_waits_in_memory(tmp_path):
    rows = spool_rows(10)
    line = len(json.dumps(rows[0], separators=(",", ":"))) + 1
    spool = tfps.CallLogSpool(str(tmp_path / "spool.jsonl"), 4 * line + line // 2)
    assert spool.append(rows) == 4 and spool.append(rows) == 0
    assert len((tmp_path / "spool.jsonl").read_text().splitlines()) == 4


def test_schema_version_4_adds_row_key_in_place(db_url):
    db = tfps.open_database(db_url)
    try:
        db.execute("DROP INDEX uq_call_log_row_key" + (" ON call_log" if db.dialect == "mysql" else ""))
        db.execute("ALTER TABLE call_log DROP COLUMN row_key")
        db.execute("UPDATE meta SET value = 3 WHERE name = 'schema_version'")
        db.execute("INSERT INTO call_log (ts, code) VALUES (1, 'A00')")
        old, new, changes = db.initdb()
        assert (old, new) == (3, db.schema_version()) and new >= 4
        assert "added call_log.row_key" in changes and "added call_log.uq_call_log_row_key" in changes
        rows = spool_rows(2)
        tfps.insert_call_log(db, rows + rows)
        assert db.scalar("SELECT COUNT(*) FROM call_log") == 3
    finally:
        db.close()


def test_many_rows_are_written_once_each_whatever_the_statements_that_carry_them(db_url):
    """More rows than one statement carries (two whole ones and the rest), some written twice
    and some twice within one statement: each row once, with its values."""
    db = tfps.open_database(db_url)
    try:
        rows = spool_rows(2 * tfps.CALL_LOG_ROWS_PER_STATEMENT + 57)
        tfps.insert_call_log(db, rows[:300] + rows[:10] + rows[300:])
        tfps.insert_call_log(db, rows[100:150])
        assert db.scalar("SELECT COUNT(*) FROM call_log") == len(rows)
        stored = dict(db.query("SELECT row_key, call_id FROM call_log"))
        assert stored == {row[-1]: row[1] for row in rows}
    finally:
        db.close()


def test_call_log_values_are_stored_as_they_were_given(db_url):
    """Rows written out as literals (MySQL) keep every value: quotes, backslashes, NUL, line
    breaks, %, ?, non-ASCII text, floats of every size, NULL."""
    db = tfps.open_database(db_url)
    try:
        texts = ["it's", 'a "quoted" \\ back\\slash', "nul\x00byte", "line\nbreak\r\x1a", "100% ?", "Zürich ☎", "", "'; DROP TABLE call_log; --"]
        numbers = [1700000000.123456, 0.1, 1e-07, 12345678901234.5, 0.0, -2.5, 3.0, 1e300]
        rows = []
        for i, (text, number) in enumerate(zip(texts, numbers)):
            row = list(spool_rows(1)[0])
            row[0], row[1], row[9], row[16], row[20], row[22] = number, f"id-{i}", text, text[::-1], number, None
            row[13] = 2 ** 30 + i
            rows.append(tuple(row))
        tfps.insert_call_log(db, rows)
        stored = {row[0]: row[1:] for row in db.query(
            "SELECT call_id, ts, user_agent, reason, latency_ms, cost, concurrent_calls FROM call_log")}
        assert stored == {row[1]: (row[0], row[9], row[16], row[20], None, row[13]) for row in rows}
    finally:
        db.close()


def test_the_first_worker_takes_the_spools_of_workers_that_no_longer_run(tmp_path):
    base = tmp_path / "s.jsonl"
    for suffix in ("", ".0", ".1", ".3", ".5.replay", ".x", ".1.bak"):
        (tmp_path / f"s.jsonl{suffix}").write_text("")

    def orphans(workers, worker):
        cfg = tfps.Config.load(write_config(tmp_path / "t.conf", {"server": {"workers": workers},
                                                                   "database": {"spool": str(base)}}))
        return tfps.orphan_spools(cfg, worker)

    assert orphans("2", 0) == [f"{base}.3", f"{base}.5", str(base)]
    assert orphans("2", 1) == []
    assert orphans("1", None) == [f"{base}.{n}" for n in (0, 1, 3, 5)]


def test_a_spool_that_cannot_be_written_keeps_the_rows_in_memory_and_says_so_once(tmp_path, caplog):
    cfg = tfps.Config.load(write_config(tmp_path / "t.conf", {}))
    db = tfps.open_database(f"sqlite://{tmp_path / 'tfps.db'}")
    try:
        engine = tfps.Engine(cfg, db)
        engine.spool = tfps.CallLogSpool(str(tmp_path / "missing" / "spool.jsonl"), 1 << 20)
        engine.log_rows = spool_rows(3)
        engine.spool_log_rows()
        engine.spool_log_rows()
        assert len(engine.log_rows) == 3
        assert [r.message for r in caplog.records].count(
            f"call log spool {tmp_path}/missing/spool.jsonl not writable: [Errno 2] No such file or directory: "
            f"'{tmp_path}/missing/spool.jsonl'; rows wait in memory, up to max_unflushed_rows") == 1
        (tmp_path / "missing").mkdir()
        engine.spool_log_rows()
        assert engine.log_rows == [] and engine.spool.spooled == 3
        assert engine.spool.replay(db) == (3, 0) and db.scalar("SELECT COUNT(*) FROM call_log") == 3
        directory = tfps.CallLogSpool(str(tmp_path / "missing"), 1 << 20)   # a directory is no spool: left alone
        assert directory.replay(db) == (0, 0) and (tmp_path / "missing").is_dir()
    finally:
        db.close()


def test_the_default_spool_is_named_after_its_database(tmp_path):
    """Rows spooled for one database must never be written into another: two databases, two files."""
    def spool(url, path="", worker=None):
        cfg = tfps.Config()
        cfg.replace("database", "url", url)
        cfg.replace("database", "spool", path)
        return tfps.spool_path(cfg, worker)
    assert spool(f"sqlite://{tmp_path}/a.db") == f"{tmp_path}/a.db-spool.jsonl"
    assert spool(f"sqlite://{tmp_path}/b.db") != spool(f"sqlite://{tmp_path}/a.db")
    first, second = spool("mysql://tfps:secret@10.0.0.5:3306/tfps"), spool("mysql://tfps:secret@10.0.0.6:3306/tfps")
    assert first != second and os.path.basename(first).startswith("tfps-spool-") and "secret" not in first
    assert spool("mysql://tfps:other@10.0.0.5:3306/tfps") == first, "the password is not part of the name"
    assert spool("mysql://h/db", "/x/s.jsonl", worker=2) == "/x/s.jsonl.2"


def test_the_call_log_writer_spools_while_the_database_is_cut_and_writes_the_spool_first_when_it_is_back(
        tmp_path, proxied):
    proxy, url, direct = proxied
    spool = tfps.CallLogSpool(str(tmp_path / "spool.jsonl"), 1 << 20)
    writer = tfps.CallLogWriter(url, spool, 1000, 0.5)
    writer.RETRY_AFTER = 0.2
    rows = spool_rows(10)
    ids = [r[1] for r in rows]
    try:
        writer.put(rows[:5])
        wait_until(lambda: every_call_logged_once(direct, ids[:5]), 10, message="the first rows in the database")
        proxy.cut()
        mark = (SimpleNamespace(account=SimpleNamespace(id=5), now=10.0), "dst", "FR")
        writer.put(rows[5:8], [mark])
        wait_until(lambda: spool.spooled == 3, 10, message="the rows handed over during the cut to be spooled")
        assert writer.marks == [mark] and not writer.firsts   # a mark waits for the database
        assert writer.queued == 0 and logged_call_ids(direct) == ids[:5]
        writer.put(rows[8:])
        wait_until(lambda: spool.spooled == 5, 10, message="the next rows to be spooled too")
        proxy.restore()   # no new rows: the writer tries the database again for the spooled ones alone
        wait_until(lambda: every_call_logged_once(direct, ids), 10, message="the spooled rows written")
        wait_until(lambda: list(writer.firsts) == [mark], 10, message="the mark written, the first")
        assert not os.path.exists(spool.path) and not os.path.exists(spool.replaying)
    finally:
        assert writer.close(5) == 0
    assert writer.dropped == 0 and every_call_logged_once(direct, ids)


def test_the_call_log_writer_keeps_at_most_max_queued_alerts_and_logs_the_drops_now_and_then(tmp_path, caplog, monkeypatch):
    """While the database cannot be written, alerts handed over wait up to MAX_QUEUED_ALERTS; the
    rest are counted in their queue and logged at the first and the 1,000th drop, not at each."""
    monkeypatch.setattr(tfps, "MAX_QUEUED_ALERTS", 3)
    spool = tfps.CallLogSpool(str(tmp_path / "missing" / "spool.jsonl"), 1 << 20)
    writer = tfps.CallLogWriter(f"sqlite://{tmp_path / 'missing' / 'tfps.db'}", spool, 4, None)
    queue = tfps.AlertQueue(tfps.Config().alerts)

    def events(count):
        return [tfps.AlertEvent("rejection", "1001@pbx.example.com", "R06", "TFPS R06", "body", {}) for _ in range(count)]

    try:
        for count in (2, 2, 1000, 5):
            writer.put([], alerts=(queue, events(count), 1.0))
        assert writer.queued_alerts == 3 and queue.dropped == 1 + 1000 + 5
    finally:
        writer.close(0.5)
    drops = [r.getMessage() for r in caplog.records if "alert queue full" in r.getMessage()]
    assert drops == ["alert queue full (2 unwritten): 1 alert(s) dropped", "alert queue full (3 unwritten): 1001 alert(s) dropped"]


def test_the_call_log_writer_keeps_at_most_max_unflushed_rows_and_counts_what_it_drops(tmp_path, caplog):
    spool = tfps.CallLogSpool(str(tmp_path / "missing" / "spool.jsonl"), 1 << 20)  # cannot be written
    writer = tfps.CallLogWriter(f"sqlite://{tmp_path / 'missing' / 'tfps.db'}", spool, 4, None)
    writer.put(spool_rows(3))
    writer.put(spool_rows(3))
    wait_until(lambda: writer.dropped == 2, 5, message="the two oldest rows dropped")
    assert writer.queued == 4
    assert writer.close(0.5) == 4 and writer.dropped == 6
    messages = [r.getMessage() for r in caplog.records]
    assert any("not written to the database" in m and "is not writable" in m for m in messages), messages
    assert "call log: 2 unwritten row(s) dropped, the oldest, to stay within max_unflushed_rows = 4 (2 dropped in all)" \
        in messages


def test_the_call_log_writer_marks_first_seen_countries_and_hands_the_first_ones_back(tmp_path, db_url):
    tfps.open_database(db_url).close()
    spool = tfps.CallLogSpool(str(tmp_path / "spool.jsonl"), 1 << 20)
    writer = tfps.CallLogWriter(db_url, spool, 1000, None)

    def call(account_id, now):
        return SimpleNamespace(account=SimpleNamespace(id=account_id), now=now)
    try:
        first = (call(7, 100.0), "dst", "FR")
        writer.put(spool_rows(2), [first, (call(7, 100.0), "src", "GB")])
        wait_until(lambda: len(writer.firsts) == 2, 10, message="both marks to be the first")
        assert writer.firsts[0] is first
        writer.firsts.clear()
        writer.put([], [(call(7, 200.0), "dst", "FR"), (call(8, 200.0), "dst", "FR")])   # 7 -> FR is known
        wait_until(lambda: len(writer.firsts) == 1, 10, message="the mark of account 8")
        assert writer.firsts[0][0].account.id == 8
    finally:
        assert writer.close(5) == 0
    db = tfps.Database(db_url)
    try:
        assert db.scalar("SELECT first_seen FROM account_seen WHERE account_id = 7 AND direction = 'dst'") == 100.0
        assert db.scalar("SELECT COUNT(*) FROM call_log") == 2
    finally:
        db.close()


def test_the_call_log_writer_writes_what_waited_up_to_the_linger_in_one_transaction(tmp_path, db_url, monkeypatch):
    """Rows handed over within CALL_LOG_LINGER go in one transaction (the index by account costs
    a page per account and transaction); CALL_LOG_BATCH rows do not wait; closing writes at once."""
    tfps.open_database(db_url).close()
    batches = []
    insert = tfps.CallLogWriter._insert

    def counting_insert(self, rows, marks, seen, alerts):
        batches.append(len(rows))  # before the commit: the test sees the rows as soon as it is made
        insert(self, rows, marks, seen, alerts)
    monkeypatch.setattr(tfps.CallLogWriter, "_insert", counting_insert)
    monkeypatch.setattr(tfps, "CALL_LOG_LINGER", 0.6)
    rows = spool_rows(170)
    ids = [r[1] for r in rows]
    writer = tfps.CallLogWriter(db_url, tfps.CallLogSpool(str(tmp_path / "spool.jsonl"), 1 << 20), 100000, None)
    try:
        for start in range(0, 100, 20):  # five flushes' rows, 50 ms apart
            writer.put(rows[start:start + 20])
            time.sleep(0.05)
        wait_until(lambda: every_call_logged_once(db_url, ids[:100]), 10, message="the rows of five flushes")
        assert batches == [100], "written as they came, not together"
        if db_url.startswith("sqlite"):
            assert writer.db.scalar("PRAGMA wal_autocheckpoint") == 0  # the write-back thread's work
            assert writer.db.scalar("PRAGMA cache_size") == -32768
        monkeypatch.setattr(tfps, "CALL_LOG_LINGER", 3600.0)
        monkeypatch.setattr(tfps, "CALL_LOG_BATCH", 50)
        writer.put(rows[100:130])
        writer.put(rows[130:160])
        wait_until(lambda: every_call_logged_once(db_url, ids[:160]), 10, message="a full batch, written without the linger")
        assert batches == [100, 60]
        writer.put(rows[160:])
    finally:
        assert writer.close(5) == 0
    assert batches == [100, 60, 10] and every_call_logged_once(db_url, ids)


# -- the write-ahead log of SQLite, written back off the event loop ------------------------------

def call_ids_in_the_database_file(tmp_path, path):
    """The Call-IDs of the call log as the database file holds them, without its write-ahead log:
    what has been written back. A copy taken while a write-back writes may be torn: then None."""
    copy = tmp_path / f"copy-{secrets.token_hex(4)}.db"
    copy.write_bytes(path.read_bytes())
    try:
        return set(logged_call_ids(f"sqlite://{copy}"))
    except tfps.DatabaseError:
        return None
    finally:
        for name in (copy, copy.with_name(copy.name + "-wal"), copy.with_name(copy.name + "-shm")):
            name.unlink(missing_ok=True)


def test_a_servers_commits_leave_the_write_ahead_log_to_the_write_back_thread(tmp_path, monkeypatch):
    """SQLite writes its log back at a commit that finds 1,000 pages in it, and ends with an fsync
    that calls would wait out on the loop: the server's connection leaves that to a thread."""
    path = tmp_path / "tfps.db"
    conf = write_config(tmp_path / "tfps.conf", {"server": {"listen": f"udp:127.0.0.1:{free_port()}"},
                                                 "database": {"url": f"sqlite://{path}"}})
    tfps.open_database(f"sqlite://{path}").close()  # the schema in the file: the last connection closed writes the log back
    with built_server(conf) as server:
        db = server.db
        rows = [row[:3] + (str(1000 + i % 700),) + row[4:] for i, row in enumerate(spool_rows(3000))]
        for start in range(0, len(rows), 10):  # over 1,000 pages of log: every commit writes a page of each index
            with db.transaction():
                tfps.insert_call_log(db, rows[start:start + 10])
        assert os.path.getsize(f"{path}-wal") > 1000 * 4096
        assert call_ids_in_the_database_file(tmp_path, path) == set(), "written back at a commit of the server's connection"
        monkeypatch.setattr(tfps, "WAL_WRITE_BACK_INTERVAL", 0.05)
        thread = tfps.threading.Thread(target=server._write_back_the_wal)
        thread.start()
        try:
            wait_until(lambda: call_ids_in_the_database_file(tmp_path, path) == {row[1] for row in rows}, 10,
                       message="the rows written back into the database file")
        finally:
            server.threads_stop.set()
            thread.join(5)
        assert not thread.is_alive()


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_writes_the_write_ahead_log_back_within_seconds(tmp_path, workers):
    """A few calls, far fewer than the 1,000 pages of log that would make SQLite write it back:
    the server's write-back thread (one, whatever the workers) writes them into the file."""
    path = tmp_path / "tfps.db"
    url = f"sqlite://{path}"
    server = TfpsServer(tmp_path, url, {"server": {"workers": workers}, "policy": POLICY}).start()
    try:
        ids = calls(server.port, 20)
        wait_until(lambda: every_call_logged_once(url, ids), 10, message="the calls in the call log")
        wait_until(lambda: call_ids_in_the_database_file(tmp_path, path) == set(ids), 10,
                   message="the calls written back into the database file")
        assert server.read_log().count("written back") == 0, server.read_log()
    finally:
        assert server.stop() == 0
