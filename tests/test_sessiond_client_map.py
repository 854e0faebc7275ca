"""sessiond's client map: request-log lines -> which client connection carries which
authid, kept across a restart; fed by the shared request-log listener."""

from __future__ import annotations

import socket

from lthn.haproxy.request_log import RequestLog, RequestLogListener, parse
from lthn.ports import free_port_pair
from services.sessiond.client_map import ClientMap
from tests.fixtures.common import wait_for


class HandClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


A = "1A00112233445566"
B = "1B00112233445566"


def datagram(ip: str, port: int, authid: str = "-", reason: str = "-") -> bytes:
    return f"LTHN1 {ip} {port} {authid} {reason} 200 CONNECT origin.test:443\n".encode()


def line(ip: str, port: int, authid: str = "-", reason: str = "-") -> RequestLog:
    return parse(datagram(ip, port, authid, reason))


def test_admitted_requests_are_learnt_refused_and_bad_addresses_are_not():
    clients = ClientMap(HandClock())
    clients.learn(line("127.0.0.1", 4000, A.lower()))
    clients.learn(line("::ffff:127.0.0.1", 4001, A))          # same address, IPv4-mapped
    clients.learn(line("127.0.0.1", 4002, B, "NO_PAYMENT"))   # refused
    clients.learn(line("127.0.0.1", 4003))                    # no authid
    clients.learn(line("unix", 4004, B))                      # not an address
    assert clients.clients_of(A) == {"127.0.0.1:4000", "127.0.0.1:4001"}
    assert clients.clients_of(B) == set()
    assert clients.source_of == {A: "127.0.0.1"}
    assert clients.bad_lines == 1


def test_a_connection_reused_by_another_authid_belongs_to_the_last_one():
    clients = ClientMap(HandClock())
    clients.learn(line("127.0.0.1", 4000, A))
    clients.learn(line("127.0.0.1", 4000, B))   # keep-alive: the next request, other authid
    assert clients.clients_of(A) == set() and clients.clients_of(B) == {"127.0.0.1:4000"}


def test_prune_keeps_live_and_young_connections():
    clock = HandClock()
    clients = ClientMap(clock)
    clients.learn(line("127.0.0.1", 4000, A))
    clients.learn(line("127.0.0.1", 4001, A))
    clock.now += 10
    clients.learn(line("127.0.0.1", 4002, B))   # young: its stream may not show yet
    assert clients.prune({"127.0.0.1:4000"}, older_than=5.0) == 1
    assert clients.clients_of(A) == {"127.0.0.1:4000"}
    assert clients.clients_of(B) == {"127.0.0.1:4002"}


def test_saved_map_survives_a_restart_and_a_bad_file_is_ignored(tmp_path):
    path = tmp_path / "clients.json"
    clients = ClientMap(HandClock())
    clients.learn(line("127.0.0.1", 4000, A))
    clients.save(path)
    again = ClientMap(HandClock())
    again.load(path)
    assert again.clients_of(A) == {"127.0.0.1:4000"} and again.source_of[A] == "127.0.0.1"
    path.write_text("{not json")
    broken = ClientMap(HandClock())
    broken.load(path)
    assert broken.by_client == {}
    ClientMap(HandClock()).load(tmp_path / "missing.json")   # nothing saved yet: fine


def test_datagrams_reach_the_map_through_the_log_socket():
    port = free_port_pair()
    listener = RequestLogListener(port, "sessions")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(3):
                sender.sendto(datagram("127.0.0.1", 5000 + i, A), ("127.0.0.1", port))
            for garbage in (b"\xffnot a log line", b"LTHN1 127.0.0.1 notaport x - 200 GET /\n"):
                sender.sendto(garbage, ("127.0.0.1", port))
        clients = ClientMap(HandClock())

        def read() -> bool:
            for request in listener.drain():
                clients.learn(request)
            return len(clients.clients_of(A)) == 3 and listener.bad == 2
        wait_for(read, timeout=2, what="three request lines and two bad datagrams read")
        assert clients.clients_of(A) == {f"127.0.0.1:{5000 + i}" for i in range(3)}
    finally:
        listener.close()


def test_a_restarted_listener_binds_while_the_old_socket_lingers():
    """SO_REUSEPORT: a second listener on the same port (a restarted sessiond) binds."""
    port = free_port_pair()
    first = RequestLogListener(port, "sessions")
    try:
        second = RequestLogListener(port, "sessions")
        second.close()
    finally:
        first.close()
