"""The admin CLI as an operator uses it: `python3 tfps.py COMMAND ...` as a real subprocess, against
a real SQLite file and the real MariaDB (db_url runs each test on both), including the bad-input
paths: usage errors exit 2, failures exit 1 with one clear line, never a traceback."""

import configparser
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, TFPS, free_port, run_cli, wait_until, write_config
import tfps

USER, DOMAIN = "1001", "pbx.example.com"
ACCOUNT = (USER, DOMAIN)

SUBCOMMANDS = {"serve", "initdb", "config", "list", "show", "add", "remove", "reset", "set", "allow", "deny", "block",
               "unblock", "learn", "blacklist", "whitelist", "calls", "stats", "check", "lint", "probe", "purge", "reputation",
               "train", "replay", "domain"}
NESTED = {"domain": ("list", "show", "set", "allow", "deny")}  # ACTION after the command


# -- helpers ------------------------------------------------------------------------------------

def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def failed(result, code=1):
    """A clean failure: the exit code, no traceback, and (for failures) one line on stderr."""
    assert result.returncode == code, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    if code == 1:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
        assert lines[0].startswith("tfps: "), lines[0]
    return result


def as_json(result):
    return json.loads(ok(result).stdout)


def cli(db, *args, **kw):
    return run_cli(*args, db=db, **kw)


def probe(port, number, *extra):
    return run_cli("probe", number, "--server", f"127.0.0.1:{port}", *extra, timeout=30)


def verdict_code(result):
    m = re.search(r"^code: (\S+)$", ok(result).stdout, re.M)
    assert m, result.stdout
    return m.group(1)


def wait_for_calls(db, count, *args, timeout=5.0):
    """The call log once it holds `count` rows (the server writes it every flush_interval)."""
    rows = wait_until(lambda: (lambda r: r if len(r) >= count else None)(as_json(cli(db, "calls", "--json", *args))),
                      timeout, interval=0.1, message=f"{count} rows in the call log")
    assert len(rows) == count, rows
    return rows


def account_row(db):
    rows = as_json(cli(db, "list", "--json"))
    return {(r["user"], r["domain"]): r for r in rows}


def add_history(db_url, user, domain, days=10, per_day=6, gb_per_day=1):
    """Approved calls of past days written straight into call_log (training input)."""
    db = tfps.Database(db_url)
    try:
        account_id = db.scalar("SELECT id FROM accounts WHERE user = ? AND domain = ?", (user, domain))
        now = time.time()
        rows = []
        for day in range(1, days + 1):
            for n in range(per_day + gb_per_day):
                country, number = ("GB", f"44207946{n:04d}") if n < gb_per_day else ("US", f"1212555{n:04d}")
                rows.append((now - day * 86400 + n * 60, f"h{day}-{n}", account_id, user, domain, "", number, number,
                             "10.0.0.5", "Yealink", "", country, 0, 3, "A00", "", "approved", "302 A00", None, "test", 0.5))
        db.executemany("INSERT INTO call_log (ts, call_id, account_id, user, domain, from_uri, dialed, number, source_ip, "
                       "user_agent, source_country, dest_country, off_hours, concurrent_calls, code, would_code, reason, "
                       "sip_response, abuse_score, node, latency_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    finally:
        db.close()


# -- help and usage -----------------------------------------------------------------------------

def test_every_subcommand_is_known():
    parser = tfps.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == SUBCOMMANDS


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help_and_takes_config_and_db(command):
    for words in [(command, action) for action in NESTED[command]] if command in NESTED else [(command,)]:
        result = ok(run_cli(*words, "--help"))
        assert result.stdout.startswith(f"usage: tfps.py {' '.join(words)}")
        assert "-c FILE, --config FILE" in result.stdout and "--db URL" in result.stdout


def test_version():
    assert ok(run_cli("--version")).stdout.strip() == f"TFPS {tfps.__version__}"


USAGE_ERRORS = [
    [],
    ["frobnicate"],
    ["show", USER],
    ["add"],
    ["set", *ACCOUNT, "--concurrent", "lots"],
    ["set", *ACCOUNT, "--daily-quota", "-5"],
    ["allow", *ACCOUNT, "--dest", "USA"],
    ["learn", *ACCOUNT],
    ["learn", *ACCOUNT, "--days", "2", "--stop"],
    ["blacklist", "frob", "number", "1"],
    ["blacklist", "add", "phone", "1"],
    ["whitelist", "add", "ua", "friendly-scanner"],
    ["calls", "--since", "yesterday"],
    ["calls", "--account", "no-domain"],
    ["calls", "--limit", "many"],
    ["stats", "--since", "forever"],
    ["check", *ACCOUNT],
    ["check", *ACCOUNT, "12125551234", "--calls", "two"],
    ["probe", "12125551234"],
    ["probe", "12125551234", "--server", "127.0.0.1:5060", "--transport", "sctp"],
    ["probe", "12125551234", "--server", "127.0.0.1:5060", "--from", "nobody"],
    ["purge"],
    ["purge", "--older-than", "soon"],
    ["reputation"],
    ["train", "--account", "no-domain"],
    ["replay"],
    ["config", "validate"],
    ["serve", "--listen", "udp:nowhere"],
    ["serve", "--mode", "block-everything"],
    ["list", "--bogus-flag"],
    # every argument is bounded: what the database columns hold, durations up to 100 years
    ["set", *ACCOUNT, "--daily-quota", "99999999999999999999999"],
    ["set", *ACCOUNT, "--concurrent", str(2**31)],
    ["add", *ACCOUNT, "--daily-quota", "-1"],
    ["add", *ACCOUNT, "--concurrent-off", "none"],
    ["add", "\udcff\udcfe", DOMAIN],
    ["add", "x" * 129, DOMAIN],
    ["add", USER, "d" * 256],
    ["add", "a\x1bb", DOMAIN],
    ["add", USER, "pbx example.com"],
    ["add", *ACCOUNT, "--email", "a\nb@example.com"],
    ["learn", *ACCOUNT, "--days", "1e30"],
    ["learn", *ACCOUNT, "--days", "99999999"],
    ["calls", "--limit", "100000000000000000000"],
    ["calls", "--code", "R06; DROP"],
    ["calls", "--account", "a@b@c"],
    ["stats", "--since", "1" * 400],
    ["purge", "--older-than", "100000000000000000000d"],
    ["check", *ACCOUNT, "12125551234", "--calls", str(10**20)],
    ["check", *ACCOUNT, "1" * 65],
    ["probe", "12125551234", "--server", "127.0.0.1:5060", "--timeout", "nan"],
    ["probe", "12125551234", "--server", "127.0.0.1:5060", "--timeout", "inf"],
    ["probe", "12125551234", "--server", "127.0.0.1:5060", "--timeout", "0"],
    ["probe", "12125551234", "--server", "127.0.0.1:5060", "--ua", "x\r\nVia: evil"],
    ["blacklist", "add", "number", "4470", "--note", "two\nlines"],
    ["replay", "cdr.csv", "--jobs", str(10**30)],
    ["list", "--db", "mysql://root:@127.0.0.1:99999/x"],
    ["list", "--db", "mysql://root:@[::1/x"],
    ["list", "--db", "mysql://root:@127.0.0.1:port/x"],
    ["list", "--db", "postgres://tfps@localhost/tfps"],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=lambda a: " ".join(a) or "(nothing)")
def test_wrong_arguments_print_usage_and_exit_2(argv, tmp_path):
    result = failed(run_cli(*argv, db=f"sqlite://{tmp_path / 'tfps.db'}") if argv else run_cli(), code=2)
    assert result.stderr.startswith("usage: tfps.py"), result.stderr
    assert "error:" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "tfps.db").exists(), "a usage error opens no database"


