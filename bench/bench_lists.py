"""An operator's list edit, save -> verdict, on a real node (issue #17).

The node is the one tests/fixtures/firewall.py builds for the #17 tests (busd, authd,
firewalld, haproxy and squid under the real supervisord, an HTTP origin on 127.0.0.1,
squid resolving names from a hosts file of its own), started the same way outside pytest.
For each of two lists it times, from a save of the list file (write, then rename, as an
editor does: `FirewallNode.write_list`) to the first request the real haproxy answers with
the new verdict, a client sending a request every ~10 ms (each on its own TLS connection,
as Lethean's client does, and in its own thread: one held by a reconfiguring squid does
not hold back the next); changes are 0.2-0.5 s apart, at random, so that saves do not
fall in step with firewalld's poll of the files:

- `src_deny.ips`: 127.0.0.2 listed and unlisted in turn; its requests (no payment) are
  answered DENY_SRC_IP, then NO_PAYMENT again;
- `dst_deny.doms`: blocked.invalid listed and unlisted in turn; a paying client's GET of
  www.blocked.invalid is answered DENY_DESTINATION, then 200 again (firewalld also asks
  squid to re-read the list, and squid refuses the name until it has: an unlisting waits
  for that).

The baseline, measured in the same run and interleaved with the node's saves (a pair of
saves, then a pair of baseline changes): the bench puts the same change straight into
haproxy's runtime ACL, `add acl` / `del acl` over the admin socket on the ACL file
firewalld keeps (lthn/haproxy/contract.py's `src_deny`, `dst_deny_domains` and
`dst_deny_subdomains`), and the same client polls for the same verdict: haproxy's own
apply time and the client's poll, without firewalld's watch of the file (it polls every
`firewall.poll_interval`) or squid. Printed per list: p50/p99/max of the node and the
baseline, the node's against the goal (applied within 1 s of the save) and against the
baseline; the slowest request, and the requests that took over half a second (squid
closes its port while it re-reads its config; haproxy retries it every 100 ms, where its
default turn-around of a second made a request sent then answer a second late). The
machine's other work moves every figure; the load average is printed.

    .venv/bin/python bench/bench_lists.py [--saves 20] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # for tests.fixtures (not an installed package)

from benchlib import keep_or_remove, percentile, print_total, wait  # noqa: E402

from lthn.haproxy import contract  # noqa: E402
from lthn.haproxy.runtime import HaproxyAdmin  # noqa: E402
from tests.fixtures.firewall import FirewallNode, start_firewall_node  # noqa: E402

GOAL = 1.0            # seconds from a save to its verdict (#17)
POLL = 0.010          # the client's request interval
TIMEOUT = 15.0        # per save: past this the bench stops and says so
SLOW = 0.5            # a request slower than this is reported
PAUSE = (0.2, 0.5)    # seconds between changes, drawn at random (see pause())
PAID = "1A17171717171701"
DENIED_SOURCE = "127.0.0.2"
DESTINATION_CLIENT = "127.0.0.11"
DOMAIN = "blocked.invalid"


@dataclass
class Case:
    """One list: what a save writes, what the bench adds to haproxy itself, how to ask."""
    file: str
    entry: str
    acl_entries: dict[str, str]       # contract.FIREWALL_ACLS name -> the entry it gets
    ask: Callable[[], str]            # one request's verdict
    listed: str                       # the verdict while listed
    unlisted: str
    node: list[tuple[str, float]] = field(default_factory=list)      # (add|remove, s)
    baseline: list[tuple[str, float]] = field(default_factory=list)
    other: Counter = field(default_factory=Counter)   # answers neither verdict, per kind
    slow: dict[str, list[float]] = field(      # node|baseline -> requests over SLOW, s
        default_factory=lambda: {"node": [], "baseline": []})
    slowest: dict[str, float] = field(         # node|baseline -> the slowest request, s
        default_factory=lambda: {"node": 0.0, "baseline": 0.0})


def until_verdict(case: Case, who: str, wanted: str, old: str, what: str) -> float:
    """Send a request every POLL from now, each in a thread of its own (one held by a
    reconfiguring squid must not hold back the next), until one is answered `wanted`;
    the monotonic time the first such answer arrived. Every request is answered (or
    fails) before this returns, so none overlaps the next change. Answers other than old
    and wanted are counted, failed requests too, and requests slower than SLOW are kept
    (squid's port is closed for a moment while it reconfigures: haproxy retries it every
    100 ms, services/proxy/haproxy_config.py; with its default of a second, such a
    request answered a second late)."""
    lock = threading.Lock()
    found = threading.Event()
    arrivals: list[float] = []

    def one() -> None:
        sent = time.monotonic()
        try:
            verdict = case.ask()
        except (OSError, ValueError) as exc:
            verdict = f"error {type(exc).__name__}"
        arrived = time.monotonic()
        with lock:
            case.slowest[who] = max(case.slowest[who], arrived - sent)
            if arrived - sent > SLOW:
                case.slow[who].append(arrived - sent)
            if verdict == wanted:
                arrivals.append(arrived)
                found.set()
            elif verdict != old:
                case.other[verdict] += 1

    threads = []
    deadline = time.monotonic() + TIMEOUT
    next_at = time.monotonic()
    while not found.is_set() and time.monotonic() < deadline:
        thread = threading.Thread(target=one, daemon=True)
        thread.start()
        threads.append(thread)
        next_at += POLL
        found.wait(max(0.0, next_at - time.monotonic()))
    for thread in threads:
        thread.join(TIMEOUT)
    if not arrivals:
        raise SystemExit(f"bench: {what}: no {wanted} answer within {TIMEOUT:g} s")
    return min(arrivals)


def pause(rng: random.Random) -> None:
    """Between changes: a while, so a squid asked to re-read settles, and a random one,
    so saves do not fall in step with firewalld's poll of the files (each change starts
    right after the last verdict, itself seen just after a poll: without it every save
    came just after a poll and waited a whole interval)."""
    time.sleep(rng.uniform(*PAUSE))


def node_save(fw: FirewallNode, case: Case, add: bool) -> float:
    text = f"{case.entry}\n" if add else "# unlisted by bench_lists\n"
    wanted, old = (case.listed, case.unlisted) if add else (case.unlisted, case.listed)
    saved = time.monotonic()
    fw.write_list(case.file, text)
    what = f"{case.file} saved {'with' if add else 'without'} {case.entry}"
    return until_verdict(case, "node", wanted, old, what) - saved


def baseline_change(admin: HaproxyAdmin, fw: FirewallNode, case: Case, add: bool) -> float:
    verb = "add" if add else "del"
    line = "; ".join(f"{verb} acl {contract.source_acl_path(fw.config, name)} {entry}"
                     for name, entry in case.acl_entries.items())
    wanted, old = (case.listed, case.unlisted) if add else (case.unlisted, case.listed)
    changed = time.monotonic()
    answer = admin.command(line)
    if answer.strip():
        raise SystemExit(f"bench: haproxy answered {line!r} with {answer.strip()!r}")
    what = f"{verb} acl {case.entry} in haproxy"
    return until_verdict(case, "baseline", wanted, old, what) - changed


def start_node(work: Path, hosts: Path) -> tuple[FirewallNode, ThreadingHTTPServer]:
    """As the `firewall_node` fixture builds one (tests/fixtures/firewall.py), with the
    polling clients in the never-ban list: each poll of a refused verdict is an offence,
    and 100 a second are over the request-rate limit (tests/e2e/test_issue_17_lists.py)."""
    fw, server = start_firewall_node(work, {
        "proxy": {"hosts_file": str(hosts)},
        "firewall": {"never_ban": ["127.0.0.1", DENIED_SOURCE, DESTINATION_CLIENT]},
    }, timeout=60.0)
    try:
        fw.pay(PAID, 10**13)
        wait(lambda: fw.status_of(DESTINATION_CLIENT, PAID) == "200", 20,
             "the paying authid admitted")
    except BaseException:
        print(fw.node.diagnostics())
        fw.node.stop()
        server.shutdown()
        raise
    return fw, server


def ms(values: list[float], p: float) -> float:
    return percentile(values, p) * 1e3


def report(case: Case, poll_interval: float) -> None:
    node = [s for _, s in case.node]
    base = [s for _, s in case.baseline]
    print(f"\n{case.file} ({case.entry}; {case.listed} <-> {case.unlisted}):")
    print(f"  {'':22} {'changes':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in (("node (file saved)", node), ("baseline (add/del acl)", base)):
        print(f"  {name:22} {len(values):7} {ms(values, 50):8.1f} {ms(values, 99):8.1f} "
              f"{max(values) * 1e3:8.1f}")
    for kind in ("add", "remove"):
        part = [s for k, s in case.node if k == kind]
        print(f"    node, {kind + 's':7} p50 {ms(part, 50):6.1f} ms, max "
              f"{max(part) * 1e3:6.1f} ms")
    print(f"  goal {GOAL:g} s: node p99/goal {percentile(node, 99) / GOAL:.2f}, max/goal "
          f"{max(node) / GOAL:.2f}")
    print(f"  node/baseline: p50 {percentile(node, 50) / percentile(base, 50):.1f}x, p99 "
          f"{percentile(node, 99) / percentile(base, 99):.1f}x (firewalld looks at the "
          f"files every {poll_interval:g} s)")
    print(f"  the slowest request: node {case.slowest['node'] * 1e3:.0f} ms, baseline "
          f"{case.slowest['baseline'] * 1e3:.0f} ms")
    for who, held in case.slow.items():
        if held:
            print(f"  {who}: {len(held)} requests took over {SLOW:g} s (the slowest "
                  f"{max(held) * 1e3:.0f} ms)")
    if case.other:
        seen = ", ".join(f"{k} x{n}" for k, n in case.other.most_common())
        print(f"  answers that were neither verdict, while waiting: {seen}")


def run(work: Path, hosts: Path, saves: int) -> None:
    fw, server = start_node(work, hosts)
    try:
        admin = HaproxyAdmin(fw.config.haproxy_admin_socket)
        haproxy_pid = fw.node.pid("haproxy")
        rng = random.Random(17)
        www = f"http://www.{DOMAIN}:{fw.origin.port}/"
        cases = [
            Case("src_deny.ips", DENIED_SOURCE, {"src_deny": DENIED_SOURCE},
                 lambda: fw.status_of(DENIED_SOURCE), "DENY_SRC_IP", "NO_PAYMENT"),
            Case("dst_deny.doms", DOMAIN,
                 {"dst_deny_domains": DOMAIN, "dst_deny_subdomains": f".{DOMAIN}"},
                 lambda: fw.status_of(DESTINATION_CLIENT, PAID, www),
                 "DENY_DESTINATION", "200"),
        ]
        for case in cases:
            if case.ask() != case.unlisted:
                raise SystemExit(f"bench: {case.file}: expected {case.unlisted} before any "
                                 f"change, got {case.ask()}")
            print(f"{case.file}: {saves} saves and {saves} baseline changes", flush=True)
            for _ in range(saves // 2):
                for add in (True, False):
                    pause(rng)
                    case.node.append(("add" if add else "remove", node_save(fw, case, add)))
                for add in (True, False):
                    pause(rng)
                    case.baseline.append(("add" if add else "remove",
                                          baseline_change(admin, fw, case, add)))
        reloaded = fw.node.pid("haproxy") != haproxy_pid
        print(f"\nsave -> first request answered with the new verdict (a request every "
              f"{POLL * 1e3:.0f} ms, each on a new TLS connection; changes {PAUSE[0]:g}-"
              f"{PAUSE[1]:g} s apart)")
        for case in cases:
            report(case, fw.config.firewall.poll_interval)
        print(f"\nhaproxy {'RESTARTED during the run' if reloaded else 'kept its pid'} "
              "(lists are applied without a reload)")
    except BaseException:
        print(fw.node.diagnostics())
        raise
    finally:
        fw.node.stop()
        server.shutdown()
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=20,
                        help="saves per list, alternating add and remove (even; default 20)")
    parser.add_argument("--quick", action="store_true", help="6 saves per list")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and logs")
    args = parser.parse_args()
    saves = 6 if args.quick else args.saves
    if saves < 2 or saves % 2:
        parser.error(f"--saves: must be an even number of at least 2 (got {saves})")
    work = Path(tempfile.mkdtemp(prefix="lthn-bench-lists-"))
    # squid reads its hosts file as its own user: not under the 0700 work dir
    hosts_dir = Path(tempfile.mkdtemp(prefix="lthn-bench-lists-hosts-", dir="/tmp"))
    os.chmod(hosts_dir, 0o755)
    hosts = hosts_dir / "hosts"
    hosts.write_text(f"127.0.0.1 localhost {DOMAIN} www.{DOMAIN}\n")
    os.chmod(hosts, 0o644)
    started = time.monotonic()
    print(f"work dir {work}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
          flush=True)
    try:
        run(work, hosts, saves)
    finally:
        keep_or_remove(work, args.keep)
        shutil.rmtree(hosts_dir, ignore_errors=True)
    print_total(started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
