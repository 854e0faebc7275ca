"""`lthn-node demo`: a whole node on a local Monero regtest chain, in one directory.

Everything lives under DIR (default ./demo): the regtest chain (monerod, the provider's
wallet the node watches, a payer wallet), the node config `node.yaml`, the state dir
(ledger, certificates, sockets, logs) and `demo.json`, which `lthn-node demo-pay` reads
to pay from the payer wallet. A small origin web server on 127.0.0.1 gives the proxy
something to fetch; the config lets the proxy reach it (`proxy.allow_destinations`), as
the node refuses loopback destinations otherwise. The node runs under supervisord like a
real one. Ctrl-C stops the node, the chain and the origin. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import yaml

from lthn import config as config_mod
from lthn.authid import AuthidError, parse_authid
from lthn.demo.regtest import RegtestChain, RegtestError
from lthn.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from lthn.node.supervision import node_programs, parse_status, process_names, tool
from lthn.ports import free_port, free_port_pair
from lthn.process import die_with_parent
from lthn.stop_signals import StopSignals

DEMO_FILE = "demo.json"
SERVICE_ID = "1A"
COST = Decimal("0.001")            # XMR a minute
PREPAID_MINUTES = 10
UNITS = 10**12                     # monero atomic units per coin
MINE_EVERY = 20.0                  # seconds between demo blocks: confirmations rise
START_TIMEOUT = 90.0
ORIGIN_PAGE = b"Hello from the demo origin, fetched through your Lethean exit node.\n"


class OriginHandler(BaseHTTPRequestHandler):
    """The demo's destination web site: one page, any path."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(ORIGIN_PAGE)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(ORIGIN_PAGE)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the node's own logs tell what happened


class OriginServer(ThreadingHTTPServer):
    """The origin's server: a client that goes away mid-answer is normal for a web site,
    not a traceback on the demo's terminal (issue #15)."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def prepare_dir(directory: Path) -> str | None:
    """Make DIR (0700), clearing an earlier demo; returns a problem instead of clobbering."""
    if directory.exists() and not directory.is_dir():
        return f"{directory} is not a directory"
    if directory.is_dir() and any(directory.iterdir()) and not (directory / DEMO_FILE).exists():
        return f"{directory} is not empty and holds no earlier demo; choose another --dir"
    if _running_supervisord(directory / "state" / "run" / "supervisord.pid"):
        return f"a demo is still running in {directory}; stop it (Ctrl-C) or choose another --dir"
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    # a regtest chain starts again at height 1: an old ledger would name lost txids
    for sub in ("regtest", "state"):
        shutil.rmtree(directory / sub, ignore_errors=True)
    for name in (DEMO_FILE, "node.yaml", "node.out"):
        (directory / name).unlink(missing_ok=True)
    return None


def _running_supervisord(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"supervisord" in cmdline


def node_config(directory: Path, chain: RegtestChain, origin_port: int) -> dict[str, Any]:
    log_port = free_port_pair()
    return {
        "provider": {"id": secrets.token_hex(32), "name": "Lethean demo node"},
        "wallet": chain.wallet_section(),   # the defaults; daemon_zmq names its publisher
        "services": [{
            "id": SERVICE_ID, "name": "Demo proxy", "type": "proxy", "cost": str(COST),
            "firstPrePaidMinutes": PREPAID_MINUTES, "firstVerificationsNeeded": 0,
            "subsequentPrePaidMinutes": PREPAID_MINUTES, "subsequentVerificationsNeeded": 0,
        }],
        "proxy": {"bind": "127.0.0.1", "port": free_port(), "squid_port": free_port(),
                  "status_port": free_port(), "log_port": log_port,
                  "allow_destinations": [f"127.0.0.1:{origin_port}"]},
        "metrics": {"port": free_port()},
        "state_dir": str(directory / "state"),
    }


def ctl_status(config_path: Path) -> dict[str, str]:
    result = subprocess.run([tool("lthn-node"), "ctl", "-c", str(config_path), "status"],
                            capture_output=True, text=True, timeout=30, check=False)
    return parse_status(result.stdout)


def _listening(port: int) -> bool:
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_running(proc: subprocess.Popen, config_path: Path, output: Path,
                 ports: list[int], stopping: Callable[[], bool]) -> str | None:
    """Wait until every program is RUNNING and `ports` accept connections (RUNNING only
    means "up for startsecs"); returns a problem if the node dies or stalls, None as soon
    as `stopping()` says so."""
    names = process_names(tuple(p.name for p in node_programs(config_mod.load(config_path))))
    deadline = time.monotonic() + START_TIMEOUT
    states: dict[str, str] = {}
    while time.monotonic() < deadline and not stopping():
        if proc.poll() is not None:
            return f"the node exited ({proc.returncode}):\n{_tail(output)}"
        states = ctl_status(config_path)
        if all(states.get(n) == "RUNNING" for n in names) and all(map(_listening, ports)):
            return None
        time.sleep(0.3)  # polling supervisorctl against the deadline above
    waiting = ", ".join(f"{n} {states.get(n, '?')}" for n in names if states.get(n) != "RUNNING")
    return f"not all programs RUNNING after {START_TIMEOUT:.0f} s: {waiting}"


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) \
        if path.exists() else ""


def command(name: str) -> str:
    """How to type a console script: its bare name when PATH finds this one (a venv that
    is not activated would not), else its full path."""
    path = tool(name)
    return name if shutil.which(name) == path else path


def instructions(directory: Path, config: dict[str, Any], origin_port: int) -> str:
    authid = (SERVICE_ID + secrets.token_hex(7)).upper()
    node, ctl, tap = command("lthn-node"), command("lthnctl"), command("lthn-tap")
    config_path = directory / "node.yaml"
    ca = directory / "state" / "tls" / "ca.pem"
    port = config["proxy"]["port"]
    first = COST * PREPAID_MINUTES
    origin = f"http://127.0.0.1:{origin_port}/"
    running = ", ".join(p.name for p in node_programs(config_mod.load(config_path)))
    return f"""