@pytest.mark.parametrize("argv", [
    ["blacklist", "add", "number"],                        # the value is missing
    ["reputation", "not-an-ip"],
    ["probe", "12125551234", "--server", "nohost"],        # no port
    ["probe", "12125551234", "--server", "127.0.0.1:99999"],
    ["calls", "--limit", "-1"],
    ["check", *ACCOUNT, "12125551234", "--at", "9999-12-31T23:59:59-12:00"],
    ["check", *ACCOUNT, "12125551234", "--at", "1969-12-31T23:00:00"],
], ids=lambda a: " ".join(a))
def test_bad_arguments_found_after_parsing_print_usage_and_exit_2(argv, tmp_path):
    result = failed(run_cli(*argv, db=f"sqlite://{tmp_path / 'tfps.db'}"), code=2)
    assert f"tfps.py {argv[0]}" in result.stderr and "error:" in result.stderr
    assert "usage: tfps.py" in result.stderr, f"no usage line:\n{result.stderr}"


def test_output_into_a_closed_pipe_is_quiet(sqlite_url):
    """`tfps.py calls | head -1`: when the reader has gone, no BrokenPipeError message."""
    ok(run_cli("initdb", db=sqlite_url))
    for argv in (["config", "check"], ["blacklist", "list", "ua", "--db", sqlite_url]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            result = subprocess.run([sys.executable, str(TFPS), *argv], stdout=write_end, stderr=subprocess.PIPE,
                                    text=True, timeout=30)
        finally:
            os.close(write_end)
        assert "BrokenPipe" not in result.stderr and "Traceback" not in result.stderr, result.stderr


# -- configuration ------------------------------------------------------------------------------

def test_example_config_documents_every_key_with_its_default():
    text = (REPO / "tfps.conf").read_text()
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    parser.optionxform = str
    parser.read_string(text)
    assert parser.sections() == list(tfps.CONFIG_SPEC)
    lines = text.splitlines()
    for section, keys in tfps.CONFIG_SPEC.items():
        assert list(parser[section]) == list(keys), f"[{section}] keys differ from CONFIG_SPEC (or their order)"
        for key, (_parse, default, help_text) in keys.items():
            assert parser[section][key] == default, f"[{section}] {key}"
            start = lines.index(f"[{section}]")
            at = next(i for i, line in enumerate(lines) if i > start and re.match(rf"{key} =", line))
            comments = []
            for line in reversed(lines[:at]):
                if not line.startswith("#"):
                    break
                comments.insert(0, line)
            assert comments and comments[0] == f"# {help_text}", f"[{section}] {key}: the comment above it"


def test_config_check_of_the_example_prints_the_effective_defaults():
    result = ok(run_cli("config", "check", "-c", str(REPO / "tfps.conf")))
    assert result.stdout.splitlines()[0] == f"# {REPO / 'tfps.conf'}: OK"
    printed = configparser.ConfigParser(interpolation=None)
    printed.optionxform = str
    printed.read_string(result.stdout)
    for section, keys in tfps.CONFIG_SPEC.items():
        assert {k: v for k, v in printed[section].items()} == {k: spec[1] for k, spec in keys.items()}


def test_config_check_masks_secrets(tmp_path):
    conf = write_config(tmp_path / "tfps.conf", {
        "reputation": {"abuseipdb_key": "abuse-s3cret-key", "apiban_key": "apiban-s3cret"},
        "alerts": {"smtp_user": "tfps-mailer", "smtp_password": "smtp-s3cret"}})
    result = ok(run_cli("config", "check", "-c", conf))
    assert "s3cret" not in result.stdout
    for key in ("abuseipdb_key", "apiban_key", "smtp_password"):
        assert f"{key} = ****" in result.stdout.splitlines()
    assert "smtp_user = tfps-mailer" in result.stdout.splitlines()
    assert "apiban_url = https://apiban.org" in result.stdout.splitlines()


def test_config_check_masks_the_database_password(tmp_path):
    conf = write_config(tmp_path / "tfps.conf", {"database": {"url": "mysql://tfps:db-s3cret@db.example.com:3306/tfps"}})
    result = ok(run_cli("config", "check", "-c", conf))
    assert "db-s3cret" not in result.stdout
    assert "url = mysql://tfps:****@db.example.com:3306/tfps" in result.stdout.splitlines()


CONFIG_ERRORS = [
    ("[server]\nmode = redirect\nlisten_on = udp:0.0.0.0:5060\n", 3, ["unknown key 'listen_on'", "[server]"]),
    ("[server]\nmode = redirect\n\n[sever]\nmode = redirect\n", 4, ["unknown section [sever]"]),
    ("[policy]\n\nab_max_calls = five\n", 3, ["[policy] ab_max_calls", "'five'", "whole number"]),
    ("[policy]\ntimezone = Mars/Olympus_Mons\n", 2, ["[policy] timezone", "unknown timezone"]),
    ("[policy]\nab_window = a while\n", 2, ["[policy] ab_window", "not a duration"]),
    ("[policy]\nbusiness_hours = weekdays 9-5\n", 2, ["[policy] business_hours"]),
    ("[server]\nmode = proxy\n", 2, ["[server] mode", "redirect, failover, monitor"]),
    ("[server]\nlisten = udp:0.0.0.0\n", 2, ["[server] listen", "bad listen spec"]),
    ("[server]\ntrusted_peers = 10.0.0.0/8, 300.1.2.3\n", 2, ["[server] trusted_peers"]),
    ("[server]\nmode = redirect\nmode = failover\n", 3, ["'mode'", "already exists"]),
    ("[reputation]\nabuse_threshold = 101\n", 2, ["[reputation] abuse_threshold", "between 0 and 100"]),
    ("mode = redirect\n", 1, ["no section headers"]),
    ("[policy]\nhome_country = USA\n", 2, ["home_country"]),
]


@pytest.mark.parametrize("text,line,needles", CONFIG_ERRORS, ids=[c[2][0] for c in CONFIG_ERRORS])
def test_config_errors_name_file_line_and_key(text, line, needles, tmp_path):
    path = tmp_path / "tfps.conf"
    path.write_text(text)
    result = failed(run_cli("config", "check", "-c", str(path)))
    assert result.stderr.startswith(f"tfps: {path}:{line}: "), result.stderr
    for needle in needles:
        assert needle in result.stderr
    assert result.stdout == ""
    # Every other subcommand refuses the same file the same way.
    failed(run_cli("list", "-c", str(path)))


def test_limits_and_durations_in_the_config_are_bounded(tmp_path):
    """What `config check` passes, the database can store: a default limit past INT once passed
    the check and then made every new account a 500."""
    for key, value, needle in [("default_daily_quota", "99999999999999999999999", "0 to 2147483647, or unlimited"),
                               ("default_concurrent_calls", str(2**31), "0 to 2147483647, or unlimited"),
                               ("default_daily_quota_off", "-1", "or unlimited"),
                               ("default_concurrent_calls_off", "none", "or unlimited"),
                               ("learning_days", "99999999", "between 0 and 36525"),
                               ("ab_block", "100000000000000000000d", "longer than 36525 days"),
                               ("train_sigma", "nan", "between 0 and 100"),
                               ("anomaly_sigma", "inf", "between 0 and 100"),
                               ("ab_max_calls", "9" * 5000, "between 1 and 1000"),
                               ("new_destinations_per_10min", "-1", "between 0 and 1000"),
                               ("anomaly_block", "30s", "between 60s and"),
                               ("anomaly_block", "31d", "between 60s and")]:
        path = write_config(tmp_path / "tfps.conf", {"policy": {key: value}})
        result = failed(run_cli("config", "check", "-c", path))
        assert result.stderr.startswith(f"tfps: {path}:2: [policy] {key} = ") and needle in result.stderr, result.stderr
    path = write_config(tmp_path / "tfps.conf", {"server": {"node_name": "n" * 65}})
    assert "[server] node_name" in failed(run_cli("config", "check", "-c", path)).stderr
    path = write_config(tmp_path / "tfps.conf", {"alerts": {"alert_webhook": "ftp://hooks.example.com/s3cret"}})
    result = failed(run_cli("config", "check", "-c", path))
    assert "[alerts] alert_webhook: must be an http:// or https:// URL" in result.stderr and "s3cret" not in result.stderr


def test_config_value_continued_on_a_second_line_is_refused(tmp_path):
    path = tmp_path / "tfps.conf"
    path.write_text("[alerts]\nsmtp_from = tfps@example.com\n  Bcc: everyone@example.com\n")
    assert failed(run_cli("config", "check", "-c", str(path))).stderr.startswith(f"tfps: {path}:2: [alerts] smtp_from = ")


def test_config_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "tfps.conf"
    path.write_bytes(b"[policy]\nhome_country = US\n# caf\xe9\n")
    for command in (["config", "check"], ["list"]):
        result = failed(run_cli(*command, "-c", str(path)))
        assert result.stderr == f"tfps: {path}:3: not UTF-8 text (byte 0xE9 in column 6); save it as UTF-8\n"
    path.write_bytes("[policy]\nhome_country = GB\n".encode("utf-16"))
    assert failed(run_cli("config", "check", "-c", str(path))).stderr.startswith(f"tfps: {path}:1: not UTF-8 text")
    path.write_bytes("\ufeff[policy]\nhome_country = GB\n".encode())  # a BOM, as Windows editors write
    assert "home_country = GB" in ok(run_cli("config", "check", "-c", str(path))).stdout


def test_config_file_that_cannot_be_read(tmp_path):
    result = failed(run_cli("config", "check", "-c", str(tmp_path / "missing.conf")))
    assert "missing.conf: cannot read: No such file or directory" in result.stderr


def test_config_file_selects_the_database_and_db_overrides_it(tmp_path):
    first, second = f"sqlite://{tmp_path / 'first.db'}", f"sqlite://{tmp_path / 'second.db'}"
    conf = write_config(tmp_path / "tfps.conf", {"database": {"url": first}})
    ok(run_cli("add", "viaconfig", DOMAIN, "-c", conf))
    ok(run_cli("add", "viadb", DOMAIN, "-c", conf, "--db", second))
    assert [r["user"] for r in as_json(run_cli("list", "--json", "-c", conf))] == ["viaconfig"]
    assert [r["user"] for r in as_json(run_cli("list", "--json", "--db", second))] == ["viadb"]


# -- database: initdb, and unreachable databases ------------------------------------------------

def test_initdb_creates_then_checks(db_url):
    first = ok(cli(db_url, "initdb"))
    assert re.match(r"database \S+ created: schema version \d+\n\d{3} countries, \d+ User-Agent patterns\n$", first.stdout), first.stdout
    second = ok(cli(db_url, "initdb"))
    assert "checked: schema version" in second.stdout
    assert first.stdout.splitlines()[1] == second.stdout.splitlines()[1], "seed rows are not loaded twice"
    if db_url.startswith("mysql"):
        assert first.stdout.startswith("database mysql://root:****@127.0.0.1:3306/")


def _db_command(name, tmp_path):
    cdr = tmp_path / "cdr.csv"
    cdr.write_text("time,user,domain,number,source_ip,user_agent,concurrent_calls\n"
                   "2024-03-04T10:00:00+00:00,1001,pbx.example.com,12125551234,10.0.0.5,Yealink,1\n")
    entries = tmp_path / "entries.txt"
    entries.write_text("4470\n")
    return {
        "initdb": ["initdb"], "list": ["list"], "show": ["show", *ACCOUNT], "add": ["add", *ACCOUNT],
        "remove": ["remove", *ACCOUNT], "reset": ["reset", *ACCOUNT], "set": ["set", *ACCOUNT, "--daily-quota", "5"],
        "allow": ["allow", *ACCOUNT, "--dest", "GB"], "deny": ["deny", *ACCOUNT, "--dest", "GB"],
        "block": ["block", *ACCOUNT], "unblock": ["unblock", *ACCOUNT], "learn": ["learn", *ACCOUNT, "--stop"],
        "blacklist": ["blacklist", "add", "ip", "192.0.2.1"], "whitelist": ["whitelist", "import", "number", str(entries)],
        "calls": ["calls"], "stats": ["stats"], "check": ["check", *ACCOUNT, "12125551234"], "lint": ["lint"],
        "purge": ["purge", "--older-than", "90d"], "reputation": ["reputation", "192.0.2.1"],
        "train": ["train", "--dry-run"], "replay": ["replay", str(cdr)], "domain": ["domain", "show", DOMAIN],
        "serve": ["serve", "--listen", f"udp:127.0.0.1:{free_port()}"],
    }[name]


DB_COMMANDS = sorted(SUBCOMMANDS - {"config", "probe"})


@pytest.mark.parametrize("where", ["mysql-port-closed", "sqlite-missing-dir"])
@pytest.mark.parametrize("command", DB_COMMANDS)
def test_unreachable_database_is_one_clear_line(command, where, tmp_path):
    url = {"mysql-port-closed": "mysql://root:pw@127.0.0.1:1/nope",
           "sqlite-missing-dir": f"sqlite://{tmp_path / 'no' / 'such' / 'dir' / 'tfps.db'}"}[where]
    result = failed(run_cli(*_db_command(command, tmp_path), db=url, timeout=30))
    assert "cannot open database" in result.stderr
    assert ("Connection refused" in result.stderr) if where.startswith("mysql") else ("does not exist" in result.stderr)
    assert ":pw@" not in result.stderr, "passwords are masked in messages"
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("command", ["initdb", "list", "check"])
def test_missing_mysql_database_is_one_clear_line(command, tmp_path, mariadb):
    result = failed(run_cli(*_db_command(command, tmp_path), db="mysql://root:@127.0.0.1:3306/tfps_no_such_db"))
    assert "Unknown database 'tfps_no_such_db'" in result.stderr


def test_bad_database_urls_are_usage_errors_that_hide_the_password(tmp_path):
    for url, needle in [("postgres://tfps:s3cret@localhost/tfps", "unsupported database URL"),
                        ("mysql://tfps:s3cret@127.0.0.1:99999/tfps", "Port out of range"),
                        ("mysql://tfps:s3cret@[::1/tfps", "Invalid IPv6 URL")]:
        result = failed(run_cli("list", db=url), code=2)
        assert "argument --db: " in result.stderr and needle in result.stderr and "s3cret" not in result.stderr
        conf = write_config(tmp_path / "tfps.conf", {"database": {"url": url}})
        result = failed(run_cli("config", "check", "-c", conf))
        assert result.stderr.startswith(f"tfps: {conf}:2: [database] url: ") and needle in result.stderr
        assert "s3cret" not in result.stderr


# -- accounts -----------------------------------------------------------------------------------

def test_account_lifecycle(db_url):
    added = ok(cli(db_url, "add", *ACCOUNT, "--concurrent", "4", "--concurrent-off", "1", "--daily-quota", "50",
                   "--daily-quota-off", "0", "--email", "ops@example.com", "--dest", "US,gb", "--source", "US"))
    assert added.stdout == (f"added {USER}@{DOMAIN}: concurrent 4/1 (business/off), daily quota 50/0, "
                            "destinations GB,US, sources US\n")
    assert "already exists" in failed(cli(db_url, "add", *ACCOUNT)).stderr

    row = account_row(db_url)[ACCOUNT]
    assert row["state"] == "learning", "a pre-provisioned account learns first, like an enrolled one"
    assert (row["concurrent_calls"], row["concurrent_calls_off"], row["daily_quota"], row["daily_quota_off"],
            row["dest_countries"], row["source_countries"], row["blocked"], row["calls_today"]) == \
        (4, 1, 50, 0, "GB,US", "US", False, 0)
    table = ok(cli(db_url, "list")).stdout.splitlines()
    assert table[0].split() == ["user", "domain", "created", "state", "concurrent", "daily_quota", "dest", "source",
                                "blocked", "calls_today"]
    assert table[1].split()[:2] == [USER, DOMAIN] and table[1].split()[-2:] == ["no", "0"]

    shown = as_json(cli(db_url, "show", *ACCOUNT, "--json"))
    assert shown["account"] == f"{USER}@{DOMAIN}" and shown["email"] == "ops@example.com"
    assert (shown["concurrent_calls"], shown["daily_quota_off"], shown["last_verdicts"]) == (4, 0, [])
    assert {"concurrent_calls", "daily_quota", "dest_countries", "source_countries"} <= set(shown["pinned"].split(","))
    text = ok(cli(db_url, "show", *ACCOUNT)).stdout
    assert re.search(r"^email\s+ops@example\.com$", text, re.M) and "last verdicts:" in text
    assert re.search(r"^blocked\s+no$", text, re.M) and re.search(r"^anomaly_daily\s+not learned$", text, re.M)
    assert shown["blocked"] is False and shown["anomaly_daily"] is None

    out = ok(cli(db_url, "set", *ACCOUNT, "--daily-quota", "7", "--concurrent-off", "3")).stdout
    assert "daily quota 7/0" in out and "concurrent 4/3" in out and "pinned" in out
    shown = as_json(cli(db_url, "show", *ACCOUNT, "--json"))
    assert (shown["daily_quota"], shown["concurrent_calls_off"], shown["state"]) == (7, 3, "enforcing")
    assert "nothing to set" in failed(cli(db_url, "set", *ACCOUNT)).stderr

    assert "destinations DE,GB,US, sources CA,US" in ok(cli(db_url, "allow", *ACCOUNT, "--dest", "DE", "--source", "CA")).stdout
    assert "destinations !GB,DE,US, sources CA,US" in ok(cli(db_url, "deny", *ACCOUNT, "--dest", "GB")).stdout
    assert "nothing to allow" in failed(cli(db_url, "allow", *ACCOUNT)).stderr

    assert "blocked" in ok(cli(db_url, "block", *ACCOUNT)).stdout
    assert account_row(db_url)[ACCOUNT]["blocked"] is True
    assert re.search(r"^blocked\s+yes$", ok(cli(db_url, "show", *ACCOUNT)).stdout, re.M)
    assert as_json(cli(db_url, "show", *ACCOUNT, "--json"))["blocked"] is True
    assert "unblocked" in ok(cli(db_url, "unblock", *ACCOUNT)).stdout
    assert account_row(db_url)[ACCOUNT]["blocked"] is False

    assert "is learning until" in ok(cli(db_url, "learn", *ACCOUNT, "--days", "3")).stdout
    shown = as_json(cli(db_url, "show", *ACCOUNT, "--json"))
    assert shown["state"] == "learning" and shown["learning_until"]
    assert "is enforcing" in ok(cli(db_url, "learn", *ACCOUNT, "--stop")).stdout
    assert account_row(db_url)[ACCOUNT]["state"] == "enforcing"

    assert ok(cli(db_url, "remove", *ACCOUNT)).stdout == f"removed {USER}@{DOMAIN}\n"
    assert as_json(cli(db_url, "list", "--json")) == []
    failed(cli(db_url, "show", *ACCOUNT))


def test_domains_are_lowercase_everywhere(db_url):
    """Lookups lowercase the domain, so a domain stored as typed could never be found again."""
    ok(cli(db_url, "add", "5005", "PBX.Example.COM"))
    assert account_row(db_url).keys() == {("5005", "pbx.example.com")}
    assert "daily quota 3/10" in ok(cli(db_url, "set", "5005", "pbx.EXAMPLE.com", "--daily-quota", "3")).stdout
    assert as_json(cli(db_url, "show", "5005", "Pbx.Example.Com", "--json"))["account"] == "5005@pbx.example.com"
    ok(cli(db_url, "calls", "--account", "5005@PBX.example.com"))
    ok(cli(db_url, "train", "--dry-run", "--account", "5005@PBX.example.com"))
    assert "already exists" in failed(cli(db_url, "add", "5005", "pbx.example.COM")).stderr
    ok(cli(db_url, "remove", "5005", "PBX.EXAMPLE.COM"))


def test_limits_can_be_set_to_unlimited(db_url):
    """'unlimited' is an explicit limit on the command line, not the same as leaving it out."""
    ok(cli(db_url, "add", "2002", DOMAIN, "--daily-quota-off", "unlimited"))
    assert as_json(cli(db_url, "show", "2002", DOMAIN, "--json"))["daily_quota_off"] is None
    assert re.search(r"^daily_quota_off\s+unlimited  \(account\)$", ok(cli(db_url, "show", "2002", DOMAIN)).stdout, re.M)
    ok(cli(db_url, "add", *ACCOUNT))
    out = ok(cli(db_url, "set", *ACCOUNT, "--concurrent-off", "unlimited", "--daily-quota", "unlimited")).stdout
    assert "concurrent 10/unlimited" in out and "daily quota unlimited/10" in out
    shown = as_json(cli(db_url, "show", *ACCOUNT, "--json"))
    assert (shown["concurrent_calls_off"], shown["daily_quota"]) == (None, None)
    assert {"concurrent_calls_off", "daily_quota"} <= set(shown["pinned"].split(","))


UNKNOWN_ACCOUNT_COMMANDS = [
    ["show"], ["remove"], ["reset"], ["set", "--daily-quota", "3"], ["allow", "--dest", "GB"], ["deny", "--dest", "GB"],
    ["block"], ["unblock"], ["learn", "--stop"], ["learn", "--days", "3"],
]


def test_unknown_account_is_a_message_and_exit_1(db_url):
    for argv in UNKNOWN_ACCOUNT_COMMANDS:
        result = failed(cli(db_url, argv[0], "nobody", DOMAIN, *argv[1:]))
        assert result.stderr.startswith(f"tfps: unknown account nobody@{DOMAIN}"), (argv, result.stderr)
        assert result.stdout == "", argv
    assert as_json(cli(db_url, "list", "--json")) == [], "nothing was created"


def test_train_for_an_unknown_account(db_url):
    result = failed(cli(db_url, "train", "--dry-run", "--account", f"nobody@{DOMAIN}"))
    assert "unknown account nobody@pbx.example.com" in result.stderr


# -- blacklists and whitelists ------------------------------------------------------------------

def test_blacklist_and_whitelist_entries(db_url):
    assert ok(cli(db_url, "blacklist", "add", "number", "+44 (70) 12", "--note", "UK personal numbers")).stdout == \
        "blacklist number 447012: added\n"
    assert ok(cli(db_url, "blacklist", "add", "number", "447012")).stdout == "blacklist number 447012: already present\n"
    rows = as_json(cli(db_url, "blacklist", "list", "number", "--json"))
    assert [(r["number"], r["note"]) for r in rows] == [("447012", "UK personal numbers")]
    assert ok(cli(db_url, "blacklist", "list", "number")).stdout.splitlines()[0].split() == ["number", "note", "added"]
    assert "not a number prefix" in failed(cli(db_url, "blacklist", "add", "number", "44ab")).stderr

    assert "blacklist ip 2001:db8::/64: added" in ok(cli(db_url, "blacklist", "add", "ip", "2001:db8::1/64")).stdout
    assert "blacklist ip 203.0.113.7/32: added" in ok(cli(db_url, "blacklist", "add", "ip", "203.0.113.7")).stdout
    failed(cli(db_url, "blacklist", "add", "ip", "300.1.2.3"))
    assert {r["ip"] for r in as_json(cli(db_url, "blacklist", "list", "ip", "--json"))} == {"2001:db8::/64", "203.0.113.7/32"}

    ok(cli(db_url, "blacklist", "add", "ua", "^EvilDialer/", "--note", "seen 2024-03"))
    patterns = {r["ua"]: r["note"] for r in as_json(cli(db_url, "blacklist", "list", "ua", "--json"))}
    assert patterns["^EvilDialer/"] == "seen 2024-03"
    assert "friendly-scanner" in patterns and "sipvicious" in patterns, "initdb seeds the scanner User-Agents"
    failed(cli(db_url, "blacklist", "add", "ua", "(unclosed"))

    ok(cli(db_url, "whitelist", "add", "number", "447012345"))
    ok(cli(db_url, "whitelist", "add", "ip", "192.0.2.0/24"))
    assert [r["number"] for r in as_json(cli(db_url, "whitelist", "list", "number", "--json"))] == ["447012345"]
    assert [r["ip"] for r in as_json(cli(db_url, "whitelist", "list", "ip", "--json"))] == ["192.0.2.0/24"]
    assert as_json(cli(db_url, "whitelist", "list", "number", "--json")) != \
        as_json(cli(db_url, "blacklist", "list", "number", "--json")), "the two lists are separate"

    # The lists decide: blacklisted prefix -> R03, a longer whitelisted prefix wins.
    assert ok(cli(db_url, "check", *ACCOUNT, "447012999999")).stdout.startswith("R03 ")
    assert not ok(cli(db_url, "check", *ACCOUNT, "447012345678")).stdout.startswith("R03 ")
    assert ok(cli(db_url, "check", *ACCOUNT, "12125551234", "--ip", "203.0.113.7")).stdout.startswith("R02 ")
    assert ok(cli(db_url, "check", *ACCOUNT, "12125551234", "--ua", "EvilDialer/2.1")).stdout.startswith("R01 ")

    assert ok(cli(db_url, "blacklist", "remove", "number", "447012")).stdout == "blacklist number 447012: removed\n"
    assert "not present" in failed(cli(db_url, "blacklist", "remove", "number", "447012")).stderr
    ok(cli(db_url, "blacklist", "remove", "ip", "2001:db8::/64"))
    ok(cli(db_url, "blacklist", "remove", "ua", "^EvilDialer/"))
    ok(cli(db_url, "whitelist", "remove", "ip", "192.0.2.0/24"))
    assert as_json(cli(db_url, "blacklist", "list", "number", "--json")) == []
    assert as_json(cli(db_url, "whitelist", "list", "ip", "--json")) == []
    assert not ok(cli(db_url, "check", *ACCOUNT, "447012999999")).stdout.startswith("R03 ")


def test_import_is_idempotent_and_reports_counts(db_url, tmp_path):
    numbers = tmp_path / "numbers.txt"
    numbers.write_text("# IRSF ranges\n4470\n88216   # Thuraya\n+53\n\n12ab\n4470\n")
    first = ok(cli(db_url, "blacklist", "import", "number", str(numbers)))
    assert first.stdout == f"imported {numbers}: 3 added, 1 already present, 1 invalid\n"
    assert first.stderr == f"{numbers}:6: '12ab' is not a number prefix (digits as dialed: +43, 0043 or 43)\n"
    second = ok(cli(db_url, "blacklist", "import", "number", str(numbers)))
    assert second.stdout == f"imported {numbers}: 0 added, 4 already present, 1 invalid\n"
    rows = as_json(cli(db_url, "blacklist", "list", "number", "--json"))
    assert sorted(r["number"] for r in rows) == ["4470", "53", "88216"]
    assert {r["note"] for r in rows} == {"import numbers.txt"}

    ips = tmp_path / "ips.txt"
    ips.write_text("192.0.2.0/24\n2001:db8::/32  # lab\nnot-an-ip\n")
    assert ok(cli(db_url, "whitelist", "import", "ip", str(ips))).stdout.endswith("2 added, 0 already present, 1 invalid\n")
    assert ok(cli(db_url, "whitelist", "import", "ip", str(ips))).stdout.endswith("0 added, 2 already present, 1 invalid\n")

    uas = tmp_path / "ua.txt"
    uas.write_text("# scanners\nfriendly-scanner\n^MyDialer \\d+\n(broken\n")
    out = ok(cli(db_url, "blacklist", "import", "ua", str(uas))).stdout
    assert out.endswith("1 added, 1 already present, 1 invalid\n"), out

    junk = tmp_path / "junk.txt"
    junk.write_text("abc\nxyz\n")
    result = cli(db_url, "whitelist", "import", "number", str(junk))
    assert result.returncode == 1 and "0 added, 0 already present, 2 invalid" in result.stdout
    result = failed(cli(db_url, "blacklist", "import", "number", str(tmp_path / "missing.txt")))
    assert "missing.txt: cannot read" in result.stderr

    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"4470\n# Cura\xe7ao\n5999\n")
    result = failed(cli(db_url, "blacklist", "import", "number", str(latin)))
    assert result.stderr == f"tfps: {latin}:2: not UTF-8 text (byte 0xE7 in column 7); save it as UTF-8\n"


