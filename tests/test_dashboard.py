"""The dashboard of a real `tfps.py serve` in a real headless browser (Debian's chromium), driven
over the DevTools protocol (its WebSocket spoken with the standard library): the page loads with no
console error and nothing fetched from elsewhere, shows the verdicts of a test run, refreshes
itself, and is served to allow_from or to the api_token only. TFPS_DASHBOARD_SCREENSHOT=PATH
saves the screenshot (docs/dashboard.png is made so)."""

import base64
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
import urllib.request

import pytest

import tfps
from conftest import free_port, wait_until
from test_http import TOKEN, check_query, served  # noqa: F401  (fixture)
from test_sip_server import CUBA, UK, US, UdpClient

DASHBOARD_HOURS = tfps.DASHBOARD_HOURS
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """One page of a headless chromium, over the DevTools protocol's WebSocket (RFC 6455)."""

    def __init__(self, tmp_path, width=1100, height=1500):
        assert CHROMIUM, "chromium is needed (apt-get install chromium): tests/run installs it"
        port = free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
             f"--user-data-dir={tmp_path / 'chromium'}", f"--remote-debugging-port={port}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pages = wait_until(lambda: self._pages(port), 30, interval=0.2, message="chromium's DevTools endpoint")
        url = next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"]
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        path = url.split(str(port), 1)[1]
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id = 0
        self.events = []

    @staticmethod
    def _pages(port):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                pages = json.load(response)
            return pages if any(p["type"] == "page" for p in pages) else None
        except OSError:
            return None

    def _send(self, text):
        data = text.encode()
        mask = secrets.token_bytes(4)
        if len(data) < 126:
            head = struct.pack("!BB", 0x81, 0x80 | len(data))
        elif len(data) < 65536:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, len(data))
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, len(data))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _exactly(self, n):
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("chromium closed the DevTools connection")
            data += chunk
        return bytes(data)

    def _receive(self):
        """The next text message (fragments joined)."""
        message = b""
        while True:
            first, second = self._exactly(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._exactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._exactly(8))[0]
            message += self._exactly(length)
            if first & 0x80:
                return json.loads(message)

    def call(self, method, **params):
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = self._receive()
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    def collect(self, seconds):
        """Take the events of the next `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                self.events.append(self._receive())
            except TimeoutError:
                break
        self.sock.settimeout(30)

    def evaluate(self, expression):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def errors(self):
        """Console errors, uncaught exceptions and failed requests seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(("console", [a.get("value", a.get("description")) for a in params["args"]]))
            elif method == "Runtime.exceptionThrown":
                found.append(("exception", params["exceptionDetails"].get("text")))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(("log", params["entry"]["text"], params["entry"].get("url")))
            elif method == "Network.loadingFailed":
                found.append(("network", params.get("errorText")))
        return found

    def requested(self):
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self):
        self.sock.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser(tmp_path):
    devtools = DevTools(tmp_path)
    for domain in ("Runtime", "Log", "Network", "Page"):
        devtools.call(f"{domain}.enable")
    yield devtools
    devtools.close()


def open_page(browser, url, until):
    browser.call("Page.navigate", url=url)
    wait_until(lambda: browser.evaluate(until), 15, interval=0.2, message=f"{until} on {url}")
    browser.collect(0.5)


