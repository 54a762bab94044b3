"""One-click approval links of a real `tfps.py serve`: an alert about a rejection the account
owner may lift carries a signed link; opening it (GET) changes nothing, its confirm button (POST)
allows the destination, the source country or a new daily quota once, records who and when, and
the next call is approved. Expired, forged and tampered links, high-risk destinations and rules
that are never approvable are refused. On both databases."""

import re
import time
import urllib.parse

import pytest

import tfps
from conftest import run_cli, wait_until, write_config
from stubs import WebhookStub
from test_http import check_query, served  # noqa: F401  (fixture)
from test_sip_server import CUBA, UK, US

SECRET = "approval-secret-0123456789"
ACCOUNT = "1001@pbx.example.com"


@pytest.fixture
def hook():
    with WebhookStub() as stub:
        yield stub


@pytest.fixture
def approving(served, hook):  # noqa: F811
    """start(db_url, **http keys) -> (server, Api) with approval links on and alerts to `hook`."""
    def start(db_url=None, policy=None, **http):
        sections = {"database": {"reload_interval": "0.2s", "flush_interval": "0.2s"},
                    "policy": {"business_hours": "mon-sun 00:00-24:00", "ab_max_calls": "1000", **(policy or {})},
                    "alerts": {"alert_webhook": hook.url + "/hooks/tfps", "alert_interval": "0s"}}
        return served(db_url, sections=sections, secret=SECRET, public_url="https://tfps.example.com/base/", **http)
    return start


def alert_link(hook, code):
    """The newest enforced alert of `code`, as the webhook received it."""
    def found():
        alerts = [a for a in hook.of_kind("rejection") if a["code"] == code]
        return alerts[-1] if alerts else None
    alert = wait_until(found, 5, message=f"the {code} alert")
    return alert


def link_path(url):
    assert url.startswith("https://tfps.example.com/base/approve/"), url
    return urllib.parse.urlsplit(url).path.removeprefix("/base")


def approvals(db_url):
    db = tfps.Database(db_url)
    try:
        return list(db.query("SELECT rule, value, client_ip, user_agent, until FROM approvals"))
    finally:
        db.close()


def test_a_link_allows_the_destination_once_and_the_get_changes_nothing(approving, hook, db_url):
    server, api = approving(db_url)
    assert api.get(check_query(UK))[1]["code"] == "R06"
    alert = alert_link(hook, "R06")
    assert alert["approve_url"] and alert["approve_url"] in alert["text"]
    path = link_path(alert["approve_url"])

    status, page, response = api.request("GET", path)
    assert status == 200 and response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert "destination GB for 7 days" in page and '<form method="post">' in page and "Confirm" in page
    time.sleep(0.5)  # more than reload_interval: had the GET approved, the server would know by now
    assert api.get(check_query(UK))[1]["code"] == "R06", "opening the link must not approve"
    assert approvals(db_url) == []

    status, page, _ = api.request("POST", path, headers={"User-Agent": "Mozilla/5.0 (Phone)"})
    assert status == 200 and "Approved" in page and "GB" in page, page
    ((rule, value, client_ip, user_agent, until),) = approvals(db_url)
    assert (rule, value, client_ip, user_agent) == ("R06", "GB", "127.0.0.1", "Mozilla/5.0 (Phone)")
    assert until == pytest.approx(time.time() + 7 * 86400, abs=30)
    wait_until(lambda: api.get(check_query(UK))[1]["code"] == "A00", 3, interval=0.1, message="the next call to be approved")

    status, page, _ = api.request("POST", path)
    assert status == 410 and "used" in page, page
    status, page, _ = api.request("GET", path)
    assert status == 410 and "Already approved" in page and "127.0.0.1" in page
    assert len(approvals(db_url)) == 1


def test_a_link_gives_a_new_daily_quota(approving, hook, db_url):
    server, api = approving(db_url, policy={"default_daily_quota": "1"})
    assert api.get(check_query(US))[1]["code"] == "A00"
    assert api.get(check_query(US))[1]["code"] == "R11"
    path = link_path(alert_link(hook, "R11")["approve_url"])
    status, page, _ = api.request("GET", path)
    assert status == 200 and "new business-hours daily quota" in page, page
    assert api.request("POST", path)[0] == 200
    assert api.get(check_query(US))[1]["code"] == "A00"
    assert api.get(check_query(US))[1]["code"] == "R11", "one new quota, not an unlimited one"


