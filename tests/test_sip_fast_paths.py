"""The SIP parser's fast paths read the forms nearly every request has (`<sip:user@host:port>;tag=t`,
`SIP/2.0/UDP host:port;branch=b;rport`, header lines that all end in CRLF) with one pattern
each. Each must give exactly what the general path gives, or leave the text to it: checked here
on generated text that mixes the plain forms with every character the general path treats
specially. So must logfmt's, which quotes a value without quotes, backslashes or control
characters as it is."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tfps

SWEEP = settings(max_examples=1500, deadline=None, derandomize=True, database=None)

TRICKY = "aZ09-_.!~*'()&=+$,;?:@%<>\"[] \t\\/"
users = st.one_of(st.sampled_from(["alice", "442071234567", "+4420", "a.b-c_d", "x%41y", "u:pw", ""]),
                  st.text(alphabet=TRICKY, max_size=8))
hosts = st.one_of(st.sampled_from(["127.0.0.1", "PBX.Example.com", "pbx_1.example", "[2001:db8::1]", "h"]),
                  st.text(alphabet="aZ09-._[]:", max_size=8))
ports = st.one_of(st.just(""), st.sampled_from([":5060", ":0", ":65535", ":65536", ":123456", ":", ": 5060"]),
                  st.integers(0, 99999).map(lambda n: f":{n}"))
uri_tails = st.one_of(st.just(""), st.sampled_from([";user=phone", ";lr", "?subject=x", ";transport=TCP", ";"]),
                      st.text(alphabet=TRICKY, max_size=4))
schemes = st.sampled_from(["sip", "sips", "SIP", "tel", "http", "sip ", ""])


@st.composite
def uris(draw):
    at = draw(st.sampled_from(["@", "@", ""]))
    return f"{draw(schemes)}:{draw(users)}{at}{draw(hosts)}{draw(ports)}{draw(uri_tails)}"


@st.composite
def name_addrs(draw):
    tag = draw(st.one_of(st.just(""), st.sampled_from([";tag=3f2a1b", ";TAG=x", ";tag=", "; tag=a", ";tag=a;x=y",
                                                       ';tag="q"', ";tag=a b"]),
                         st.text(alphabet=TRICKY, max_size=5).map(lambda t: ";tag=" + t)))
    display = draw(st.sampled_from(["", "", '"Alice" ', "Alice ", '"unterminated ', "a,b "]))
    before, after = draw(st.sampled_from([("<", ">"), ("<", ">"), ("", ""), ("<", ""), (" <", "> ")]))
    return f"{display}{before}{draw(uris())}{after}{tag}"


@st.composite
def vias(draw):
    protocol = draw(st.sampled_from(["SIP/2.0/UDP", "SIP/2.0/TCP", "SIP/2.0/udp", "SIP / 2.0 / UDP", "SIP/3.0/UDP"]))
    space = draw(st.sampled_from([" ", " ", "  ", "\t"]))
    params = draw(st.lists(st.sampled_from([";branch=z9hG4bK1f", ";rport", ";rport=5", ";received=1.2.3.4",
                                            ";branch=", ";BRANCH=z9hG4bKx", ";branch=z9hG4bK;x", ";", " ;rport"]),
                           max_size=3))
    noise = draw(st.text(alphabet=TRICKY, max_size=3))
    return f"{protocol}{space}{draw(hosts)}{draw(ports)}{''.join(params)}{noise}"


def outcome(parse, text):
    try:
        return parse(text)
    except (ValueError, tfps.SipError) as exc:
        return type(exc)


@SWEEP
@given(uris())
def test_a_plain_uri_is_read_as_the_general_path_reads_it(text):
    assert outcome(tfps.parse_uri, text) == outcome(tfps.parse_any_uri, text)


@SWEEP
@given(name_addrs())
def test_a_plain_name_addr_is_read_as_the_general_path_reads_it(text):
    assert outcome(tfps.parse_name_addr, text) == outcome(tfps.parse_any_name_addr, text.strip())


@SWEEP
@given(vias())
def test_a_plain_via_is_read_as_the_general_path_reads_it(text):
    assert outcome(tfps.parse_via, text) == outcome(tfps.parse_any_via, text.strip())


header_lines = st.one_of(
    st.sampled_from(["Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1", "v: SIP/2.0/TCP h;branch=z9hG4bK2",
                     "From: <sip:a@h>;tag=1", "From: <sip:b@h>;tag=2", "f: <sip:a@h>;tag=1", "To: <sip:1@h>",
                     "t: <sip:1@h>, <sip:2@h>", "Call-ID: x@h", "Call-ID: y@h", "i: x@h", "Call-ID: a, b",
                     "CSeq: 1 INVITE", "CSeq: 2 INVITE", "Max-Forwards: 70", "Content-Length: 0", "l: 0",
                     "P-tfps: a;d;1.2.3.4;ua;1", "P-tfps: a;d;1.2.3.4;ua;2", "Require: 100rel", "X: ",
                     "No colon here", ": value without a name", "Bad Name: x", "Name : spaced", "Caf\udce9: x",
                     "User-Agent: caf\udce9", "User-Agent: bare\rCR", "Subject:x,y", ""]),
    st.tuples(st.text(alphabet="aZ-_.: ", min_size=0, max_size=6), st.text(alphabet=TRICKY, max_size=8))
    .map(lambda parts: f"{parts[0]}:{parts[1]}"))


@SWEEP
@given(st.lists(header_lines, max_size=12))
def test_plain_header_lines_are_read_as_the_general_path_reads_them(lines):
    """Without continuation lines and bare CRs (parse_message sends those to the general path)."""
    lines = ["INVITE sip:1@h SIP/2.0"] + [line for line in lines if line[:1] not in (" ", "\t") and "\r" not in line]
    plain, general = tfps.SipMessage(), tfps.SipMessage()
    tfps._read_plain_headers(plain, lines)
    tfps._read_headers(general, lines)
    assert (plain.headers, plain.first, plain.defect) == (general.headers, general.first, general.defect)


@SWEEP
@given(st.lists(header_lines, min_size=1, max_size=8), st.sampled_from(["\r\n", "\n"]))
def test_a_message_reads_the_same_whatever_its_line_ends(lines, line_end):
    """CRLF line ends take the fast split, LF alone the pattern: the same message either way."""
    text = line_end.join(["INVITE sip:1@h SIP/2.0"] + lines) + line_end * 2
    def read(data):
        msg = outcome(tfps.parse_message, data)
        return msg if msg is tfps.SipError else (msg.headers, msg.first, msg.defect)
    assert read(text.replace(line_end, "\r\n").encode("utf-8", "surrogateescape")) == read(text.encode("utf-8", "surrogateescape"))


def test_the_fast_paths_serve_the_common_request():
    """The plain forms must be the ones real requests have, or the fast paths would save nothing."""
    assert tfps.PLAIN_SIP_URI_RE.fullmatch("sip:442071234567@127.0.0.1:5060")
    assert tfps.PLAIN_NAME_ADDR_RE.fullmatch("<sip:alice@pbx.example.com>;tag=3f2a1b")
    assert tfps.PLAIN_VIA_RE.fullmatch("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1fb2e3d4c5a6;rport")


def escaped_for_logfmt(value):
    """What logfmt writes for a value: the escaping done in full, whatever the value holds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text) + '"'


