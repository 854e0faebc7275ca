"""The generated haproxy.cfg and squid.conf: what they say, and that the real haproxy and
squid accept them (`haproxy -c`, `squid -k parse`), through lthn-haproxy/lthn-squid -t."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lthn.config import parse
from services.proxy import destinations, haproxy_config, squid_config

PROVIDER = "ab" * 32


def config(tmp_path: Path, **proxy):
    data = {"provider": {"id": PROVIDER}, "state_dir": str(tmp_path / "state"),
            "services": [{"id": "1A", "name": "Proxy", "type": "proxy", "cost": "0.001"}],
            "proxy": proxy}
    return parse(data, "node.yaml"), data


def write_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


VARIANTS = {
    "defaults": {},
    "everything": {"bind": "127.0.0.1", "port": 18443, "connect_ports": [443, 8443],
                   "deny_networks": ["198.51.100.0/24", "2001:db8:1::/48"],
                   "deny_domains": ["Blocked.Example", ".other.example"],
                   "allow_destinations": ["127.0.0.1:8080", "10.1.0.0/16:80",
                                          "origin.test:443", "[::1]:8081"],
                   "hosts_file": "/etc/hosts", "dns_servers": ["127.0.0.1"]},
    "ipv6-bind-and-other-backend": {"bind": "::", "backend": "127.0.0.1:3129"},
}


@pytest.mark.parametrize("name", VARIANTS)
def test_lthn_haproxy_writes_a_config_haproxy_accepts(tmp_path, name):
    _, data = config(tmp_path, **VARIANTS[name])
    result = subprocess.run([tool("lthn-haproxy"), "-c", str(write_config(tmp_path, data)),
                             "-t"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "state" / "run"
    assert "configuration is valid" in result.stdout
    assert (run / "authids.map").read_text() == ""   # fresh ledger: nobody is active
    check = subprocess.run(["haproxy", "-c", "-f", str(run / "haproxy.cfg")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "WARNING" not in check.stdout + check.stderr, check.stderr
    assert oct(os.stat(run).st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("name", VARIANTS)
def test_lthn_squid_writes_a_config_squid_accepts(tmp_path, name):
    _, data = config(tmp_path, **VARIANTS[name])
    result = subprocess.run([tool("lthn-squid"), "-c", str(write_config(tmp_path, data)), "-t"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    if VARIANTS[name].get("backend", "squid") != "squid":
        assert "not needed" in result.stdout
        return
    parsed = subprocess.run(["squid", "-k", "parse", "-f",
                             str(tmp_path / "state" / "run" / "squid.conf")],
                            capture_output=True, text=True, timeout=60)
    problems = [x for x in (parsed.stdout + parsed.stderr).splitlines()
                if ("WARNING" in x or "ERROR" in x or "FATAL" in x) and "Via" not in x]
    assert parsed.returncode == 0 and problems == []


def test_config_mistakes_exit_2_with_error_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"provider": {"id": PROVIDER},
                                   "state_dir": str(tmp_path / "s"), "proxy": {"prot": 1}}))
    for name in ("lthn-haproxy", "lthn-squid"):
        result = subprocess.run([tool(name), "-c", str(bad), "-t"], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 2
        assert result.stderr.startswith(
            f'Error: {bad}: proxy.prot: unknown key (did you mean "port"?)')


def test_unreadable_hosts_file_is_a_config_error_for_squid(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("squid only changes user when started as root")
    hosts = tmp_path / "private" / "hosts"
    hosts.parent.mkdir()
    hosts.write_text("127.0.0.1 localhost\n")
    os.chmod(hosts.parent, 0o700)
    _, data = config(tmp_path, hosts_file=str(hosts))
    result = subprocess.run([tool("lthn-squid"), "-c", str(write_config(tmp_path, data)), "-t"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"proxy.hosts_file: squid runs as user proxy and cannot read {hosts}" in result.stderr


def test_haproxy_config_follows_the_design_contracts(tmp_path):
    cfg, _ = config(tmp_path, log_port=9000, status_port=9100, squid_port=9200, port=9300,
                    bind="127.0.0.1")
    text = haproxy_config.render(cfg)
    assert f"stats socket {cfg.haproxy_admin_socket} mode 600 level admin" in text
    assert "log 127.0.0.1:9000 len 4096 format raw local0" in text
    assert "log 127.0.0.1:9001" not in text     # sessiond reads no log (#14, #16)
    assert "option logasap" in text
    assert ('log-format "LTHN1 %ci %cp %[var(txn.authid)] %[var(txn.reason)] %ST %HM '
            '%[var(txn.dest)]"') in text
    assert ("stick-table type string len 16 size 1m expire 10s "
            "store conn_cur,gpt0,bytes_in_cnt,bytes_out_cnt,http_req_cnt") in text
    assert "stick-table type string len 64 size 1m expire 10s store conn_cur" in text
    assert "http-request track-sc0 var(txn.authid) table authid_sessions" in text
    assert ('tcp-request session set-var-fmt(sess.lthn_client) "/%[src]:%[src_port]"'
            in text)
    assert ("http-request set-var(txn.lthn_stream) var(txn.authid),concat(,sess.lthn_client)"
            in text)
    assert "http-request track-sc1 var(txn.lthn_stream) table authid_streams" in text
    # admitted requests are not logged; a refusal on the response side is (#16)
    # (the first pass is silent from its start, the second logs again from its start and
    # is silent again only after every refusal)
    front = text[:text.index("\nbackend ")]
    silent = front.rindex("http-request set-log-level silent\n")
    assert silent > front.rindex("!paid") and silent > front.rindex("str(DENY_DESTINATION)")
    assert front.index("http-request set-log-level silent\n") < front.index("# --- second")
    assert text.index("# --- second pass") < text.index("http-request set-log-level info\n") \
        < text.index("str(BANNED)")
    assert "http-response set-log-level info if squid_deny_destination" in text
    assert f"map({tmp_path}/state/run/authids.map)" in text
    assert "server upstream 127.0.0.1:9200" in text and "server authd 127.0.0.1:9100" in text
    assert f"bind 127.0.0.1:9300 ssl crt {cfg.certificate_path}" in text
    assert "ssl-min-ver TLSv1.2" in text and "timeout tunnel" in text
    # the rules as written (second pass): headers go only after every check; the status
    # request is let through before the paid one
    second = text[text.index("# --- second pass"):]
    assert second.index("del-header x-lthn- -m beg") > second.index("str(DENY_DESTINATION)")
    assert second.index("del-header x-itns- -m beg") > second.index("str(DENY_DESTINATION)")
    assert second.index("http-request allow if status_host status_path") < second.index("!paid")
    # the first pass (#16) admits only a request no refusal applies to: every request
    # refusal's condition is in one of its two flags, the status request's before the
    # paid check, and everything it does to an admitted request waits for both
    first = text[text.index("# --- first pass"):text.index("# --- second pass")]
    flags = {name: first.split(f"set-var(txn.{var}) bool(true) if ", 1)[1]
             .split("\n", 1)[0].split(" || ")
             for name, var in (("early", "refused_early"), ("late", "refused"))}
    assert flags["late"][0] == "refused_early"   # the one flag admission reads
    answers = [line.rsplit(" if ", 1)[1] for line in second.splitlines()
               if line.lstrip().startswith("http-request return ")]
    status_at = second.index("http-request allow if status_host status_path")
    for answer in answers:
        at = second.index(f" if {answer}\n")
        assert set(answer.split(" || ")) <= set(flags["early" if at < status_at else "late"])
    assert "!paid" in flags["late"] and "!standard_method" in flags["early"]
    admitting = first[first.index("set-var(txn.refused)"):
                      first.index("http-request allow if !refused")]
    rules = [line for line in admitting.splitlines() if line.lstrip().startswith("http-request")]
    assert len(rules) >= 8 and all("!refused" in line for line in rules[1:])
    assert "http-request allow if status_host status_path !refused_early" in first
    # the node's own addresses: a file lthn-haproxy keeps current, never a fixed list
    own = destinations.own_addresses_path(cfg, "haproxy")
    assert f"acl dest_own_ip var(txn.dhost) -m ip -f {own}" in text
    # master-worker reloads: old workers end within hard-stop-after (issue #15)
    assert f"hard-stop-after {haproxy_config.OLD_WORKER_SECONDS}s" in text


def test_destination_lists_cover_issue_10(tmp_path):
    cfg, _ = config(tmp_path, deny_networks=["127.0.0.5/32", "192.88.99.0/24"])
    denied = destinations.denied_networks(cfg)
    for net in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "224.0.0.0/3",
                "ff00::/8", "0.0.0.0/8", "::/96", "192.88.99.0/24", "64:ff9b::c058:6300/120"):
        assert net in denied
    assert "127.0.0.5/32" not in denied  # inside 127.0.0.0/8: squid would warn and ignore
    assert not any(n.startswith("::ffff:0:0/96") or n == "::/0" for n in denied)
    assert destinations.denied_domains(cfg) == ["localhost"]


def test_squid_config_orders_exceptions_before_denies(tmp_path):
    cfg, _ = config(tmp_path, allow_destinations=["127.0.0.1:8080", "origin.test:8443"],
                    deny_domains=["blocked.test"], connect_ports=[443, 563])
    text = squid_config.render(cfg, user="proxy")
    lines = text.splitlines()
    order = [i for i, x in enumerate(lines) if x.startswith("http_access")]
    rules = [lines[i] for i in order]
    assert rules[:2] == ["http_access deny manager", "http_access deny lthn_internal"]
    # the operator's deny files (#17) win over the exceptions
    assert rules[2:4] == ["http_access deny lthn_denied_file_domain",
                          "http_access deny lthn_denied_file_dst"]
    assert rules[4:6] == ["http_access allow lthn_exception_0_host lthn_exception_0_port",
                          "http_access allow lthn_exception_1_host lthn_exception_1_port"]
    assert rules[6:8] == ["http_access deny CONNECT !lthn_connect_ports",
                          "http_access deny !CONNECT !lthn_http_ports"]
    assert rules[-3:] == ["http_access deny lthn_denied_dst", "http_access deny lthn_own_dst",
                          "http_access allow all"]
    assert "acl lthn_exception_1_host dstdomain -n origin.test" in text
    assert "acl lthn_denied_domain dstdomain -n .blocked.test .localhost" in text
    assert "acl lthn_connect_ports port 443 563" in text
    assert "acl lthn_http_ports port 80 443 1025-65535" in text
    assert f'acl lthn_own_dst dst "{destinations.own_addresses_path(cfg, "squid")}"' in text
    assert f"http_port 127.0.0.1:{cfg.proxy.squid_port}" in text
    assert "cache_effective_user proxy" in text and "cache deny all" in text
    assert ("deny_info 302:http://refused.lthn.invalid/DENY_DESTINATION lthn_denied_dst "
            "lthn_own_dst") in text
    assert ("deny_info 302:http://refused.lthn.invalid/DENY_PORT lthn_connect_ports "
            "lthn_http_ports") in text
    # no error pages of ours: squid's user need not reach the state dir (issue #15)
    assert "error_directory" not in text


def test_lthn_haproxy_writes_the_active_authids_from_the_ledger(tmp_path):
    """A (re)started haproxy starts with the ledger's list, never a stale one (issue #4)."""
    from lthn import access
    from lthn.ledger import Ledger
    cfg, data = config(tmp_path)
    (tmp_path / "state").mkdir()
    ledger = Ledger.open(cfg.ledger_path)
    rules = access.rules_for(cfg, cfg.services[0])
    with ledger.transaction() as tx:
        for authid, credit in (("1A000000000000AA", 10**12), ("1A000000000000BB", 1)):
            tx.ensure_authid(authid, "1A")
            access.reevaluate(tx, tx.credit(authid, credit), rules, "test")
    ledger.close()
    run = tmp_path / "state" / "run"
    run.mkdir()
    (run / "authids.map").write_text("1A000000000000CC 1A\n")   # stale, from before
    result = subprocess.run([tool("lthn-haproxy"), "-c", str(write_config(tmp_path, data)),
                             "-t"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (run / "authids.map").read_text() == "1A000000000000AA 1A\n"


def test_lthn_squid_idles_when_another_proxy_is_the_backend(tmp_path):
    """supervisord keeps seeing it RUNNING; SIGTERM ends it cleanly."""
    import signal
    _, data = config(tmp_path, backend="127.0.0.1:3129")
    proc = subprocess.Popen([tool("lthn-squid"), "-c", str(write_config(tmp_path, data))],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "not needed, proxy.backend is 127.0.0.1:3129" in proc.stdout.readline()
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)  # still running a second after its start
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_haproxy_runs_one_thread_on_two_cpus_or_fewer(tmp_path, monkeypatch):
    """The variant bench_proxy.py found faster on a 2-CPU machine (#16); more CPUs keep
    haproxy's default of a thread per CPU."""
    cfg, _ = config(tmp_path)
    for cpus, expected in ((1, True), (2, True), (4, False)):
        monkeypatch.setattr(haproxy_config.os, "cpu_count", lambda n=cpus: n)
        assert ("    nbthread 1\n" in haproxy_config.render(cfg)) is expected


def test_haproxy_retries_the_nodes_own_squid_often_and_another_proxy_as_haproxy_does(
        tmp_path):
    """The node's squid closes its port while it reconfigures (tests/e2e/
    test_issue_17_lists.py has a request wait for it); another proxy, maybe across a
    network, keeps haproxy's defaults (a connect may take long there)."""
    def upstream(**proxy) -> str:
        text = haproxy_config.render(config(tmp_path, **proxy)[0])
        return text[text.index("\nbackend lthn_upstream"):].split("\n\n")[0]

    own = upstream()
    assert "    timeout connect 100ms\n" in own and "    retries 100\n" in own
    other = upstream(backend="192.0.2.7:3128")
    assert "timeout connect" not in other and "retries" not in other
    assert "    server upstream 192.0.2.7:3128" in other
