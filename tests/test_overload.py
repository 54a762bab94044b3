"""Overload control: an INVITE that waited longer than [server] overload_after before its turn is
answered R98 at once, without the engine. On the SIP service with a virtual clock, then a real
server stopped with SIGSTOP while INVITEs pile up in its socket buffer."""

import contextlib
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

import tfps
from conftest import ack_for, built_server, free_port, recv_response, sip_invite, udp_socket, wait_until, write_config

PEER = ("127.0.0.1", 5099)
NUMBER = "442071234567"


class Endpoint:
    transport = "udp"


def service(**server):
    cfg = tfps.Config()
    for key, value in server.items():
        cfg.set("server", key, value)
    return tfps.SipService(cfg.server)


def invite(sip, now, arrived, number=NUMBER, data=None):
    """An INVITE in time: a transaction waiting for the engine's verdict."""
    sends, tx = sip.receive(data or sip_invite(number, 5060), Endpoint(), PEER, now, arrived)
    assert sends == [] and isinstance(tx, tfps.ServerTransaction)
    return tx


def shed(sip, now, arrived, number=NUMBER, data=None):
    """A late INVITE: answered by the service itself, and no transaction holds it."""
    sends, late = sip.receive(data or sip_invite(number, 5060), Endpoint(), PEER, now, arrived)
    assert isinstance(late, tfps.ShedInvite) and not sip.transactions.table
    (_dest, packet), = sends
    return tfps.parse_message(packet), late, packet


# -- the service, on a virtual clock -----------------------------------------------------------

def test_an_invite_that_waited_too_long_is_answered_r98_at_once_without_a_transaction():
    sip = service(overload_after="0.2s")
    msg, late, _ = shed(sip, now=100.35, arrived=100.0)
    verdict = late.verdict
    assert verdict.code == "R98" and not verdict.approved
    assert verdict.reason == "TFPS overloaded: request waited 0.35 s > overload_after 0.2 s"
    assert msg.status == 302 and msg.header("contact") == f"<sip:R98{NUMBER}@pbx.example.com>"
    assert msg.header("x-tfps-code") == "R98" and msg.header("x-tfps-reason") == verdict.reason
    assert late.waited == pytest.approx(0.35)
    assert late.waited * 1000 == pytest.approx(350)  # the latency logged: from the arrival, not from the turn
    assert sip.next_deadline() is None, "nothing is retransmitted: a lost answer brings the INVITE again"


def test_a_retransmission_of_an_invite_answered_r98_gets_the_same_bytes_and_no_second_verdict(monkeypatch):
    monkeypatch.setattr(tfps, "SHED_ANSWERS", 2)
    sip = service(overload_after="0.2s")
    first, second, third = (sip_invite(NUMBER, 5060) for _ in range(3))
    _, _, answer = shed(sip, now=10.5, arrived=10.0, data=first)
    sends, late = sip.receive(first, Endpoint(), PEER, 11.0, 11.0)
    assert late is None and [packet for _dest, packet in sends] == [answer]
    shed(sip, now=12.5, arrived=12.0, data=second)
    shed(sip, now=12.5, arrived=12.0, data=third)  # the oldest answer is forgotten
    assert isinstance(sip.receive(first, Endpoint(), PEER, 13.5, 13.0)[1], tfps.ShedInvite)
    # 32 s after the latest R98 (Timer B), no INVITE is retransmitted: the answers are forgotten
    later = 13.5 + 64 * tfps.T1 + 1
    assert isinstance(sip.receive(third, Endpoint(), PEER, later, later)[1], tfps.ServerTransaction)
    assert not sip.shed_answers


def test_an_invite_read_from_a_crowded_receive_queue_is_answered_r98_however_fresh():
    sip = service(overload_after="0.2s")
    sends, late = sip.receive(sip_invite(NUMBER, 5060), Endpoint(), PEER, 100.05, 100.0, crowded=True)
    assert isinstance(late, tfps.ShedInvite) and not sip.transactions.table
    (_dest, packet), = sends
    msg = tfps.parse_message(packet)
    assert msg.header("x-tfps-code") == "R98"
    assert msg.header("x-tfps-reason") == "TFPS overloaded: receive queue crowded (request waited 0.05 s)"
    # without overload control, a crowded queue changes nothing
    sends, tx = service(overload_after="0").receive(sip_invite(NUMBER, 5060), Endpoint(), PEER, 100.05, 100.0, crowded=True)
    assert sends == [] and isinstance(tx, tfps.ServerTransaction)


