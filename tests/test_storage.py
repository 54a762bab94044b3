"""The storage part of the database section: the MySQL placeholder tokenizer (as text, and on a
real MariaDB server), the dialect methods of Database, and the named storage functions, each on
a real SQLite file and a real MariaDB database."""

import threading

import pytest

import tfps
from conftest import older_accounts_trigger

NOW = 1_720_000_000.0


# -- the tokenizer -------------------------------------------------------------------------------

@pytest.mark.parametrize("written, sent", [
    ("SELECT a FROM t WHERE b = ? AND c = ?", "SELECT a FROM t WHERE b = %s AND c = %s"),
    ("SELECT '?' FROM t WHERE b = ?", "SELECT '?' FROM t WHERE b = %s"),
    ("SELECT \"?\", `we?ird` FROM t WHERE b = ?", "SELECT \"?\", `we?ird` FROM t WHERE b = %s"),
    ("SELECT 'it''s ?', ? FROM t", "SELECT 'it''s ?', %s FROM t"),
    ("SELECT 'back\\' ?', ? FROM t", "SELECT 'back\\' ?', %s FROM t"),
    ("SELECT \"say \"\"?\"\"\", ?", "SELECT \"say \"\"?\"\"\", %s"),
    ("SELECT `a``?`, ?", "SELECT `a``?`, %s"),
    ("SELECT n FROM t WHERE n LIKE '44%' AND m = ?", "SELECT n FROM t WHERE n LIKE '44%%' AND m = %s"),
    ("SELECT a % 7, ? FROM t", "SELECT a %% 7, %s FROM t"),
    ("SELECT '%s ?'", "SELECT '%%s ?'"),
    ("SELECT 'INSERT OR IGNORE INTO t'", "SELECT 'INSERT OR IGNORE INTO t'"),
    ("SELECT 'unterminated ?", "SELECT 'unterminated %s"),
])
def test_mysql_statement_translates_placeholders_outside_quotes_only(written, sent):
    assert tfps.mysql_statement(written) == sent


def test_quoted_question_marks_and_percent_signs_reach_mariadb_as_written(mysql_url):
    db = tfps.Database(mysql_url)
    try:
        assert db.one("SELECT 'a?b%', ?, 'it''s 100%?', `x`.`y?` FROM (SELECT 1 AS `y?`) AS `x`", (7,)) \
            == ("a?b%", 7, "it's 100%?", 1)
        assert db.one("SELECT 'back\\'s ?', ?", ("p",)) == ("back's ?", "p")
        assert db.scalar("SELECT ? LIKE '44%'", ("44207946",)) == 1
        assert db.scalar("SELECT ? LIKE '44%'", ("33142",)) == 0
    finally:
        db.close()


def test_the_translation_is_made_once_per_statement(mysql_url):
    db = tfps.Database(mysql_url)
    try:
        assert db.sql("SELECT ?") is db.sql("SELECT ?")
    finally:
        db.close()


# -- dialect methods of Database -----------------------------------------------------------------

@pytest.fixture
def db(db_url):
    database = tfps.open_database(db_url)
    yield database
    database.close()


def test_insert_or_ignore_says_whether_the_row_is_new(db):
    assert db.insert_or_ignore("locks", {"name": "n", "holder": "a", "expires": 1.0})
    assert not db.insert_or_ignore("locks", {"name": "n", "holder": "b", "expires": 2.0})
    assert list(db.query("SELECT holder, expires FROM locks")) == [("a", 1.0)]


def test_a_row_first_written_by_another_node_is_not_overwritten_on_mariadb(mysql_url):
    """The race write_read_row exists for: both nodes read no row; the second INSERT fails with
    a duplicate key that Database.transient() tells the caller to evaluate again."""
    a, b = tfps.open_database(mysql_url), tfps.Database(mysql_url)
    try:
        row = {"account_id": 1, "times": "1.000", "last_call": 1.0}
        update = "times = NEW(times), last_call = NEW(last_call)"
        assert a.one_for_update("SELECT times FROM rate_windows WHERE account_id = ?", (1,)) is None
        assert b.one_for_update("SELECT times FROM rate_windows WHERE account_id = ?", (1,)) is None
        a.write_read_row("rate_windows", row, ["account_id"], update, existed=False)
        with pytest.raises(b.errors) as caught:
            b.write_read_row("rate_windows", dict(row, times="2.000"), ["account_id"], update, existed=False)
        assert b.transient(caught.value)
        b.write_read_row("rate_windows", dict(row, times="1.000,2.000"), ["account_id"], update, existed=True)
        assert a.scalar("SELECT times FROM rate_windows WHERE account_id = 1") == "1.000,2.000"
    finally:
        a.close()
        b.close()


