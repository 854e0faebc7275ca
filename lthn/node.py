"""lthn-node: run the whole node under supervisord, operate it, or run the demo.

    lthn-node run -c CONFIG [--without PROGRAM ...]   check, prepare, exec supervisord
    lthn-node ctl -c CONFIG ARGS...                   supervisorctl on this node's socket
                                                      (`authd` means all authd processes)
    lthn-node demo [--dir DIR]                        a self-contained node on regtest
    lthn-node demo-pay [--dir DIR] AUTHID AMOUNT      pay the demo node from its payer wallet

`run` checks the config (mistakes: `Error: ...`, exit 2, nothing started), makes the state
dir (0700, with run/ log/ tls/), makes the certificates when the config uses the default
path, brings the ledger to the current schema, then replaces itself with
`supervisord -n -c supervisord.conf` with the variables that file reads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from lthn.commands.exits import EXIT_CONFIG, EXIT_FAILED
from lthn.config import Config
from lthn.daemon import DEFAULT_CONFIG, load_config_or_exit
from lthn.ledger import Ledger, LedgerError

# every program in supervisord.conf, in start order; authd may run as several processes
PROGRAMS = ("busd", "paymentd", "authd", "sessiond", "firewalld", "squid", "haproxy")
CONF_NAME = "supervisord.conf"
SHARE_DIR = Path("share") / "lthn-exit-node"


def supervisord_conf() -> Path:
    """supervisord.conf: $LTHN_SUPERVISORD_CONF, the source tree's, or the installed copy."""
    override = os.environ.get("LTHN_SUPERVISORD_CONF")
    candidates = [Path(override)] if override else []
    candidates += [Path(__file__).resolve().parent.parent / CONF_NAME,  # source or editable
                   Path(sys.prefix) / SHARE_DIR / CONF_NAME]           # pip install .
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("supervisord.conf not found (looked in "
                            + ", ".join(str(p) for p in candidates) + ")")


def tool(name: str) -> str:
    """A program installed beside this Python (a venv's bin/) first, then from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name) or name


def environment(config: Config, config_path: str, without: tuple[str, ...] = (),
                base: dict[str, str] | None = None) -> dict[str, str]:
    """The variables supervisord.conf reads, on top of `base` (default: os.environ)."""
    env = dict(os.environ if base is None else base)
    env["LTHN_CONFIG"] = str(Path(config_path).absolute())
    env["LTHN_STATE_DIR"] = str(config.state)
    env.setdefault("LTHN_AUTHD_PROCS", "1")
    for program in PROGRAMS:
        env.setdefault(f"LTHN_START_{program.upper()}", "true")
    for program in without:
        env[f"LTHN_START_{program.upper()}"] = "false"
    # supervisord finds lthn-busd & co. on PATH: put this Python's scripts first
    bin_dir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        env["PATH"] = bin_dir + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def check_environment(env: dict[str, str]) -> str | None:
    """What is wrong with the variables the operator may set, or None."""
    procs = env.get("LTHN_AUTHD_PROCS", "1")
    if not procs.isdigit() or not 1 <= int(procs) <= 64:
        return f'LTHN_AUTHD_PROCS: must be a whole number from 1 to 64 (got "{procs}")'
    for program in PROGRAMS:
        value = env.get(f"LTHN_START_{program.upper()}", "true")
        if value not in ("true", "false"):
            return f'LTHN_START_{program.upper()}: must be true or false (got "{value}")'
    return None


def prepare_state(config: Config) -> None:
    """The state dir and its run/ log/ tls/ subdirs, all 0700 (ledger, sockets, keys)."""
    config.state.mkdir(parents=True, exist_ok=True)
    os.chmod(config.state, 0o700)
    for sub in ("run", "log", "tls"):
        (config.state / sub).mkdir(exist_ok=True)
        os.chmod(config.state / sub, 0o700)


def ensure_tls(config: Config) -> str | None:
    """Make the default certificates, or check a configured one exists; returns a problem."""
    if config.proxy.certificate:
        if not os.access(config.proxy.certificate, os.R_OK):
            return f"{config.source}: proxy.certificate: cannot read {config.proxy.certificate}"
        return None
    from lthn.tls import CertificateError, ensure_certificates
    try:
        ensure_certificates(config.state / "tls")
    except (CertificateError, OSError) as exc:
        return f"{config.state / 'tls'}: cannot make the certificates: {exc}"
    return None


def parse_status(text: str) -> dict[str, str]:
    """`supervisorctl status` output -> {process name: state}, e.g. {"authd:authd_0": "RUNNING"}."""
    states = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isupper() and parts[1].isalpha():
            states[parts[0]] = parts[1]
    return states


def process_names(programs: tuple[str, ...], authd_procs: int = 1) -> list[str]:
    """The names `supervisorctl status` shows for these programs."""
    names = []
    for program in programs:
        if program == "authd":
            names += [f"authd:authd_{i}" for i in range(authd_procs)]
        else:
            names.append(program)
    return names


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    env = environment(config, args.config, tuple(args.without))
    problem = check_environment(env)
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
    supervisord = tool("supervisord")
    sys.stdout.flush()
    os.execvpe(supervisord, [supervisord, "-n", "-c", str(conf)], env)
    return EXIT_FAILED  # not reached: exec replaced this process


# authd runs as a group of processes (authd:authd_0, ...): plain supervisorctl reads
# `stop authd` as the process authd of group authd, which does not exist
GROUPS = ("authd",)
GROUP_COMMANDS = ("start", "stop", "restart", "status", "signal", "clear")
ONE_PROCESS_COMMANDS = ("tail", "pid", "fg")


def ctl_arguments(args: list[str]) -> list[str]:
    """`stop authd` -> `stop authd:*`; `tail authd` -> `tail authd:authd_0`."""
    if not args:
        return args
    command, rest = args[0], args[1:]
    if command in GROUP_COMMANDS:
        rest = [f"{a}:*" if a in GROUPS else a for a in rest]
    elif command in ONE_PROCESS_COMMANDS:
        rest = [f"{a}:{a}_0" if a in GROUPS else a for a in rest]
    return [command, *rest]


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
    from lthn import demo
    return demo.run(Path(args.dir))


def cmd_demo_pay(args: argparse.Namespace) -> int:
    from lthn import demo
    return demo.pay(Path(args.dir), args.authid, args.amount)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lthn-node", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run the node under supervisord (foreground)")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                     help=f"node config file (default {DEFAULT_CONFIG}, or $LTHN_CONFIG)")
    run.add_argument("--without", action="append", default=[], choices=PROGRAMS,
                     metavar="PROGRAM", help="do not start PROGRAM (repeatable): "
                     + ", ".join(PROGRAMS))
    run.set_defaults(func=cmd_run)

    ctl = commands.add_parser("ctl", help="supervisorctl for this node (status, stop authd, ...)")
    ctl.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                     help=f"node config file (default {DEFAULT_CONFIG}, or $LTHN_CONFIG)")
    ctl.add_argument("args", nargs=argparse.REMAINDER, help="supervisorctl arguments")
    ctl.set_defaults(func=cmd_ctl)

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
