"""Payment latency as a client sees it: from its `transfer` returning to its first 200
through the node's proxy (issue #16).

Runs a real regtest chain (lthn.demo.regtest, monerod with its ZMQ publisher), a real node
as `lthn-node run` starts it (busd, paymentd, authd, sessiond, firewalld, haproxy, squid
under supervisord; tests/fixtures/node.py) at the config's defaults, with only the wallet
(and with --zmq the daemon's publisher) named, and a fast origin. A client pays with its
own wallet (the regtest payer: an integrated address with the authid as payment id),
then asks the proxy every 5 ms on one kept-alive TLS connection until the answer is 200.
A block is mined every --mine-every seconds meanwhile, as a chain does.

Printed, p50 / p99 / mean over the payments:
  total       transfer returned -> first 200
  hops        -> paymentd's wallet listing returned with it  (paymentd's debug line)
              -> its ledger commit                            (paymentd's debug line)
              -> authid.activated published on the bus        (the envelope's time)
              -> authd's `add map` done                      (authd's log, ms resolution)
              -> first 200                                    (this client)
  floor       transfer returned -> the provider wallet's own pool listing shows it, asked
              flat out while paymentd is stopped: the same wallet, measured in this run
  ratio       total / floor
  watch cost  CPU of monero-wallet-rpc, monerod and paymentd while idle, with paymentd
              watching and with it stopped
--burst N adds N payments from two payer wallets at once (no client polling; each one's
admission is authd's `add map`), as issue #16's burst.

    python bench/bench_payment_latency.py [--payments 100] [--floor 30] [--zmq]
                                          [--mine-every 20] [--burst 1000] [--keep]

Expected at the defaults (pool listed every 0.1 s): total p99 under 300 ms; the floor is
~90 ms (two wallet -> daemon requests of ~45 ms each for a new pool tx).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # for tests.fixtures (not an installed package)

import zmq  # noqa: E402
from benchlib import percentile, wait  # noqa: E402
from proxy_rig import Origin, read_response, request_bytes  # noqa: E402

from lthn import config as config_mod  # noqa: E402
from lthn.bus import Subscriber  # noqa: E402
from lthn.demo.regtest import RegtestChain, WalletProcess  # noqa: E402
from lthn.ports import free_port  # noqa: E402
from services.paymentd.wallet_rpc import WalletClient  # noqa: E402
from tests.fixtures.node import ALL_PROGRAMS, Node, default_config, merge  # noqa: E402
from tests.fixtures.proxy import ProxyClient  # noqa: E402

AMOUNT = 20_000_000_000          # 0.02 XMR: 20 minutes of the test service (0.001/min)
OUTPUT = 50_000_000_000          # split outputs of 0.05 XMR: one pays one payment
SPLIT = 15                       # destinations per splitting transfer (16 outputs max)
PROBE_EVERY = 0.005
TRANSFER_TIMEOUT = 60.0
LISTED = re.compile(r"paymentd: (\w+) listing took .*\(write lock ([\d.]+), apply "
                    r"([\d.]+), commit ([\d.]+)\) \[listed at ([\d.]+), committed at "
                    r"([\d.]+)\]")
CREDITED = re.compile(r"authid (\w+)\.\.\.: credited \d+ \(txid (\w+)\.\.\.")
ADMITTED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO \S+: "
                      r"authid (\w+)\.\.\.: admitted by haproxy")


@dataclass
class Payment:
    authid: str
    address: str
    txid: str = ""
    returned: float = 0.0        # wall clock (time.time()) of every timestamp below
    first_200: float = 0.0
    activated: float = 0.0       # authid.activated publish time
    listed: float = 0.0
    committed: float = 0.0
    listing: str = ""            # "pool" or "scan": which paymentd step saw it first
    map_added: float = 0.0
    parts: tuple[float, float, float] = (0.0, 0.0, 0.0)   # write lock, apply, commit (s)

    def hops(self) -> dict[str, float]:
        return {
            "transfer -> paymentd listed it": self.listed - self.returned,
            "listed -> ledger commit": self.committed - self.listed,
            "commit -> bus publish": self.activated - self.committed,
            "bus -> authd map add": self.map_added - self.activated,
            "map add -> first 200": self.first_200 - self.map_added,
        }


class Cpu:
    """CPU seconds some processes use over a span (a `with` block)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self.used: dict[str, float] = {}
        self.span = 0.0

    def __enter__(self) -> Cpu:
        self.start = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.began = time.monotonic()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.span = time.monotonic() - self.began
        self.used = {n: cpu_seconds(p) - self.start[n] for n, p in self.pids.items()}

    def percent(self, name: str) -> float:
        return 100 * self.used[name] / self.span


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the client: one kept-alive TLS connection to the proxy ---