def test_one_for_update_holds_the_row_until_the_transaction_ends_on_mariadb(mysql_url):
    a, b = tfps.open_database(mysql_url), tfps.Database(mysql_url)
    try:
        a.insert("rate_windows", {"account_id": 1, "times": "", "last_call": 0.0})
        a.begin()
        assert a.one_for_update("SELECT times FROM rate_windows WHERE account_id = ?", (1,)) == ("",)
        order = []

        def second_reader():
            b.begin()
            b.one_for_update("SELECT times FROM rate_windows WHERE account_id = ?", (1,))
            order.append("b read")
            b.commit()

        reader = threading.Thread(target=second_reader)
        reader.start()
        reader.join(0.5)
        order.append("a commits")
        a.commit()
        reader.join(10)
        assert order == ["a commits", "b read"]
    finally:
        a.close()
        b.close()


# -- storage functions ---------------------------------------------------------------------------

def add_account(db, user, domain, state="enforcing", learning_until=None):
    acc = tfps.Account(None, user, domain, 5, 1, 50, 5, {"JP"}, {"JP"}, False, f"{user}@mail.example",
                       state, learning_until, set(), NOW, None)
    assert tfps.insert_account(db, acc)
    return tfps.Account.from_row(tfps.load_account(db, user, domain))


def test_accounts_are_loaded_updated_and_deleted_by_name(db):
    alice = add_account(db, "alice", "b.example")
    add_account(db, "bob", "a.example", state="learning", learning_until=NOW + 10)
    add_account(db, "carol", "a.example", state="learning", learning_until=NOW - 10)
    assert tfps.load_account(db, "nobody", "a.example") is None
    assert [r[1] for r in tfps.load_accounts(db)] == ["alice", "bob", "carol"]
    assert [(r[2], r[1]) for r in tfps.load_accounts(db, by_domain=True)] == \
        [("a.example", "bob"), ("a.example", "carol"), ("b.example", "alice")]
    assert [r[1] for r in tfps.load_accounts_done_learning(db, NOW)] == ["carol"]
    assert tfps.next_learning_end(db) == NOW - 10

    tfps.update_account_row(db, alice.id, {"daily_quota": 7, "state": "learning", "learning_until": NOW + 5}, NOW + 1)
    tfps.update_account_row(db, alice.id, {}, NOW + 2)  # nothing to change: not even `updated`
    changed = tfps.Account.from_row(tfps.load_account(db, "alice", "b.example"))
    assert (changed.daily_quota, changed.state, changed.learning_until) == (7, "learning", NOW + 5)
    assert db.scalar("SELECT updated FROM accounts WHERE id = ?", (alice.id,)) == NOW + 1

    db.upsert("daily_counters", {"account_id": alice.id, "day": "2024-07-03", "bucket": "off", "approved": 3},
              ["account_id", "day", "bucket"], "approved = NEW(approved)")
    db.insert("ab_pairs", {"account_id": alice.id, "number": "4420", "times": "", "last_attempt": NOW})
    assert tfps.approved_by_bucket(db, alice.id, "2024-07-03") == {"biz": 0, "off": 3}
    assert tfps.clear_account_counters(db, alice.id, "2024-07-03", NOW) == (1, 1)
    assert tfps.approved_by_bucket(db, alice.id, "2024-07-03") == {"biz": 0, "off": 0}

    db.insert("account_seen", {"account_id": alice.id, "direction": "dst", "iso": "GB", "first_seen": NOW})
    tfps.delete_account(db, alice.id)
    assert tfps.load_account(db, "alice", "b.example") is None
    assert tfps.table_size(db, "account_seen") == 0
    assert tfps.table_size(db, "accounts") == 2


