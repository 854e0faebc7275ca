"""lthn-node: run the whole node under supervisord, operate it, or run the demo.

    lthn-node init DIR [--endpoint HOST ...]          a new node: keys, certificates, config,
                                                      signed sdp.json
    lthn-node run -c CONFIG [--without PROGRAM ...]   check, prepare, run supervisord
    lthn-node ctl -c CONFIG ARGS...                   supervisorctl on this node's socket
                                                      (`authd` means all authd processes)
    lthn-node reload -c CONFIG                        apply a changed config (no restart)
    lthn-node demo [--dir DIR]                        a self-contained node on regtest
    lthn-node demo-pay [--dir DIR] AUTHID AMOUNT      pay the demo node from its payer wallet

`run` checks the config (mistakes: `Error: ...`, exit 2, nothing started), refuses to
start beside a live supervisord of the same state dir (exit 2) and stops what a dead one
left running, makes the state dir (0700, with run/ log/ tls/), makes the certificates
when the config uses the default path, brings the ledger to the current schema, then
runs supervisord (`lthn.node.supervisord_main`) on supervisord.conf with the variables
that file reads, staying its small parent: SIGHUP to `lthn-node run` is `lthn-node
reload`, SIGTERM stops the node, and supervisord dies with it (lthn/node/parent.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lthn.cli_args import config_argument, load_config_or_exit
from lthn.config import Config
from lthn.config import load as load_config
from lthn.demo import demo
from lthn.exits import EXIT_CONFIG, EXIT_FAILED
from lthn.ledger import Ledger, LedgerError
from lthn.node import init as init_mod
from lthn.node import orphans
from lthn.node.parent import supervise
from lthn.node.programs import NAMES
from lthn.node.reload import reload_node, save_snapshot
from lthn.node.supervision import (
    check_environment,
    ctl_arguments,
    environment,
    supervisord_conf,
    tool,
)
from lthn.schema import ConfigError


def prepare_state(config: Config) -> None:
    """The state dir and its run/ log/ tls/ subdirs, all 0700 (ledger, sockets, keys)."""
    config.state.mkdir(parents=True, exist_ok=True)
    os.chmod(config.state, 0o700)
    for sub in ("run", "log", "tls"):
        (config.state / sub).mkdir(exist_ok=True)
        os.chmod(config.state / sub, 0o700)


def ensure_tls(config: Config) -> str | None:
    """Make the default certificates (a configured one was checked before); returns a
    problem."""
    if config.proxy.certificate:
        return None
    from lthn.tls import CertificateError, ensure_certificates
    try:
        ensure_certificates(config.state / "tls")
    except (CertificateError, OSError) as exc:
        return f"{config.state / 'tls'}: cannot make the certificates: {exc}"
    return None


def certificate_problem(config: Config) -> str | None:
    """A configured certificate that haproxy could not serve, as one line (exit 2)."""
    if not config.proxy.certificate:
        return None
    from lthn.tls import certificate_problem as problem_with
    problem = problem_with(config.proxy.certificate)
    return f"{config.source}: {problem}" if problem else None


def clear_the_way(config: Config, config_path: str) -> str | None:
    """Refuse (a problem) if a supervisord of this state dir lives; stop the programs a
    dead one left running, so there is never a second set beside them (#14)."""
    supervisors, left = orphans.node_processes(config.state)
    if supervisors:
        pids = ", ".join(str(p.pid) for p in supervisors)
        return (f"{config.state}: the node is already running there (supervisord pid "
                f"{pids}); stop it first: lthn-node ctl -c {config_path} shutdown")
    if left:
        names = ", ".join(f"{p.name} (pid {p.pid})" for p in left)
        print(f"lthn-node: stopping {len(left)} programs a supervisord that died left "
              f"running in {config.state}: {names}", file=sys.stderr)
        killed = orphans.stop(left)
        if killed:
            print("lthn-node: killed (SIGKILL) after they would not stop: "
                  + ", ".join(f"{p.name} (pid {p.pid})" for p in killed), file=sys.stderr)
    return None


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    env = environment(config, args.config, tuple(args.without))
    problem = check_environment(env) or certificate_problem(config)
    if problem:
        print(f"Error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    problem = clear_the_way(config, args.config)
    if problem:
        print(f"Error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        conf = supervisord_conf()
        prepare_state(config)
    except OSError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    problem = ensure_tls(config)
    if problem:
        print(f"Error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    try:
        # migrate once here, so a ledger this version cannot use stops the node with one
        # clear line instead of every daemon failing in a restart loop
        Ledger.open(config.ledger_path).close()
    except LedgerError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"lthn-node: starting the node's programs under supervisord; its log is "
          f"{config.state / 'log' / 'supervisord.log'}, `lthn-node ctl -c {args.config} "
          "status` shows them", flush=True)
    save_snapshot(config)  # what a reload compares a changed config with
    argv = [sys.executable, "-m", "lthn.node.supervisord_main", "-n", "-c", str(conf)]
    return supervise(argv, env, lambda: reload_from(args.config))


def reload_from(config_path: str) -> int:
    """The config checked as at a start, then the reload (lthn/node/reload.py)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"Error: {exc}; nothing was reloaded", file=sys.stderr)
        return EXIT_CONFIG
    return reload_node(config, config_path)


def cmd_reload(args: argparse.Namespace) -> int:
    return reload_from(args.config)


def cmd_ctl(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    try:
        conf = supervisord_conf()
    except OSError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    supervisorctl = tool("supervisorctl")
    env = environment(config, args.config)
    sys.stdout.flush()
    os.execvpe(supervisorctl, [supervisorctl, "-c", str(conf), *ctl_arguments(args.args)],
               env)
    return EXIT_FAILED  # not reached


def cmd_demo(args: argparse.Namespace) -> int:
    return demo.run(Path(args.dir))


def cmd_demo_pay(args: argparse.Namespace) -> int:
    return demo.pay(Path(args.dir), args.authid, args.amount)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lthn-node", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = commands.add_parser("init", help="make a new node in DIR: provider key, "
                               "certificates, config, signed sdp.json")
    init_mod.arguments(init)
    init.set_defaults(func=init_mod.run)

    run = commands.add_parser("run", help="run the node under supervisord (foreground)")
    config_argument(run)
    run.add_argument("--without", action="append", default=[], choices=NAMES,
                     metavar="PROGRAM", help="do not start PROGRAM (repeatable): "
                     + ", ".join(NAMES))
    run.set_defaults(func=cmd_run)

    ctl = commands.add_parser("ctl", help="supervisorctl for this node (status, stop authd, ...)")
    config_argument(ctl)
    ctl.add_argument("args", nargs=argparse.REMAINDER, help="supervisorctl arguments")
    ctl.set_defaults(func=cmd_ctl)

    reload = commands.add_parser(
        "reload", help="check a changed config and apply it to the running node without a "
        "restart (what SIGHUP to `lthn-node run` does)")
    config_argument(reload)
    reload.set_defaults(func=cmd_reload)

    demo = commands.add_parser("demo", help="run a self-contained demo node on Monero regtest")
    demo.add_argument("--dir", default="demo", help="where everything goes (default ./demo)")
    demo.set_defaults(func=cmd_demo)

    pay = commands.add_parser("demo-pay", help="pay the running demo node for an authid")
    pay.add_argument("--dir", default="demo", help="the demo's directory (default ./demo)")
    pay.add_argument("authid", help="16 hex characters, starting with the service id (1A)")
    pay.add_argument("amount", help="coins, e.g. 0.05")
    pay.set_defaults(func=cmd_demo_pay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
