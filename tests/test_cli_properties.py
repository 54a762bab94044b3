"""Property-based: whatever the arguments, configuration file or CDR file, the CLI ends with exit
status 0, 1 or 2 and never a traceback. tfps.main() runs in-process against a scratch SQLite
database; `serve` goes through everything but the server itself, and `probe` only ever talks to
a closed port on 127.0.0.1."""

import argparse
import contextlib
import io
import itertools
import logging
import re
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import free_port, write_config
import tfps

# Reproducible in CI: the same examples every run, and no example database left in the tree.
SWEEP = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))



def leaf_verbs(parser, prefix=()):
    """Every verb down to its last subcommand ('domain show') with its parser; new verbs included."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(leaf_verbs(sub, (*prefix, name)))
    return found or {" ".join(prefix): parser}


VERBS = leaf_verbs(tfps.build_parser())
FIXED_OPTIONS = {"-h", "--help", "-c", "--config", "--db"}  # the sweep sets these itself
CLOSED_PORT = free_port()
GOOD_CDR = (",".join(tfps.REPLAY_COLUMNS) + "\n2024-03-04T10:00:00+00:00,1001,pbx.example.com,12125551234,198.51.100.1,"
            "Yealink,1\n").encode()

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


# The values that broke the CLI before it bounded everything: every argument gets each of them,
# and the sweep draws them most often.
EDGES = ["-1", str(2**31), str(10**23), "1e30", "nan", "inf", "9" * 5000, "100000000000000000000d",
         "9999-12-31T23:59:59-12:00", "\udcff\udcfe", "x" * 300, "PBX.Example.COM", "\x1b[31m", "a\nb", ""]


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
    """A scratch database, a config without reputation keys, and a file whose bytes each example
    rewrites (the import, CDR and config file of the sweep)."""
    root = tmp_path_factory.mktemp("cli-properties")
    saved = logging.getLogger("tfps")
    handlers, level, propagate = saved.handlers[:], saved.level, saved.propagate
    scratch = {"db": f"sqlite://{root / 'tfps.db'}", "conf": write_config(root / "tfps.conf", {"policy": {"learning_days": "0"}}),
               "file": root / "input"}
    yield scratch
    saved.handlers[:], saved.propagate = handlers, propagate
    saved.setLevel(level)


@pytest.fixture
def provisioned(scratch):
    """The scratch database with the account 1001@pbx.example.com, whatever an earlier verb removed."""
    assert cli(["add", "1001", "pbx.example.com", "--db", scratch["db"]])[0] in (0, 1)  # 1: already there
    return scratch


# Values that pass, by argument, so that a command line gets past argparse into the command but
# for the one or two values the sweep replaces; an argument not named here (a new one) draws from
# all of them. FILE stands for the file whose bytes each example draws.
FILE = "{file}"
PLAUSIBLE = {
    "user": ["1001"], "domain": ["pbx.example.com", "PBX.Example.COM"], "number": ["12125551234", "+53 5 5512345"],
    "ip": ["198.51.100.7", "10.0.0.5", "8.8.8.8"], "ua": ["Yealink", "friendly-scanner"], "calls": ["1", "3"],
    "country": ["US", "GB"], "at": ["2026-01-05T10:00:00", "2026-01-05T23:00:00+01:00"], "days": ["3", "0"],
    "since": ["1h", "7d"], "older_than": ["90d", "0"], "limit": ["5"], "code": ["R06", "a00"],
    "account": ["1001@pbx.example.com"], "from_": ["1001@pbx.example.com"], "value": ["4470", "192.0.2.0/24", "^Evil", FILE],
    "note": ["a note", ""], "concurrent": ["5", "unlimited"], "concurrent_off": ["0"], "daily_quota": ["100"],
    "daily_quota_off": ["unlimited"], "email": ["ops@example.com", ""], "dest": ["US", "GB,de"], "source": ["US"],
    "jobs": ["1"], "listen": ["udp:127.0.0.1:5099"], "cdr": [FILE],
}
ANY_PLAUSIBLE = sorted({v for vs in PLAUSIBLE.values() for v in vs})


def unusual():
    def usable(token):  # "--x" would be an option and "-c..." the config file: the sweep sets those
        return not token.startswith(("--", "-c")) and "\x00" not in token  # no command line holds a NUL
    edges = st.sampled_from(EDGES)
    return st.one_of(edges, edges, st.sampled_from(NASTY), st.text(max_size=30), st.integers().map(str),
                     st.floats().map(str), st.sampled_from(ANY_PLAUSIBLE)).filter(usable)


@st.composite
def command_line(draw, subparser):
    """Each positional argument and some of the options with plausible values, then one or two
    of those values replaced by unusual ones, and now and then a stray token."""
    args = []  # [option string or None, value or None]
    for action in subparser._actions:
        optional = bool(action.option_strings)
        if optional and (FIXED_OPTIONS & set(action.option_strings) or draw(st.integers(0, 2))):
            continue
        if not optional and action.nargs == "?" and not draw(st.booleans()):
            continue
        choices = [str(c) for c in action.choices] if action.choices else PLAUSIBLE.get(action.dest, ANY_PLAUSIBLE)
        args.append([draw(st.sampled_from(action.option_strings)) if optional else None,
                     None if action.nargs == 0 else draw(st.sampled_from(choices))])
    with_values = [arg for arg in args if arg[1] is not None]
    for _ in range(draw(st.integers(0, 2)) if with_values else 0):
        draw(st.sampled_from(with_values))[1] = draw(unusual())
    argv = [token for arg in args for token in arg if token is not None]
    if draw(st.integers(0, 4)) == 0:
        options = [s for a in subparser._actions for s in a.option_strings if s not in FIXED_OPTIONS]
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(options) if options else unusual()))
    return argv


def pinned(verb, tokens, file_path):
    """The tokens with FILE filled in, and what no example may change: probe talks only to a closed
    port on the loopback (the last --server and --timeout win), replay forks no workers."""
    tokens = [str(file_path) if token == FILE else token for token in tokens]
    if verb == "probe":
        tokens += ["--server", f"127.0.0.1:{CLOSED_PORT}", "--timeout", "0.05"]
    if verb == "replay":
        tokens += ["--jobs", "1"]
    return tokens


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_argument_takes_every_edge_value(verb, provisioned):
    """Each argument of a verb in turn gets each of EDGES while the others keep a plausible value
    (flags such as --json are left out: they take no value)."""
    line = [[action.option_strings[0] if action.option_strings else None,
             str(action.choices[0]) if action.choices else PLAUSIBLE.get(action.dest, ANY_PLAUSIBLE)[0]]
            for action in VERBS[verb]._actions if action.nargs != 0 and not FIXED_OPTIONS & set(action.option_strings)]
    provisioned["file"].write_bytes(GOOD_CDR)
    with mock.patch.dict(tfps.COMMANDS_WITHOUT_DB, serve=lambda args, cfg: 0):
        for index, edge in itertools.product(range(len(line)), EDGES):
            tokens = [token for i, (option, value) in enumerate(line) for token in (option, edge if i == index else value)
                      if token is not None]
            argv = [*verb.split(), "-c", provisioned["conf"], "--db", provisioned["db"], *pinned(verb, tokens, provisioned["file"])]
            assert_clean(argv, cli(argv))


def file_bytes():
    return st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
                     st.sampled_from([b"4470\n1.2.3.4\n", b"caf\xe9\n", "44\n".encode("utf-16"), GOOD_CDR]))


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_any_arguments_end_in_0_1_or_2_without_a_traceback(verb, provisioned):
    @SWEEP
    @given(data=st.data())
    def sweep(data):
        provisioned["file"].write_bytes(data.draw(file_bytes(), "file"))
        argv = [*verb.split(), "-c", provisioned["conf"], "--db", provisioned["db"],
                *pinned(verb, data.draw(command_line(VERBS[verb]), "arguments"), provisioned["file"])]
        assert_clean(argv, cli(argv))

    with mock.patch.dict(tfps.COMMANDS_WITHOUT_DB, serve=lambda args, cfg: 0):
        sweep()


@st.composite
def config_text(draw):
    """Sections (now and then an unknown or repeated one) of known keys (now and then an unknown
    one) set to their defaults or to random values, and now and then a line of junk."""
    values = st.one_of(st.sampled_from(NASTY), st.text(max_size=40), st.integers().map(str), st.floats().map(str))
    lines = []
    for _ in range(draw(st.integers(0, 3))):
        section = draw(st.sampled_from([*tfps.CONFIG_SPEC, "sever"]))
        lines.append(f"[{section}]")
        keys = tfps.CONFIG_SPEC.get(section, tfps.CONFIG_SPEC["server"])
        for _ in range(draw(st.integers(0, 4))):
            key = draw(st.sampled_from(list(keys)) if draw(st.integers(0, 9)) else st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
            value = keys[key][1] if key in keys and draw(st.booleans()) else draw(values)
            lines.append(f"{key} = {value}")
    if draw(st.integers(0, 9)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=20)))
    return "\n".join(lines)


def encoded(text_strategy):
    """Text as a file holds it: UTF-8 mostly, a BOM, Latin-1, UTF-16, or bytes that are no encoding at all."""
    utf8 = text_strategy.map(lambda t: t.encode("utf-8", "surrogatepass"))
    return st.one_of(utf8, utf8, utf8,
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


GOOD_ROW = {"time": "2024-03-04T10:00:00+00:00", "user": "1001", "domain": "pbx.example.com", "number": "12125551234",
            "source_ip": "198.51.100.1", "user_agent": "Yealink", "concurrent_calls": "2", "source_country": "US",
            "label": "legit", "extra": ""}
CDR_FIELDS = ["2024-03-04T23:30:00-05:00", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00",
              "1969-12-31T23:59:59+00:00", "2024-03-04 10:00:00", "PBX.EXAMPLE.COM", "+5355512345", "²", str(10**23),
              "-1", "fraud", "GB", "x" * 200, '"', '"a""b"', ""]


def cdr_text():
    """A header (mostly the right one) and rows that are good ones with some fields replaced."""
    columns = [*tfps.REPLAY_COLUMNS, *tfps.OPTIONAL_COLUMNS]
    header = st.one_of(st.just(columns), st.permutations(columns), st.lists(st.sampled_from([*GOOD_ROW, "x"]), max_size=10))
    field = st.one_of(st.sampled_from(CDR_FIELDS), st.sampled_from(NASTY), st.text(max_size=20))

    @st.composite
    def text(draw):
        names = draw(header)
        lines = [",".join(names)]
        for _ in range(draw(st.integers(0, 5))):
            row = [GOOD_ROW.get(name, "") if draw(st.integers(0, 7)) else draw(field) for name in names]
            lines.append(",".join(row[:draw(st.integers(0, len(row)))] if draw(st.integers(0, 9)) == 0 else row))
        return "\n".join(lines) + "\n"
    return text()


@settings(SWEEP, max_examples=200)
@given(content=encoded(cdr_text()))
def test_any_cdr_file_is_replayed_or_refused_without_a_traceback(content, scratch):
    scratch["file"].write_bytes(content)
    argv = ["replay", str(scratch["file"]), "-c", scratch["conf"], "--jobs", "1"]
    code, out, err = cli(argv)
    assert_clean(argv, (code, out, err))
    if code:
        assert re.match(rf"tfps: {re.escape(str(scratch['file']))}(:\d+)?: ", err) and len(err.strip().splitlines()) == 1, err
