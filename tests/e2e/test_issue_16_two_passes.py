"""Issue #16: haproxy's request rules run in two passes (services/proxy/haproxy_config.
_fast_path): an admitted request is decided by flags that read each refusal's condition
once, a refused one replays the rules as written. This test holds the two-pass config to
the rules as written (the same config with the first pass cut out), each in its own real
haproxy in front of the same node's squid, map and lists: every request of a matrix of
payment headers, methods, destination forms (absolute, origin-form with Host, CONNECT
authorities, userinfo, IPv6 brackets, trailing dots, numeric hosts, other schemes, long
labels, denied and excepted addresses, squid's own answers; no name squid would look up,
and every denied address a loopback one: a wrong admission by both cannot leave the
machine)
and sources gets the same status, X-LTHN-Status and body from both, and both log the
same lines.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lthn.haproxy import contract
from lthn.haproxy.runtime import HaproxyAdmin
from lthn.ports import free_port
from services.proxy import haproxy_config
from tests.fixtures.common import kill_group, wait_for
from tests.fixtures.firewall import FirewallNode
from tests.fixtures.haproxy_copy import relocated
from tests.fixtures.proxy import ProxyClient

PAID = "1A16161616161601"
UNPAID = "1A16161616161602"
DENIED_SOURCE = "127.0.0.9"
MARKER_HOST = "end-of-matrix.localhost"
MARKER = f"http://{MARKER_HOST}/"     # a refusal, logged: the last line


def one_pass(text: str) -> str:
    """The config with its first pass cut out: the rules as written, in order."""
    start = text.index("    # --- first pass")
    end = text.index("    # --- second pass")
    declared = [line for line in text[start:end].splitlines()
                if line.startswith("    acl ") and " refused" not in line]
    return text[:start] + "\n".join(declared) + "\n" + text[end:]


class Haproxy:
    """A haproxy of its own on `text`, logging to a UDP socket of the test's."""

    def __init__(self, fw: FirewallNode, text: str, directory: Path) -> None:
        directory.mkdir()
        self.log = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.log.bind(("127.0.0.1", 0))
        self.port = free_port()
        cfg = directory / "haproxy.cfg"
        cfg.write_text(relocated(text, self.port, directory / "admin.sock",
                                 self.log.getsockname()[1]))
        self.out = directory / "haproxy.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.client = lambda source="127.0.0.1": ProxyClient("127.0.0.1", self.port, fw.ca,
                                                             source=source)
        # the map file holds the authids active when the node's haproxy started; authd
        # added the paid one to that haproxy at runtime: the same here
        admin = HaproxyAdmin(directory / "admin.sock")
        try:
            wait_for(lambda: admin.command(f"add map {contract.authid_map_path(fw.config)} "
                                           f"{PAID} {PAID[:2]}") is not None, timeout=20,
                     what=f"haproxy's admin socket for {cfg}")
            wait_for(lambda: self._answers(fw), timeout=20, what=f"haproxy on {cfg}")
        except BaseException:
            self.stop()
            raise

    def _answers(self, fw: FirewallNode) -> bool:
        assert self.proc.poll() is None, self.out.read_text()
        try:
            return self.client().request("GET", fw.origin_url(), PAID).status == 200
        except OSError:
            return False

    def lines(self) -> list[str]:
        """Every log line up to the marker's, the client port left out."""
        self.log.settimeout(10)
        lines = []
        while not lines or not lines[-1].endswith(f" {MARKER_HOST}"):
            fields = self.log.recv(4096).decode().rstrip("\n").split(" ")
            lines.append(" ".join(fields[:2] + fields[3:]))
        return lines

    def stop(self) -> None:
        kill_group(self.proc)
        self.log.close()


@pytest.fixture(scope="module")
def fw(firewall_node) -> FirewallNode:
    node = firewall_node()
    node.pay(PAID)
    node.wait_status("127.0.0.1", "200", authid=PAID)
    node.write_list("src_deny.ips", f"{DENIED_SOURCE}\n")
    node.wait_status(DENIED_SOURCE, "DENY_SRC_IP")
    return node


@pytest.fixture(scope="module")
def both(fw, tmp_path_factory) -> Iterator[tuple[Haproxy, Haproxy]]:
    text = haproxy_config.render(fw.config)
    directory = tmp_path_factory.mktemp("two-passes")
    two = Haproxy(fw, text, directory / "two")
    try:
        written = Haproxy(fw, one_pass(text), directory / "one")
    except BaseException:
        two.stop()
        raise
    yield two, written
    two.stop()
    written.stop()


