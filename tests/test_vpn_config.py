"""VPN mode's config (issue #18): what `vpn.enabled: true` needs, the OpenVPN server config
and the nftables table rendered from it (checked by the real `nft -c` in a throwaway
network namespace), and which programs the node runs in VPN mode."""

from __future__ import annotations

import subprocess

import pytest

from lthn import config as config_mod
from lthn import sdp
from lthn.node import supervision
from lthn.schema import ConfigError
from lthn.tls import paths_in
from services.vpn import egress, openvpn_config

PROVIDER = "ab" * 32
VPN_SERVICE = {"id": "2B", "name": "VPN", "type": "vpn", "cost": "0.001"}


def parse(tmp_path, vpn: dict, services: list | None = None, **top):
    data = {"provider": {"id": PROVIDER}, "state_dir": str(tmp_path / "state"),
            "services": [VPN_SERVICE] if services is None else services,
            "vpn": dict({"enabled": True}, **vpn), **top}
    return config_mod.parse(data, "node.yaml")


@pytest.mark.parametrize("vpn,services,state,reason", [
    ({}, [{"id": "1A", "name": "P", "type": "proxy", "cost": "1"}], None,
     "vpn.enabled: no service has type vpn, so nobody could log in; add one to services"),
    ({"network": "10.8.0.1/24"}, None, None,
     'vpn.network: must be an IPv4 network in CIDR form, like "10.8.0.0/24" '
     '(got "10.8.0.1/24")'),
    ({"network": "10.8.0.0/30"}, None, None, 'vpn.network: must be /29 or larger '
     '(got "10.8.0.0/30")'),
    ({"network6": "fd00::/48"}, None, None,
     "vpn.network6: must be /64 to /112 (OpenVPN's limits) (got \"fd00::/48\")"),
    ({"proto": "sctp"}, None, None, 'vpn.proto: must be one of "udp", "tcp" (got "sctp")'),
    ({"device": "tun 0"}, None, None, "vpn.device: must be an interface name: 1 to 15 "
     "letters, digits, '_', '.' or '-' (got \"tun 0\")"),
    ({"data_ciphers": "AES-256-GCM\nup /bin/sh"}, None, None, 'vpn.data_ciphers: must be '
     'cipher names separated by ":", like "AES-256-GCM:AES-256-CBC" (got "AES-256-GCM\nup '
     '/bin/sh")'),
    ({"dns": ["resolver"]}, None, None, 'vpn.dns: "resolver" is not an IP address '
     '(got a list)'),
    ({"management_socket": "run/ovpn.sock"}, None, None,
     'vpn.management_socket: must be an absolute path (got "run/ovpn.sock")'),
    ({"management_socket": "/" + "x" * 120}, None, None,
     f"vpn.management_socket: /{'x' * 120} is 121 bytes, over the 107 a unix socket path "
     "may have; set a shorter one"),
    ({}, None, "/srv/my state", "state_dir: must not contain spaces, quotes, backslashes "
     "or line breaks in VPN mode (OpenVPN's config file holds it)"),
])
def test_vpn_mistakes_name_the_key(tmp_path, vpn, services, state, reason):
    top = {"state_dir": state} if state else {}
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, vpn, services, **top)
    assert str(caught.value) == f"node.yaml: {reason}"


def test_vpn_off_needs_nothing_and_runs_no_vpn_program(tmp_path):
    config = config_mod.parse({"provider": {"id": PROVIDER}, "state_dir": str(tmp_path)},
                              "node.yaml")
    assert not config.vpn.enabled
    names = [p.name for p in supervision.node_programs(config)]
    assert "vpnd" not in names and "openvpn" not in names and "sessiond" in names
    env = supervision.environment(config, "node.yaml",
                                  base={"LTHN_START_OPENVPN": "true"})
    assert env["LTHN_START_OPENVPN"] == "false" and env["LTHN_START_VPND"] == "false"
    assert env["LTHN_MODE_FILES"] == ""


def test_vpn_on_runs_vpnd_and_openvpn(tmp_path):
    config = parse(tmp_path, {})
    assert {"vpnd", "openvpn"} <= {p.name for p in supervision.node_programs(config)}
    env = supervision.environment(config, "node.yaml", base={}, without=("haproxy",))
    assert env["LTHN_START_OPENVPN"] == env["LTHN_START_VPND"] == "true"
    assert env["LTHN_START_HAPROXY"] == "false"
    assert env["LTHN_MODE_FILES"] == "supervisord-vpn.conf"
    assert config.vpn_management_socket == tmp_path / "state" / "run" / "openvpn.sock"


