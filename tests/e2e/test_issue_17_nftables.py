"""Issue #17, bans at packet level: firewalld's nftables table in a network namespace the
test makes (the host's own firewall is never touched). A banned source's connections to
the node's port are dropped by the kernel, others pass; a ban ends when its time is up
even with nobody there to lift it; the table is gone when firewalld stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# runs inside the namespace: a listener on the node's port, connections from two sources
SCRIPT = textwrap.dedent("""
    import json, socket, subprocess, sys, time
    sys.path.insert(0, sys.argv[1])
    from services.firewalld.nftables import NftablesBans, table_name

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]

    def connects(source):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5,
                                          source_address=(source, 0)):
                return True
        except OSError:
            return False

    def tables():
        return subprocess.run(["nft", "list", "tables"], capture_output=True,
                              text=True).stdout

    out = {"usable": NftablesBans.usable()}
    table = table_name("/var/lib/lthn-test")
    bans = NftablesBans(table, [port])
    now = time.time()
    bans.start({"127.0.0.2": now + 60, "127.0.5.0/24": now + 60, "127.0.6.6": now + 2})
    out["banned"] = connects("127.0.0.2")
    out["banned_network"] = connects("127.0.5.77")
    out["other"] = connects("127.0.0.3")
    out["short_before"] = connects("127.0.6.6")
    time.sleep(2.5)
    out["short_after"] = connects("127.0.6.6")          # the kernel ended it
    bans.changed()
    bans.apply({"127.0.5.0/24": now + 60}, monotonic=time.monotonic() + 10)
    out["lifted"] = connects("127.0.0.2")
    out["table_there"] = table in tables()
    bans.stop()
    out["table_gone"] = table not in tables()
    out["after_stop"] = connects("127.0.5.77")
    print(json.dumps(out))
""")


@pytest.fixture
def namespace():
    name = f"lthn17-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_issue_17_nftables_drops_banned_sources_in_a_namespace(namespace, tmp_path):
    script = tmp_path / "inside.py"
    script.write_text(SCRIPT)
    result = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, str(script),
                             str(ROOT)], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"usable": None, "banned": False, "banned_network": False, "other": True,
                   "short_before": False, "short_after": True, "lifted": True,
                   "table_there": True, "table_gone": True, "after_stop": True}
