"""The demo's origin web site: a client that goes away before its answer is not a
traceback on the demo's terminal (issue #15)."""

from __future__ import annotations

import socket
import struct
import threading

from lthn.demo.demo import ORIGIN_PAGE, OriginHandler, OriginServer
from tests.fixtures.common import read_head


def test_a_client_that_goes_away_prints_no_traceback(capfd):
    server = OriginServer(("127.0.0.1", 0), OriginHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        for _ in range(30):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n")
            # close with a reset, before the answer is read
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        with socket.create_connection(("127.0.0.1", port)) as sock:   # still serving
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
            data = read_head(sock)
            while not data.endswith(ORIGIN_PAGE):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"HTTP/1.0 200") and data.endswith(ORIGIN_PAGE)
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err