def test_the_dashboard_shows_the_verdicts_of_a_run_without_console_errors(served, browser, db_url):  # noqa: F811
    server, api = served(db_url, sections={"database": {"flush_interval": "0.1s"},
                                           "server": {"node_name": "tfps-test-node"}})
    client = UdpClient(server)
    for number in (US, US, UK, CUBA):
        client.send(client.invite(number))
        client.final()
    client.close()
    assert api.get(check_query(CUBA))[1]["code"] == "R06"
    wait_until(lambda: len(api.get("/v1/calls")[1]) == 5, message="the call log rows to be written")

    base = f"http://127.0.0.1:{server.http_port}/"
    open_page(browser, base, "document.querySelector('#legend [data-code]') !== null")
    assert browser.errors() == []
    assert all(url.startswith(base) or url.startswith("data:") for url in browser.requested()), browser.requested()
    legend = browser.evaluate("[...document.querySelectorAll('#legend [data-code]')].map(e => e.textContent)")
    assert legend == ["A00 2", "R06 3"], legend
    bars = browser.evaluate("document.querySelectorAll('#chart svg rect').length")
    assert bars >= 2
    text = browser.evaluate("document.body.innerText")
    assert "1001@pbx.example.com" in text and "tfps-test-node" in text
    assert "high-risk" in text and "tfps.py whitelist add number +" + CUBA in text, "reasons and undo commands"
    assert "tfps.py allow 1001 pbx.example.com --dest GB" in text
    rejections = browser.evaluate("document.querySelectorAll('#rejections tr').length")
    assert rejections == 1 + 3

    # it refreshes itself: a new verdict shows without a reload
    client = UdpClient(server)
    client.send(client.invite(US))
    client.final()
    client.close()
    wait_until(lambda: "A00 3" in browser.evaluate("document.getElementById('legend').textContent"), 15, interval=0.5,
               message="the next refresh to show the new verdict")
    assert browser.errors() == []

    # readable on a phone: nothing wider than the screen but the tables' own scrolling
    browser.call("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True)
    browser.call("Page.reload")
    wait_until(lambda: browser.evaluate("document.querySelector('#legend [data-code]') !== null"), 15, interval=0.2)
    assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    browser.call("Emulation.clearDeviceMetricsOverride")

    target = os.environ.get("TFPS_DASHBOARD_SCREENSHOT")
    if target:
        browser.call("Page.reload")
        wait_until(lambda: browser.evaluate("document.querySelector('#legend [data-code]') !== null"), 15, interval=0.2)
        shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        with open(target, "wb") as fh:
            fh.write(base64.b64decode(shot["data"]))


def test_the_dashboard_is_for_allow_from_or_the_token(served):  # noqa: F811
    server, api = served(allow_from="10.0.0.0/8")
    assert api.get("/")[0] == 403
    assert api.get("/v1/dashboard", token="")[0] == 403
    assert api.get("/v1/dashboard?token=wrong-token-0123456789", token="")[0] == 403
    assert api.get("/v1/dashboard", token="wrong-token-0123456789")[0] == 403
    status, page, response = api.request("GET", f"/?token={TOKEN}")
    assert status == 200 and response.getheader("Content-Type") == "text/html; charset=utf-8" and "<svg" not in page
    assert "v1/dashboard" in page and "http://" not in page.replace("http://www.w3.org/2000/svg", ""), \
        "nothing fetched from elsewhere"
    status, answer = api.get("/v1/dashboard", token=TOKEN)
    assert status == 200 and len(answer["hours"]) == 24
    assert api.get(f"/v1/dashboard?token={TOKEN}", token="")[0] == 200
    assert api.get(f"/v1/accounts?token={TOKEN}", token="")[0] == 403, "?token= opens the dashboard only"

    _server, api = served()  # from allow_from no token is needed
    status, answer = api.get("/v1/dashboard", token="")
    assert status == 200 and answer["verdicts_per_hour"] == {} and answer["recent_rejections"] == []
    assert set(answer) >= {"top_accounts", "top_destinations", "reputation", "alerts", "nodes", "database_up"}


def logged_call(ts, code, node, user="2002", country="GB", undo=""):
    """A call log row as Engine.record writes it."""
    return (ts, f"{ts}@test", None, user, "pbx.example.com", "", "4420", "442079460000", "192.0.2.7", "TestPBX", "US",
            country, 0, 1, code, "", "reason", "302", None, node, 0.3, undo, None, tfps.row_key())


def test_the_dashboard_sums_earlier_hours_of_every_node(served, db_url):  # noqa: F811
    """Hours that have ended are read once and kept; the current one is read at every refresh."""
    server, api = served(db_url)
    now = time.time()
    three_hours_ago = now - 3 * 3600
    db = tfps.open_database(db_url)
    try:
        db.begin()
        tfps.insert_call_log(db, [logged_call(three_hours_ago, "A00", "node-a"), logged_call(three_hours_ago, "R06", "node-b"),
                                  logged_call(three_hours_ago + 1, "R06", "node-b", user="3003", country="FR",
                                              undo="tfps.py allow 3003 pbx.example.com --dest FR"),
                                  logged_call(now - 30 * 3600, "R02", "node-a")])  # older than the window
        db.commit()
        slot = DASHBOARD_HOURS - 1 - (int(now // 3600) - int(three_hours_ago // 3600))
        for _ in range(2):
            status, answer = api.get("/v1/dashboard", token="")
            assert status == 200
            assert answer["verdicts_per_hour"] == {"A00": [1 if i == slot else 0 for i in range(24)],
                                                   "R06": [2 if i == slot else 0 for i in range(24)]}
            assert [(n["node"], n["calls"]) for n in answer["nodes"]] == [("node-a", 1), ("node-b", 2)]
            assert answer["top_accounts"] == [{"account": "2002@pbx.example.com", "rejected": 1},
                                              {"account": "3003@pbx.example.com", "rejected": 1}]
            assert sorted(c["country"] for c in answer["top_destinations"]) == ["FR", "GB"]
            assert answer["recent_rejections"][0]["undo"] == "tfps.py allow 3003 pbx.example.com --dest FR"
        db.begin()
        tfps.insert_call_log(db, [logged_call(now, "R11", "node-a")])
        db.commit()
        status, answer = api.get("/v1/dashboard", token="")
        assert answer["verdicts_per_hour"]["R11"][-1] == 1, "the current hour is read again"
    finally:
        db.close()
