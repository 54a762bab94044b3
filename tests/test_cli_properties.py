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
SWEEP = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))

VERBS = tfps.build_parser()._subparsers._group_actions[0].choices  # name -> subparser, new verbs included
FIXED_OPTIONS = {"-h", "--help", "-c", "--config", "--db"}  # the sweep sets these itself

NASTY = [
    "", " ", "0", "1", "-1", "-5", "1.5", "1e30", "nan", "inf", "1" * 25, str(10**23), str(2**31), str(2**31 - 1),
    "9" * 5000, "²", "١٢", "\udcff\udcfe", "\x00", "\x1b[31m", "a\nb", "a;b", "a b", "x" * 300, "é" * 129,
    "-0", "-inf", str(2**63), "99999999999999999999999d", "1e3d",
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


# Values that pass, by argument, so that a drawn command line often gets past argparse into the
# command; an argument not named here (a new one) draws from all of them.
PLAUSIBLE = {
    "user": ["1001", "2002"], "domain": ["pbx.example.com", "PBX.Example.COM"], "number": ["12125551234", "+53 5 5512345"],
    "ip": ["198.51.100.7", "10.0.0.5", "8.8.8.8"], "ua": ["Yealink", "friendly-scanner"], "calls": ["1", "3"],
    "country": ["US", "GB"], "at": ["2026-01-05T10:00:00", "2026-01-05T23:00:00+01:00"], "days": ["3", "0"],
    "since": ["1h", "7d"], "older_than": ["90d", "0"], "limit": ["5"], "code": ["R06", "a00"],
    "account": ["1001@pbx.example.com"], "from_": ["1001@pbx.example.com"], "value": ["4470", "192.0.2.0/24", "^Evil"],
    "note": ["a note", ""], "concurrent": ["5", "unlimited"], "concurrent_off": ["0"], "daily_quota": ["100"],
    "daily_quota_off": ["unlimited"], "email": ["ops@example.com", ""], "dest": ["US", "GB,de"], "source": ["US"],
    "jobs": ["1"], "listen": ["udp:127.0.0.1:5099"],
}
ANY_PLAUSIBLE = sorted({v for vs in PLAUSIBLE.values() for v in vs})


def values(dest, file_path):
    def usable(token):  # "--x" would be an option and "-c..." the config file: the sweep sets those
        return not token.startswith(("--", "-c")) and "\x00" not in token  # no command line holds a NUL
    plausible = st.sampled_from(PLAUSIBLE.get(dest, ANY_PLAUSIBLE) + [str(file_path)])
    nasty = st.sampled_from(NASTY)
    return st.one_of(plausible, plausible, nasty, nasty, st.text(max_size=30), st.integers().map(str),
                     st.floats().map(str)).filter(usable)


@st.composite
def command_line(draw, subparser, file_path):
    """Each positional argument and a random choice of the options, with values mostly of the
    right kind, and now and then a stray token."""
    argv = []
    for action in subparser._actions:
        optional = bool(action.option_strings)
        if optional and (FIXED_OPTIONS & set(action.option_strings) or draw(st.integers(0, 2))):
            continue
        if not optional and action.nargs == "?" and not draw(st.booleans()):
            continue
        value = st.sampled_from([str(c) for c in action.choices]) if action.choices else values(action.dest, file_path)
        if optional:
            argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs != 0:
            argv.append(draw(value))
    options = [s for a in subparser._actions for s in a.option_strings if s not in FIXED_OPTIONS]
    if draw(st.integers(0, 3)) == 0:
        argv.append(draw(st.sampled_from(options) if options and draw(st.booleans()) else values(None, file_path)))
    return argv


def file_bytes():
    return st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
                     st.sampled_from([b"4470\n1.2.3.4\n", b"caf\xe9\n", "44\n".encode("utf-16"),
                                      (",".join(tfps.REPLAY_COLUMNS) + "\n2024-03-04T10:00:00+00:00,1001,pbx.example.com,"
                                       "12125551234,198.51.100.1,Yealink,1\n").encode()]))


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_any_arguments_end_in_0_1_or_2_without_a_traceback(verb, scratch):
    closed_port = free_port()

    @SWEEP
    @given(data=st.data())
    def sweep(data):
        scratch["file"].write_bytes(data.draw(file_bytes(), "file"))
        argv = [verb, "-c", scratch["conf"], "--db", scratch["db"],
                *data.draw(command_line(VERBS[verb], scratch["file"]), "arguments")]
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
