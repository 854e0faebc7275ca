"""Payment latency: from the wallet first listing a transfer to payment.credited on the bus.

Runs a real regtest chain (lthn.demo.regtest), a real lthn-busd and lthn-paymentd, pays N
authids one after another, and for each one polls the provider wallet itself until the
transfer is listed (t0), then waits for its payment.credited message (t1). Prints p50/p99
of t1 - t0 beside paymentd's poll interval, and a ratio against a baseline measured in
the same run: one bare get_transfers round trip to the same wallet.

    python bench/bench_payment_latency.py [--payments 60] [--poll-interval 1.0]

Expected: about half a poll interval plus one poll's cost (refresh + get_height +
get_transfers, ~150 ms on regtest) plus the bus hop.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
import zmq
from benchlib import percentile, wait

from lthn import config as config_mod
from lthn.bus import Subscriber
from lthn.demo.regtest import RegtestChain
from services.paymentd.wallet_rpc import WalletClient

REPO = Path(__file__).resolve().parents[1]
BUSD = "import sys; from services.busd.main import main; sys.exit(main(sys.argv[1:]))"


def spawn(args: list[str], log: Path, config: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *args, "-c", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, cwd=str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=60)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lthn-bench-"))
    print(f"work dir {work}; starting regtest ...", flush=True)
    chain = RegtestChain(work / "regtest").start()
    procs: list[subprocess.Popen] = []
    ctx = zmq.Context()
    try:
        state = work / "state"
        state.mkdir(mode=0o700)
        wallet = dict(chain.wallet_section(poll_interval=args.poll_interval),
                      start_height=chain.height())
        config_path = work / "node.yaml"
        config_path.write_text(yaml.safe_dump({
            "provider": {"id": secrets.token_hex(32)}, "state_dir": str(state),
            "wallet": wallet,
            "services": [{"id": "1A", "name": "proxy", "type": "proxy", "cost": "0.001"}]}))
        config = config_mod.load(config_path)
        procs.append(spawn(["-c", BUSD], work / "busd.log", config_path))
        sub = Subscriber(ctx, config.subscribe_endpoint, ["payment.", "node."])
        paymentd = spawn(["-m", "services.paymentd.main"], work / "paymentd.log", config_path)
        procs.append(paymentd)

        def heartbeat():
            env = sub.receive(timeout_ms=100)
            return env is not None and env.topic == "node.heartbeat" \
                and env.message.pid == paymentd.pid
        wait(heartbeat, 20, "paymentd's heartbeat")

        client = WalletClient(chain.provider_url, chain.user, chain.password, "monero")
        client.refresh()
        since = client.get_height() - 1
        baseline = []
        for _ in range(50):
            started = time.perf_counter()
            client.get_transfers(since)
            baseline.append(time.perf_counter() - started)

        latencies = []
        credited: dict[str, float] = {}   # txid -> when its payment.credited arrived
        paymentd_first = 0

        def drain() -> None:
            for env in sub.drain():
                if env.topic == "payment.credited":
                    credited.setdefault(env.message.txid, time.perf_counter())

        def listed_at(txid: str) -> float | None:
            transfers = client.get_transfers(since)
            now = time.perf_counter()
            drain()
            return now if any(t.txid == txid for t in transfers) else None

        def credited_at(txid: str) -> float | None:
            sub.socket.poll(50)
            drain()
            return credited.get(txid)

        for i in range(args.payments):
            txid = chain.pay("1A" + secrets.token_hex(7), 10**10)
            listed = wait(lambda t=txid: listed_at(t), 10, f"{txid} listed", interval=0)
            done = wait(lambda t=txid: credited_at(t), 30, f"payment.credited for {txid}",
                        interval=0)
            if done < listed:
                paymentd_first += 1  # paymentd's poll beat ours: count it as 0
            latencies.append(max(0.0, done - listed))
            if (i + 1) % 10 == 0:
                print(f"  {i + 1} payments", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        ctx.destroy(linger=0)
        chain.stop()

    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    b50, b99 = percentile(baseline, 50), percentile(baseline, 99)
    print(f"\npayment latency, wallet lists transfer -> payment.credited on the bus "
          f"({len(latencies)} payments)")
    print(f"  poll interval            {args.poll_interval * 1000:8.1f} ms")
    print(f"  latency p50 / p99        {p50 * 1000:8.1f} / {p99 * 1000:.1f} ms")
    print(f"  latency mean             {statistics.mean(latencies) * 1000:8.1f} ms")
    print(f"  baseline get_transfers   {b50 * 1000:8.1f} / {b99 * 1000:.1f} ms (p50 / p99)")
    print(f"  ratio latency/baseline   {p50 / b50:8.1f}x (p50), {p99 / b99:.1f}x (p99)")
    print(f"  ratio p50/poll interval  {p50 / args.poll_interval:8.2f}")
    print(f"  credited before the bench saw it listed: {paymentd_first} (counted as 0 ms)")
    if args.keep:
        print(f"  logs in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