def test_list_entries_are_bounded(db_url):
    for argv in (["blacklist", "add", "number", "²³"], ["blacklist", "add", "number", "1" * 33],
                 ["blacklist", "add", "ua", "a{99999999999}"], ["blacklist", "add", "ua", "(" * 200 + ")" * 200],
                 ["blacklist", "add", "ua", "x" * 256]):
        assert failed(cli(db_url, *argv)).stderr.startswith(f"tfps: blacklist {argv[2]}: ")


# -- check: a verdict without counting ----------------------------------------------------------

def test_check_prints_the_verdict_and_counts_nothing(db_url):
    ok(cli(db_url, "add", *ACCOUNT, "--daily-quota", "1", "--daily-quota-off", "1", "--concurrent", "2"))
    ok(cli(db_url, "learn", *ACCOUNT, "--stop"))
    # Quota 1 and ab_max_calls 5: if check counted anything, these would turn into R09/R11 or R13.
    for _ in range(7):
        result = ok(cli(db_url, "check", *ACCOUNT, "12125551234"))
        assert result.stdout.startswith("A00  approved\n"), result.stdout
    assert "number 12125551234 (US (United States))" in result.stdout
    shown = as_json(cli(db_url, "show", *ACCOUNT, "--json"))
    assert (shown["approved_today_business"], shown["approved_today_off"], shown["last_verdicts"], shown["last_seen"]) == \
        (0, 0, [], "")
    assert as_json(cli(db_url, "calls", "--json")) == []
    assert account_row(db_url)[ACCOUNT]["calls_today"] == 0

    cuba = ok(cli(db_url, "check", *ACCOUNT, "+53 5 5512345"))
    assert cuba.stdout.startswith("R06  destination CU (Cuba) is a high-risk country\n")
    assert "to allow it: tfps.py whitelist add number +5355512345" in cuba.stdout
    verdict = as_json(cli(db_url, "check", *ACCOUNT, "0044 20 7946 0000", "--json"))   # a new destination
    assert (verdict["code"], verdict["number"], verdict["dest_country"]) == ("A00", "442079460000", "GB")
    ok(cli(db_url, "deny", *ACCOUNT, "--dest", "GB"))
    verdict = as_json(cli(db_url, "check", *ACCOUNT, "0044 20 7946 0000", "--json"))
    assert (verdict["code"], verdict["number"], verdict["dest_country"]) == ("R06", "442079460000", "GB")
    assert verdict["undo"] == f"tfps.py allow {USER} {DOMAIN} --dest GB"
    busy = as_json(cli(db_url, "check", *ACCOUNT, "12125551234", "--calls", "3", "--at", "2026-01-05T10:00:00", "--json"))
    assert busy["code"] == "R10" and busy["off_hours"] is False
    night = as_json(cli(db_url, "check", *ACCOUNT, "12125551234", "--calls", "3", "--at", "2026-01-05T23:00:00", "--json"))
    assert night["code"] == "R08" and night["off_hours"] is True
    scanner = ok(cli(db_url, "check", *ACCOUNT, "12125551234", "--ua", "friendly-scanner"))
    assert scanner.stdout.startswith("R01 ")

    # A hypothetical call of an unknown account is evaluated with the defaults, not enrolled.
    stranger = as_json(cli(db_url, "check", "stranger", DOMAIN, "12125551234", "--json"))
    assert stranger["code"] == "A00"
    assert list(account_row(db_url)) == [ACCOUNT]
    assert as_json(cli(db_url, "calls", "--json")) == []