The demo node is running: {running}
under supervisord, paid through a local Monero regtest chain. Ctrl-C stops everything.

  directory  {directory}
  proxy      https://127.0.0.1:{port}  (TLS; CA certificate {ca})
  service    {SERVICE_ID} "Demo proxy": {COST} XMR a minute; a first payment must buy
             {PREPAID_MINUTES} minutes ({first} XMR); no confirmations needed

1. Pay for an authid (16 hex characters starting with {SERVICE_ID}), in another terminal:

     {node} demo-pay --dir {directory} {authid} 0.05

2. Use the proxy with it (before paying, this answers 403 NO_PAYMENT; add -i to see):

     curl --proxy https://127.0.0.1:{port} --proxy-cacert {ca} \\
          -H 'X-LTHN-PaymentID: {authid}' {origin}

   (--proxy-insecure instead of --proxy-cacert works too.)

3. Look inside:
     {ctl} -c {config_path} authid show {authid}
     {tap} -c {config_path}    # every bus message as it happens
     {node} ctl -c {config_path} status    # supervisorctl
     ls {directory / 'state' / 'log'}
"""


class Miner(threading.Thread):
    """Mines one block every MINE_EVERY seconds, so payments gain confirmations."""

    def __init__(self, chain: RegtestChain) -> None:
        super().__init__(daemon=True, name="demo-miner")
        self.chain = chain
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(MINE_EVERY):
            try:
                self.chain.mine(1)
            except (RegtestError, requests.RequestException, ValueError):
                pass  # the chain is stopping, or busy; the next turn tries again


def run(directory: Path) -> int:
    """The demo, in the foreground until Ctrl-C (or SIGTERM)."""
    directory = directory.absolute()
    problem = prepare_dir(directory)
    if problem:
        print(f"Error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    origin = OriginServer(("127.0.0.1", 0), OriginHandler)
    threading.Thread(target=origin.serve_forever, daemon=True, name="demo-origin").start()
    origin_port = origin.server_address[1]
    # monerod publishes its blocks (ZMQ): confirmations follow them as they come (#16)
    chain = RegtestChain(directory / "regtest", zmq_pub=True)
    miner = Miner(chain)
    node: subprocess.Popen | None = None
    output = directory / "node.out"
    signals = StopSignals()
    starting = [True]

    def stop_asked(signum: int, _frame: object) -> None:
        # records (no lock is taken in a handler), whatever SIGINT's inherited
        # disposition (#14); a chain still starting (half a minute) is killed, so its
        # start fails at once: the demo's own throwaway chain is not worth waiting for
        signals.record(signum)
        if starting[0]:
            chain.abort()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop_asked)
    try:
        print(f"Starting a local Monero regtest chain in {directory / 'regtest'} "
              "(mining its first blocks takes about half a minute)...", flush=True)
        chain.start(timeout=180)
        starting[0] = False
        if signals.stop_asked:
            print("Stopping the regtest chain...", flush=True)
            return EXIT_OK
        config = node_config(directory, chain, origin_port)
        config_path = directory / "node.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        _write_private(directory / DEMO_FILE, json.dumps({
            "config": str(config_path),
            "regtest": {"base": str(chain.base), "user": chain.user,
                        "password": chain.password, "daemon_port": chain.daemon_port,
                        "provider_port": chain.provider.port, "payer_port": chain.payer.port},
            "origin": f"http://127.0.0.1:{origin_port}/",
            "proxy_port": config["proxy"]["port"],
        }, indent=2))
        print("Starting the node under supervisord...", flush=True)
        with open(output, "ab") as out:
            # supervisord gets SIGTERM (its clean stop) if the demo is killed
            node = subprocess.Popen([tool("lthn-node"), "run", "-c", str(config_path)],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        proxy = config["proxy"]
        problem = wait_running(node, config_path, output,
                               [proxy["port"], proxy["squid_port"], proxy["status_port"]],
                               lambda: signals.stop_asked)
        if signals.stop_asked:
            print("Stopping the node and the regtest chain...", flush=True)
            return EXIT_OK
        if problem:
            print(f"Error: {problem}\n(logs: {directory / 'state' / 'log'})", file=sys.stderr)
            return EXIT_FAILED
        miner.start()
        print(instructions(directory, config, origin_port), flush=True)
        while not signals.stop_asked:
            if node.poll() is not None:
                print(f"Error: the node stopped ({node.returncode}):\n{_tail(output)}",
                      file=sys.stderr)
                return EXIT_FAILED
            time.sleep(0.5)  # the handler only records: looked at twice a second
        print("Stopping the node and the regtest chain...", flush=True)
        return EXIT_OK
    except Exception as exc:
        if signals.stop_asked:  # the stop killed the chain while it started: that failed
            print("Stopping the regtest chain...", flush=True)
            return EXIT_OK
        if not isinstance(exc, RegtestError):
            raise
        print(f"Error: regtest chain: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        miner.stopping.set()
        if node is not None:
            _stop_node(node)
        chain.stop()
        origin.shutdown()
        origin.server_close()


def _stop_node(node: subprocess.Popen) -> None:
    if node.poll() is None:
        node.send_signal(signal.SIGTERM)   # supervisord stops every program, then itself
        try:
            node.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")


def pay(directory: Path, authid: str, amount: str) -> int:
    """`lthn-node demo-pay`: pay AMOUNT XMR for AUTHID from the running demo's payer."""
    directory = directory.absolute()
    try:
        authid = parse_authid(authid)
    except AuthidError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        coins = Decimal(amount)
        atomic = int(coins * UNITS)
        if not coins.is_finite() or atomic <= 0 or atomic != coins * UNITS:
            raise InvalidOperation
    except InvalidOperation:
        print(f'Error: amount: must be a positive number of XMR, at most 12 decimals '
              f'(got "{amount}")', file=sys.stderr)
        return EXIT_CONFIG
    try:
        info = json.loads((directory / DEMO_FILE).read_text())
    except (OSError, ValueError):
        print(f"Error: {directory / DEMO_FILE}: no running demo there "
              "(start one with `lthn-node demo`)", file=sys.stderr)
        return EXIT_FAILED
    r = info["regtest"]
    # the chain's processes belong to the demo; this object only talks to them
    chain = RegtestChain(r["base"], user=r["user"], password=r["password"],
                         daemon_port=r["daemon_port"], provider_port=r["provider_port"],
                         payer_port=r["payer_port"])
    try:
        txid = chain.pay(authid, atomic)
    except (RegtestError, requests.RequestException) as exc:
        print(f"Error: payment failed: {exc} (is `lthn-node demo` still running?)",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"paid {coins} XMR for authid {authid}: txid {txid}")
    print(f"see its balance: {command('lthnctl')} -c {info['config']} authid show {authid}")
    return EXIT_OK