def matrix(fw: FirewallNode) -> list[tuple[str, str, str, str | None, list]]:
    """(source, method, target, authid, extra headers)."""
    port = fw.origin.port
    origin = fw.origin_url("/page")
    host = [("Host", f"127.0.0.1:{port}")]
    long_label = "a" * 64
    rows = [
        ("127.0.0.1", "GET", origin, PAID, []),
        ("127.0.0.1", "HEAD", origin, PAID, []),
        ("127.0.0.1", "POST", origin, PAID, [("Content-Length", "0")]),
        ("127.0.0.1", "GET", origin, PAID.lower(), []),
        ("127.0.0.1", "GET", origin, None, []),
        ("127.0.0.1", "GET", origin, UNPAID, []),
        ("127.0.0.1", "GET", origin, "not-hex-at-all!!", []),
        ("127.0.0.1", "GET", origin, PAID + "00", []),
        ("127.0.0.1", "GET", origin, None, [("X-ITNS-PaymentID", PAID)]),
        ("127.0.0.1", "GET", origin, PAID, [("X-ITNS-PaymentID", PAID)]),
        ("127.0.0.1", "GET", origin, PAID, [("X-ITNS-PaymentID", UNPAID)]),
        ("127.0.0.1", "GET", origin, PAID, [("X-LTHN-PaymentID", PAID)]),
        ("127.0.0.1", "GET", origin, PAID, [("X-LTHN-PaymentID", UNPAID)]),
        ("127.0.0.1", "GET", origin, PAID, [("X-LTHN-PaymentID", f"{PAID}, {PAID}")]),
        ("127.0.0.1", "GET", origin, PAID, [("Cache-Control", "no-cache")]),
        ("127.0.0.1", "GET", origin, PAID, [("Cache-Control", "no-cache"),
                                            ("Cache-Control", "max-age=0")]),
        ("127.0.0.1", "GET", origin, PAID, [("X-LTHN-Other", "x")]),
        ("127.0.0.1", "BREW", origin, PAID, []),
        ("127.0.0.1", "GET", "/page", PAID, host),
        ("127.0.0.1", "GET", "/page", PAID, [("Host", "LOCALHOST.")]),
        ("127.0.0.1", "GET", "/squid-internal-periodic/x", PAID, host),
        ("127.0.0.1", "GET", f"http://user:pw@127.0.0.1:{port}/page", PAID, []),
        ("127.0.0.1", "GET", f"http://evil@127.0.0.2@127.0.0.1:{port}/a@b", PAID, []),
        ("127.0.0.1", "GET", f"HTTP://127.0.0.1:{port}/page", PAID, []),
        ("127.0.0.1", "GET", f"https://127.0.0.1:{port}/page", PAID, []),
        ("127.0.0.1", "GET", "ftp://127.0.0.1/file", PAID, []),
        ("127.0.0.1", "GET", "cache_object://127.0.0.1/info", PAID, []),
        ("127.0.0.1", "GET", "http://127.0.0.5/", PAID, []),
        ("127.0.0.1", "GET", "http://[::1]/", PAID, []),
        ("127.0.0.1", "GET", f"http://[::1]:{port}/", PAID, []),
        ("127.0.0.1", "GET", "http://[::ffff:127.0.0.5]/", PAID, []),
        ("127.0.0.1", "GET", "http://127.1/", PAID, []),
        ("127.0.0.1", "GET", "http://0x7f.1/", PAID, []),
        ("127.0.0.1", "GET", "http://2130706433/", PAID, []),
        ("127.0.0.1", "GET", "http://LOCALHOST./", PAID, []),
        ("127.0.0.1", "GET", "http://www.localhost/", PAID, []),
        ("127.0.0.1", "GET", f"http://{long_label}.invalid/", PAID, []),
        ("127.0.0.1", "GET", f"http://{'b' * 63}.invalid:22/", PAID, []),
        ("127.0.0.1", "GET", f"http://{'c.' * 130}invalid/", PAID, []),
        ("127.0.0.1", "GET", "http://name.invalid:22/", PAID, []),
        ("127.0.0.1", "CONNECT", "127.0.0.5:443", PAID, []),
        ("127.0.0.1", "CONNECT", "name.invalid:80", PAID, []),
        ("127.0.0.1", "CONNECT", "user@127.0.0.5:443", PAID, []),
        ("127.0.0.1", "CONNECT", "[::ffff:127.0.0.5]:443", PAID, []),
        ("127.0.0.1", "GET", "http://_remote_/status", PAID, []),
        ("127.0.0.1", "GET", "http://remote.lethean/status", UNPAID, []),
        ("127.0.0.1", "GET", "http://_remote_/status", None, []),
        ("127.0.0.1", "BREW", "http://_remote_/status", PAID, []),
        (DENIED_SOURCE, "GET", origin, PAID, []),
        (DENIED_SOURCE, "GET", "http://_remote_/status", PAID, []),
    ]
    return rows + [("127.0.0.1", "GET", MARKER, PAID, [])]


def test_issue_16_two_passes_answer_and_log_as_the_rules_as_written(fw, both):
    two, written = both
    seen = []
    for source, method, target, authid, headers in matrix(fw):
        answers = []
        for haproxy in (two, written):
            try:
                a = haproxy.client(source).request(method, target, authid, headers)
            except ConnectionError:    # a request haproxy cannot parse: closed, logged
                answers.append((0, "closed", None))
                continue
            answers.append((a.status, a.lthn_status, a.body if "/status" not in target
                            else None))
        assert answers[0] == answers[1], (source, method, target, authid, headers)
        seen.append(answers[0][1] or str(answers[0][0]))
    # the matrix reaches every kind of answer it is meant to
    assert {"200", "NO_PAYMENT", "BAD_AUTHID", "BAD_METHOD", "BAD_HOST", "DENY_DESTINATION",
            "DENY_PORT", "DENY_SRC_IP"} <= set(seen), seen
    assert two.lines() == written.lines()