# -- call history, stats, purge: fed by a real server -------------------------------------------

def test_calls_and_stats_after_real_verdicts(db_url, start_server):
    server = start_server(db_url, sections={"database": {"flush_interval": "0.2s"}, "policy": {"new_destination_calls": "0"}})
    port = server.port
    assert verdict_code(probe(port, "12125551234", "--from", f"{USER}@{DOMAIN}")) == "A00"
    assert verdict_code(probe(port, "5355512345", "--from", f"{USER}@{DOMAIN}")) == "R06"
    assert verdict_code(probe(port, "12125550000", "--from", f"2002@{DOMAIN}", "--ua", "friendly-scanner")) == "R01"
    assert verdict_code(probe(port, "442079460000", "--from", f"2002@{DOMAIN}", "--transport", "tcp")) == "A00"
    last_verdict_at = time.time()
    rows = wait_for_calls(db_url, 4)
    assert rows, "the call log holds the four verdicts"
    assert [r["code"] for r in rows] == ["A00", "R01", "R06", "A00"], "newest first"
    assert rows[0]["would"] == "R06" and rows[0]["account"] == f"2002@{DOMAIN}", "learning mode: would reject"
    assert rows[2]["number"] == "5355512345" and rows[2]["dest"] == "CU" and rows[2]["response"] == "302 R06"

    assert {r["number"] for r in as_json(cli(db_url, "calls", "--code", "R06", "--json"))} == {"5355512345", "442079460000"}
    assert {r["code"] for r in as_json(cli(db_url, "calls", "--code", "r01", "--json"))} == {"R01"}
    assert len(as_json(cli(db_url, "calls", "--account", f"2002@{DOMAIN}", "--json"))) == 2
    assert as_json(cli(db_url, "calls", "--account", f"nobody@{DOMAIN}", "--json")) == []
    assert [r["number"] for r in as_json(cli(db_url, "calls", "--limit", "1", "--json"))] == ["442079460000"]
    table = ok(cli(db_url, "calls", "--code", "R01")).stdout.splitlines()
    assert table[0].split()[:4] == ["time", "account", "number", "dest"] and len(table) == 2

    stats = as_json(cli(db_url, "stats", "--json"))
    by_code = {(c["code"], c["would_code"]): c["calls"] for c in stats["by_code"]}
    assert by_code == {("A00", ""): 1, ("A00", "R06"): 1, ("R06", ""): 1, ("R01", ""): 1}
    assert {(a["account"], a["calls"], a["rejected"]) for a in stats["top_accounts"]} == \
        {(f"{USER}@{DOMAIN}", 2, 1), (f"2002@{DOMAIN}", 2, 1)}
    assert {d["country"]: d["calls"] for d in stats["top_destinations"]} == {"US": 2, "CU": 1, "GB": 1}
    text = ok(cli(db_url, "stats")).stdout
    assert re.match(r"4 verdicts since \S+ \S+ UTC: 2 approved, 2 rejected\n", text), text  # [policy] timezone

    time.sleep(max(0.0, last_verdict_at + 1.1 - time.time()))   # the CLI runs above usually took longer
    assert as_json(cli(db_url, "calls", "--since", "1s", "--json")) == []
    assert ok(cli(db_url, "stats", "--since", "1s")).stdout.startswith("0 verdicts since")
    assert ok(cli(db_url, "purge", "--older-than", "90d")).stdout.startswith("call_log: 0 deleted,")
    assert ok(cli(db_url, "purge", "--older-than", "1s")).stdout.startswith("call_log: 4 deleted,")
    assert as_json(cli(db_url, "calls", "--json")) == []


