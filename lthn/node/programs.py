"""The node's programs: one table, from which everything that lists them is derived.

`supervisord.conf` is rendered from it (`python -m lthn.node.programs > supervisord.conf`,
and the VPN programs' `python -m lthn.node.programs vpn > supervisord-vpn.conf`, which it
includes in VPN mode; a test keeps the checked-in files equal to the rendering), and so are
`lthn-node run
--without`, the `LTHN_START_<NAME>` variables, the test fixture's program list and the
README's "What runs" table (`python -m lthn.reference programs`).

To add a program: add a `Program` row here, give it a console script in setup.cfg,
regenerate supervisord.conf and the README table. A program of one mode (`mode="vpn"`)
goes into that mode's file (supervisord-vpn.conf), which supervisord.conf includes only
when the config turns the mode on (`LTHN_MODE_FILES`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Program:
    name: str
    script: str          # console script supervisord runs (setup.cfg entry point)
    module: str          # the module that script runs (its `main`)
    summary: str         # one line for the README table and supervisord.conf
    priority: int        # supervisord start order: lower first
    stopwaitsecs: int
    startsecs: int = 1
    binary: str | None = None   # the Debian program it needs besides Python, if any
    group: bool = False         # numprocs from LTHN_<NAME>_PROCS; named <name>:<name>_<n>
    note: str = ""              # extra comment lines in supervisord.conf
    mode: str = ""              # "vpn": started only when the config turns that mode on
    reloads: bool = True        # SIGHUP re-reads the config (`lthn-node reload`, #15)


PROGRAMS: tuple[Program, ...] = (
    Program("busd", "lthn-busd", "services.busd.main",
            "the message bus: a ZeroMQ XSUB/XPUB forwarder; every other program publishes "
            "and subscribes through it. Started first.",
            priority=10, stopwaitsecs=5, reloads=False,
            note="zmq reconnects by itself, so a late or restarted busd costs messages, "
                 "never a crash."),
    Program("paymentd", "lthn-paymentd", "services.paymentd.main",
            "polls the provider wallet (Lethean `get_vpn_transfers` or Monero "
            "`get_transfers`), credits each (txid, authid) exactly once in the ledger, "
            "follows confirmations and revocations, and activates authids by Lethean's "
            "rules (`lthn/credit_rules.py`).",
            priority=100, stopwaitsecs=15,
            note="A wallet that is down is waited for, not fatal; a wallet call in flight "
                 "may take its timeout to return."),
    Program("authd", "lthn-authd", "services.authd.main",
            "keeps haproxy's runtime map of active authids equal to the ledger (bus "
            "messages, the ledger's changes every 3 s, a full resync whenever haproxy "
            "restarts and every 10 minutes), answers the "
            "client status request, and publishes every refusal haproxy logs as "
            "`access.refused`. Scales with `LTHN_AUTHD_PROCS`.",
            priority=100, stopwaitsecs=10, group=True),
    Program("sessiond", "lthn-sessiond", "services.sessiond.main",
            "watches each authid's live proxy sessions in haproxy's stick tables (and, in "
            "VPN mode, its OpenVPN clients as vpnd reports them), charges their time (into "
            "the ledger at least every minute of use), and when credit runs out deactivates "
            "the authid and cuts its open connections, tunnels and VPN clients.",
            priority=100, stopwaitsecs=10),
    Program("firewalld", "lthn-firewalld", "services.firewalld.main",
            "keeps the operator's source and destination lists in haproxy's runtime ACLs "
            "(no reload), reads haproxy's per-source offence counters every 0.1 s and bans "
            "offenders for a while, longer each time (ledger rows, `ban.added`/"
            "`ban.lifted`, haproxy's runtime map, nftables where present); answers "
            "`lthnctl ban`.",
            priority=100, stopwaitsecs=5),
    Program("watchd", "lthn-watchd", "services.watchd.main",
            "watches the node for its operator: records every daemon's heartbeat (what "
            "`lthnctl status` shows), serves the Prometheus metrics on loopback and writes "
            "the audit log file from the ledger.",
            priority=100, stopwaitsecs=5),
    Program("squid", "lthn-squid", "services.proxy.run_squid",
            "renders squid's config from the node config and runs squid as its child: "
            "the loopback forward proxy that fetches for clients and refuses non-global "
            "and denied destinations after name resolution. Reconfigures squid on a reload "
            "and when the machine's addresses change.",
            priority=200, stopwaitsecs=40, startsecs=2, binary="squid",
            note="squid before haproxy: haproxy's back end should be there when clients "
                 "arrive. squid waits up to its shutdown_lifetime before it ends on "
                 "SIGTERM."),
    Program("haproxy", "lthn-haproxy", "services.proxy.run_haproxy",
            "renders haproxy's config and the active-authid map from the ledger, then "
            "runs haproxy (master-worker) as its child: the TLS front end clients connect "
            "to, which admits only requests whose `X-LTHN-PaymentID` is in the map, "
            "removes `X-LTHN-*` headers, and passes them to squid. Reloads haproxy without "
            "refusing a connection, and follows the machine's addresses at runtime.",
            priority=300, stopwaitsecs=10, startsecs=2, binary="haproxy",
            note="SIGTERM is haproxy's hard stop; tunnels are cut. SIGHUP (lthn-node "
                 "reload) is a seamless reload."),
    Program("vpnd", "lthn-vpnd", "services.vpn.main",
            "VPN mode: holds OpenVPN's management connection, admits or refuses each login "
            "(the authid as username and password) from the ledger, reports the live "
            "clients to sessiond, and cuts clients sessiond asks it to.",
            priority=250, stopwaitsecs=10, mode="vpn",
            note="Started only when vpn.enabled is true. OpenVPN waits (management-hold) "
                 "until vpnd is attached; vpnd reconnects whenever OpenVPN restarts."),
    Program("openvpn", "lthn-openvpn", "services.vpn.run_openvpn",
            "VPN mode: renders OpenVPN's server config (the node's CA and certificate), "
            "loads the node's nftables table (forwarding, NAT out of the outside interface, "
            "egress filter), runs OpenVPN in the foreground and removes the table when it "
            "stops.",
            priority=260, stopwaitsecs=15, startsecs=2, binary="openvpn", mode="vpn",
            # SIGHUP is OpenVPN's restart, which drops every client: never a reload
            reloads=False,
            note="Started only when vpn.enabled is true. OpenVPN tells its UDP clients it "
                 "is going (explicit-exit-notify), so they reconnect at once after a "
                 "restart."),
)

NAMES: tuple[str, ...] = tuple(p.name for p in PROGRAMS)
GROUPS: tuple[str, ...] = tuple(p.name for p in PROGRAMS if p.group)


def wanted(program: Program, modes: set[str]) -> bool:
    """Does the node run `program` with these modes on ("vpn" when vpn.enabled)?"""
    return not program.mode or program.mode in modes


def by_name(name: str) -> Program:
    for program in PROGRAMS:
        if program.name == name:
            return program
    raise KeyError(name)


def procs_variable(program: Program) -> str:
    return f"LTHN_{program.name.upper()}_PROCS"


def start_variable(program: Program) -> str:
    return f"LTHN_START_{program.name.upper()}"


HEADER = """\
; supervisord config of the Lethean exit node: the bus, the daemons, haproxy, squid and,
; in VPN mode, OpenVPN.
;
; GENERATED from lthn/node/programs.py (python -m lthn.node.programs > supervisord.conf);
; a test keeps this file equal to it. Change the table there, not this file.
;
; Start it with `lthn-node run -c CONFIG`, which checks the node config, prepares the
; state dir (0700, with run/ log/ tls/), sets the variables below and runs
; `supervisord -n -c <this file>` (as `python -m lthn.node.supervisord_main`). Operate it
; with `lthn-node ctl -c CONFIG ...` (supervisorctl with the right socket): status, stop
; authd, start authd, tail -f authd.
; lthn-node ctl reads `authd` as the whole authd group; plain supervisorctl needs `authd:*`.
;
; Variables (all set by `lthn-node run`; set them yourself to run supervisord directly):
;   LTHN_CONFIG        the node config file every program reads
;   LTHN_STATE_DIR     the node's state dir (`state_dir` in the config)
;   LTHN_AUTHD_PROCS   how many authd processes (numprocs; default 1)
;   LTHN_START_<NAME>  true/false: start that program with the node (default true)
;   LTHN_MODE_FILES    the files of the modes the config turns on, beside this one:
;                      supervisord-vpn.conf (vpnd, openvpn) with vpn.enabled, else empty;
;                      a mode that is off has no programs, so `status` lists none of them
;
; Every program runs in the foreground and logs to stdout, captured into
; $LTHN_STATE_DIR/log/<program>.log (authd_<n>.log). SIGTERM is each program's clean
; stop path; each program also gets SIGTERM when supervisord dies (lthn/node/orphans.py).

