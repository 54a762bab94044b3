"""The SIP service in process, on a virtual clock: no sockets, no threads, no waiting.

`SipService` takes bytes and the time and returns what to send; these tests play the peer and
the engine, and move the clock themselves (RFC 3261 §17.2 timers in milliseconds)."""

import pytest

import tfps
from conftest import ack_for, built_server, sip_invite

T1, T2 = tfps.T1, tfps.T2
PEER = ("127.0.0.1", 5099)


class Endpoint:
    def __init__(self, transport="udp"):
        self.transport = transport


UDP, TCP = Endpoint("udp"), Endpoint("tcp")


def service(**server):
    cfg = tfps.Config()
    for key, value in server.items():
        cfg.set("server", key, value)
    return tfps.SipService(cfg.server)


def status_of(packet):
    return int(packet.split(b" ", 2)[1])


def statuses(sends):
    return [status_of(packet) for _dest, packet in sends]


def verdict(attempt, code="A00", reason="approved"):
    attempt = attempt or tfps.CallAttempt("1001", "pbx.example.com", "442071234567")
    return tfps.Verdict(code, reason, attempt, number=attempt.number)


def cancel_for(invite_bytes):
    msg = tfps.parse_message(invite_bytes)
    lines = [f"CANCEL {msg.uri} SIP/2.0", f"Via: {msg.header('via')}", "Max-Forwards: 70",
             f"From: {msg.header('from')}", f"To: {msg.header('to')}", f"Call-ID: {msg.header('call-id')}",
             f"CSeq: {msg.header('cseq').split()[0]} CANCEL", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def invited(sip, now=0.0, endpoint=UDP, **kw):
    data = sip_invite("442071234567", 5060, **kw)
    sends, tx = sip.receive(data, endpoint, PEER, now)
    assert sends == [] and tx is not None
    return data, tx


def test_invite_becomes_a_verdict_request_with_the_identity():
    sip = service()
    _, tx = invited(sip, headers=["P-tfps: 2001;acme.example;192.0.2.7;Phone 1.0;3"])
    attempt = tx.data.attempt
    assert (attempt.user, attempt.domain, attempt.source_ip, attempt.user_agent, attempt.concurrent_calls) == \
           ("2001", "acme.example", "192.0.2.7", "Phone 1.0", 3)
    assert attempt.number == "442071234567"


def test_verdict_becomes_a_302_with_the_code_in_the_contact():
    sip = service()
    _, tx = invited(sip)
    sends, summary, latency = sip.answer(tx, verdict(tx.data.attempt, "R06", "high-risk"), 0.004)
    (dest, packet), = sends
    msg = tfps.parse_message(packet)
    assert dest == (UDP, PEER) and msg.status == 302 and summary == "302 R06"
    assert msg.header("contact").startswith("<sip:R06442071234567@")
    assert msg.header("x-tfps-reason") == "high-risk" and latency == pytest.approx(4.0)
    assert sip.answer(tx, verdict(None), 0.005) is None  # one answer only


def test_failover_mode_answers_503_for_approved_and_603_for_rejected():
    sip = service(mode="failover")
    _, tx = invited(sip)
    assert statuses(sip.answer(tx, verdict(tx.data.attempt), 0.0)[0]) == [503]
    _, tx = invited(sip)
    assert statuses(sip.answer(tx, verdict(tx.data.attempt, "R01"), 0.0)[0]) == [603]


def test_no_verdict_is_a_500_that_says_why():
    sip = service()
    _, tx = invited(sip)
    sends, summary, _ = sip.answer(tx, None, 0.0)
    assert statuses(sends) == [500] and summary == "500"
    assert b"TFPS Database Unavailable" in sends[0][1]


def test_trying_after_100_ms_only_while_the_verdict_is_pending():
    sip = service()
    _, slow = invited(sip, now=0.0)
    _, fast = invited(sip, now=0.0)
    sip.answer(fast, verdict(fast.data.attempt), 0.01)
    assert sip.poll(0.099) == []
    assert sip.next_deadline() == pytest.approx(0.1)
    assert statuses(sip.poll(0.1)) == [100]  # the slow one only
    assert statuses(sip.answer(slow, verdict(slow.data.attempt), 0.3)[0]) == [302]


def test_timer_g_retransmits_doubling_to_t2_until_timer_h():
    sip = service()
    _, tx = invited(sip)
    sip.answer(tx, verdict(tx.data.attempt, "R06"), 0.0)
    times, ended = [], None
    while sip.next_deadline() is not None:
        now = sip.next_deadline()
        if statuses(sip.poll(now)) == [302]:
            times.append(now)
        if ended is None and tx.key not in sip.transactions.table:
            ended = now
    gaps = [b - a for a, b in zip([0.0] + times, times)]
    assert gaps[:4] == pytest.approx([T1, 2 * T1, 4 * T1, T2])
    assert all(g == pytest.approx(T2) for g in gaps[3:])
    assert ended == pytest.approx(64 * T1) and times[-1] < ended  # Timer H ended it


def test_ack_stops_retransmissions_and_timer_i_ends_the_transaction():
    sip = service()
    data, tx = invited(sip)
    response = sip.answer(tx, verdict(tx.data.attempt, "R06"), 0.0)[0][0][1]
    assert sip.receive(ack_for(data, response), UDP, PEER, 0.2) == ([], None)
    assert sip.poll(0.5) == []  # Timer G is stale once the ACK came
    assert sip.receive(data, UDP, PEER, 0.6) == ([], None)  # confirmed: a retransmitted INVITE is absorbed
    assert sip.poll(0.2 + tfps.T4) == [] and tx.key not in sip.transactions.table


def test_retransmitted_invite_gets_the_same_answer_and_no_second_verdict():
    sip = service()
    data, tx = invited(sip)
    assert sip.receive(data, UDP, PEER, 0.05) == ([], None)  # pending: nothing to repeat yet
    first = sip.answer(tx, verdict(tx.data.attempt), 0.1)[0][0][1]
    sends, again = sip.receive(data, UDP, PEER, 0.2)
    assert again is None and [packet for _d, packet in sends] == [first]


def test_retransmissions_stay_within_the_budget_per_source():
    sip = service(resend_bytes_per_source="1024")
    data, tx = invited(sip)
    response = sip.answer(tx, verdict(tx.data.attempt), 0.0)[0][0][1]
    fit = 1024 // len(response)
    sent = sum(len(sip.receive(data, UDP, PEER, 0.1)[0]) for _ in range(fit + 3))
    assert sent == fit and sip.counters["resend_dropped"] == 3
    assert len(sip.receive(data, UDP, PEER, 1.1)[0]) == 1  # a new second, a new budget


def test_cancel_before_the_verdict_answers_200_and_487_and_drops_the_verdict():
    sip = service()
    data, tx = invited(sip)
    sends, none = sip.receive(cancel_for(data), UDP, PEER, 0.05)
    assert none is None and sorted(statuses(sends)) == [200, 487]
    assert not sip.awaits_verdict(tx) and sip.answer(tx, verdict(None), 0.06) is None
    assert sip.poll(0.1) == []  # no 100 Trying for a cancelled INVITE


def test_cancel_after_the_verdict_changes_nothing():
    sip = service()
    data, tx = invited(sip)
    sip.answer(tx, verdict(tx.data.attempt), 0.01)
    sends, _ = sip.receive(cancel_for(data), UDP, PEER, 0.02)
    assert statuses(sends) == [200]


def test_cancel_without_its_invite_is_481():
    sip = service()
    assert statuses(sip.receive(cancel_for(sip_invite("4420", 5060)), UDP, PEER, 0.0)[0]) == [481]


@pytest.mark.parametrize("headers,number,status", [
    (["Max-Forwards: 0"], "442071234567", 483),
    ([], "", 484),
    ([], "A00442071234567", 482),
    (["Require: 100rel"], "442071234567", 420),
])
def test_invites_answered_without_a_verdict(headers, number, status):
    sip = service()
    data = sip_invite(number or "x", 5060, headers=headers)
    if not number:
        data = data.replace(b"INVITE sip:x@", b"INVITE sip:@")
    if headers == ["Max-Forwards: 0"]:
        data = data.replace(b"Max-Forwards: 70\r\n", b"")
    sends, tx = sip.receive(data, UDP, PEER, 0.0)
    assert tx is None and statuses(sends) == [status]


def test_options_bye_and_unknown_methods():
    sip = service()
    assert statuses(sip.receive(sip_invite("1", 5060, method="OPTIONS"), UDP, PEER, 0.0)[0]) == [200]
    assert statuses(sip.receive(sip_invite("1", 5060, method="BYE"), UDP, PEER, 0.0)[0]) == [481]
    assert statuses(sip.receive(sip_invite("1", 5060, method="SUBSCRIBE"), UDP, PEER, 0.0)[0]) == [405]


def test_responses_go_to_the_packet_source_not_to_the_via():
    sip = service()
    data = sip_invite("1", 5060, method="OPTIONS").replace(b"127.0.0.1:5099;branch", b"198.51.100.9:7000;maddr=203.0.113.1;branch")
    (dest, packet), = sip.receive(data, UDP, PEER, 0.0)[0]
    assert dest == (UDP, PEER)
    assert b"received=127.0.0.1" in packet


def test_malformed_request_gets_400_and_a_response_is_ignored():
    sip = service()
    bad = sip_invite("1", 5060).replace(b"CSeq: 1 INVITE", b"CSeq: x INVITE")
    assert statuses(sip.receive(bad, UDP, PEER, 0.0)[0]) == [400]
    assert sip.receive(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", UDP, PEER, 0.0) == ([], None)
    assert sip.counters["malformed"] == 1


def test_full_table_answers_500_overloaded_without_state():
    sip = service()
    sip.transactions.limit = 2
    invited(sip)
    invited(sip)
    sends, tx = sip.receive(sip_invite("1", 5060), UDP, PEER, 0.0)
    assert tx is None and statuses(sends) == [500] and b"TFPS Overloaded" in sends[0][1]
    assert len(sip.transactions.table) == 2 and sip.counters["overflow"] == 1


def test_tcp_framing_split_anywhere_gives_the_same_verdict_requests():
    stream = b"".join(sip_invite("4420712345%02d" % i, 5060, transport="TCP") for i in range(3))
    for size in (1, 7, 97, len(stream)):
        sip = service()
        framer = tfps.StreamFramer(65535)
        requests = []
        for i in range(0, len(stream), size):
            for message in framer.feed(stream[i:i + size]):
                requests.append(sip.receive(message, TCP, PEER, 0.0)[1])
        assert [tx.data.attempt.number for tx in requests] == [f"4420712345{i:02d}" for i in range(3)]
        for tx in requests:
            assert tx.reliable
            sip.answer(tx, verdict(tx.data.attempt), 0.0)


def test_tcp_answers_are_not_retransmitted():
    sip = service()
    _, tx = invited(sip, endpoint=TCP, transport="TCP")
    sip.answer(tx, verdict(tx.data.attempt, "R06"), 0.0)
    sends = []
    while sip.next_deadline() is not None:
        sends += sip.poll(sip.next_deadline())
    assert sends == []


def test_unframeable_stream_gets_an_answer_before_it_is_closed():
    sip = service()
    framer = tfps.StreamFramer(65535)
    data = sip_invite("1", 5060, transport="TCP").replace(b"Content-Length: 0", b"Content-Length: x")
    with pytest.raises(tfps.SipError) as caught:
        framer.feed(data)
    (dest, packet), = sip.reject_stream(framer.buffer, caught.value, TCP, PEER)
    assert status_of(packet) == 400 and dest == (TCP, PEER)


def test_a_configuration_in_service_is_read_only_and_a_reload_swaps_it(tmp_path):
    """SIGHUP builds a new Config and hands it to the server's objects; nothing changes a
    section in place."""
    from conftest import write_config
    path = write_config(tmp_path / "a.conf", {"server": {"mode": "redirect"}, "database": {"url": f"sqlite://{tmp_path / 'db'}"}})
    with built_server(path) as server:
        cfg = server.cfg
        with pytest.raises(AttributeError):
            cfg.server.mode = "monitor"
        write_config(tmp_path / "a.conf", {"server": {"mode": "failover"}, "database": {"url": f"sqlite://{tmp_path / 'db'}"},
                                           "alerts": {"alert_interval": "7m"}})
        server.reload_config()
        assert cfg.server.mode == "redirect"  # the old one is untouched
        new = server.cfg
        assert new is not cfg and new.server.mode == "failover"
        assert server.engine.cfg is new and server.sip.settings is new.server
        assert server.dispatcher.acfg is new.alerts and server.engine.alerts.acfg is new.alerts
        assert server.reputation.rcfg is new.reputation


def test_random_bytes_differ_across_a_fork_and_refill_when_used_up():
    """To-tags and call log row keys come from a pool of kernel random bytes: a forked worker
    must draw its own, not its parent's next ones."""
    import os
    pool = tfps.RandomBytes()
    first = pool.hex(6)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, pool.hex(8).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    parent = pool.hex(8)
    assert len(first) == 12 and len(child) == len(parent) == 16
    assert child != parent
    drawn = {pool.hex(8) for _ in range(2 * tfps.RandomBytes.CHUNK // 8)}  # past the end of one pool
    assert len(drawn) == 2 * tfps.RandomBytes.CHUNK // 8