@SWEEP
@given(st.one_of(st.text(alphabet=st.characters(max_codepoint=0x2ff, blacklist_categories=["Cs"]), max_size=20),
                 st.text(alphabet='ab "\\\x00\x1b\n\r\t\x7f\x80=;', max_size=12),
                 st.text(max_size=8), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()))
def test_logfmt_writes_every_value_as_the_full_escaping_does(value):
    assert tfps.logfmt(key=value) == f"key={escaped_for_logfmt(value)}"
    line = tfps.logfmt(key=value, other="x")
    assert "\n" not in line and "\r" not in line and line.endswith(' other="x"')


def test_logfmt_escapes_what_would_break_a_line_apart():
    assert tfps.logfmt(reason='say "hi"\\\n\x1b[31m', latency_ms=0.42, calls=3, ok=True) == \
        'reason="say \\"hi\\"\\\\\\x0a\\x1b[31m" latency_ms=0.42 calls=3 ok="True"'


# -- R98 answers to a plain INVITE, read without parse_message -----------------------------------

invite_lines = st.one_of(
    header_lines,
    vias().map(lambda via: f"Via: {via}"),
    name_addrs().map(lambda value: f"From: {value}"),
    name_addrs().map(lambda value: f"To: {value}"),
    st.sampled_from(["Max-Forwards: 0", "Max-Forwards: 00070", "Max-Forwards: 256", "Max-Forwards:", "CSeq: 1 ACK",
                     "CSeq: 2147483648 INVITE", "CSeq: 1  INVITE", "Content-Length: 5", "Content-Length: 99",
                     "Content-Length:", "Call-ID:", "Via: SIP/2.0/UDP 10.0.0.1;branch=1", "VIA : SIP/2.0/UDP h;branch=z9hG4bKu",
                     "Via: SIP/2.0/UDP a;branch=z9hG4bKa, SIP/2.0/UDP b;branch=z9hG4bKb", "From: <sip:a@H>;tag=1",
                     "To: <sip:1@h>;tag=t", " continued", "\tcontinued", "Require: timer", "From: <sip:a,b@h>;tag=1"]))