def test_the_ack_of_an_r98_answered_at_once_is_told_by_its_to_tag_and_dropped_unread():
    sip = service(overload_after="0.2s")
    data = sip_invite(NUMBER, 5060)
    msg, _, packet = shed(sip, now=10.5, arrived=10.0, data=data)
    ack = ack_for(data, packet)
    assert tfps.tag_of(msg.header("to")).startswith(tfps.STATELESS_TAG) and tfps.acknowledges_stateless_answer(ack)
    requests = sip.metrics.counter("sip_requests", method="ACK")
    assert sip.receive(ack, Endpoint(), PEER, 10.6) == ([], None)
    assert sip.metrics.counter("sip_requests", method="ACK") == requests, "the ACK was parsed"
    # a transaction's tag is hex: its ACK is no stateless one
    held = sip_invite(NUMBER, 5060)
    tx = invite(sip, now=20.0, arrived=20.0, data=held)
    (_dest, packet), = sip.answer(tx, tfps.Verdict("R06", "high-risk destination", tx.data.attempt), 20.0)[0]
    assert not tfps.acknowledges_stateless_answer(ack_for(held, packet))


def test_a_late_retransmission_of_an_invite_held_in_a_transaction_is_not_answered_twice():
    sip = service(overload_after="0.2s")
    data = sip_invite(NUMBER, 5060)
    tx = invite(sip, now=1.0, arrived=1.0, data=data)
    assert sip.receive(data, Endpoint(), PEER, 2.0, 1.5) == ([], None)  # the transaction absorbs it
    assert sip.awaits_verdict(tx)


def test_an_exempt_number_waits_for_its_verdict_however_late():
    cfg = tfps.Config()
    cfg.set("server", "overload_after", "0.2s")
    sip = tfps.SipService(cfg.server, exempt=lambda number: number == "999")
    invite(sip, now=9.0, arrived=1.0, number="999")
    shed(tfps.SipService(cfg.server, exempt=lambda number: number == "999"), now=9.0, arrived=1.0)


def test_an_invite_within_overload_after_gets_its_verdict_from_the_engine():
    sip = service(overload_after="0.2s")
    invite(sip, now=5.19, arrived=5.0)
    invite(sip, now=5.2, arrived=5.2)
    invite(sip, now=5.0, arrived=7.0)  # an arrival after now counts as now


def test_overload_after_zero_turns_the_bound_off():
    invite(service(overload_after="0"), now=30.0, arrived=0.0)


def test_overload_approve_answers_a00_with_r98_in_the_reason():
    sip = service(overload_after="0.2s", overload="approve")
    msg, late, _ = shed(sip, now=1.5, arrived=1.0)
    assert late.verdict.approved and late.verdict.would.code == "R98"
    assert msg.header("contact") == f"<sip:A00{NUMBER}@pbx.example.com>"
    assert msg.header("x-tfps-reason") == "R98 TFPS overloaded: request waited 0.50 s > overload_after 0.2 s; approved"


@pytest.mark.parametrize("overload, status", [("reject", 603), ("approve", 503)])
def test_failover_mode_answers_r98_like_its_rejections_or_approvals(overload, status):
    sip = service(overload_after="0.2s", overload=overload, mode="failover")
    msg, _, _ = shed(sip, now=2.0, arrived=1.0)
    assert msg.status == status and "TFPS overloaded" in msg.header("x-tfps-reason")
    assert msg.header("x-tfps-code") == ("R98" if overload == "reject" else "A00")


def test_monitor_mode_approves_what_overload_rejects():
    assert shed(service(overload_after="0.2s", mode="monitor"), now=2.0, arrived=1.0)[1].verdict.approved


def test_the_kernel_timestamp_dates_a_datagram_from_its_arrival():
    sock, sender = udp_socket(), udp_socket()
    sock.setsockopt(tfps.socket.SOL_SOCKET, tfps.SO_TIMESTAMPNS, 1)
    sender.sendto(b"x", sock.getsockname())
    wait_until(lambda: sock.recv(1, tfps.socket.MSG_PEEK))
    time.sleep(0.3)  # the datagram waits in the socket buffer
    _data, ancillary, _flags, _addr = sock.recvmsg(64, tfps.TIMESTAMP_SPACE)
    read_at = time.monotonic()
    assert read_at - tfps.kernel_arrival(ancillary, read_at) >= 0.3
    assert tfps.kernel_arrival([], read_at) == read_at  # no timestamp: the time of reading
    sock.close(), sender.close()


