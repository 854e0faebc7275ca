"""What lthnctl commands share: the config, the ledger (read only), asking daemons, and
printing (tables for people, `--json` for scripts, one-line errors).

A command raises `CommandError(exit code, text)`; lthnctl prints `Error: text` to stderr
and exits with the code (lthn/exits.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import zmq

from lthn import control
from lthn.cli_args import load_config_or_exit
from lthn.config import Config
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_NOT_ANSWERING
from lthn.ledger import Ledger, LedgerError, LedgerMissing, LedgerUnreadable
from lthn.node.supervisor_rpc import SupervisorDown, SupervisorRpc
from lthn.requests import Request

# programs whose processes answer requests (haproxy, squid and busd do not)
ANSWERING = ("paymentd", "authd", "sessiond", "firewalld", "watchd")


class CommandError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def load_config(path: str) -> Config:
    """The config, or `Error: ...` and exit 2 (the one -c/--config helper)."""
    return load_config_or_exit(path, hint=False)


@contextmanager
def reading_ledger(config: Config) -> Iterator[Ledger]:
    """The ledger, read only (nothing is created or migrated); a missing one, or a file
    there that is no ledger (damaged, empty), is a usage error (wrong config?, #14)."""
    try:
        ledger = Ledger.open_existing(config.ledger_path)
    except (LedgerMissing, LedgerUnreadable) as exc:
        raise CommandError(EXIT_CONFIG, str(exc)) from None
    except LedgerError as exc:
        raise CommandError(EXIT_FAILED, str(exc)) from None
    try:
        yield ledger
    finally:
        ledger.close()


def supervisor(config: Config, timeout: float = 2.0) -> SupervisorRpc:
    return SupervisorRpc(config.state / "run" / "supervisor.sock", timeout)


def processes_of(config: Config, program: str) -> list[str]:
    """The process names of a program (`authd` -> authd_0, authd_1, ...): supervisord's
    list when it answers, else the control sockets present."""
    try:
        names = [p.name for p in supervisor(config).processes() if p.group == program]
    except SupervisorDown:
        names = []
    if not names:
        run = config.state / "run"
        names = sorted(p.name[len("ctl-"):-len(".sock")]
                       for p in run.glob(f"ctl-{program}*.sock")
                       if p.name[len("ctl-"):-len(".sock")].split("_")[0] == program)
    return names or [program]


def ask(config: Config, process: str, req: Request, timeout: float) -> Any:
    """One request to one process; its failure as a CommandError that says what to do."""
    result = ask_all(config, {process: (process, req)}, timeout)[process]
    if isinstance(result, control.NotAnswering):
        raise CommandError(EXIT_NOT_ANSWERING, str(result))
    if isinstance(result, control.RequestFailed):
        raise CommandError(EXIT_FAILED, f"{process}: {result}")
    return result


def ask_all(config: Config, asks: dict[str, tuple[str, Request]], timeout: float
            ) -> dict[str, Any]:
    """Several requests at once ({key: (process, request)}): {key: reply or the error};
    a process that does not answer is explained with supervisord's word on it."""
    ctx = zmq.Context()
    try:
        results = control.ask_many(ctx, config.state, asks, timeout)
    finally:
        ctx.destroy(linger=0)
    silent = {k: v for k, v in results.items() if isinstance(v, control.NotAnswering)}
    if silent:
        try:
            states = {p.name: p for p in supervisor(config).processes()}
        except SupervisorDown as exc:
            states, down = {}, str(exc)
        else:
            down = ""
        for key, exc in silent.items():
            info = states.get(asks[key][0])
            if down:
                hint = f"; {down}"
            elif info is not None and info.state != "RUNNING":
                hint = (f"; supervisord says {info.state} (start it: lthn-node ctl -c "
                        f"{config.source} start {info.group})")
            else:
                hint = ""
            results[key] = control.NotAnswering(f"{exc}{hint}")
    return results


# --- printing ---

def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns as wide as their widest cell, two spaces apart; numbers right-aligned; an
    empty cell prints as `-` (so scripts can split on two spaces)."""
    cells = [[str(h) for h in headers]] + [["-" if c is None or c == "" else str(c)
                                            for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1
               for i in range(len(headers))]
    for row in cells:
        parts = [c.rjust(w) if num else c.ljust(w)
                 for c, w, num in zip(row, widths, numeric, strict=True)]
        print("  ".join(parts).rstrip())


def _is_number(text: str) -> bool:
    try:
        Decimal(text)
    except ArithmeticError:
        return False
    return True


def local_time(ts: float | None) -> str:
    """Unix time in the operator's local time zone, to the second ("-" for none)."""
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def coins(atomic: int, units: int) -> str:
    """Atomic units as coins with every digit the unit has (no float rounding)."""
    places = len(str(units)) - 1
    value = Decimal(atomic) / Decimal(units)
    return f"{value:.{places}f}"


def to_atomic(text: str, units: int, what: str) -> int:
    """Coins typed by the operator -> atomic units; a usage error when not a positive
    amount of whole atomic units."""
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise CommandError(EXIT_CONFIG, f'{what}: must be a number of coins (got "{text}")'
                           ) from None
    atomic = value * units
    if not value.is_finite() or value <= 0:
        raise CommandError(EXIT_CONFIG, f'{what}: must be more than 0 (got "{text}")')
    if atomic != atomic.to_integral_value():
        raise CommandError(EXIT_CONFIG, f"{what}: {text} is finer than one atomic unit "
                           f"(1/{units} coin)")
    return int(atomic)


def duration(seconds: float) -> str:
    """1:02:03 style; days as `2d 3:04:05`."""
    s = int(max(0, seconds))
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{days}d {text}" if days else text




_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str) -> float:
    """`90`, `90s`, `30m`, `12h`, `7d` -> seconds; a usage error otherwise."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:], None)
    number = raw[:-1] if unit else raw
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise CommandError(EXIT_CONFIG, f'{what}: must be a duration like 90s, 30m, 12h or '
                           f'7d (got "{text}")') from None
    if not value > 0:
        raise CommandError(EXIT_CONFIG, f'{what}: must be longer than 0 (got "{text}")')
    return value


def reason_argument(parser: Any, default: str | None = None) -> None:
    """--reason: why, in the audit log (required for changes of money or access)."""
    if default is None:
        parser.add_argument("--reason", required=True,
                            help="why (written to the audit log with your user name)")
    else:
        parser.add_argument("--reason", default=default,
                            help=f'why (audit log; default "{default}")')


def check_reason(text: str) -> str:
    reason = " ".join(text.split())
    if not reason:
        raise CommandError(EXIT_CONFIG, "--reason: must not be empty")
    if len(reason) > 200:
        raise CommandError(EXIT_CONFIG, f"--reason: at most 200 characters (got {len(reason)})")
    return reason


def authid_argument(config: Config, text: str) -> str:
    """A well-formed authid of a configured service, or a usage error."""
    from lthn.authid import AuthidError, parse_authid, service_of
    try:
        authid = parse_authid(text)
    except AuthidError as exc:
        raise CommandError(EXIT_CONFIG, str(exc)) from None
    if config.service(service_of(authid)) is None:
        known = ", ".join(s.key for s in config.services) or "none"
        raise CommandError(EXIT_CONFIG, f"authid {authid}: service {service_of(authid)} is "
                           f"not in the config (services: {known})")
    return authid


def print_changed(done: Any, units: int, as_json: bool, what: str) -> None:
    """An authid after a change by hand: one line, or the reply's keys in JSON."""
    if as_json:
        print_json({"authid": done.authid, "state": done.state, "credit": done.credit,
                    "spent": done.spent, "balance": done.balance, "changed": done.changed})
        return
    print(f"authid {done.authid}: {what}; now {done.state}, balance "
          f"{coins(done.balance, units)} (credit {coins(done.credit, units)}, spent "
          f"{coins(done.spent, units)})")
