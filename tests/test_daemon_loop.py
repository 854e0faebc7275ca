"""The shared daemon loop, on real daemon processes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from lthn.node.supervision import tool
from tests.fixtures.common import wait_for

PROVIDER = "a" * 64


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_daemon_that_watches_no_socket_idles_instead_of_spinning(tmp_path):
    """paymentd subscribes to nothing; an empty zmq poll returned at once and it spun at
    ~90% CPU while waiting for its next poll. Idle, it must use next to no CPU."""
    config = tmp_path / "node.yaml"
    config.write_text(
        f'provider: {{id: "{PROVIDER}"}}\nstate_dir: "{tmp_path / "state"}"\n'
        # port 9 on loopback: nobody listens, so every poll fails fast and backs off
        'wallet: {url: "http://127.0.0.1:9/json_rpc", dialect: monero, poll_interval: 5}\n')
    log = tmp_path / "paymentd.log"
    with log.open("w") as out:
        proc = subprocess.Popen([tool("lthn-paymentd"), "-c", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "paymentd: ready" in log.read_text(), timeout=15, what="ready")
        before = cpu_seconds(proc.pid)
        time.sleep(3)  # the thing measured is idleness over a stretch of wall time
        used = cpu_seconds(proc.pid) - before
        assert used < 0.5, f"idle paymentd used {used:.2f} s of CPU in 3 s"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_sighup_rereads_the_config_and_a_mistake_keeps_the_running_one(tmp_path):
    """The reload path of every daemon (issue #15): SIGHUP reads the config file again;
    a file with a mistake is one error line and the daemon runs on with what it had."""
    import signal
    config = tmp_path / "node.yaml"
    good = (f'provider: {{id: "{PROVIDER}"}}\nstate_dir: "{tmp_path / "state"}"\n'
            'wallet: {url: "http://127.0.0.1:9/json_rpc", dialect: monero, '
            'poll_interval: 5}\n')
    config.write_text(good)
    log = tmp_path / "paymentd.log"
    with log.open("w") as out:
        proc = subprocess.Popen([tool("lthn-paymentd"), "-c", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "paymentd: ready" in log.read_text(), timeout=15, what="ready")
        config.write_text(good + "log_level: debug\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: f"paymentd: config re-read from {config}" in log.read_text(),
                 timeout=10, what="the config re-read")
        config.write_text(good + "wallet: {prot: 1}\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the running config" in log.read_text(),
                 timeout=10, what="the mistake logged")
        assert proc.poll() is None
        assert "wallet.prot: unknown key" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
