"""Where the node's latency over the bare chain goes, group of rules by group (issue #16).

bench_haproxy_instructions.py counts the instructions each group of the node's haproxy
rules costs; this bench asks what each costs a client in time. It starts the node as
bench_proxy.py does (bench/proxy_rig.py: every program under supervisord, 100,000 active
authids) and beside it, each in front of the node's squid:

- a copy of the node's own haproxy.cfg (the same map, lists and rules; no daemon reads
  its tables), which shows the config's cost apart from the daemons';
- the bare chain (proxy_rig.BareHaproxy, at the node's thread count), the baseline;
- unless --quick, the copy with one group of rules taken out at a time (the groups of
  bench_haproxy_instructions.py; each such config still admits the GET, but is not one
  to serve with: it is a measuring device).

One client sends sequential keep-alive GETs of the small page with a paid authid, the
route alternating request by request (each round starts at the next route), ROUNDS
rounds of GETS per route. Printed per route: p50 and p99 of every round and over all,
the ratio bare/route (as bench_proxy.py's: >= 0.95 is the goal), and, for each group,
what taking it out saved at p50 and p99. Latency on this shared 2-core machine moves
from run to run; the figures that mean something are those measured in the same rounds.

    .venv/bin/python bench/bench_haproxy_latency.py [--quick] [--rounds N] [--gets N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from bench_haproxy_instructions import DIFFERENCE_OF, GROUPS
from benchlib import in_work_dir, percentile
from proxy_rig import BareHaproxy, HaproxyCopy, NodeRig, Route, latencies

AUTHIDS = 100_000
WARMUP = 100


def rounds_of(rig: NodeRig, routes: list[Route], rounds: int, gets: int, block: int
              ) -> list[list[list[float]]]:
    """Seconds per GET: [round][route] -> samples (proxy_rig.latencies, each round)."""
    out = []
    for r in range(rounds):
        out.append(latencies(rig, routes, gets, block, warmup=WARMUP if r == 0 else 0))
        print(f"  round {r + 1} done; load average {os.getloadavg()[0]:.2f}", flush=True)
    return out


def run(work: Path, quick: bool, rounds: int, gets: int, block: int) -> None:
    rig = NodeRig(work, AUTHIDS)
    started: list[HaproxyCopy | BareHaproxy] = []
    try:
        rig.start()
        node_text = (rig.config.state / "run" / "haproxy.cfg").read_text()
        threads = 1 if "    nbthread 1\n" in node_text else None
        bare = BareHaproxy(rig, "bare", nbthread=threads)
        started.append(bare.start())
        configs = {"node's config": node_text}
        if not quick:
            configs.update({f"without {name}": cut(node_text)
                            for name, cut in GROUPS.items()})
        for i, (name, text) in enumerate(configs.items()):
            copy = HaproxyCopy(rig, text, work / "copies" / f"copy-{i}")
            started.append(copy)
            copy.admitting(30)
            copy.name = name
        routes = [rig.route, bare.route, *(c.route for c in started[1:])]
        names = ["node (whole)", f"bare chain (baseline, nbthread {threads or 'default'})",
                 *configs]
        print(f"{len(routes)} routes, {rounds} rounds of {gets} sequential GETs each, "
              f"alternating request by request (keep-alive, a paid authid, {AUTHIDS:,} "
              f"in the map)", flush=True)
        for block in (1, 50):
            print(f"block {block}")
            samples = rounds_of(rig, routes, rounds, gets, block)
            report(names, samples)
    finally:
        for part in started:
            part.stop()
        rig.stop()


def report(names: list[str], samples: list[list[list[float]]]) -> None:
    rounds = len(samples)
    every = [[v for r in samples for v in r[i]] for i in range(len(names))]
    p50 = [percentile(v, 50) for v in every]
    p99 = [percentile(v, 99) for v in every]
    width = max(len(n) for n in names)
    head = "  ".join(f"round {r + 1:<9}" for r in range(rounds))
    print(f"\nlatency, ms: p50 / p99 per round, then over all (ratio bare/route)\n"
          f"  {'route':{width}}  {head}  all")
    for i, name in enumerate(names):
        per_round = "  ".join(f"{percentile(samples[r][i], 50) * 1e3:5.3f}/"
                              f"{percentile(samples[r][i], 99) * 1e3:5.3f}   "
                              for r in range(rounds))
        print(f"  {name:{width}}  {per_round}  {p50[i] * 1e3:5.3f}/{p99[i] * 1e3:5.3f} "
              f"({p50[1] / p50[i]:.2f} / {p99[1] / p99[i]:.2f})")
    print(f"\n  the node's config over the bare chain: p50 +{(p50[2] - p50[1]) * 1e6:.0f} us, "
          f"p99 +{(p99[2] - p99[1]) * 1e6:.0f} us; the whole node over its config: "
          f"p50 {(p50[0] - p50[2]) * 1e6:+.0f} us, p99 {(p99[0] - p99[2]) * 1e6:+.0f} us")
    if f"without {next(iter(GROUPS))}" not in names:
        return
    print("\nwhat taking each group out of the node's config saved (us):")
    index = {name: i for i, name in enumerate(names)}
    for name in GROUPS:
        i = index[f"without {name}"]
        base = index.get(f"without {DIFFERENCE_OF.get(name, '')}", 2)
        print(f"  {name:70} p50 {(p50[base] - p50[i]) * 1e6:+5.0f}  "
              f"p99 {(p99[base] - p99[i]) * 1e6:+5.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the node, its config and the bare chain only, not the groups")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gets", type=int, default=2000, help="GETs per route per round")
    parser.add_argument("--block", type=int, default=1, help="GETs on one route before the "
                        "next, the first of each run not counted (default 1: each GET "
                        "follows another route's)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()
    if not shutil.which("haproxy"):
        raise SystemExit("bench: haproxy is not installed (Debian: apt-get install haproxy)")
    return in_work_dir("bench-haproxy-latency-", args.keep,
                       lambda work: run(work, args.quick, args.rounds, args.gets,
                                        args.block))


if __name__ == "__main__":
    raise SystemExit(main())
