"""Issue 15, operating it: a changed config is applied to the running node without a
restart (`lthn-node reload -c CONFIG`, or SIGHUP to `lthn-node run`): haproxy reloads
without refusing a connection while requests keep coming, squid reconfigures, the
daemons read the config again; a config with a mistake changes nothing.

One node for the module; every request goes to the loopback origin.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from lthn.node.supervision import tool
from tests.fixtures.common import wait_for
from tests.fixtures.dns import NxdomainResolver


@pytest.fixture(scope="module")
def resolver() -> Iterator[NxdomainResolver]:
    dns = NxdomainResolver()   # names not yet denied fail at once, never wait 30 s
    yield dns
    dns.close()


@pytest.fixture(scope="module")
def pn(proxy_node_factory, resolver):
    return proxy_node_factory({"proxy": {"dns_servers": [resolver.host]}})


@pytest.fixture(scope="module")
def paid(pn):
    return pn.pay_and_wait(timeout=5.0)


class Requests:
    """Requests through the node, one new connection each, until stopped."""

    def __init__(self, pn, authid: str) -> None:
        self.pn, self.authid = pn, authid
        self.answers: list[int] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        url = self.pn.origin.url("/during-reload")
        while not self.stop.is_set():
            try:
                answer = self.pn.client.request("GET", url, authid=self.authid)
                self.answers.append(answer.status)
                if answer.status != 200:
                    self.failures.append(f"{time.strftime('%X')} {answer.status} "
                                         f"{answer.lthn_status}")
            except OSError as exc:
                self.failures.append(f"{time.strftime('%X')} {exc!r}")

    def __enter__(self) -> Requests:
        self.thread.start()
        wait_for(lambda: len(self.answers) >= 5, timeout=10, what="requests flowing")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture
def config_restored(pn) -> Iterator[dict]:
    """The node's config as a dict to change; written back as it was afterwards."""
    import copy
    before = copy.deepcopy(pn.node.config)
    yield pn.node.config
    pn.node.config = before
    pn.node.write_config()


def reload(pn) -> subprocess.CompletedProcess:
    return subprocess.run([tool("lthn-node"), "reload", "-c", str(pn.node.config_path)],
                          capture_output=True, text=True, timeout=120, env=pn.node.env)


def log_sizes(pn) -> dict[str, int]:
    return {p: len(pn.node.log_text(p)) for p in ("haproxy", "squid", "authd", "paymentd")}


def wait_reloaded(pn, since: dict[str, int]) -> None:
    # generous deadlines: a reload forks haproxy's master anew on a machine that may be busy
    pn.node.wait_log("haproxy", "haproxy: reloaded (worker pid", timeout=40,
                     after=since["haproxy"])
    pn.node.wait_log("squid", "squid: reconfiguring with the new config", timeout=40,
                     after=since["squid"])
    for daemon in ("authd", "paymentd"):
        pn.node.wait_log(daemon, f"{daemon}: config re-read", timeout=40, after=since[daemon])


def _refused_domain(pn, paid, host: str) -> bool:
    return pn.client.request("GET", f"http://{host}/", authid=paid).lthn_status \
        == "DENY_DESTINATION"


@pytest.mark.parametrize("how", ["lthn-node reload", "SIGHUP to lthn-node run"])
def test_issue_15_reload_applies_a_change_and_refuses_no_request(pn, paid, config_restored,
                                                                  how):
    domain = f"{how.split()[0].lower().replace('-', '')}.reload.invalid"
    assert not _refused_domain(pn, paid, "www." + domain)    # the control: not yet refused
    config_restored["proxy"]["deny_domains"] = [domain]
    pn.node.write_config()
    since = log_sizes(pn)
    with Requests(pn, paid) as requests:
        if how == "lthn-node reload":
            result = reload(pn)
            assert result.returncode == 0, result.stderr
            assert "reload: config checked; asked to reload: " in result.stdout
            assert "squid, haproxy" in result.stdout
        else:
            assert pn.node.proc is not None
            pn.node.proc.send_signal(signal.SIGHUP)
        wait_reloaded(pn, since)
        seen = len(requests.answers)
        wait_for(lambda: len(requests.answers) >= seen + 20, timeout=20,
                 what="requests served by the new haproxy worker")
    assert requests.failures == [], (requests.failures, pn.node.diagnostics())
    assert len(requests.answers) >= 30
    assert _refused_domain(pn, paid, "www." + domain)


def test_issue_15_a_config_with_a_mistake_changes_nothing(pn, paid, config_restored):
    since = log_sizes(pn)
    config_restored["proxy"]["prot"] = 1
    pn.node.write_config()
    result = reload(pn)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith(
        f'Error: {pn.node.config_path}: proxy.prot: unknown key (did you mean "port"?)')
    del config_restored["proxy"]["prot"]
    # valid for the schema, refused by haproxy's own check: a certificate that is not there
    config_restored["proxy"]["certificate"] = "/nonexistent/provider.pem"
    pn.node.write_config()
    result = reload(pn)
    assert result.returncode == 2
    assert "proxy.certificate: /nonexistent/provider.pem does not exist" in result.stderr
    assert "nothing was reloaded" in result.stderr
    time.sleep(1.0)   # what a reload would have logged by now, if one had been asked
    assert "reloaded" not in pn.node.log_text("haproxy")[since["haproxy"]:]
    assert pn.admitted(paid)


def test_issue_15_reload_names_what_needs_a_restart(pn, paid, config_restored):
    config_restored["sessions"] = {"tick": 2.0}
    pn.node.write_config()
    result = reload(pn)
    assert result.returncode == 0, result.stderr
    assert "reload: sessions.tick changed, which a reload cannot apply: restart sessiond" \
        in result.stdout