def test_list_entries_are_added_once_and_removed_by_color(db):
    assert tfps.list_add(db, "black", "number", ["4420", "4420", "53"], "", NOW) == (2, 1)
    assert tfps.list_add(db, "white", "number", ["4420"], "ok", NOW) == (1, 0)
    seeded = tfps.load_user_agent_patterns(db)
    assert tfps.list_add(db, None, "ua", ["zz-dialer", "scan-o-matic"], "", NOW) == (2, 0)
    assert sorted(tfps.load_list(db, "number")) == [("black", "4420"), ("black", "53"), ("white", "4420")]
    assert set(tfps.load_user_agent_patterns(db)) == set(seeded) | {"zz-dialer", "scan-o-matic"}
    assert tfps.list_remove(db, "white", "number", "4420") == 1
    assert tfps.list_remove(db, "white", "number", "4420") == 0
    assert tfps.list_remove(db, None, "ua", "zz-dialer") == 1
    assert set(tfps.load_user_agent_patterns(db)) == set(seeded) | {"scan-o-matic"}
    assert [r[0] for r in tfps.list_entries(db, "black", "number")] == ["4420", "53"]
    assert [r[0] for r in tfps.list_entries(db, "white", "number")] == []


def test_high_risk_countries_and_seeded_tables(db):
    db.execute("UPDATE countries SET risk = 'high' WHERE iso IN ('CU', 'SL')")
    risks = {row[0]: row[3] for row in tfps.load_country_risks(db)}
    assert risks["CU"] == risks["SL"] == "high" and risks["JP"] != "high"
    assert all(row[2] == "" for row in tfps.load_country_risks(db))  # no prefixes
    assert tfps.table_size(db, "countries") == len(tfps.load_countries(db)) > 200


def test_reputation_cache_keeps_one_row_per_ip_until_it_expires(db):
    row = {"ip": "192.0.2.7", "ok": 1, "score": 90, "country": "NL", "whitelisted": 0, "apiban": 1,
           "source": "abuseipdb", "detail": "", "checked": NOW, "expires": NOW + 60}
    tfps.save_reputation(db, row)
    tfps.save_reputation(db, dict(row, score=95))
    assert tfps.load_cached_reputation(db, "192.0.2.7", NOW + 59)[2] == 95
    assert tfps.load_cached_reputation(db, "192.0.2.7", NOW + 60) is None
    assert tfps.table_size(db, "reputation_cache") == 1


def test_an_alert_is_claimed_by_one_deliverer_then_retried_or_deleted(db):
    tfps.enqueue_alerts(db, [(NOW, "reject", "a@b", "R03", "s", "b", "{}", "x@y", 1, 0, 0, NOW)])
    assert not tfps.due_alerts(db, NOW - 1)
    (alert_id, *_, attempts, next_try), = tfps.due_alerts(db, NOW)
    assert (attempts, next_try) == (0, NOW)
    assert tfps.claim_alert(db, alert_id, next_try, NOW + 30)
    assert not tfps.claim_alert(db, alert_id, next_try, NOW + 30)  # another node read the same row
    tfps.retry_alert(db, alert_id, 1, 0, NOW + 5, "smtp: " + "x" * 300)
    assert db.one("SELECT attempts, next_try, LENGTH(last_error) FROM alert_outbox") == (1, NOW + 5, 255)
    tfps.delete_alert(db, alert_id)
    assert tfps.table_size(db, "alert_outbox") == 0


def test_alert_throttle_counts_what_it_suppressed(db):
    keys = [("a@b", "R03"), ("a@b", "R06"), ("c@d", "R03")]
    assert tfps.load_alert_throttles(db, keys) == {}
    tfps.write_alert_throttles(db, [("a@b", "R03", NOW, 2), ("c@d", "R03", NOW, 0)], [])
    tfps.write_alert_throttles(db, [], [("a@b", "R03", NOW, 3)])
    assert tfps.load_alert_throttles(db, keys) == {("a@b", "R03"): (NOW, 5), ("c@d", "R03"): (NOW, 0)}
    assert tfps.load_alert_throttles(db, [("a@b", "R06")]) == {}
    tfps.write_alert_throttles(db, [("a@b", "R03", NOW + 60, 0)], [("c@d", "R03", NOW, 4)])
    assert tfps.load_alert_throttles(db, keys) == {("a@b", "R03"): (NOW + 60, 0), ("c@d", "R03"): (NOW, 4)}


def test_first_seen_marks_in_bulk_say_which_were_first(db):
    a, b = add_account(db, "alice", "b.example").id, add_account(db, "bob", "b.example").id
    assert tfps.mark_first_seen(db, a, "dst", "FR", NOW)
    marks = [(a, "dst", "FR", NOW + 1), (a, "dst", "DE", NOW + 1), (a, "src", "FR", NOW + 2), (b, "dst", "FR", NOW + 3),
             (b, "dst", "FR", NOW + 4)]
    assert tfps.mark_first_seen_all(db, marks) == [marks[1], marks[2], marks[3]]
    assert tfps.mark_first_seen_all(db, [(account, direction, iso, t + 10) for account, direction, iso, t in marks]) == []
    assert db.scalar("SELECT first_seen FROM account_seen WHERE account_id = ? AND direction = 'dst' AND iso = 'FR'",
                     (b,)) == NOW + 3


