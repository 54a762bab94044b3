"""Property-based: whatever the arguments, configuration file or CDR file, the CLI ends with exit
status 0, 1 or 2 and never a traceback. tfps.main() runs in-process against a scratch SQLite
database; `serve` goes through everything but the server itself, and `probe` only ever talks to
a closed port on 127.0.0.1."""

import contextlib
import io
import logging
import re
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import free_port, write_config
import tfps

# Reproducible in CI: the same examples every run, and no example database left in the tree.
SWEEP = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))

VERBS = tfps.build_parser()._subparsers._group_actions[0].choices  # name -> subparser, new verbs included
FIXED_OPTIONS = {"-h", "--help", "-c", "--config", "--db"}  # the sweep sets these itself

NASTY = [
    "", " ", "0", "1", "-1", "-5", "1.5", "1e30", "nan", "inf", "1" * 25, str(10**23), str(2**31), str(2**31 - 1),
    "9" * 5000, "²", "١٢", "\udcff\udcfe", "\x00", "\x1b[31m", "a\nb", "a;b", "a b", "x" * 300, "é" * 129,
    "1001", "pbx.example.com", "PBX.Example.COM", "1001@pbx.example.com", "a@b@c", "@", "unlimited", "none",
    "US", "us,gb", "USA", "*", "R06", "a00", "12125551234", "+44 (70) 12", "00441234",
    "127.0.0.1", "::1", "[::1]:5060", "127.0.0.1:99999", "192.0.2.1", "8.8.8.8", "fe80::1%eth0", "10.0.0.0/8",
    "300.1.2.3", "30s", "90d", "100000000000000000000d", "0.001", "3601",
    "2024-03-04T10:00:00", "2024-03-04T10:00:00+00:00", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00",
    "(" * 200, "a{99999999999}", "^EvilDialer/", "friendly-scanner",
    "sqlite:", "mysql://root:@127.0.0.1:99999/x", "mysql://root:@[::1/x", "postgres://x",
]


def cli(argv):
    """tfps.main(argv) -> (exit status, stdout, stderr); any other exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = tfps.main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def assert_clean(argv, result):
    code, out, err = result
    assert code in (0, 1, 2), f"{argv!r}: exit {code!r}\n{err}"
    assert "Traceback" not in err and "Traceback" not in out, f"{argv!r}:\n{err}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A scratch database with one account, a config without reputation keys, and a file whose
    bytes each example rewrites (the import, CDR and config file of the sweep)."""
    root = tmp_path_factory.mktemp("cli-properties")
    saved = logging.getLogger("tfps")
    handlers, level, propagate = saved.handlers[:], saved.level, saved.propagate
    scratch = {"db": f"sqlite://{root / 'tfps.db'}", "conf": write_config(root / "tfps.conf", {"policy": {"learning_days": "0"}}),
               "file": root / "input"}
    assert cli(["add", "1001", "pbx.example.com", "--db", scratch["db"]])[0] == 0
    yield scratch
    saved.handlers[:], saved.propagate = handlers, propagate
    saved.setLevel(level)


def value_tokens(file_path):
    def usable(token):  # "--x" would be an option and "-c..." the config file: the sweep sets those
        return not token.startswith(("--", "-c"))
    return st.one_of(st.sampled_from(NASTY), st.text(max_size=30), st.integers().map(str),
                     st.floats().map(str), st.just(str(file_path))).filter(usable)


def option_tokens(subparser):
    options = [s for a in subparser._actions for s in a.option_strings if s not in FIXED_OPTIONS]
    choices = [str(c) for a in subparser._actions if a.choices for c in a.choices]
    return st.sampled_from(options + choices) if options + choices else st.nothing()


def file_bytes():
    return st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
                     st.sampled_from([b"4470\n1.2.3.4\n", b"caf\xe9\n", "44\n".encode("utf-16")]))


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_any_arguments_end_in_0_1_or_2_without_a_traceback(verb, scratch):
    closed_port = free_port()

    @SWEEP
    @given(data=st.data())
    def sweep(data):
        scratch["file"].write_bytes(data.draw(file_bytes(), "file"))
        tokens = data.draw(st.lists(st.one_of(option_tokens(VERBS[verb]), value_tokens(scratch["file"])), max_size=8),
                           "arguments")
        argv = [verb, "-c", scratch["conf"], "--db", scratch["db"], *tokens]
        if verb == "probe":  # the last --server and --timeout win: nothing leaves the loopback
            argv += ["--server", f"127.0.0.1:{closed_port}", "--timeout", "0.05"]
        if verb == "replay":
            argv += ["--jobs", "1"]  # no forked workers inside the test process
        assert_clean(argv, cli(argv))

    with mock.patch.dict(tfps.COMMANDS_WITHOUT_DB, serve=lambda args, cfg: 0):
        sweep()