# -- replay, train, purge of old rows -----------------------------------------------------------

def _cdr(path, rows, label=True):
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["time", "user", "domain", "number", "source_ip", "user_agent", "concurrent_calls"] + (["label"] if label else []))
        out.writerows(rows)
    return str(path)


def test_replay_minimal_cdr(tmp_path):
    cdr = _cdr(tmp_path / "cdr.csv", [
        ["2024-03-04T10:00:00+00:00", USER, DOMAIN, "12125551234", "10.0.0.5", "Yealink", "1", "legit"],
        ["2024-03-04T10:01:00+00:00", USER, DOMAIN, "5355512345", "10.0.0.5", "Yealink", "1", "fraud"],
        ["2024-03-04T10:02:00+00:00", "2002", DOMAIN, "12125551234", "10.0.0.6", "friendly-scanner", "", "fraud"]])
    text = ok(run_cli("replay", cdr)).stdout
    assert text.startswith("3 CDR rows replayed\n")
    assert "fraud calls blocked: 2/2 (100.0%)" in text and "legitimate calls blocked: 0/1 (0.0%)" in text
    report = as_json(run_cli("replay", cdr, "--json"))
    assert report["rows"] == 3 and report["codes"] == {"A00": 1, "R01": 1, "R06": 1}
    assert report["rejected_accounts"] == {f"{USER}@{DOMAIN}": {"R06": 1}, f"2002@{DOMAIN}": {"R01": 1}}

    bad = tmp_path / "bad.csv"
    bad.write_text("when,who\n1,2\n")
    assert "missing column(s)" in failed(run_cli("replay", str(bad))).stderr
    assert "cannot read" in failed(run_cli("replay", str(tmp_path / "none.csv"))).stderr