def test_the_receive_buffer_shrinks_in_proportion_to_waits_past_twice_overload_after():
    bound = tfps.ReceiveQueueBound(largest=4096, smallest=256)
    assert bound.resize(0.2) is None and bound.size == 4096  # nothing read: full size
    bound.longest_wait = 0.8
    assert bound.resize(0.2) == 2048 and bound.longest_wait == 0.0  # 0.4 s of 0.8: half
    bound.longest_wait = 4.0
    assert bound.resize(0.2) == 256  # 204 would be below the floor
    bound.longest_wait = 30.0
    assert bound.resize(0.2) is None and bound.size == 256
    for waited in (0.1, 0.25, 0.4):  # between half and twice overload_after: left as it is
        bound.longest_wait = waited
        assert bound.resize(0.2) is None


def test_the_receive_buffer_doubles_back_once_requests_are_fresh_and_is_whole_without_the_bound():
    bound = tfps.ReceiveQueueBound(largest=4096, smallest=256)
    bound.longest_wait = 40.0
    assert bound.resize(0.2) == 256
    sizes = []
    for _ in range(6):
        bound.longest_wait = 0.05
        sizes.append(bound.resize(0.2))
    assert sizes == [512, 1024, 2048, 4096, None, None]
    bound.longest_wait = 40.0
    bound.resize(0.2)
    bound.longest_wait = 40.0
    assert bound.resize(0) == 4096  # overload_after = 0: no bound, the whole buffer at once


def timestamps_on(client, listener, port):
    """Until the kernel timestamps datagrams as they arrive. The first socket that asks for
    SO_TIMESTAMPNS turns timestamps on a moment later (deferred work); a datagram that arrived
    before then is stamped when it is read, as if it had not waited."""
    for _ in range(50):
        client.sendto(b"probe", ("127.0.0.1", port))
        time.sleep(0.05)
        _data, ancillary, _flags, _addr = listener.recvmsg(64, tfps.TIMESTAMP_SPACE)
        read_at = time.monotonic()
        if read_at - tfps.kernel_arrival(ancillary, read_at) >= 0.04:
            return
    raise AssertionError("the kernel did not timestamp datagrams as they arrived")


@contextlib.contextmanager
def listening_server(tmp_path):
    """A one-worker server with overload_after 0.2 s, bound to a UDP port but not running: the
    test reads its listener with _read_udp. Yields (server, endpoint, client socket, port)."""
    port = free_port()
    config = write_config(tmp_path / "tfps.conf", {
        "server": {"listen": f"udp:127.0.0.1:{port}", "overload_after": "0.2s", "workers": "1"},
        "database": {"url": f"sqlite://{tmp_path / 'tfps.db'}"},
        "policy": {"learning_days": "0", "default_destination_countries": "*"}})
    with built_server(config) as server:
        server.bind()
        client = udp_socket(timeout=5.0)
        try:
            endpoint, = server.udp_endpoints
            yield server, endpoint, client, port
        finally:
            client.close()
            for sock in server.listeners:
                sock.close()