class Prober:
    """Asks the proxy for the origin's page with an authid; reconnects when haproxy closes."""

    def __init__(self, client: ProxyClient, url: str) -> None:
        self.client, self.url = client, url
        self.sock: socket.socket | None = None
        self.buf = bytearray(1 << 16)

    def status(self, authid: str) -> int:
        for attempt in (1, 2):
            if self.sock is None:
                self.sock = self.client.open()
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.sock.sendall(request_bytes(self.url, authid))
                return read_response(self.sock, self.buf)
            except (ConnectionError, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# --- wallets ---

def transfer(wallet: WalletProcess, destinations: list[tuple[str, int]]) -> str:
    result = wallet.rpc.call("transfer", {
        "destinations": [{"address": a, "amount": n} for a, n in destinations],
        "get_tx_key": False}, timeout=TRANSFER_TIMEOUT)
    return str(result["tx_hash"])


def split_outputs(chain: RegtestChain, wallets: list[WalletProcess], outputs: int) -> None:
    """Give each wallet `outputs` unlocked outputs of OUTPUT: one per payment, so no
    payment waits for change to unlock (the wallet may pair a second input otherwise)."""
    for wallet in wallets:
        wallet.refresh()
        for _ in range(math.ceil(outputs / SPLIT)):
            transfer(wallet, [(wallet.address, OUTPUT)] * SPLIT)
    # a block holds only so many transfers: mine until the pool is empty, then 10 more
    # (change and split outputs unlock 10 blocks after the one that holds them)
    wait(lambda: chain.mine(1) and not chain.pool_txids(), 120, "the split transfers mined")
    chain.mine(10)
    for wallet in wallets:
        wallet.refresh()


def fund_coinbase(chain: RegtestChain, wallet: WalletProcess, splits: int) -> None:
    """Enough unlocked coinbase outputs: two per splitting transfer (the wallet may pair
    a second input), plus spares."""
    chain.mine(2 * splits + 10, to=wallet.address)
    chain.mine(61)   # coinbase unlocks after 60 blocks


def integrated_addresses(chain: RegtestChain, count: int) -> list[tuple[str, str]]:
    """(authid, integrated address) pairs; authids whose first 8 characters (what logs
    show) differ, so each log line names one payment."""
    out, seen = [], set()
    while len(out) < count:
        authid = ("1A" + secrets.token_hex(7)).upper()
        if authid[:8] in seen:
            continue
        seen.add(authid[:8])
        out.append((authid, chain.integrated_address(authid)))
    return out


# --- the phases ---

def measure_floor(chain: RegtestChain, wallet: WalletClient,
                  pairs: list[tuple[str, str]]) -> list[float]:
    """Transfer returned -> the provider wallet's pool listing shows it (flat out)."""
    delays = []
    for _authid, address in pairs:
        txid = transfer(chain.payer, [(address, AMOUNT)])
        returned = time.perf_counter()
        wait(lambda t=txid: any(x.txid == t for x in wallet.get_pool_transfers()), 10,
             f"{txid[:8]} in the pool listing", interval=0)
        delays.append(time.perf_counter() - returned)
    return delays


def pay_and_probe(chain: RegtestChain, prober: Prober, sub: Subscriber,
                  payment: Payment) -> None:
    if prober.status(payment.authid) != 403:
        raise SystemExit(f"bench: {payment.authid} admitted before it paid")
    with chain.lock:   # not while the miner thread mines
        payment.txid = transfer(chain.payer, [(payment.address, AMOUNT)])
        payment.returned = time.time()
    due = time.monotonic()
    deadline = due + 10.0
    while True:
        status = prober.status(payment.authid)
        now = time.time()
        note_activation(sub, payment)
        if status == 200:
            payment.first_200 = now
            # our own copy of the message can trail authd's (busd sends it to both)
            wait(lambda: note_activation(sub, payment), 5,
                 f"authid.activated for {payment.authid}", interval=0.001)
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {payment.authid} not admitted within 10 s of its "
                             f"payment (txid {payment.txid})")
        due += PROBE_EVERY
        time.sleep(max(0.0, due - time.monotonic()))


