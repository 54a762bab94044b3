"""`tfps.py serve` driven by real SIPp (tests/sipp/uac_verdict.xml): INVITE -> 302/503/603 -> ACK,
1,000 calls over UDP and 1,000 over TCP in each mode, and every call must succeed.

The scenario's calls.csv alternates a US number (approved, A00) and a Cuban one (high-risk, R06);
the [policy] below removes quota, velocity, A->B repetition and destination limits so that those are the
only two verdicts, and the per-response counts SIPp reports can be checked exactly."""

import re
import subprocess
from pathlib import Path

import pytest

from conftest import free_port

SIPP = "/usr/bin/sipp"
SCENARIO_DIR = Path(__file__).resolve().parent / "sipp"
SCENARIO = SCENARIO_DIR / "uac_verdict.xml"
CALLS_CSV = SCENARIO_DIR / "calls.csv"

# every call must get the engine's verdict, however busy the machine: no R98
EVERY_CALL_CHECKED = {"overload_after": "0"}
LOAD_POLICY = {
    "learning_days": "0",
    "default_daily_quota": "unlimited",
    "default_daily_quota_off": "unlimited",
    "default_concurrent_calls": "unlimited",
    "default_concurrent_calls_off": "unlimited",
    "ab_max_calls": "1000",
    "max_calls_per_minute": "0",
    "default_destination_countries": "*",
}

# per mode: how many of the 1,000 calls end in each final response (calls.csv is half US, half Cuba)
EXPECTED_RESPONSES = {
    "redirect": {"302": 1000, "503": 0, "603": 0},
    "failover": {"302": 0, "503": 500, "603": 500},
    "monitor": {"302": 1000, "503": 0, "603": 0},
}