def test_a_listener_whose_requests_waited_too_long_gets_a_smaller_receive_buffer_then_its_whole_one(tmp_path):
    """On a real UDP socket: INVITEs that waited 0.5 s in the kernel's queue (past twice
    overload_after) shrink the listener's SO_RCVBUF in proportion, and are answered R98; a fresh
    one doubles it back to RECEIVE_BUFFER. Linux grants twice what is asked (for its own
    bookkeeping), up to twice net.core.rmem_max."""
    rmem_max = int(open("/proc/sys/net/core/rmem_max").read())

    def granted(size):
        return 2 * min(size, rmem_max)

    with listening_server(tmp_path) as (server, endpoint, client, port):
        listener = endpoint.sock
        assert listener.getsockopt(tfps.socket.SOL_SOCKET, tfps.socket.SO_RCVBUF) == granted(tfps.RECEIVE_BUFFER)
        timestamps_on(client, listener, port)
        late = {f"late-{i}@test" for i in range(5)}
        for call_id in sorted(late):
            client.sendto(sip_invite(NUMBER, port, local_port=client.getsockname()[1], call_id=call_id), ("127.0.0.1", port))
        time.sleep(0.5)
        server._read_udp(listener, endpoint)
        assert 0.5 <= endpoint.receive_buffer.longest_wait < 5.0
        server._bound_receive_queues()
        shrunk = endpoint.receive_buffer.size
        assert tfps.SMALLEST_RECEIVE_BUFFER <= shrunk <= tfps.RECEIVE_BUFFER * 0.4 / 0.5
        assert listener.getsockopt(tfps.socket.SOL_SOCKET, tfps.socket.SO_RCVBUF) == granted(shrunk)
        answers = final_answers(client, late)
        assert {msg.header("x-tfps-code") for msg in answers.values()} == {"R98"}

        client.sendto(sip_invite(NUMBER, port, local_port=client.getsockname()[1], call_id="fresh@test"), ("127.0.0.1", port))
        wait_until(lambda: listener.recv(1, tfps.socket.MSG_PEEK))
        server._read_udp(listener, endpoint)
        assert endpoint.receive_buffer.longest_wait < 0.1
        server._bound_receive_queues()
        assert endpoint.receive_buffer.size == min(tfps.RECEIVE_BUFFER, 2 * shrunk)
        assert listener.getsockopt(tfps.socket.SOL_SOCKET, tfps.socket.SO_RCVBUF) == granted(endpoint.receive_buffer.size)


def test_invites_read_from_a_receive_queue_more_than_half_full_are_answered_r98_and_later_ones_checked(tmp_path, caplog):
    """On a real UDP socket with a small receive buffer: INVITEs that fill more than half of it
    are answered R98 with the reason that says so, though they waited only milliseconds; one
    read from an emptier queue gets its verdict. The kernel's own count of the queue decides
    (SO_MEMINFO)."""
    with listening_server(tmp_path) as (server, endpoint, client, port):
        listener = endpoint.sock
        listener.setsockopt(tfps.socket.SOL_SOCKET, tfps.socket.SO_RCVBUF, 16 << 10)
        crowd = {f"crowd-{i}@test" for i in range(16)}  # 1,280 bytes each in the kernel, of 32 kB allowed
        for call_id in sorted(crowd):
            client.sendto(sip_invite(NUMBER, port, local_port=client.getsockname()[1], call_id=call_id), ("127.0.0.1", port))
        wait_until(lambda: tfps.receive_queue_crowded(listener))
        server._read_udp(listener, endpoint)
        answers = final_answers(client, crowd)
        assert {msg.header("x-tfps-code") for msg in answers.values()} == {"R98"}
        assert all("receive queue crowded" in msg.header("x-tfps-reason") for msg in answers.values())
        assert not tfps.receive_queue_crowded(listener)

        client.sendto(sip_invite(NUMBER, port, local_port=client.getsockname()[1], call_id="fresh@test"), ("127.0.0.1", port))
        wait_until(lambda: listener.recv(1, tfps.socket.MSG_PEEK))
        server._read_udp(listener, endpoint)
        assert final_answers(client, {"fresh@test"})["fresh@test"].header("x-tfps-code") == "A00"
        assert server.metrics.counter("sip_overload", answer="reject") == len(crowd)
        assert "Requests came from a crowded receive queue, filled past half" in caplog.text  # the warning says why


def queue_use(sock):
    """(bytes queued, bytes allowed) of the socket's kernel receive queue."""
    return tfps.RECEIVE_QUEUE_USE.unpack(sock.getsockopt(tfps.socket.SOL_SOCKET, tfps.SO_MEMINFO,
                                                         tfps.RECEIVE_QUEUE_USE.size))


def send_invites_until(client, port, listener, enough, prefix):
    """INVITEs to the listener until enough(queued, allowed): their Call-IDs."""
    call_ids = set()
    while not enough(*queue_use(listener)):
        call_id = f"{prefix}-{len(call_ids)}@test"
        client.sendto(sip_invite(NUMBER, port, local_port=client.getsockname()[1], call_id=call_id), ("127.0.0.1", port))
        call_ids.add(call_id)
        wait_until(lambda: queue_use(listener)[0] > 0)
    return call_ids