def note_activation(sub: Subscriber, payment: Payment) -> bool:
    """Keep the publish time of the payment's authid.activated; True once seen."""
    for env in sub.drain():
        if env.topic == "authid.activated" and env.message.authid == payment.authid:
            payment.activated = env.ts
    return bool(payment.activated)


def read_logs(node: Node, payments: list[Payment]) -> None:
    """paymentd's listing/commit times and authd's map adds, per payment."""
    by_tx = {p.txid[:8]: p for p in payments}
    by_authid = {p.authid[:8]: p for p in payments}
    current: re.Match | None = None
    for line in node.log_text("paymentd").splitlines():
        m = LISTED.search(line)
        if m:
            current = m
            continue
        m = CREDITED.search(line)
        if m and current and m.group(2) in by_tx:
            p = by_tx[m.group(2)]
            p.listing = current.group(1)
            p.parts = tuple(float(current.group(i)) / 1000 for i in (2, 3, 4))
            p.listed, p.committed = float(current.group(5)), float(current.group(6))
    for path in sorted((node.state / "log").glob("authd_*.log")):
        for line in path.read_text(errors="replace").splitlines():
            m = ADMITTED.search(line)
            if m and m.group(2) in by_authid:
                at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                p = by_authid[m.group(2)]
                if not p.map_added and at >= p.returned - 0.001:
                    p.map_added = at


class Miner(threading.Thread):
    def __init__(self, chain: RegtestChain, every: float) -> None:
        super().__init__(daemon=True)
        self.chain, self.every = chain, every
        self.stopping = threading.Event()
        self.blocks = 0

    def run(self) -> None:
        while self.every and not self.stopping.wait(self.every):
            self.chain.mine(1)
            self.blocks += 1


# --- printing ---

def ms(values: list[float]) -> str:
    return (f"{percentile(values, 50) * 1000:7.1f} {percentile(values, 99) * 1000:7.1f} "
            f"{sum(values) / len(values) * 1000:7.1f}")


def report(payments: list[Payment], floor: list[float], cost: dict[str, str],
           zmq_pub: bool, blocks: int) -> None:
    totals = [p.first_200 - p.returned for p in payments]
    complete = [p for p in payments if p.listed and p.activated and p.map_added]
    defaults = config_mod.Wallet()
    blocks_by = "monerod's ZMQ publisher" if zmq_pub \
        else f"a refresh every {defaults.refresh_interval:g} s"
    print(f"\npayment -> admitted, {len(payments)} payments, config defaults "
          f"(pool listed every {defaults.poll_interval:g} s; blocks by {blocks_by}; "
          f"{blocks} blocks mined meanwhile)")
    print(f"  {'':38} {'p50':>7} {'p99':>7} {'mean':>7}  (ms)   share of mean")
    print(f"  {'total: transfer returned -> first 200':38} {ms(totals)}")
    mean_total = sum(p.first_200 - p.returned for p in complete) / max(1, len(complete))
    for name in Payment("", "").hops():
        values = [p.hops()[name] for p in complete]
        print(f"    {name:36} {ms(values)}  {100 * sum(values) / len(values) / mean_total:5.1f}%")
        if name.endswith("ledger commit"):
            for i, part in enumerate(("wait for the write lock", "apply", "commit")):
                print(f"      {part:34} {ms([p.parts[i] for p in complete])}")
    seen_by_scan = sum(1 for p in complete if p.listing == "scan")
    print(f"    ({len(complete)} payments with every hop found in the logs; {seen_by_scan} "
          f"first listed by a block's scan, the rest by a pool listing)")
    print(f"  {'floor: transfer -> wallet pool lists it':38} {ms(floor)}   "
          f"({len(floor)} payments, paymentd stopped)")
    p50, p99 = percentile(totals, 50), percentile(totals, 99)
    f50, f99 = percentile(floor, 50), percentile(floor, 99)
    print(f"  ratio total/floor: {p50 / f50:.2f}x (p50), {p99 / f99:.2f}x (p99)")
    verdict = "met" if p99 <= 0.300 else f"NOT met, {1000 * (p99 - 0.300):.0f} ms over"
    print(f"  goal p99 <= 300 ms: {verdict}")
    print("  watch cost while idle (% of one core):")
    for line in cost.values():
        print(f"    {line}")