def config_text():
    sections = st.sampled_from([*tfps.CONFIG_SPEC, "sever"])
    known_keys = [key for keys in tfps.CONFIG_SPEC.values() for key in keys]
    keys = st.one_of(st.sampled_from(known_keys), st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
    values = st.one_of(st.sampled_from(NASTY), st.text(max_size=40), st.integers().map(str), st.floats().map(str))
    line = st.one_of(sections.map(lambda s: f"[{s}]"), st.tuples(keys, values).map(lambda kv: f"{kv[0]} = {kv[1]}"),
                     st.text(max_size=20))
    return st.lists(line, max_size=8).map("\n".join)


def encoded(text_strategy):
    """Text as a file holds it: UTF-8, a BOM, Latin-1, UTF-16, or bytes that are no encoding at all."""
    return st.one_of(text_strategy.map(lambda t: t.encode("utf-8", "surrogatepass")),
                     text_strategy.map(lambda t: b"\xef\xbb\xbf" + t.encode("utf-8", "surrogatepass")),
                     text_strategy.map(lambda t: t.encode("latin-1", "replace")),
                     text_strategy.map(lambda t: t.encode("utf-16", "surrogatepass")),
                     st.binary(max_size=300))


@settings(SWEEP, max_examples=300)
@given(content=encoded(config_text()))
def test_any_config_file_is_checked_without_a_traceback(content, scratch):
    scratch["file"].write_bytes(content)
    argv = ["config", "check", "-c", str(scratch["file"])]
    code, out, err = cli(argv)
    assert_clean(argv, (code, out, err))
    if code:
        assert len(err.strip().splitlines()) == 1 and err.startswith(f"tfps: {scratch['file']}"), err


CDR_FIELDS = ["2024-03-04T10:00:00+00:00", "2024-03-04T23:30:00-05:00", "9999-12-31T23:59:59-12:00",
              "0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59+00:00", "2024-03-04 10:00:00", "1001",
              "pbx.example.com", "PBX.EXAMPLE.COM", "12125551234", "+5355512345", "198.51.100.1", "Yealink", "2", "²",
              str(10**23), "-1", "fraud", "legit", "GB", "x" * 200]


def cdr_text():
    columns = st.sampled_from([*tfps.REPLAY_COLUMNS, *tfps.OPTIONAL_COLUMNS, "extra"])
    header = st.one_of(st.just(list(tfps.REPLAY_COLUMNS)), st.lists(columns, max_size=10))
    field = st.one_of(st.sampled_from(CDR_FIELDS), st.text(max_size=20))
    rows = st.lists(st.lists(field, max_size=9), max_size=6)
    quoted = st.sampled_from(["", '"', '"a""b"'])
    return st.tuples(header, rows, quoted).map(
        lambda t: "\n".join([",".join(t[0]), *(",".join(row) + t[2] for row in t[1])]) + "\n")


@settings(SWEEP, max_examples=200)
@given(content=encoded(cdr_text()))
def test_any_cdr_file_is_replayed_or_refused_without_a_traceback(content, scratch):
    scratch["file"].write_bytes(content)
    argv = ["replay", str(scratch["file"]), "-c", scratch["conf"], "--jobs", "1"]
    code, out, err = cli(argv)
    assert_clean(argv, (code, out, err))
    if code:
        assert re.match(rf"tfps: {re.escape(str(scratch['file']))}(:\d+)?: ", err) and len(err.strip().splitlines()) == 1, err


def test_a_huge_cdr_field_names_its_line(scratch):
    scratch["file"].write_text(",".join(tfps.REPLAY_COLUMNS) + "\n"
                               f"2024-03-04T10:00:00+00:00,1001,pbx.example.com,1212,198.51.100.1,{'Y' * 131073},1\n")
    code, _out, err = cli(["replay", str(scratch["file"]), "-c", scratch["conf"]])
    assert code == 1 and err.startswith(f"tfps: {scratch['file']}:2: field larger than field limit"), err