def log_call(db, ts, account_id, code, would_code="", user="alice", domain="b.example"):
    db.insert("call_log", {"ts": ts, "account_id": account_id, "user": user, "domain": domain, "number": "4420",
                           "dest_country": "GB", "code": code, "would_code": would_code})


def test_rejections_per_account_count_would_be_rejections_too(db):
    alice = add_account(db, "alice", "b.example")
    log_call(db, NOW, alice.id, "A00")
    log_call(db, NOW + 1, alice.id, "R03")
    log_call(db, NOW + 2, alice.id, "R03")
    log_call(db, NOW + 3, alice.id, "A00", would_code="R04")
    log_call(db, NOW + 100, alice.id, "R05")  # outside the span
    rows = sorted(tuple(int(v) if k == 3 else v for k, v in enumerate(r))
                  for r in tfps.rejections_per_account(db, NOW, NOW + 100))
    assert rows == [("alice", "b.example", "R03", 2, "alice@mail.example"), ("alice", "b.example", "R04", 1, "alice@mail.example")]


def test_purge_rows_keeps_what_is_recent(db):
    for ts in (NOW - 100, NOW + 100):
        log_call(db, ts, 1, "A00")
    db.insert("daily_counters", {"account_id": 1, "day": "2024-07-01", "bucket": "biz", "approved": 1})
    db.insert("daily_counters", {"account_id": 1, "day": "2024-07-03", "bucket": "biz", "approved": 1})
    db.insert("locks", {"name": "old", "holder": "a", "expires": NOW - 1})
    db.insert("locks", {"name": "new", "holder": "a", "expires": NOW + 1})
    for token_id, approved, until, ended in (("old-quota", NOW - 1, None, 0), ("old-ended", NOW - 1, NOW - 1, 1),
                                             ("old-running", NOW - 1, NOW + 1, 0), ("new-quota", NOW + 1, None, 0)):
        db.insert("approvals", {"token_id": token_id, "account_id": 1, "rule": "R06", "value": "GB", "approved": approved,
                                "until": until, "ended": ended, "client_ip": "192.0.2.1"})
    counts = tfps.purge_rows(db, call_log_before=NOW, counter_day_before="2024-07-02",
                             new_destination_day_before="2024-07-02", ab_pairs_before=NOW,
                             rate_windows_before=NOW, new_destination_windows_before=NOW, history_day_before=0, approvals_before=NOW, now=NOW)
    assert (counts["call_log"], counts["daily_counters"], counts["locks"], counts["ab_pairs"]) == (1, 1, 1, 0)
    assert list(db.query("SELECT name FROM locks")) == [("new",)]
    assert sorted(r[0] for r in db.query("SELECT token_id FROM approvals")) == ["new-quota", "old-running"], \
        "a country still allowed keeps its approval; one used lately stays used"


def test_schema_version_5_gains_the_r16_block_in_place(db_url):
    """Version 6: accounts.blocked_until, which the accounts trigger follows (a block reaches the
    other nodes), and the new destination countries of the last 10 minutes per account."""
    db = tfps.open_database(db_url)
    try:
        older_accounts_trigger(db, "accounts_edited")
        db.execute("ALTER TABLE accounts DROP COLUMN blocked_until")
        db.execute("DROP TABLE new_destination_windows")
        db.execute("UPDATE meta SET value = 5 WHERE name = 'schema_version'")
        old, new, changes = db.initdb()
        assert (old, new) == (5, 6)
        assert {"added accounts.blocked_until", "dropped trigger accounts_edited"} <= set(changes)
        assert "new_destination_windows" in db.names("table")
        assert "accounts_revised" in db.names("trigger") and "accounts_edited" not in db.names("trigger")
        tfps.insert_account(db, tfps.default_account(tfps.Config(), "u", "pbx.example.com", NOW))
        serial = db.scalar("SELECT value FROM meta WHERE name = 'accounts_serial'")
        db.execute("UPDATE accounts SET blocked_until = ? WHERE user = 'u'", (NOW + 3600,))
        assert db.scalar("SELECT value FROM meta WHERE name = 'accounts_serial'") == serial + 1
        assert tfps.find_account(db, "u", "pbx.example.com").blocked_by_r16(NOW)
    finally:
        db.close()
