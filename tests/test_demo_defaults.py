"""Issue #16: the demo runs paymentd at the config's defaults, not special settings; it
only names where its wallet and its daemon's ZMQ publisher are."""

from __future__ import annotations

from lthn import config as config_mod
from lthn.demo.demo import node_config
from lthn.demo.regtest import RegtestChain


def test_demo_wallet_section_sets_no_timing(tmp_path):
    chain = RegtestChain(tmp_path / "regtest", zmq_pub=True)   # not started: ports only
    config = node_config(tmp_path, chain, origin_port=8000)
    wallet = config["wallet"]
    assert set(wallet) == {"dialect", "url", "user", "password", "timeout", "daemon_zmq"}
    assert wallet["daemon_zmq"] == chain.zmq_pub_endpoint != ""
    parsed = config_mod.parse(config, "demo").wallet
    defaults = config_mod.Wallet()
    assert (parsed.poll_interval, parsed.refresh_interval, parsed.timeout) == (
        defaults.poll_interval, defaults.refresh_interval, defaults.timeout)