def test_openvpn_config_lets_original_lethean_clients_in(tmp_path):
    config = parse(tmp_path, {"port": 1195, "dns": ["10.8.0.1", "fd00:8::1"],
                              "routes": ["192.0.2.0/24"], "network6": "fd00:8::/64"})
    lines = openvpn_config.render(config, paths_in(tmp_path / "tls")).splitlines()
    for line in ("proto udp4", "port 1195", "dev lthnvpn0", "topology subnet",
                 "server 10.8.0.0 255.255.255.0", "server-ipv6 fd00:8::/64",
                 f"ca {tmp_path / 'tls' / 'ca.pem'}", f"cert {tmp_path / 'tls' / 'provider.crt'}",
                 "verify-client-cert none", "username-as-common-name", "duplicate-cn",
                 f"management {tmp_path / 'state' / 'run' / 'openvpn.sock'} unix",
                 "management-client-auth", "management-hold",
                 "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305:AES-256-CBC",
                 "data-ciphers-fallback AES-256-CBC", "auth SHA256", "tun-mtu 1400",
                 "mssfix 1300", "explicit-exit-notify 1",
                 'push "redirect-gateway def1 bypass-dhcp ipv6"',
                 'push "route 192.0.2.0 255.255.255.0"', 'push "dhcp-option DNS 10.8.0.1"',
                 'push "dhcp-option DNS6 fd00:8::1"'):
        assert line in lines, line
    assert not any(line.startswith("local ") for line in lines)


def test_openvpn_config_tcp_and_a_bound_address(tmp_path):
    config = parse(tmp_path, {"proto": "tcp", "bind": "192.0.2.7", "redirect_gateway": False})
    lines = openvpn_config.render(config, paths_in(tmp_path / "tls")).splitlines()
    assert "proto tcp4-server" in lines and "local 192.0.2.7" in lines
    assert "explicit-exit-notify 1" not in lines     # UDP only: OpenVPN refuses it on TCP
    assert not any("redirect-gateway" in line for line in lines)


def nft_check(script: str) -> subprocess.CompletedProcess:
    """`nft -c` (check, commit nothing) in a network namespace of its own."""
    return subprocess.run(["unshare", "--net", "nft", "-c", "-f", "-"], input=script,
                          text=True, capture_output=True, check=False)


def test_egress_table_is_valid_nft_and_filters_what_it_should(tmp_path):
    config = parse(tmp_path, {"network6": "fd00:8::/64", "dns": ["10.8.0.1"],
                              "allow_networks": ["10.97.0.2/32"],
                              "deny_networks": ["8.8.8.0/24"]})
    script = egress.render(egress.plan_for(config, "eth0", (4,)))
    result = nft_check(script)
    assert result.returncode == 0, result.stderr
    assert 'iifname "lthnvpn0" oifname != "eth0" counter drop' in script
    assert 'oifname "eth0" ip saddr 10.8.0.0/24 masquerade' in script
    assert 'oifname "eth0" ip6 saddr fd00:8::/64 masquerade' in script
    assert "elements = { 10.97.0.2/32 }" in script
    assert "8.8.8.0/24" in script and "10.0.0.0/8" in script and "fc00::/7" in script
    assert 'ip daddr { 10.8.0.1 } meta l4proto { tcp, udp } th dport 53 accept' in script
    assert "meta nfproto ipv4 counter drop" in script
    assert "meta nfproto ipv6" not in script        # IPv6 forwarding was on already


def test_egress_table_without_exceptions_or_ipv6(tmp_path):
    script = egress.render(egress.plan_for(parse(tmp_path, {}), "ens3", ()))
    assert nft_check(script).returncode == 0
    assert "masquerade" in script and "ip6 saddr" not in script
    assert "nfproto" not in script and "dport 53" not in script


def test_sdp_json_names_the_vpn_endpoint_the_original_client_reads(tmp_path):
    """vpn[0].endpoint and vpn[0].port as "PORT/PROTO" for each vpn service (only in VPN
    mode); the CA is the node's, as for the proxy (notes/lethean-protocol.md)."""
    config = parse(tmp_path, {"port": 1195, "proto": "tcp"}, services=[
        {"id": "1A", "name": "Proxy", "type": "proxy", "cost": "0.001"}, VPN_SERVICE],
        provider={"id": PROVIDER, "name": "exit"})
    publication = sdp.Publication("vpn.example.invalid", "iz" + "1" * 95)
    proxy, vpn = sdp.descriptor(config, publication, "")["services"]
    assert vpn["vpn"] == [{"endpoint": "vpn.example.invalid", "port": "1195/TCP"}]
    assert vpn["proxy"] == [] and proxy["vpn"] == []
    off = config_mod.parse({"provider": {"id": PROVIDER, "name": "exit"},
                            "state_dir": str(tmp_path),
                            "services": [VPN_SERVICE]}, "node.yaml")
    assert sdp.descriptor(off, publication, "")["services"][0]["vpn"] == []