PLAIN_START = "INVITE sip:442071234567@127.0.0.1:5060 SIP/2.0"
PLAIN_INVITE = ["Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1fb2e3d4;rport", "From: <sip:alice@PBX.example.com>;tag=3f2a",
                "To: <sip:442071234567@127.0.0.1:5060>", "Call-ID: 1-2@bench", "CSeq: 1 INVITE", "Max-Forwards: 70",
                "P-tfps: alice;pbx.example.com;192.0.2.1;ua;1", "Content-Length: 0"]


@st.composite
def invites(draw):
    """A plain INVITE, some of its lines replaced (by another value of the same header where it
    has one), deleted or added; maybe a body."""
    lines = list(PLAIN_INVITE)
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3]))):
        change, line = draw(st.sampled_from(["replace", "replace", "insert", "delete"])), draw(invite_lines)
        at = draw(st.integers(0, len(lines)))
        same = [at for at, old in enumerate(lines) if old.partition(":")[0] == line.partition(":")[0]]
        if change == "replace" and same:  # mostly the line of the same header
            lines[same[0]] = line
        elif change == "replace" and at < len(lines):
            lines[at] = line
        elif change == "insert":
            lines.insert(at, line)
        elif lines and at < len(lines):
            del lines[at]
    start = draw(st.one_of(st.just(PLAIN_START), st.just(PLAIN_START),
                           st.sampled_from(["INVITE sip:R05123@h SIP/2.0",
                                            "INVITE sip:;npdi@h SIP/2.0", "INVITE sip:112@h SIP/2.0",
                                            "INVITE sip:4420;rn=1@h SIP/2.0", "INVITE sips:44%2071@h:5061 SIP/2.0",
                                            "INVITE sip:4420@h SIP/3.0", "INVITE tel:+4420 SIP/2.0", "invite sip:1@h SIP/2.0"]),
                           uris().map(lambda uri: f"INVITE {uri} SIP/2.0")))
    body = draw(st.sampled_from(["", "", "v=0", "\udcff\udcfe"]))
    return f"{start}\r\n" + "".join(f"{line}\r\n" for line in lines) + f"\r\n{body}"


class Endpoint:
    transport = "udp"


ENDPOINT = Endpoint()
TRANSACTION_TAG = re.compile(rb";tag=[0-9a-f]{12}\r\n")  # random in an answer with a transaction


