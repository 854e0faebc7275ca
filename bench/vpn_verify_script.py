"""The baseline of bench_vpn_auth.py: an OpenVPN `auth-user-pass-verify` script (via-file)
making lthn-vpnd's decision, started once per login as OpenVPN would start it.

    auth-user-pass-verify "python vpn_verify_script.py" via-file

argv[1] is the file OpenVPN writes (username line, password line); the address comes in
the environment (untrusted_ip), the node config in LTHN_CONFIG. Exit 0 admits, 1 refuses.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lthn import config as config_mod  # noqa: E402
from lthn.ledger import Ledger  # noqa: E402
from lthn.refusals import Refusal  # noqa: E402
from lthn.source_policy import SourcePolicy  # noqa: E402
from services.vpn import admission  # noqa: E402


def main() -> int:
    username, password = (Path(sys.argv[1]).read_text().split("\n") + ["", ""])[:2]
    config = config_mod.load(os.environ["LTHN_CONFIG"])
    ledger = Ledger.open(config.ledger_path)
    try:
        policy = SourcePolicy.load(config, ledger)    # the lists' files and the bans

        def source_refusal(ip: str) -> tuple[Refusal, str] | None:
            refusal = policy.decide(ip, time.time())
            return None if refusal is None else (refusal, ip)
        decision = admission.decide(config, username, password,
                                    os.environ.get("untrusted_ip", ""), ledger.authid,
                                    source_refusal)
    finally:
        ledger.close()
    return 0 if decision.allowed else 1


if __name__ == "__main__":
    raise SystemExit(main())
