"""The refusal catalogue (lthn/refusals.py): its rows are sane, Lethean's codes keep
Lethean's statuses, and what haproxy and squid are told to answer is what it says."""

from __future__ import annotations

import re
import string

import pytest

from lthn.config import parse
from lthn.haproxy.request_log import parse as parse_log_line
from lthn.refusals import Refusal, RefusalKind
from services.authd.refusal_events import refusal_event
from services.proxy import haproxy_config, squid_config

PROVIDER = "ab" * 32


def test_codes_are_identifiers_and_texts_are_one_safe_line():
    for refusal in Refusal:
        assert re.fullmatch(r"[A-Z][A-Z_]+", refusal.code)
        assert refusal.body == refusal.text.encode() + b"\n"
        # the text goes into haproxy's double-quoted `string "..."` (where \ escapes and
        # $ expands variables) and into squid's HTML page
        assert set(refusal.text) <= set(string.printable) - set('"\\$\r\n\t\x0b\x0c')
        assert refusal.text[0].isupper() and refusal.text.endswith(".")
        assert refusal.doc
        assert refusal.http_status in (0, 400, 403, 429, 500, 502, 503, 504)
    # no HTTP answer is possible only for a failed TLS handshake
    assert [r for r in Refusal if r.http_status == 0] == [Refusal.BAD_TLS]


def test_lethean_clients_get_lethean_statuses():
    """notes/lethean-protocol.md: what a deployed client acts on."""
    assert Refusal.NO_PAYMENT.http_status == 403     # keeps polling
    assert Refusal.BAD_ID.http_status == 503         # gives up
    assert Refusal.OVERLIMIT.http_status == 429


def test_not_yet_paid_never_bans_and_probes_do():
    assert Refusal.NO_PAYMENT.kind is RefusalKind.NOT_PAID
    assert not RefusalKind.NOT_PAID.may_ban
    assert not Refusal.BANNED.kind.may_ban and not Refusal.CONNECTION_ERROR.kind.may_ban
    assert not Refusal.DENY_SRC_IP.kind.may_ban     # a refused source, VPN logins too (#17)
    assert Refusal.BAD_AUTHID.kind.may_ban and Refusal.DENY_DESTINATION.kind.may_ban
    assert Refusal.OVERLIMIT.kind.may_ban
    # a destination that fails is not the client's attack, nor the node's fault its own
    for refusal in (Refusal.DNS_FAILURE, Refusal.CONNECT_FAILED, Refusal.DESTINATION_TIMEOUT,
                    Refusal.DESTINATION_ERROR, Refusal.UNAVAILABLE, Refusal.PROXY_ERROR):
        assert not refusal.kind.may_ban, refusal
    for refusal in (Refusal.DENY_PORT, Refusal.BAD_HOST, Refusal.BAD_REQUEST, Refusal.BAD_TLS):
        assert refusal.kind.may_ban, refusal


def test_lookup_by_code():
    assert Refusal.of("DENY_DESTINATION") is Refusal.DENY_DESTINATION
    assert Refusal.of("NOT_A_CODE") is None and Refusal.of("") is None


@pytest.fixture
def cfg(tmp_path):
    return parse({"provider": {"id": PROVIDER}, "state_dir": str(tmp_path),
                  "services": [{"id": "1A", "name": "P", "type": "proxy", "cost": "0.001"}],
                  "proxy": {"deny_domains": ["blocked.example"]}}, "node.yaml")