def test_expired_forged_and_tampered_links_are_refused(approving, db_url):
    server, api = approving(db_url)
    assert api.get(check_query(US))[1]["code"] == "A00"  # the account exists
    expired = tfps.approval_token(SECRET, ACCOUNT, "R06", "GB", time.time() - 1)
    forged = tfps.approval_token("another-secret-0123456789", ACCOUNT, "R06", "GB", time.time() + 3600)
    genuine = tfps.approval_token(SECRET, ACCOUNT, "R06", "GB", time.time() + 3600)
    payload, signature = genuine.split(".")
    other = tfps.approval_token(SECRET, ACCOUNT, "R06", "FR", time.time() + 3600)
    tampered = f"{other.split('.')[0]}.{signature}"
    for method in ("GET", "POST"):
        status, page, _ = api.request(method, f"/approve/{expired}")
        assert status == 410 and "expired" in page
        for token in (forged, tampered, "abc.def", f"{payload}.{signature[:-2]}"):
            status, page, _ = api.request(method, f"/approve/{token}")
            assert status == 403 and "signature" in page, (token, page)
    assert api.get("/approve/no-dot-here")[0] == 404
    assert approvals(db_url) == []
    assert api.get(check_query(UK))[1]["code"] == "R06"


def test_high_risk_and_screening_rejections_are_never_approvable(approving, hook, db_url):
    server, api = approving(db_url)
    assert api.get(check_query(CUBA))[1]["code"] == "R06"
    alert = alert_link(hook, "R06")
    assert "high-risk" in alert["reason"] and alert["approve_url"] == ""
    assert "/approve/" not in alert["text"]
    for rule, value in (("R06", "CU"), ("R02", "192.0.2.1"), ("R01", "friendly-scanner"), ("R12", "x")):
        token = tfps.approval_token(SECRET, ACCOUNT, rule, value, time.time() + 3600)
        for method in ("GET", "POST"):
            status, page, _ = api.request(method, f"/approve/{token}")
            assert status == 403, (rule, method, page)
    assert approvals(db_url) == []
    assert api.get(check_query(CUBA))[1]["code"] == "R06"


def test_approval_pages_are_outside_allow_from_and_off_without_a_secret(approving, served):  # noqa: F811
    _server, api = approving(allow_from="10.0.0.0/8")
    assert api.get("/healthz")[0] == 403
    token = tfps.approval_token(SECRET, ACCOUNT, "R06", "GB", time.time() + 3600)
    status, page = api.get(f"/approve/{token}")
    assert status == 403 and "unknown account" in page, "reached: refused for the link, not the address"

    _server, api = served()
    status, page = api.get(f"/approve/{token}")
    assert status == 404 and "secret" in page


def test_an_approved_country_is_taken_back_after_approval_days(approving, hook, db_url):
    server, api = approving(db_url, approval_days="2")
    assert api.get(check_query(UK))[1]["code"] == "R06"
    path = link_path(alert_link(hook, "R06")["approve_url"])
    status, page, _ = api.request("POST", path)
    assert status == 200 and "for 2 days" in page
    wait_until(lambda: api.get(check_query(UK))[1]["code"] == "A00", 3, interval=0.1)
    db = tfps.open_database(db_url)
    try:
        assert tfps.end_approvals(db, time.time() + 86400) == 0
        assert tfps.end_approvals(db, time.time() + 2 * 86400 + 60) == 1
        assert "GB" not in tfps.find_account(db, "1001", "pbx.example.com").dest_countries
        assert tfps.end_approvals(db, time.time() + 3 * 86400) == 0
    finally:
        db.close()
    wait_until(lambda: api.get(check_query(UK))[1]["code"] == "R06", 3, interval=0.1, message="GB to be taken back")


def test_config_refuses_a_short_secret_and_a_bad_public_url(tmp_path):
    for key, value, words in (("secret", "short", "16 to 256"), ("public_url", "ftp://x", "http://"),
                              ("approval_days", "0", "between")):
        path = write_config(tmp_path / f"{key}.conf", {"http": {key: value}})
        result = run_cli("config", "check", config=path)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr  # as every config error
        assert re.search(rf"{key}\.conf:2: \[http\] {key}\b.*{words}", result.stderr), result.stderr
