"""haproxy's instructions per admitted GET: the node's config vs the bare chain (issue #16).

CPU time and latency on this shared 2-core machine move from run to run (bench_proxy.py's
latency ratios have ranged 0.82-1.03 between runs of the same code); instructions counted
by valgrind's callgrind do not: the same binary, config and requests give the same count
whatever else the machine does. So this bench answers "how much more work is the node's
haproxy than the bare chain's, and where" exactly, where bench_proxy.py answers "how much
slower" roughly.

It starts the node as bench_proxy.py does (bench/proxy_rig.py: every program under
supervisord, 100,000 active authids), then runs haproxy under callgrind, one config after
another, each in front of the node's squid: the node's own haproxy.cfg and the bare
chain's (the one proxy_rig.BareHaproxy writes), each moved to a port, admin socket and log
target of its own (tests/fixtures/haproxy_copy.py; the same map, lists and rules). A
keep-alive client sends WARMUP GETs, the counters are zeroed (`callgrind_control -z`),
then GETS GETs of the small page with a paid authid; the count over those, divided by
GETS, is printed, with node/bare.

Then, unless --quick, where the node's excess goes: the node's config with one group of
its rules taken out at a time (each such config still admits the GET, but is not one to
serve with: it is a measuring device), and the instructions that group cost. The
groups follow haproxy_config._fast_path's first pass and the response rules.

    .venv/bin/python bench/bench_haproxy_instructions.py [--quick] [--keep]

valgrind must be installed (Debian: `apt-get install valgrind`); scripts/setup does not.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from benchlib import in_work_dir, wait
from proxy_rig import BareHaproxy, HaproxyCopy, NodeRig, read_response, request_bytes

AUTHIDS = 100_000
WARMUP = 100
GETS = 1_000
FIRST_PASS = "    # --- first pass"
SECOND_PASS = "    # --- second pass"


def first_pass_without(text: str, drop: Callable[[str], bool]) -> str:
    """The config with the first pass's lines that `drop` names taken out."""
    start, end = text.index(FIRST_PASS), text.index(SECOND_PASS)
    kept = [line for line in text[start:end].split("\n") if not drop(line)]
    return text[:start] + "\n".join(kept) + text[end:]


def without_response_rules(text: str) -> str:
    start = text.index("\nbackend lthn_upstream")
    end = text.index("\n\n", start)
    kept = [line for line in text[start:end].split("\n")
            if not line.startswith(("    http-response", "    acl "))]
    return text[:start] + "\n".join(kept) + text[end:]


def _sets(*names: str) -> Callable[[str], bool]:
    return lambda line: any(f"set-var({name})" in line for name in names)


DESTINATION = ("txn.dest", "txn.dport", "txn.dhost")
# name -> the config without that group; "late flag" first: the destination parsing can
# only go together with it (the flag reads what the parsing sets), and is printed as the
# difference between the two
GROUPS: dict[str, Callable[[str], str]] = {
    "the late refusal flag (paid lookup, destination policy)":
        lambda t: first_pass_without(t, _sets("txn.refused")),
    "the destination parsing (regsub chain)":
        lambda t: first_pass_without(t, _sets("txn.refused", *DESTINATION)),
    "the early refusal flag (source lists, limits, method, header form)":
        lambda t: first_pass_without(t, _sets("txn.refused_early")),
    "the source's ban check":
        lambda t: first_pass_without(t, _sets("txn.banned", "txn.now")),
    "the session tracking (two stick tables, gpt0 stamp)":
        lambda t: first_pass_without(t, lambda line: "track-sc" in line
                                     or "sc-set-gpt0" in line or "txn.lthn_stream" in line),
    "the header rewrites (payment headers out, client Cache-Control)":
        lambda t: first_pass_without(t, lambda line: "del-header" in line
                                     or "X-LTHN-Client-CC" in line),
    "the status request's check":
        lambda t: first_pass_without(t, lambda line: "status_host status_path" in line),
    "the response rules (squid's mark, header removal)": without_response_rules,
}
DIFFERENCE_OF = {"the destination parsing (regsub chain)":
                 "the late refusal flag (paid lookup, destination policy)"}


