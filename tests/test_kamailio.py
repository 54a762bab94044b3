"""The README's Kamailio guide, run as printed: the config block is taken from README.md, only its
three documented addresses are changed (to free loopback ports), and real Kamailio runs it between
a SIPp caller and a SIPp carrier, asking a real `tfps.py serve` in redirect and failover mode.

Checked per mode: approved calls reach the carrier with exactly the dialed number (`00...` and
`+...`) and complete (ACK and BYE through Kamailio); a rejected call never reaches the carrier
and the caller gets 603 with TFPS's code and reason; the caller's own P-tfps and legacy identity
headers reach neither TFPS nor the carrier; with TFPS stopped or never started, the guide's
fail-open default (and the fail-closed variant) decides the call after about 2 s."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import REPO, TFPS, free_port, sip_invite, wait_until

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
SIPP = "/usr/bin/sipp"

# the guide's placeholders, each replaced by a loopback address; nothing else in the block changes
LISTEN = "listen=udp:10.0.0.5:5060"
TFPS_DEFINE = '#!define TFPS "sip:10.0.0.10:5060"'
CARRIER_DEFINE = '#!define CARRIER "carrier.example.net:5060"'
FAIL_OPEN = "#!define TFPS_FAIL_OPEN\n"

US, US_PLUS, CUBA = "0012125551234", "+12125551234", "005355512345"

POLICY = {"learning_days": "0", "default_destination_countries": "*", "ab_max_calls": "100",
          "default_daily_quota": "unlimited", "default_concurrent_calls": "unlimited", "max_calls_per_minute": "0"}

# the caller: one INVITE carrying forged identity headers; 200 -> ACK, BYE after HOLD_MS; 404/500/603 -> ACK
CALLER_IN_DIALOG = """
  <send{retrans}>
    <![CDATA[

      {method} [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:1001@pbx.example.com>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      [routes]
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>"""
CALLER_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="caller">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[field0]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:1001@pbx.example.com>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[field0]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:1001@[local_ip]:[local_port]>
      Max-Forwards: 70
      User-Agent: Yealink SIP-T46S
      P-tfps: victim;forged.example;203.0.113.9;Forged UA;1
      X-tfps: victim@forged.example
      P-Received: 203.0.113.9
      P-Source: 203.0.113.9
      P-UA: Forged UA
      P-Calls: 1
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="404" optional="true" next="refused"/>
  <recv response="500" optional="true" next="refused"/>
  <recv response="603" optional="true" next="refused"/>
  <recv response="200" rrs="true"/>""" + CALLER_IN_DIALOG.format(method="ACK", cseq=1, retrans="") + """
  <pause milliseconds="HOLD_MS"/>""" + CALLER_IN_DIALOG.format(method="BYE", cseq=2, retrans=' retrans="500"') + """
  <recv response="200" next="done"/>
  <label id="refused"/>
  <send>
    <![CDATA[

      ACK sip:[field0]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: <sip:1001@pbx.example.com>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <label id="done"/>
</scenario>
"""

# the carrier: answers every INVITE 180 + 200 (Record-Route copied), takes the ACK and the BYE
CARRIER_ANSWER = """
  <send{retrans}>
    <![CDATA[

      SIP/2.0 {status}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:carrier@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>"""
CARRIER_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="carrier">
  <recv request="INVITE" crlf="true"/>""" + CARRIER_ANSWER.format(status="180 Ringing", retrans="") + \
    CARRIER_ANSWER.format(status="200 OK", retrans=' retrans="500"') + """
  <recv request="ACK" crlf="true"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def readme_kamailio_config():
    """The fenced block of the README's Kamailio section that starts with #!KAMAILIO."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^### Kamailio\n(.*?)(?=^##)", text, re.M | re.S)
    assert section, "no '### Kamailio' section in README.md"
    blocks = re.findall(r"^```[^\n]*\n(#!KAMAILIO\n.*?)^```", section.group(1), re.M | re.S)
    assert len(blocks) == 1, f"expected one config block starting with #!KAMAILIO, found {len(blocks)}"
    return blocks[0]


def guide_config(listen_port, tfps_port, carrier_port, fail_open=True):
    config = readme_kamailio_config()
    for placeholder in (LISTEN, TFPS_DEFINE, CARRIER_DEFINE, FAIL_OPEN):
        assert config.count(placeholder) == 1, f"the README's config must have {placeholder!r} once"
    config = (config.replace(LISTEN, f"listen=udp:127.0.0.1:{listen_port}")
              .replace(TFPS_DEFINE, f'#!define TFPS "sip:127.0.0.1:{tfps_port}"')
              .replace(CARRIER_DEFINE, f'#!define CARRIER "127.0.0.1:{carrier_port}"'))
    return config if fail_open else config.replace(FAIL_OPEN, "")


def parse_sipp_messages(path):
    """[(direction 'sent'|'received', seconds since epoch, message text)] from a SIPp -trace_msg file."""
    if not path.exists():
        return []
    out = []
    for block in re.split(r"^-{20,} ", path.read_text(errors="replace"), flags=re.M)[1:]:
        stamp, _, rest = block.partition("\n")
        m = re.match(r"\s*\w+ message (sent|received)[^\n]*\n\n?(.*)", rest, re.S)
        if m:
            ts = datetime.strptime(stamp.strip(), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            out.append((m.group(1), ts, m.group(2).strip("\n")))
    return out


def header(message, name):
    m = re.search(rf"^{re.escape(name)}:[ \t]*(.*?)\r?$", message, re.M | re.I)
    return m.group(1) if m else None


class Kamailio:
    def __init__(self, tmp_path, tfps_port, carrier_port, fail_open=True):
        self.port = free_port()
        self.dir = tmp_path / f"kamailio-{self.port}"
        self.dir.mkdir()
        self.config = self.dir / "kamailio.cfg"
        self.config.write_text(guide_config(self.port, tfps_port, carrier_port, fail_open))
        self.log_path = self.dir / "kamailio.log"
        self.proc = None

    def start(self, timeout=15):
        check = subprocess.run([KAMAILIO, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"kamailio -c rejects the README's config:\n{check.stdout}\n{check.stderr}"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([KAMAILIO, "-f", str(self.config), "-DD", "-E", "-Y", str(self.dir),
                                      "-w", str(self.dir)], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(0.2)

            def answers_options():
                assert self.proc.poll() is None, f"kamailio exited {self.proc.returncode}:\n{self.read_log()}"
                sock.sendto(sip_invite("1001", self.port, method="OPTIONS", local_port=sock.getsockname()[1]),
                            ("127.0.0.1", self.port))
                try:
                    return sock.recv(65536).startswith(b"SIP/2.0 ")
                except socket.timeout:
                    return False
            wait_until(answers_options, timeout, interval=0,
                       message=lambda: f"kamailio to answer on port {self.port}:\n{self.read_log()}")
        return self

    def read_log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.log.close()


class Carrier:
    """SIPp as the carrier, every message it sees in carrier.msg."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.scenario = tmp_path / f"carrier-{self.port}.xml"
        self.scenario.write_text(CARRIER_XML)
        self.messages_path = tmp_path / f"carrier-{self.port}.msg"
        self.proc = subprocess.Popen([SIPP, "-sf", str(self.scenario), "-i", "127.0.0.1", "-p", str(self.port),
                                      "-nostdin", "-trace_msg", "-message_file", str(self.messages_path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                                     start_new_session=True)

    def requests_all(self):
        """Every request received: [(method, Request-URI, message)]."""
        out = []
        for direction, _, msg in parse_sipp_messages(self.messages_path):
            m = re.match(r"([A-Z]+) (\S+) SIP/2\.0", msg)
            if direction == "received" and m:
                out.append((m.group(1), m.group(2), msg))
        return out

    def requests(self, call_id):
        """Requests received for one call."""
        return [r for r in self.requests_all() if header(r[2], "Call-ID") == call_id]

    def wait_for(self, call_id, methods, timeout=5):
        return wait_until(lambda: (lambda got: [r[0] for r in got] == methods and got)(self.requests(call_id)), timeout,
                          message=lambda: f"{methods} of {call_id} at the carrier, got {self.requests(call_id)}")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Call:
    """One call by the SIPp caller through Kamailio: its final response and timing."""

    def __init__(self, tmp_path, kamailio_port, number, hold_ms=50):
        tag = re.sub(r"\W", "", number) + "-" + str(free_port())
        csv = tmp_path / f"call-{tag}.csv"
        csv.write_text(f"SEQUENTIAL\n{number};\n")
        scenario = tmp_path / f"caller-{tag}.xml"
        scenario.write_text(CALLER_XML.replace("HOLD_MS", str(hold_ms)))
        messages = tmp_path / f"caller-{tag}.msg"
        cmd = [SIPP, f"127.0.0.1:{kamailio_port}", "-sf", str(scenario), "-inf", str(csv), "-i", "127.0.0.1",
               "-p", str(free_port()), "-m", "1", "-l", "1", "-nostdin", "-timeout", "15s", "-timeout_error",
               "-trace_msg", "-message_file", str(messages)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=tmp_path)
        self.messages = parse_sipp_messages(messages)
        self.exit_code, self.output = proc.returncode, proc.stdout[-2000:] + proc.stderr[-2000:]
        sent = [(ts, msg) for d, ts, msg in self.messages if d == "sent" and msg.startswith("INVITE ")]
        assert sent, f"the caller sent no INVITE:\n{self.output}"
        self.started, invite = sent[0]
        self.call_id = header(invite, "Call-ID")
        finals = [(ts, msg) for d, ts, msg in self.messages if d == "received"
                  and re.match(r"SIP/2\.0 [2-6]\d\d ", msg) and "INVITE" in (header(msg, "CSeq") or "")]
        assert finals, f"no final response to the INVITE:\n{self.output}"
        self.answered, self.final = finals[0]
        self.status = int(self.final.split()[1])
        self.seconds = self.answered - self.started
        byes = [msg for d, _, msg in self.messages if d == "received" and "BYE" in (header(msg, "CSeq") or "")]
        self.bye_answer = byes[0].split("\r\n")[0].split("\n")[0] if byes else None

    def __repr__(self):
        return f"<call {self.call_id}: {self.status} after {self.seconds:.2f}s, sipp exit {self.exit_code}>"


@pytest.fixture
def rig(tmp_path, start_server):
    """Factory: TFPS (or none), the SIPp carrier and Kamailio running the README's config."""
    started = []

    def make(mode="redirect", tfps=True, fail_open=True, policy=POLICY):
        assert Path(KAMAILIO).exists(), "kamailio is not installed (tests/run installs it)"
        server = start_server(sections={"policy": policy}, mode=mode) if tfps else None
        tfps_port = server.port if server else free_port()
        carrier = Carrier(tmp_path)
        started.append(carrier)
        kamailio = Kamailio(tmp_path, tfps_port, carrier.port, fail_open)
        started.append(kamailio)
        kamailio.start()
        return server, carrier, kamailio

    yield make
    for proc in reversed(started):
        proc.stop()


def assert_reached_carrier(call, carrier, number, kamailio):
    assert call.status == 200 and call.exit_code == 0, (call, call.output, kamailio.read_log()[-3000:])
    assert call.bye_answer and " 200 " in call.bye_answer, call
    requests = carrier.wait_for(call.call_id, ["INVITE", "ACK", "BYE"])
    assert [r[0] for r in requests] == ["INVITE", "ACK", "BYE"], (requests, kamailio.read_log()[-3000:])
    invite = requests[0][2]
    # exactly the dialed number, no verdict prefix, no second access prefix
    assert requests[0][1].startswith(f"sip:{number}@127.0.0.1:"), requests[0][1]
    for name in ("P-tfps", "X-tfps", "P-Received", "P-Source", "P-UA", "P-Calls"):
        assert header(invite, name) is None, f"{name} reached the carrier:\n{invite}"
    # ACK and BYE came through Kamailio (its Via on top), to the carrier's Contact
    for method, uri, msg in requests[1:]:
        assert uri.startswith("sip:carrier@127.0.0.1:"), (method, uri)
        assert re.search(rf"^Via: SIP/2\.0/UDP 127\.0\.0\.1:{kamailio.port};", msg, re.M), msg


def tfps_call_log(server):
    """`tfps.py calls --json`: TFPS's call log, oldest first."""
    result = subprocess.run([sys.executable, str(TFPS), "calls", "--json", "-c", server.config],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return sorted(json.loads(result.stdout), key=lambda row: row["time"])


@pytest.mark.parametrize("mode", ["redirect", "failover"])
def test_readme_kamailio_guide(rig, tmp_path, mode):
    server, carrier, kamailio = rig(mode)

    for number in (US, US_PLUS):
        call = Call(tmp_path, kamailio.port, number)
        assert_reached_carrier(call, carrier, number, kamailio)

    rejected = Call(tmp_path, kamailio.port, CUBA)
    assert rejected.status == 603 and rejected.exit_code == 0, (rejected, rejected.output)
    assert header(rejected.final, "X-TFPS-Code") == "R06", rejected.final
    assert "Cuba" in header(rejected.final, "X-TFPS-Reason"), rejected.final
    assert re.fullmatch(r'SIP;cause=603;text="R06 [^"]*Cuba[^"]*"', header(rejected.final, "Reason")), rejected.final
    time.sleep(0.2)
    assert carrier.requests(rejected.call_id) == [], "a rejected call reached the carrier"
    assert re.search(r"NOTICE: <script>: TFPS rejected 1001@pbx\.example\.com -> 005355512345: R06 ",
                     kamailio.read_log())

    # TFPS judged the proxy's identity, not the forged P-tfps (two P-tfps would have been R12)
    server.stop()
    rows = tfps_call_log(server)
    assert sorted((row["account"], row["source_ip"], row["number"], row["code"]) for row in rows) == [
        ("1001@pbx.example.com", "127.0.0.1", "12125551234", "A00")] * 2 + [
        ("1001@pbx.example.com", "127.0.0.1", "5355512345", "R06")], rows
    verdicts = re.findall(r'verdict call_id="\S+" account="(\S+)" number="(\d+)" code="(\w+)"', server.read_log())
    assert verdicts == [("1001@pbx.example.com", "12125551234", "A00")] * 2 + [
        ("1001@pbx.example.com", "5355512345", "R06")], verdicts

    # TFPS stopped: the guide fails open as printed, after the 2 s it gives TFPS
    down = Call(tmp_path, kamailio.port, US)
    assert_reached_carrier(down, carrier, US, kamailio)
    assert 1.8 <= down.seconds <= 2.8, down
    assert re.search(r"WARNING: <script>: TFPS gave no verdict \(408\) on 1001@pbx\.example\.com -> "
                     r"0012125551234: sent unchecked", kamailio.read_log())


def test_readme_kamailio_guide_fail_closed(rig, tmp_path):
    """Without the #!define TFPS_FAIL_OPEN line and with no TFPS: 500 to the caller after 2 s."""
    _, carrier, kamailio = rig(tfps=False, fail_open=False)
    call = Call(tmp_path, kamailio.port, US)
    assert call.status == 500 and call.exit_code == 0, (call, call.output)
    assert 1.8 <= call.seconds <= 2.8, call
    time.sleep(0.2)
    assert carrier.requests(call.call_id) == []
    assert "TFPS gave no verdict (408) on 1001@pbx.example.com -> 0012125551234: refused" in kamailio.read_log()


def test_readme_kamailio_guide_other_numbers_not_routed(rig, tmp_path):
    """Only international numbers are placed: anything else gets 404 and never reaches TFPS."""
    server, carrier, kamailio = rig()
    call = Call(tmp_path, kamailio.port, "02079460000")
    assert call.status == 404 and call.exit_code == 0, (call, call.output)
    server.stop()
    assert "verdict call_id" not in server.read_log()


def test_readme_kamailio_guide_counts_the_callers_calls(rig, tmp_path):
    """The P-tfps call count is the caller's calls through Kamailio, this one included: with a
    limit of one concurrent call, a second call while the first is up is rejected (R10 in
    business hours, R08 off hours), and a call after it ended is approved again."""
    policy = dict(POLICY, default_concurrent_calls="1", default_concurrent_calls_off="1")
    _, carrier, kamailio = rig(policy=policy)
    first = []
    holder = threading.Thread(target=lambda: first.append(Call(tmp_path, kamailio.port, US, hold_ms=2000)))
    holder.start()
    try:
        wait_until(lambda: any(r[0] == "ACK" for r in carrier.requests_all()), 5, message="the first call to be up")
        second = Call(tmp_path, kamailio.port, US_PLUS)
    finally:
        holder.join(30)
    assert second.status == 603 and header(second.final, "X-TFPS-Code") in ("R10", "R08"), second.final
    assert_reached_carrier(first[0], carrier, US, kamailio)
    third = Call(tmp_path, kamailio.port, US_PLUS)
    assert_reached_carrier(third, carrier, US_PLUS, kamailio)