def test_a_receive_queue_that_was_more_than_half_full_is_crowded_until_drained_to_an_eighth(tmp_path):
    """On a real UDP socket: a quarter full is not crowded for a listener that was not, and its
    INVITEs are checked; once the queue was more than half full, a quarter full is still crowded
    (R98), and an eighth or less is not."""
    with listening_server(tmp_path) as (server, endpoint, client, port):
        listener = endpoint.sock
        listener.setsockopt(tfps.socket.SOL_SOCKET, tfps.socket.SO_RCVBUF, 16 << 10)
        quarter = send_invites_until(client, port, listener, lambda queued, allowed: 4 * queued > allowed, "quarter")
        assert 2 * queue_use(listener)[0] < queue_use(listener)[1]
        server._read_udp(listener, endpoint)
        assert "R98" not in {msg.header("x-tfps-code") for msg in final_answers(client, quarter).values()}  # checked
        assert not endpoint.crowded

        crowd = send_invites_until(client, port, listener, lambda queued, allowed: 2 * queued > allowed, "crowd")
        server._read_udp(listener, endpoint)
        assert {msg.header("x-tfps-code") for msg in final_answers(client, crowd).values()} == {"R98"}
        assert endpoint.crowded

        draining = send_invites_until(client, port, listener, lambda queued, allowed: 4 * queued > allowed, "draining")
        server._read_udp(listener, endpoint)
        answers = final_answers(client, draining)
        assert {msg.header("x-tfps-code") for msg in answers.values()} == {"R98"}
        assert all("receive queue crowded" in msg.header("x-tfps-reason") for msg in answers.values())

        client.sendto(sip_invite(NUMBER, port, local_port=client.getsockname()[1], call_id="drained@test"), ("127.0.0.1", port))
        wait_until(lambda: queue_use(listener)[0] > 0)
        assert 8 * queue_use(listener)[0] <= queue_use(listener)[1]
        server._read_udp(listener, endpoint)
        assert final_answers(client, {"drained@test"})["drained@test"].header("x-tfps-code") != "R98"
        assert not endpoint.crowded


# -- a real server, stopped while INVITEs wait in its socket buffer -------------------------------

def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def final_answers(sock, call_ids):
    """The final responses to these calls; retransmissions of earlier answers are passed over."""
    answers = {}
    while set(answers) != call_ids:
        msg, _ = recv_response(sock)
        if msg.status >= 300 and msg.header("call-id") in call_ids:
            answers[msg.header("call-id")] = msg
    return answers


@pytest.mark.parametrize("overload", ["reject", "approve"])
def test_invites_that_waited_while_the_server_was_stopped_get_r98_then_service_is_normal(start_server, overload):
    http_port = free_port()
    server = start_server(sections={"server": {"overload_after": "0.2s", "overload": overload},
                                    "policy": {"learning_days": "0", "default_destination_countries": "*"},
                                    "http": {"listen": f"127.0.0.1:{http_port}"}})
    sock = udp_socket(timeout=5.0)
    port = sock.getsockname()[1]
    sock.sendto(sip_invite(NUMBER, server.port, local_port=port, call_id="warm@test"), ("127.0.0.1", server.port))
    assert recv_response(sock)[0].header("x-tfps-code") == "A00"

    server.signal(signal.SIGSTOP)
    try:
        late = {f"late-{i}@test" for i in range(20)}
        for call_id in sorted(late):
            sock.sendto(sip_invite(NUMBER, server.port, local_port=port, call_id=call_id), ("127.0.0.1", server.port))
        sock.sendto(sip_invite("911", server.port, local_port=port, call_id="emergency@test"), ("127.0.0.1", server.port))
        time.sleep(0.5)
    finally:
        server.signal(signal.SIGCONT)

    answers = final_answers(sock, late | {"emergency@test"})
    expected_code = "R98" if overload == "reject" else "A00"
    for call_id in late:
        msg = answers[call_id]
        assert msg.status == 302 and msg.header("x-tfps-code") == expected_code, msg.header("x-tfps-reason")
        assert msg.header("contact").startswith(f"<sip:{expected_code}{NUMBER}@")
        assert "TFPS overloaded: request waited 0." in msg.header("x-tfps-reason")
    emergency = answers["emergency@test"]
    assert emergency.header("x-tfps-code") == "A00" and "overloaded" not in emergency.header("x-tfps-reason")

    sock.sendto(sip_invite(NUMBER, server.port, local_port=port, call_id="fresh@test"), ("127.0.0.1", server.port))
    fresh = final_answers(sock, {"fresh@test"})["fresh@test"]
    assert fresh.header("x-tfps-code") == "A00"
    assert "overloaded" not in fresh.header("x-tfps-reason")

    text = metrics(http_port)
    assert f'tfps_sip_overload_total{{answer="{overload}"}} 20' in text
    assert text.count("overload_after 0.2 s") == 0  # reasons stay out of the metrics
    code_label = 'code="R98"' if overload == "reject" else 'code="A00"'
    assert any(line.startswith("tfps_verdicts_total{") and code_label in line for line in text.splitlines())
    wait_until(lambda: "alert: TFPS R98:" in server.read_log(), message=server.read_log)
    log = server.read_log()
    assert log.count("answered R98 and") == 1  # one warning a minute, not one per call
    assert log.count("alert: TFPS R98:") == 1  # the server's, and none per call
    assert log.count("TFPS overloaded: request waited") == 0  # no line per R98 answer: the warning counts them
    assert log.count("(counted, not written to the call log)") == 1
    sock.close()
    db = tfps.open_database(server.db_url)
    try:  # the call log has the checked calls, written in order; an R98 answer is counted, not written
        wait_until(lambda: len(db.query("SELECT id FROM call_log")) >= 3, message=server.read_log)
        assert {call_id for (call_id,) in db.query("SELECT call_id FROM call_log")} == {"warm@test", "emergency@test", "fresh@test"}
    finally:
        db.close()