def test_replay_into_a_database_then_calls_since_and_purge(db_url, tmp_path):
    base = time.time() - 3 * 86400
    stamp = lambda offset: time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(base + offset))  # noqa: E731
    cdr = _cdr(tmp_path / "cdr.csv", [[stamp(i * 60), USER, DOMAIN, f"1212555{i:04d}", "10.0.0.5", "Yealink", "1"]
                                      for i in range(3)], label=False)
    assert ok(cli(db_url, "replay", cdr)).stdout.startswith("3 CDR rows replayed")
    assert as_json(cli(db_url, "calls", "--json")) == [], "three days old: outside the default 24h"
    assert len(as_json(cli(db_url, "calls", "--since", "7d", "--json"))) == 3
    assert ok(cli(db_url, "purge", "--older-than", "4d")).stdout.startswith("call_log: 0 deleted,")
    assert ok(cli(db_url, "purge", "--older-than", "2d")).stdout.startswith("call_log: 3 deleted,")
    assert as_json(cli(db_url, "calls", "--since", "7d", "--json")) == []


def test_train_dry_run_changes_nothing_then_train_learns(db_url):
    ok(cli(db_url, "add", *ACCOUNT))
    add_history(db_url, USER, DOMAIN)
    before = as_json(cli(db_url, "show", *ACCOUNT, "--json"))
    proposals = as_json(cli(db_url, "train", "--dry-run", "--json"))
    fields = {p["field"]: p for p in proposals if p["account"] == f"{USER}@{DOMAIN}"}
    assert fields["concurrent_calls"]["current"] == 10 and fields["concurrent_calls"]["proposed"] == 5
    assert fields["dest_countries"]["proposed"] == "GB,US"
    assert "daily_quota" in fields and "anomaly_daily" in fields
    table = ok(cli(db_url, "train", "--dry-run")).stdout.splitlines()
    assert table[0].split() == ["account", "field", "current", "proposed", "why"]
    assert as_json(cli(db_url, "show", *ACCOUNT, "--json")) == before, "a dry run changes nothing"

    learned = ok(cli(db_url, "train")).stdout.splitlines()
    assert learned[0].split() == ["account", "field", "current", "learned", "why"]
    after = as_json(cli(db_url, "show", *ACCOUNT, "--json"))
    assert (after["concurrent_calls"], after["dest_countries"]) == (5, "GB,US")
    # Hand-set limits are pinned: training leaves them alone.
    ok(cli(db_url, "set", *ACCOUNT, "--concurrent", "9"))
    again = {p["field"] for p in as_json(cli(db_url, "train", "--dry-run", "--account", f"{USER}@{DOMAIN}", "--json"))}
    assert "concurrent_calls" not in again