; supervisord logs only to its own rotated logfile (silent: not to stdout as well), so
; its output cannot fill a disk, nor kill it when the disk is full (#14).
[supervisord]
nodaemon=true
silent=true
logfile=%(ENV_LTHN_STATE_DIR)s/log/supervisord.log
logfile_maxbytes=10MB
logfile_backups=5
pidfile=%(ENV_LTHN_STATE_DIR)s/run/supervisord.pid
childlogdir=%(ENV_LTHN_STATE_DIR)s/log

[unix_http_server]
file=%(ENV_LTHN_STATE_DIR)s/run/supervisor.sock
chmod=0700

[supervisorctl]
serverurl=unix://%(ENV_LTHN_STATE_DIR)s/run/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[include]
files=%(ENV_LTHN_MODE_FILES)s
"""

MODE_FILES = {"vpn": "supervisord-vpn.conf"}

MODE_HEADER = """\
; supervisord programs of the Lethean exit node's {mode} mode, included by supervisord.conf
; (its [include] section) when the node config turns the mode on.
;
; GENERATED from lthn/node/programs.py (python -m lthn.node.programs {mode} > {file});
; a test keeps this file equal to it. Change the table there, not this file.
"""


def _comment(text: str, width: int = 88) -> list[str]:
    lines, line = [], ";"
    for word in text.replace("`", "").replace("**", "").split():
        if len(line) + 1 + len(word) > width:
            lines.append(line)
            line = ";"
        line += " " + word
    lines.append(line)
    return lines


def render_program(program: Program) -> str:
    name = program.name
    lines = ["", *_comment(f"{name}: {program.summary}")]
    if program.note:
        lines += _comment(program.note)
    lines += [f"[program:{name}]", f"command={program.script} -c %(ENV_LTHN_CONFIG)s"]
    log = "%(program_name)s"
    if program.group:
        lines += ["process_name=%(program_name)s_%(process_num)d",
                  f"numprocs=%(ENV_{procs_variable(program)})s"]
        log = "%(program_name)s_%(process_num)d"
    lines += [
        f"priority={program.priority}",
        f"autostart=%(ENV_{start_variable(program)})s",
        "autorestart=true",
        f"startsecs={program.startsecs}",
        "startretries=5",
        "stopsignal=TERM",
        f"stopwaitsecs={program.stopwaitsecs}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile=%(ENV_LTHN_STATE_DIR)s/log/{log}.log",
        "stdout_logfile_maxbytes=10MB",
        "stdout_logfile_backups=5",
    ]
    return "\n".join(lines) + "\n"


def render_supervisord_conf(mode: str = "") -> str:
    """supervisord.conf (`mode` ""), or the file of one mode's programs."""
    programs = "".join(render_program(p) for p in PROGRAMS if p.mode == mode)
    if not mode:
        return HEADER + programs
    return MODE_HEADER.format(mode=mode, file=MODE_FILES[mode]) + programs


def readme_table() -> str:
    rows = ["| program | what it does |", "| --- | --- |"]
    for p in PROGRAMS:
        rows.append(f"| `{p.name}` (`{p.script}`) | {p.summary} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode and mode not in MODE_FILES:
        raise SystemExit(f"usage: python -m lthn.node.programs [{'|'.join(MODE_FILES)}]")
    sys.stdout.write(render_supervisord_conf(mode))
