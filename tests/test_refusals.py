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
        assert refusal.doc and refusal.http_status in (403, 429, 503)


def test_lethean_clients_get_lethean_statuses():
    """notes/lethean-protocol.md: what a deployed client acts on."""
    assert Refusal.NO_PAYMENT.http_status == 403     # keeps polling
    assert Refusal.BAD_ID.http_status == 503         # gives up
    assert Refusal.OVERLIMIT.http_status == 429


def test_not_yet_paid_never_bans_and_probes_do():
    assert Refusal.NO_PAYMENT.kind is RefusalKind.NOT_PAID
    assert not RefusalKind.NOT_PAID.may_ban
    assert not Refusal.BANNED.kind.may_ban and not Refusal.CONNECTION_ERROR.kind.may_ban
    assert Refusal.BAD_AUTHID.kind.may_ban and Refusal.DENY_DESTINATION.kind.may_ban
    assert Refusal.OVERLIMIT.kind.may_ban


def test_lookup_by_code():
    assert Refusal.of("DENY_DESTINATION") is Refusal.DENY_DESTINATION
    assert Refusal.of("NOT_A_CODE") is None and Refusal.of("") is None


@pytest.fixture
def cfg(tmp_path):
    return parse({"provider": {"id": PROVIDER}, "state_dir": str(tmp_path),
                  "services": [{"id": "1A", "name": "P", "type": "proxy", "cost": "0.001"}],
                  "proxy": {"deny_domains": ["blocked.example"]}}, "node.yaml")


def test_haproxy_answers_every_refusal_as_the_catalogue_says(cfg):
    text = haproxy_config.render(cfg, ["192.0.2.10/32"])
    answers = re.findall(r'return status (\d+) content-type text/plain string "([^"]*)\\n" '
                         r"hdr X-LTHN-Status (\S+) if", text)
    assert {code for _, _, code in answers} == {
        "BAD_METHOD", "NO_PAYMENT", "BAD_AUTHID", "DENY_DESTINATION", "DENY_SRC_IP",
        "OVERLIMIT", "BANNED"}
    for status, body, code in answers:
        refusal = Refusal.of(code)
        assert refusal is not None and (int(status), body) == (refusal.http_status, refusal.text)
    # the reason logged for authd is the code answered, rule by rule
    logged = re.findall(r"set-var\(txn\.reason\) str\((\S+)\) if (.*)", text)
    sent = re.findall(r"hdr X-LTHN-Status (\S+) if (.*)", text)
    assert logged == sent


def test_squid_page_and_haproxy_agree_on_the_destination_refusal(cfg):
    page = squid_config.error_page_text(Refusal.DENY_DESTINATION)
    assert f"<p>{Refusal.DENY_DESTINATION.text}</p>" in page
    assert squid_config.DENY_PAGE == "ERR_LTHN_DENY_DESTINATION"
    text = haproxy_config.render(cfg, [])
    assert (f"res.hdr(x-squid-error) -m beg {squid_config.DENY_PAGE} "
            f"{squid_config.STANDARD_DENY_PAGE}") in text


def test_a_code_unknown_to_the_catalogue_is_still_an_event():
    """A refusal is never lost: an older or newer haproxy config may use other codes."""
    line = parse_log_line(b"LTHN1 127.0.0.2 4000 - SOMETHING_NEW 403 GET origin.test:80\n")
    event = refusal_event(line)
    assert event is not None and (event.reason, event.source) == ("SOMETHING_NEW", "127.0.0.2")