def test_train_without_history(db_url):
    ok(cli(db_url, "add", *ACCOUNT))
    rows = as_json(cli(db_url, "train", "--dry-run", "--json"))
    assert rows == [{"account": f"{USER}@{DOMAIN}", "field": "-", "current": "", "proposed": "",
                     "why": "no approved calls in the training window"}]


# -- reputation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("ip", ["10.1.2.3", "192.168.0.10", "127.0.0.1", "100.64.0.1", "fd00::1"])
def test_reputation_of_a_private_ip_is_never_looked_up(ip, sqlite_url):
    result = failed(run_cli("reputation", ip, db=sqlite_url))
    assert result.stderr == f"tfps: {ip} is a private or special-purpose address: never looked up\n"


def test_reputation_without_keys(db_url):
    result = failed(cli(db_url, "reputation", "8.8.8.8"))
    assert "reputation lookups are off" in result.stderr and "abuseipdb_key" in result.stderr


# -- probe ----------------------------------------------------------------------------------------

def test_probe_a_running_server(db_url, start_server):
    server = start_server(db_url)
    udp = ok(probe(server.port, "12125551234", "--from", f"{USER}@{DOMAIN}"))
    lines = udp.stdout.splitlines()
    assert lines[:4] == ["SIP/2.0 302 Moved Temporarily", f"Contact: <sip:A0012125551234@{DOMAIN}>", "code: A00",
                         "reason: approved"]
    assert re.fullmatch(r"round trip: \d+\.\d\d ms", lines[4])
    tcp = ok(probe(server.port, "5355512345", "--transport", "tcp", "--from", f"{USER}@{DOMAIN}", "--ip", "10.9.9.9",
                   "--ua", "Yealink SIP-T46S", "--calls", "1"))
    assert "SIP/2.0 302 Moved Temporarily" in tcp.stdout and "code: R06" in tcp.stdout
    assert "reason: destination CU (Cuba) is a high-risk country" in tcp.stdout
    # The identity passed in P-tfps reached the engine.
    rows = wait_for_calls(db_url, 1, "--code", "R06")
    assert rows[0]["source_ip"] == "10.9.9.9" and rows[0]["account"] == f"{USER}@{DOMAIN}"


def test_probe_a_failover_server(start_server, sqlite_url):
    server = start_server(sqlite_url, mode="failover")
    approved = ok(probe(server.port, "12125551234"))
    assert approved.stdout.startswith("SIP/2.0 503 Service Unavailable\n") and "code: A00" in approved.stdout
    rejected = ok(probe(server.port, "5355512345", "--transport", "tcp"))
    assert rejected.stdout.startswith("SIP/2.0 603 Decline\n") and "code: R06" in rejected.stdout


def test_probe_with_nothing_answering():
    port = free_port()
    started = time.monotonic()
    silent = run_cli("probe", "12125551234", "--server", f"127.0.0.1:{port}", "--timeout", "0.5")
    assert silent.returncode == 1 and time.monotonic() - started < 10
    assert silent.stdout == f"no answer from 127.0.0.1:{port} over udp within 0.5 s\n"
    assert "Traceback" not in silent.stderr
    refused = failed(run_cli("probe", "12125551234", "--server", f"127.0.0.1:{port}", "--transport", "tcp"))
    assert "Connection refused" in refused.stderr