def r98_answer(data, plain):
    """What a service answers an INVITE read from a crowded queue, with read_plain_invite or
    without it (the full path), and what read_plain_invite reads of it."""
    cfg = tfps.Config()
    cfg.set("server", "overload_after", "0.2s")
    sip = tfps.SipService(cfg.server, exempt=lambda number: number == "112")
    read, tag = tfps.read_plain_invite, tfps.stateless_tag
    tfps.read_plain_invite = read if plain else lambda data: None
    tfps.stateless_tag = lambda: "s5a5a5a5a5a5a"
    try:
        sends, invite = sip.receive(data, ENDPOINT, ("192.0.2.9", 5070), 100.05, 100.0, crowded=True)
    finally:
        tfps.read_plain_invite, tfps.stateless_tag = read, tag
    sends = [(dest, TRANSACTION_TAG.sub(b";tag=T\r\n", packet)) for dest, packet in sends]
    answer = (sends, type(invite).__name__, getattr(invite, "verdict", None), sorted(sip.metrics.counts.items()),
              sip.counters, list(sip.shed_answers.items()), sorted(sip.transactions.table))
    return answer, read(data)


@settings(max_examples=3000, deadline=None, derandomize=True, database=None)
@given(invites())
def test_an_invite_read_plain_is_answered_as_the_full_path_answers_it(text):
    """Whatever the bytes: read_plain_invite leaves the INVITE to the full path, or the answer,
    what is kept for its retransmissions and what is counted are the same."""
    data = text.encode("utf-8", "surrogateescape")
    (full, _), (fast, _) = r98_answer(data, plain=False), r98_answer(data, plain=True)
    assert fast == full


@pytest.mark.parametrize("change", [
    {}, {0: "v: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1fb2e3d4;rport"}, {1: "f:<sip:alice@pbx.example.com>;tag=3f2a"},
    {0: "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1;rport"},
    {0: "Via: SIP/2.0/TCP proxy.example.com:5060;branch=z9hG4bK7;received=10.1.1.1;i=3"},
    {2: "To:   <sip:442071234567@127.0.0.1:5060>  "}, {5: "Max-Forwards: 1"}, {7: "Content-Length: 3\r\nX: y"}],
    ids=["as-sent", "compact-via", "compact-from", "two-vias", "proxy-via", "blanks", "one-hop", "body"])
def test_the_invites_pbxs_and_proxies_send_are_read_plain_and_answered_as_the_full_path_does(change):
    """The fast path must serve what PBXs and proxies send, or it would save nothing."""
    lines = [change.get(at, line) for at, line in enumerate(PLAIN_INVITE)]
    data = (f"{PLAIN_START}\r\n" + "".join(f"{line}\r\n" for line in lines)
            + "\r\n" + ("v=0" if "Content-Length: 3" in str(change) else "")).encode()
    (full, _), (fast, plain) = r98_answer(data, plain=False), r98_answer(data, plain=True)
    assert plain is not None and plain.user == "442071234567" and plain.from_host == "pbx.example.com"
    assert fast == full and fast[1] == "ShedInvite"
    assert b"Contact: <sip:R98442071234567@pbx.example.com>" in fast[0][0][1]


@pytest.mark.parametrize("change", [
    {6: "User-Agent: bare\rCR"}, {6: "User-Agent: bare\nLF"}, {6: " continued"}, {6: "Require: 100rel"},
    {6: "Call-ID: 1-2@bench"}, {6: "User-Agent: caf\udce9"}, {7: "Content-Length: 1"}, {5: "Max-Forwards: 0"},
    {4: "CSeq: 1 ACK"}, {0: "Via: SIP/2.0/UDP h;branch=1"}, {2: "To: <sip:1@h>, <sip:2@h>"}, {6: "Bad Name: x"}],
    ids=["bare-cr", "bare-lf", "continuation", "require", "call-id-twice", "not-ascii", "short-body", "no-hops",
         "cseq-method", "rfc2543-branch", "two-tos", "bad-name"])
def test_invites_of_other_forms_are_left_to_the_full_path(change):
    """Some get R98 there too (a Call-ID twice, bytes that are not UTF-8 in a header not echoed)."""
    lines = [change.get(at, line) for at, line in enumerate(PLAIN_INVITE)]
    data = (f"{PLAIN_START}\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode("utf-8", "surrogateescape")
    (full, _), (fast, plain) = r98_answer(data, plain=False), r98_answer(data, plain=True)
    assert fast == full
    # read plain: a Max-Forwards of 0 (483, left to the full path), an RFC 2543 branch (its key, answered alike)
    assert plain is None or change.get(0, "").endswith("branch=1") or "Max-Forwards: 0" in change.values()