# --- the bench ---

def start_node(work: Path, chain: RegtestChain, origin: Origin, use_zmq: bool) -> Node:
    wallet = dict(chain.wallet_section(), start_height=chain.height())
    if not use_zmq:
        del wallet["daemon_zmq"]
    directory = work / "node"
    config = merge(default_config(directory / "state"), {
        "proxy": {"allow_destinations": [f"127.0.0.1:{origin.port}"],
                  "dns_servers": ["127.0.0.1"]},
        # paymentd's listing/commit times are debug lines; everything else is default
        "log_level": "debug",
    })
    config["wallet"] = wallet
    node = Node(directory, config, ALL_PROGRAMS)
    node.start(timeout=90)
    return node


def idle_cost(pids: dict[str, int], seconds: float) -> Cpu:
    with Cpu(pids) as cpu:
        time.sleep(seconds)   # a span to measure CPU over
    return cpu


def burst(chain: RegtestChain, node: Node, sub: Subscriber, count: int) -> None:
    """`count` payments from two payer wallets at once; admission = authd's map add."""
    print(f"\nburst: preparing {count} payments from two payer wallets ...", flush=True)
    second = WalletProcess("payer2", chain.base, chain.daemon_port, free_port(), None)
    second.launch(time.monotonic() + 30)
    second.create(timeout=30)
    wallets = [chain.payer, second]
    per_wallet = math.ceil(count / 2)
    splits = math.ceil(per_wallet / SPLIT)
    for wallet in wallets:
        fund_coinbase(chain, wallet, splits)
    split_outputs(chain, wallets, per_wallet + SPLIT)
    pairs = integrated_addresses(chain, count)
    payments = [Payment(a, addr) for a, addr in pairs]
    sub.drain()
    errors: list[str] = []

    def pay(wallet: WalletProcess, mine: list[Payment]) -> None:
        for p in mine:
            try:
                p.txid = transfer(wallet, [(p.address, AMOUNT)])
                p.returned = time.time()
            except Exception as exc:   # counted and shown; the burst goes on
                errors.append(f"{wallet.name}: {exc}")

    threads = [threading.Thread(target=pay, args=(w, payments[i::2]))
               for i, w in enumerate(wallets)]
    began_wall = time.time()
    for t in threads:
        t.start()
    activated: dict[str, float] = {}
    finished = 0.0   # when both payers were done; then at most 60 s more
    while True:
        if not finished and not any(t.is_alive() for t in threads):
            finished = time.monotonic()
        if finished and (len(activated) >= count - len(errors)
                         or time.monotonic() - finished > 60):
            break
        env = sub.receive(timeout_ms=100)
        if env is not None and env.topic == "authid.activated":
            activated.setdefault(env.message.authid, env.ts)
    paid_in = max(p.returned for p in payments if p.txid) - began_wall
    for p in payments:
        p.activated = activated.get(p.authid, 0.0)
    read_logs(node, payments)
    admitted = [p.map_added - p.returned for p in payments if p.txid and p.map_added]
    published = [p.activated - p.returned for p in payments if p.txid and p.activated]
    print(f"burst of {count}: paid in {paid_in:.1f} s by two wallets "
          f"({len(errors)} transfers failed{': ' + errors[0] if errors else ''})")
    print(f"  {'':38} {'p50':>7} {'p99':>7} {'mean':>7}  (ms)")
    print(f"  {'transfer returned -> authid.activated':38} {ms(published)}  "
          f"({len(published)} activated)")
    print(f"  {'transfer returned -> authd map add':38} {ms(admitted)}  "
          f"({len(admitted)} with authd's own add-map line; authd's periodic resync "
          "adds an authid without one when it runs first)")
    second.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=100)
    parser.add_argument("--floor", type=int, default=30, help="floor payments")
    parser.add_argument("--zmq", action="store_true",
                        help="name monerod's ZMQ publisher in the config (wallet.daemon_zmq)")
    parser.add_argument("--mine-every", type=float, default=20.0,
                        help="seconds between blocks while paying (0: none)")
    parser.add_argument("--idle", type=float, default=20.0,
                        help="seconds over which the idle watch cost is measured")
    parser.add_argument("--burst", type=int, default=0, help="payments in a burst (e.g. 1000)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    work = Path(tempfile.mkdtemp(prefix="lthn-bench-pay-"))
    print(f"work dir {work}; starting regtest ...", flush=True)
    chain = RegtestChain(work / "regtest", zmq_pub=True).start()
    origin = Origin().start()
    node: Node | None = None
    ctx = zmq.Context()
    miner = Miner(chain, args.mine_every)
    try:
        split_outputs(chain, [chain.payer], args.payments + args.floor + SPLIT)
        node = start_node(work, chain, origin, args.zmq)
        config = config_mod.load(node.config_path)
        sub = Subscriber(ctx, config.subscribe_endpoint, ["authid.", "payment."])
        client = ProxyClient("127.0.0.1", config.proxy.port, config.state / "tls" / "ca.pem")
        prober = Prober(client, origin.url("/small"))
        wallet = WalletClient(chain.provider_url, chain.user, chain.password, "monero")
        print("node running; floor (paymentd stopped) ...", flush=True)

        node.ctl("stop", "paymentd")
        pids = {"monero-wallet-rpc": chain.provider.proc.pid,
                "monerod": chain.daemon_proc.pid}
        quiet = idle_cost(pids, args.idle)
        pairs = integrated_addresses(chain, args.floor + args.payments)
        floor = measure_floor(chain, wallet, pairs[:args.floor])
        node.ctl("start", "paymentd")
        node.wait_running(["paymentd"])
        credited: list[str] = []

        def floor_credited() -> bool:
            credited.extend(e.message.txid for e in sub.drain()
                            if e.topic == "payment.credited")
            return len(credited) >= args.floor
        wait(floor_credited, 30, "the floor payments credited after paymentd's restart")
        pids["paymentd"] = node.pid("paymentd")
        watching = idle_cost(pids, args.idle)
        cost = {name: f"{name:18} {watching.percent(name):5.2f}% with paymentd watching, "
                f"{quiet.percent(name):5.2f}% without" for name in quiet.pids}
        cost["paymentd"] = f"{'paymentd':18} {watching.percent('paymentd'):5.2f}%"

        print(f"paying {args.payments} times, the client polling every "
              f"{PROBE_EVERY * 1000:g} ms ...", flush=True)
        miner.start()
        payments = [Payment(a, addr) for a, addr in pairs[args.floor:]]
        sub.drain()
        for i, payment in enumerate(payments):
            time.sleep(random.uniform(0, 0.2))   # payments land anywhere in a poll cycle
            pay_and_probe(chain, prober, sub, payment)
            if (i + 1) % 20 == 0:
                print(f"  {i + 1} payments", flush=True)
        miner.stopping.set()
        miner.join()
        prober.close()
        read_logs(node, payments)
        with open(work / "payments.jsonl", "w") as out:   # per payment, for a closer look
            for p in payments:
                out.write(json.dumps(dataclasses.asdict(p)) + "\n")
        report(payments, floor, cost, args.zmq, miner.blocks)
        if args.burst:
            burst(chain, node, sub, args.burst)
        sub.close()
    finally:
        miner.stopping.set()
        if node is not None:
            node.stop()
        ctx.destroy(linger=0)
        origin.stop()
        chain.stop()
    print("load average at the end: {:.2f} {:.2f} {:.2f} ({} cores)".format(
        *os.getloadavg(), os.cpu_count()))
    if args.keep:
        print(f"  logs and payments.jsonl in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