def test_probe_of_a_port_that_swallows_packets():
    """Something listens but never answers: still exit 1 after the timeout, no hang."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        result = run_cli("probe", "12125551234", "--server", f"127.0.0.1:{port}", "--timeout", "1")
    assert result.returncode == 1 and "no answer" in result.stdout


def test_messages_use_the_name_the_program_was_run_as(tmp_path, sqlite_url):
    """Installed as `tfps`, the usage line, errors and the undo commands of verdicts say `tfps`."""
    for name in ("schema.sql", "tfps.py"):
        shutil.copy(REPO / name, tmp_path / name)
    os.rename(tmp_path / "tfps.py", tmp_path / "tfps")

    def tfps_(*args):
        return subprocess.run([sys.executable, str(tmp_path / "tfps"), *args], capture_output=True, text=True, timeout=60)
    assert tfps_("--help").stdout.startswith("usage: tfps [")
    assert tfps_("show").stderr.splitlines()[-1].startswith("tfps show: error:")
    ok(tfps_("add", *ACCOUNT, "--db", sqlite_url))
    ok(tfps_("deny", *ACCOUNT, "--dest", "GB", "--db", sqlite_url))
    verdict = json.loads(ok(tfps_("check", *ACCOUNT, "0044 20 7946 0000", "--db", sqlite_url, "--json")).stdout)
    assert verdict["undo"] == f"tfps allow {USER} {DOMAIN} --dest GB"
    assert "tfps.py" not in tfps_("check", *ACCOUNT, "+53 5 5512345", "--db", sqlite_url).stdout


def test_the_file_runs_under_a_profiler(tmp_path, sqlite_url):
    """`python3 -m cProfile tfps.py` gives the file no module loader: schema.sql is still found."""
    result = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(tmp_path / "initdb.prof"), str(TFPS), "initdb",
                             "--db", sqlite_url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "created: schema version" in result.stdout, result.stderr


def test_serve_on_a_port_in_use(sqlite_url):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run_cli("serve", "--listen", f"udp:127.0.0.1:{port}", db=sqlite_url, timeout=20)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"tfps: cannot listen on udp:127.0.0.1:{port}: Address already in use (another TFPS or SIP server runs there?)"


def test_a_second_server_cannot_take_the_port_of_a_running_one(start_server, tmp_path):
    """UDP without SO_REUSEADDR: a second instance (another database, say) fails at once, on its
    first listener, instead of answering the PBX's calls."""
    first = start_server()
    for n, listen in enumerate((f"udp:127.0.0.1:{first.port}", f"udp:127.0.0.1:{first.port}, tcp:127.0.0.1:{first.port}",
                                f"tcp:127.0.0.1:{first.port}, udp:127.0.0.1:{first.port}")):
        conf = write_config(tmp_path / f"second-{n}.conf", {"server": {"listen": listen},
                                                            "database": {"url": f"sqlite://{tmp_path / 'other.db'}"}})
        result = run_cli("serve", "-c", conf, timeout=20)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "Address already in use" in result.stderr.strip().splitlines()[-1]
        assert "serving" not in result.stderr


def test_ipv6_listen_is_logged_as_it_is_written(start_server):
    port = free_port()
    server = start_server(sections={"server": {"listen": f"udp:[::1]:{port}"}}, port=port)
    assert f"listening on udp:[::1]:{port}" in server.read_log()


# -- changes reach a running server within 5 s ----------------------------------------------------

def test_block_and_unblock_reach_a_running_server(db_url, start_server):
    server = start_server(db_url)
    calls = iter(range(1000))

    def code():  # a new number each time, so that A->B limits never interfere
        return verdict_code(probe(server.port, f"1212555{next(calls):04d}", "--from", f"{USER}@{DOMAIN}"))

    assert code() == "A00"
    # The first call enrolled the account (on SQLite the server commits at each flush_interval).
    wait_until(lambda: ACCOUNT in account_row(db_url), 5, interval=0.1, message="the account to be enrolled")
    ok(cli(db_url, "block", *ACCOUNT))
    wait_until(lambda: code() == "R14", 5, interval=0, message="R14 after the block")
    reason = probe(server.port, "12125559999", "--from", f"{USER}@{DOMAIN}").stdout
    assert "reason: account 1001@pbx.example.com is blocked by the administrator" in reason
    ok(cli(db_url, "unblock", *ACCOUNT))
    wait_until(lambda: code() == "A00", 5, interval=0, message="A00 after the unblock")


@pytest.mark.parametrize("quota_lease", ["auto", "0"])
def test_reset_reaches_a_running_server(db_url, start_server, quota_lease):
    ok(cli(db_url, "add", *ACCOUNT, "--daily-quota", "2", "--daily-quota-off", "2"))
    ok(cli(db_url, "learn", *ACCOUNT, "--stop"))
    server = start_server(db_url, sections={"policy": {"ab_max_calls": "2"}, "database": {"quota_lease": quota_lease}})

    def code(number):
        return verdict_code(probe(server.port, number, "--from", f"{USER}@{DOMAIN}"))

    assert [code("12125550001") for _ in range(3)] == ["A00", "A00", "R13"]   # A->B limit
    assert code("12125550001") == "R13", "the pair stays blocked"
    assert code("12125550002") in ("R09", "R11"), "the daily quota of 2 is used up"
    out = ok(cli(db_url, "reset", *ACCOUNT)).stdout
    pairs = 2 if quota_lease == "0" else 0   # with leases the server keeps them in memory
    assert out == (f"{USER}@{DOMAIN}: today's counters cleared (1 bucket(s)), {pairs} A->B pair(s) cleared; servers "
                   f"that keep them in memory forget them within reload_interval (2 s)\n")
    wait_until(lambda: code("12125550001") == "A00", 5, interval=0, message="the A->B block to be lifted by the reset")
    assert code("12125550002") == "A00", "the quota counts from zero again"

    def counted():
        shown = as_json(cli(db_url, "show", *ACCOUNT, "--json"))
        return shown["approved_today_business"] + shown["approved_today_off"] == 2
    wait_until(counted, 5, interval=0.1, message="two approved calls since the reset")


def test_readme_configuration_reference_lists_every_key_with_its_default():
    text = (REPO / "README.md").read_text()
    for section, keys in tfps.CONFIG_SPEC.items():
        assert f"#### `[{section}]`" in text, section
        table = text[text.index(f"#### `[{section}]`"):]
        for key, (_parse, default, _help) in keys.items():
            row = re.search(rf"^\| `{re.escape(key)}` \| (.*?) \|", table, re.M)
            assert row, f"[{section}] {key} is not in the README's configuration reference"
            assert row.group(1) == (f"`{default}`" if default else "*(empty)*"), f"[{section}] {key}"


def test_an_r16_block_is_shown_and_unblock_lifts_it(db_url):
    ok(cli(db_url, "add", *ACCOUNT))
    db = tfps.open_database(db_url)
    try:
        tfps.update_account_row(db, tfps.find_account(db, *ACCOUNT).id, {"blocked_until": time.time() + 3600}, time.time())
    finally:
        db.close()
    shown = ok(cli(db_url, "show", *ACCOUNT)).stdout
    assert re.search(rf"^blocked\s+no$", shown, re.M)
    assert re.search(rf"^blocked_until\s+\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC  \(R16; lift it: tfps.py unblock {USER} {DOMAIN}\)$",
                     shown, re.M), shown
    assert as_json(cli(db_url, "show", *ACCOUNT, "--json"))["blocked_until"].endswith(" UTC")
    assert re.search(r"R16 until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", ok(cli(db_url, "list")).stdout)
    assert as_json(cli(db_url, "list", "--json"))[0]["blocked_until"]
    assert "unblocked" in ok(cli(db_url, "unblock", *ACCOUNT)).stdout
    assert as_json(cli(db_url, "show", *ACCOUNT, "--json"))["blocked_until"] == ""
    assert re.search(r"^blocked_until\s*$", ok(cli(db_url, "show", *ACCOUNT)).stdout, re.M)