def test_haproxy_answers_every_refusal_as_the_catalogue_says(cfg):
    text = haproxy_config.render(cfg)
    answers = re.findall(r'return status (\d+) content-type text/plain string "([^"]*)\\n" '
                         r"hdr X-LTHN-Status (\S+) if", text)
    assert {code for _, _, code in answers} == {
        "BAD_METHOD", "NO_PAYMENT", "BAD_AUTHID", "DENY_DESTINATION", "DENY_PORT", "BAD_HOST",
        "DNS_FAILURE", "CONNECT_FAILED", "DESTINATION_TIMEOUT", "DESTINATION_ERROR",
        "BAD_REQUEST", "UNAVAILABLE", "PROXY_ERROR", "DENY_SRC_IP", "OVERLIMIT", "BANNED"}
    for status, body, code in answers:
        refusal = Refusal.of(code)
        assert refusal is not None and (int(status), body) == (refusal.http_status, refusal.text)
    # the reason logged for authd is the code answered, rule by rule
    logged = re.findall(r"http-request set-var\(txn\.reason\) str\((\S+)\) if (.*)", text) + \
        re.findall(r"http-response set-var\(txn\.reason\) str\((\S+)\) if (.*)", text)
    sent = re.findall(r"http-request return .* hdr X-LTHN-Status (\S+) if (.*)", text) + \
        re.findall(r"http-response return .* hdr X-LTHN-Status (\S+) if (.*)", text)
    assert logged == sent


def test_haproxy_answers_what_haproxy_itself_fails_with_as_the_catalogue_says(cfg):
    text = haproxy_config.render(cfg)
    errors = re.findall(r'http-error status (\d+) content-type text/plain string "([^"]*)\\n" '
                        r"hdr X-LTHN-Status (\S+)", text)
    assert [int(s) for s, _, _ in errors] == [500, 502, 503, 504]
    for status, body, code in errors:
        refusal = Refusal.of(code)
        assert refusal is not None and body == refusal.text
        assert refusal.http_status in (int(status), 500)   # PROXY_ERROR answers 502 too


def test_squid_markers_and_haproxy_agree(cfg):
    """Every marker squid sets (its deny_info redirects, its error names) is answered by
    haproxy with the row squid_config.py maps it to; anything else squid makes is
    PROXY_ERROR."""
    squid = squid_config.render(cfg)
    haproxy = haproxy_config.render(cfg)
    for refusal in (Refusal.DENY_DESTINATION, Refusal.DENY_PORT):
        assert f"deny_info {squid_config.refusal_marker(refusal)} " in squid
    for refusal, markers in squid_config.answers().items():
        name = f"squid_{refusal.code.lower()}"
        assert (f"acl {name} var(txn.answered_by) -m reg {squid_config.marker_regex(markers)}"
                in haproxy)
        assert f"hdr X-LTHN-Status {refusal.code} if {name}" in haproxy
    assert "hdr X-LTHN-Status PROXY_ERROR if squid_made" in haproxy


@pytest.mark.parametrize("marker,code", [
    ("302:http://refused.lthn.invalid/DENY_PORT HIER_NONE", "DENY_PORT"),
    ("ERR_CONNECT_FAIL HIER_DIRECT", "CONNECT_FAILED"),
    ("ERR_CONNECT_FAIL 111", "CONNECT_FAILED"),          # X-Squid-Error, no mark
    ("ERR_READ_ERROR HIER_NONE", "DNS_FAILURE"),        # squid 5.7's DNS failure
    ("ERR_READ_ERROR HIER_DIRECT", "DESTINATION_ERROR"),
    ("ERR_DNS_FAIL", "DNS_FAILURE"),
    ("ERR_INVALID_URL 0", "BAD_REQUEST"),
    ("ERR_CONNECT_FAILURE_NOT_A_CODE HIER_NONE", None),
    ("- HIER_DIRECT", None),
])
def test_squid_markers_map_in_order(marker, code):
    """The first refusal whose regex matches is the one haproxy answers (rule order)."""
    def pcre(markers: list[str]) -> str:   # POSIX classes, as haproxy's PCRE2 reads them
        return squid_config.marker_regex(markers).replace("[[:space:]]", r"\s")
    found = next((refusal.code for refusal, markers in squid_config.answers().items()
                  if re.search(pcre(markers), marker)), None)
    assert found == code


def test_a_code_unknown_to_the_catalogue_is_still_an_event():
    """A refusal is never lost: an older or newer haproxy config may use other codes."""
    line = parse_log_line(b"LTHN1 127.0.0.2 4000 - SOMETHING_NEW 403 GET origin.test:80\n")
    event = refusal_event(line)
    assert event is not None and (event.reason, event.source) == ("SOMETHING_NEW", "127.0.0.2")