@pytest.mark.parametrize("overload", ["reject", "approve"])
def test_http_checks_that_waited_too_long_for_the_loop_are_answered_r98(tmp_path, overload):
    config = write_config(tmp_path / "tfps.conf", {
        "server": {"overload_after": "0.2s", "overload": overload},
        "database": {"url": f"sqlite://{tmp_path / 'tfps.db'}"},
        "policy": {"learning_days": "0", "default_destination_countries": "*"}})
    with built_server(config) as server:
        answers = []
        for number, waited in ((NUMBER, 0.35), ("911", 0.35), (NUMBER, 0.05)):
            handoff = tfps.Handoff()
            attempt = tfps.CallAttempt("1001", "pbx.example.com", number, ts=time.time(), call_id=f"{number}-{waited}@http")
            server.check(attempt, handoff, time.monotonic() - waited)
            answers.append(handoff.wait(1.0))
        (late, late_latency), (emergency, _), (fresh, _) = answers
        assert late.code == ("R98" if overload == "reject" else "A00") and late_latency >= 350
        assert "TFPS overloaded: request waited 0.35 s > overload_after 0.2 s" in late.reason
        assert (late.would.code if late.would else late.code) == "R98"
        assert emergency.code == "A00" and "overloaded" not in emergency.reason   # never shed
        assert fresh.code == "A00" and "overloaded" not in fresh.reason
        assert server.metrics.counter("http_overload", answer=overload) == 1
        assert server.metrics.counter("sip_overload", answer=overload) == 0
        assert [event.kind for event in server.engine.alerts.events].count("overload") == 1
        server.engine.flush()
        assert sorted(call_id for (call_id,) in server.db.query("SELECT call_id FROM call_log")) == [
            f"{NUMBER}-0.05@http", "911-0.35@http"]  # an R98 answer is counted, not written


def test_full_garbage_collections_wait_for_the_servers_schedule():
    """A full collection stalls the loop for tens of milliseconds: after the server's setting,
    objects that outlive young collections (as transactions do) no longer start one."""
    script = f"""
import gc, sys
sys.path.insert(0, {str(tfps.__file__.rpartition('/')[0])!r})
import tfps
full = []
gc.callbacks.append(lambda phase, info: phase == "start" and info["generation"] == 2 and full.append(1))
kept = [[[float(i)] for i in range(20000)] for _ in range(20)]
by_default = len(full)
tfps.keep_full_collections_off_the_request_path()
kept += [[[float(i)] for i in range(20000)] for _ in range(40)]
print(by_default, len(full) - by_default)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True).stdout
    by_default, after = map(int, out.split())
    assert by_default > 0  # Python's own schedule, which the server replaces
    assert after == 0