def run_sipp(server, tmp_path, transport, calls, rate=200, scenario=SCENARIO, extra=()):
    """Run SIPp as a UAC against `server`; returns (exit code, screen text, stdout+stderr)."""
    tag = f"{transport}-{calls}-{scenario.stem}"
    screen, errors = tmp_path / f"screen-{tag}.log", tmp_path / f"errors-{tag}.log"
    cmd = [SIPP, f"127.0.0.1:{server.port}", "-sf", str(scenario), "-inf", str(CALLS_CSV),
           "-t", transport, "-i", "127.0.0.1", "-p", str(free_port()),
           "-r", str(rate), "-m", str(calls), "-l", str(calls),
           "-nostdin", "-timeout", "60s", "-timeout_error",
           "-trace_screen", "-screen_file", str(screen), "-trace_err", "-error_file", str(errors), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    text = screen.read_text(errors="replace") if screen.exists() else ""
    output = proc.stdout[-3000:] + proc.stderr[-3000:]
    if errors.exists():
        output += "\n--- sipp error file ---\n" + errors.read_text(errors="replace")[-3000:]
    return proc.returncode, text, output


def sipp_stats(screen):
    """Cumulative call counters and per-message counts from SIPp's final screen dump."""
    def cumulative(name):
        values = re.findall(rf"{name}\s*\|\s*\d+\s*\|\s*(\d+)", screen)
        assert values, f"no '{name}' line in the SIPp screen:\n{screen[-3000:]}"
        return int(values[-1])

    stats = {"successful": cumulative("Successful call"), "failed": cumulative("Failed call"),
             "created": cumulative("Outgoing calls created")}
    rows = {}
    for m in re.finditer(r"^ +(INVITE|ACK|\d{3}) (?:-+>|<-+) +(\d+) +(\d+)(?: +(\d+))?(?: +(\d+))?", screen, re.M):
        rows[m.group(1)] = {"messages": int(m.group(2)), "retrans": int(m.group(3)),
                            "timeout": int(m.group(4) or 0), "unexpected": int(m.group(5) or 0)}
    stats["rows"] = rows
    dead = re.findall(r"(\d+) dead call msg \(discarded\)\s+(\d+) out-of-call msg", screen)
    assert dead, f"no dead-call line in the SIPp screen:\n{screen[-3000:]}"
    stats["dead"], stats["out_of_call"] = (int(x) for x in dead[-1])
    return stats


def verdict_codes(server):
    log = server.read_log()
    return (len(re.findall(r'verdict call_id=\S+ .* code="A00" ', log)),
            len(re.findall(r'verdict call_id=\S+ .* code="R06" ', log)),
            len(re.findall(r'verdict call_id=\S+ .* code="A00" reason="approved \(monitor mode; would reject R06', log)))


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
@pytest.mark.parametrize("mode", ["redirect", "failover", "monitor"])
def test_sipp_1000_calls(start_server, tmp_path, mode, transport):
    server = start_server(sections={"policy": LOAD_POLICY, "server": EVERY_CALL_CHECKED}, mode=mode)
    code, screen, output = run_sipp(server, tmp_path, transport, 1000)
    assert code == 0, f"sipp exit code {code}\n{output}\n{screen[-4000:]}"
    stats = sipp_stats(screen)
    assert (stats["created"], stats["successful"], stats["failed"]) == (1000, 1000, 0), stats
    rows = stats["rows"]
    assert rows["INVITE"]["messages"] == 1000 and rows["ACK"]["messages"] == 1000, rows
    assert {c: rows[c]["messages"] for c in ("302", "503", "603")} == EXPECTED_RESPONSES[mode], rows
    assert all(r["unexpected"] == 0 and r["timeout"] == 0 for r in rows.values()), rows
    # no 100 Trying (no reputation lookups here), and the ACKs matched: no 302/503/603 came again
    assert rows["100"]["messages"] == 0, rows
    assert stats["dead"] == 0 and stats["out_of_call"] == 0, stats
    assert server.proc.poll() is None

    server.stop()
    approved, rejected, would = verdict_codes(server)
    if mode == "monitor":
        assert (approved, rejected, would) == (1000, 0, 500)
    else:
        assert (approved, rejected) == (500, 500)
    assert "stopped after 1000 verdicts" in server.read_log()
    assert "unexpected error" not in server.read_log()


def test_sipp_ack_reuses_the_invite_branch(start_server, tmp_path):
    """The scenario's ACK carries the INVITE's branch ([branch-5]); the server absorbs it and
    does not retransmit. Control: an ACK with a fresh branch does not match, the server keeps
    retransmitting the 302 (Timer G) and SIPp sees those as messages for dead calls."""
    server = start_server(sections={"policy": LOAD_POLICY})
    code, screen, output = run_sipp(server, tmp_path, "u1", 5, rate=5, extra=["-trace_msg", "-message_file",
                                                                               str(tmp_path / "msgs.log")])
    assert code == 0, output
    messages = (tmp_path / "msgs.log").read_text(errors="replace")
    invites = re.findall(r"INVITE sip:\S+ SIP/2.0\r?\nVia: [^\r\n]*branch=([^;\r\n]+)", messages)
    acks = re.findall(r"ACK sip:\S+ SIP/2.0\r?\nVia: [^\r\n]*branch=([^;\r\n]+)", messages)
    assert len(invites) == 5 and invites == acks, (invites, acks)
    assert len(set(invites)) == 5

    wrong = tmp_path / "uac_wrong_ack.xml"
    wrong.write_text(SCENARIO.read_text().replace("branch=[branch-5]", "branch=[branch]"))
    # 10 calls over 2 s: the first calls' 302s are retransmitted 0.5 s and 1.5 s after they were sent
    code, screen, output = run_sipp(server, tmp_path, "u1", 10, rate=5, scenario=wrong)
    stats = sipp_stats(screen)
    assert stats["successful"] == 10
    assert stats["dead"] + stats["out_of_call"] + stats["rows"]["302"]["retrans"] > 0, stats