class Counted(HaproxyCopy):
    """A haproxy copy under callgrind; the rig's paid GET through it, counted."""

    def __init__(self, rig: NodeRig, text: str, directory: Path) -> None:
        self.out = directory / "callgrind.out"
        super().__init__(rig, text, directory,
                         ("valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}"))

    def per_get(self) -> float:
        self.admitting(600)
        request = request_bytes(self.rig.origin.url("/small"), self.rig.active[-1])
        buf = bytearray(1 << 16)
        with self.route.connect() as sock:
            for n in range(WARMUP + GETS):
                if n == WARMUP:
                    self._control("-z")
                sock.sendall(request)
                if read_response(sock, buf) != 200:
                    raise SystemExit(f"bench: a GET through {self.dir} was not admitted")
            self._control("-d")
        return self._total() / GETS

    def _control(self, flag: str) -> None:
        subprocess.run(["callgrind_control", flag, str(self.proc.pid)], check=True,
                       capture_output=True, timeout=120)

    def _total(self) -> int:
        """The instructions of the dump after the zeroing: the newest dump file."""
        def dumps() -> list[Path]:
            return sorted(self.dir.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
        wait(dumps, 60, f"callgrind's dump in {self.dir}")
        text = dumps()[-1].read_text()
        found = re.search(r"(?m)^(?:summary|totals): (\d+)", text)
        if not found:
            raise SystemExit(f"bench: no total in {dumps()[-1]}")
        return int(found.group(1))


def count(rig: NodeRig, text: str, directory: Path) -> float:
    haproxy = Counted(rig, text, directory)
    try:
        return haproxy.per_get()
    finally:
        haproxy.stop()


def run(work: Path, quick: bool) -> None:
    rig = NodeRig(work, AUTHIDS)
    try:
        rig.start()
        node_text = (rig.config.state / "run" / "haproxy.cfg").read_text()
        bare_text = BareHaproxy(rig, "bare").cfg.read_text()   # written, not started
        print(f"each config: {WARMUP} GETs, then {GETS} counted (keep-alive, a paid authid, "
              f"{AUTHIDS:,} in the map)", flush=True)
        node = count(rig, node_text, work / "callgrind" / "node")
        bare = count(rig, bare_text, work / "callgrind" / "bare")
        print(f"\nhaproxy instructions per admitted GET:\n"
              f"  node {node / 1e3:8.1f}k\n  bare {bare / 1e3:8.1f}k (baseline)\n"
              f"  node/bare {node / bare:.2f}; excess {(node - bare) / 1e3:.1f}k", flush=True)
        if quick:
            return
        print("\nwhere the excess goes (the node's config with one group taken out):",
              flush=True)
        without: dict[str, float] = {}
        costs: list[float] = []
        for i, (name, cut) in enumerate(GROUPS.items()):
            without[name] = count(rig, cut(node_text), work / "callgrind" / f"group-{i}")
            costs.append(without.get(DIFFERENCE_OF.get(name, ""), node) - without[name])
            print(f"  {name:70} {costs[-1] / 1e3:6.1f}k {costs[-1] / (node - bare):5.0%}",
                  flush=True)
        rest = node - bare - sum(costs)
        print(f"  {'the rest (the map and variables these read, the other rules)':70} "
              f"{rest / 1e3:6.1f}k {rest / (node - bare):5.0%}")
    finally:
        rig.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the node and the bare chain "
                        "only, not the groups (~3 minutes)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "haproxy"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is not installed (Debian: apt-get install "
                             f"{'haproxy' if tool == 'haproxy' else 'valgrind'})")
    return in_work_dir("bench-haproxy-instructions-", args.keep,
                       lambda work: run(work, args.quick),
                       note="instructions do not depend on them")

if __name__ == "__main__":
    raise SystemExit(main())
