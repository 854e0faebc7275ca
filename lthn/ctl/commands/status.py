"""Show the whole node at a glance: every program up or down, the wallet, authids,
sessions, bans, the bus and the outbox.

A program is up when supervisord runs it and, for the node's daemons, it answers its
control socket and its last heartbeat is at most two intervals old (watchd records them).
Programs left out with `lthn-node run --without` show as `off`. Exit 0 when every program
is up, 1 when one is down, 3 when supervisord itself does not answer.

--json keys (stable): version, programs[] (name, process, state, pid, uptime, up,
heartbeat_age, answers, version, details), down[], wallet (state, url, height, scanned,
lag, last_poll_age, error; null without paymentd), authids {state: count},
active_authids, sessions[] (service, kind, open), bans, bus (busd, heartbeats, ok),
outbox (queued, stuck). Times in seconds; null when unknown.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from lthn.control import NotAnswering, RequestFailed
from lthn.ctl.context import (
    ANSWERING,
    CommandError,
    ask_all,
    duration,
    load_config,
    print_json,
    print_table,
    reading_ledger,
    supervisor,
)
from lthn.exits import EXIT_FAILED, EXIT_NOT_ANSWERING, EXIT_OK
from lthn.node.supervisor_rpc import ProcessInfo, SupervisorDown
from lthn.requests import DaemonInfo, DaemonStatus, GetHeartbeats
from lthn.version import VERSION

NAME = "status"
ANSWER_TIMEOUT = 1.0   # a daemon that takes longer than this is shown as not answering


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        processes = supervisor(config).processes()
    except SupervisorDown as exc:
        raise CommandError(EXIT_NOT_ANSWERING, f"{exc}") from None
    asks: dict[str, tuple[str, Any]] = {
        f"status:{p.name}": (p.name, DaemonStatus())
        for p in processes if p.group in ANSWERING and p.state == "RUNNING"}
    asks["heartbeats"] = ("watchd", GetHeartbeats())
    answers = ask_all(config, asks, ANSWER_TIMEOUT)
    heartbeats = answers.pop("heartbeats")
    interval = config.bus.heartbeat_interval
    beats = {} if isinstance(heartbeats, Exception) else {
        b["process"]: b for b in heartbeats.daemons}
    heard = heartbeats_usable(answers.get("status:watchd"), heartbeats, interval,
                              time.time())
    programs = [program_row(p, answers.get(f"status:{p.name}"), beats, interval, heard)
                for p in processes]
    with reading_ledger(config) as ledger:
        authids = ledger.count_authids()
        sessions = ledger.count_open_sessions()
        bans = len(ledger.bans())
        outbox = ledger.outbox_counts()
    busd = next((p for p in programs if p["name"] == "busd"), None)
    fresh = [b for b in beats.values() if b["age"] <= 2 * interval]
    report = {
        "version": VERSION,
        "programs": programs,
        "down": [p["process"] for p in programs if p["up"] is False],
        "wallet": wallet(programs),
        "authids": authids,
        "active_authids": authids.get("ACTIVE", 0),
        "sessions": [{"service": s, "kind": k, "open": n}
                     for (s, k), n in sorted(sessions.items())],
        "bans": bans,
        "bus": {"busd": busd["state"] if busd else None,
                "heartbeats": None if isinstance(heartbeats, Exception) else len(fresh),
                "ok": bool(busd and busd["up"] and fresh)},
        "outbox": {"queued": outbox.queued, "stuck": outbox.stuck},
    }
    if args.json:
        print_json(report)
    else:
        show(report, heartbeats if isinstance(heartbeats, Exception) else None)
    return EXIT_FAILED if report["down"] else EXIT_OK


def heartbeats_usable(watchd: Any, heartbeats: Any, interval: float, now: float) -> bool:
    """Whether watchd's silence about a process means it is down: not when watchd did not
    answer, nor while watchd itself is younger than two intervals (it has not heard every
    daemon yet since it started; it keeps heartbeats in memory only)."""
    return isinstance(watchd, DaemonInfo) and not isinstance(heartbeats, Exception) \
        and now - watchd.started > 2 * interval


def program_row(p: ProcessInfo, answer: Any, beats: dict[str, dict], interval: float,
                heard: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": p.group, "process": p.name, "state": p.state, "pid": p.pid or None,
        "uptime": round(p.uptime, 1) if p.state == "RUNNING" else None,
        "heartbeat_age": None, "answers": None, "version": None, "details": {}, "up": None,
    }
    if p.never_started:
        row["state"] = "off"
        return row
    up = p.state == "RUNNING"
    if p.group in ANSWERING:
        beat = beats.get(p.name)
        if beat is not None and beat["pid"] == p.pid:
            row["heartbeat_age"] = beat["age"]
        if heard:
            # no heartbeat from this pid, or an old one: down after two missed beats
            fresh = row["heartbeat_age"] is not None and row["heartbeat_age"] <= 2 * interval
            young = p.uptime <= 2 * interval    # just started: its first beat may be due
            up = up and (fresh or young)
        if p.state == "RUNNING":
            row["answers"] = answer is not None and not isinstance(
                answer, NotAnswering | RequestFailed)
            up = up and row["answers"]
        if row["answers"]:
            row["version"] = answer.software
            row["details"] = answer.details
    row["up"] = up
    return row


def wallet(programs: list[dict[str, Any]]) -> dict[str, Any] | None:
    details = next((p["details"] for p in programs
                    if p["name"] == "paymentd" and p["details"]), None)
    if not details:
        return None
    height, scanned = details.get("height", 0), details.get("scanned", 0)
    last_ok = details.get("last_poll_ok") or 0
    return {"state": details.get("wallet"), "url": details.get("url"), "height": height,
            "scanned": scanned, "lag": max(0, height - 1 - scanned) if height else None,
            "last_poll_age": round(time.time() - last_ok, 1) if last_ok else None,
            "error": details.get("error", "")}


def show(report: dict[str, Any], heartbeat_error: Exception | None) -> None:
    rows = []
    for p in report["programs"]:
        age = p["heartbeat_age"]
        rows.append([p["process"], p["state"], p["pid"] or "-",
                     duration(p["uptime"]) if p["uptime"] is not None else "-",
                     f"{age:.1f} s ago" if age is not None else "-",
                     p["version"] or "-",
                     {True: "up", False: "DOWN", None: "-"}[p["up"]]])
    print_table(["PROGRAM", "STATE", "PID", "UPTIME", "HEARTBEAT", "VERSION", "UP"], rows)
    print()
    w = report["wallet"]
    if w is None:
        wallet_line = "unknown (paymentd not answering)"
    elif w["state"] == "UP":
        wallet_line = (f"up at height {w['height']}, scanned to {w['scanned']} (lag "
                       f"{w['lag']} blocks), last poll {w['last_poll_age']} s ago")
    else:
        wallet_line = f"{w['state'].lower()} ({w['error'] or 'no answer yet'}), {w['url']}"
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(report["authids"].items())
                       if s != "ACTIVE")
    sessions = ", ".join(f"{s['service']} {s['kind']} {s['open']}"
                         for s in report["sessions"]) or "none"
    bus = report["bus"]
    if bus["heartbeats"] is None:
        bus_line = f"busd {bus['busd']}; heartbeats unknown ({heartbeat_error})"
    else:
        bus_line = (f"{'ok' if bus['ok'] else 'NOT OK'} (busd {bus['busd']}, fresh "
                    f"heartbeats from {bus['heartbeats']} processes)")
    for label, value in (
            ("version", report["version"]),
            ("wallet", wallet_line),
            ("authids", f"{report['active_authids']} active" + (f" ({states})" if states
                                                                 else "")),
            ("sessions", sessions),
            ("bans", report["bans"]),
            ("bus", bus_line),
            ("outbox", f"{report['outbox']['queued']} queued, {report['outbox']['stuck']} "
                       "stuck" + (" (see lthnctl outbox)" if report['outbox']['stuck'] else "")),
            ("ledger", ledger_line(report["programs"])),
            ("down", ", ".join(report["down"]) or "none")):
        print(f"{label:9} {value}")


def ledger_line(programs: list[dict[str, Any]]) -> str:
    """What daemons say of the ledger: a write they could not make (disk full, #14)."""
    said: dict[str, list[str]] = {}
    for p in programs:
        problem = (p["details"] or {}).get("ledger")
        if problem:
            said.setdefault(problem, []).append(p["process"])
    if not said:
        return "no write problem reported"
    return "; ".join(f"{problem} (says {', '.join(who)})" for problem, who in said.items())
