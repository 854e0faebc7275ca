"""A real, fully offline Monero regtest chain to pay the node with (demo and tests).

`RegtestChain` starts monerod and one monero-wallet-rpc per wallet (the provider's, with
HTTP digest auth, and a payer's), all on 127.0.0.1 with absolute paths under one base
directory, and funds the payer. Facts it relies on are in
`shared/notes/monero-regtest.md`: mine at least 100 blocks before the first `transfer`
(fewer hangs it), give `transfer` a client timeout, `refresh` a wallet before reading
what blocks changed.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
from requests.auth import HTTPDigestAuth

from lthn.ports import free_port
from lthn.process import die_with_parent

log = logging.getLogger(__name__)

T = TypeVar("T")

HOST = "127.0.0.1"
PAYMENT_ID = re.compile(r"^[0-9a-fA-F]{16}$")
# fewer blocks than this makes `transfer` hang at 100% CPU (decoy selection)
MIN_BLOCKS_BEFORE_TRANSFER = 100
COINBASE_UNLOCK = 60
CHANGE_UNLOCK = 10
# one self-transfer with this many destinations splits a coinbase into spendable outputs
SPLIT_OUTPUTS = 15
SPLIT_TRANSFERS = 4
# The payer wallet is restored from this fixed seed so its address is known before the
# wallet exists (every chain is a fresh, private regtest: sharing it across runs is fine)
PAYER_SEED = ("civilian nearby rims iceberg obvious duke enhanced apricot zodiac jubilee "
              "luggage video knuckle mirror lexicon bogeys nuns lipstick awesome adventure "
              "anybody relic volcano washing luggage")
PAYER_ADDRESS = ("44YFRRhUWLZ8RPCywUk2YS9Ns65aCVfK9WRcnL7a6Pj7eGJnU87MLJBhSjrW2uXrXTTedn94c4Zo"
                 "fiFse9QrCUF3CWb2NE2")


class RegtestError(Exception):
    """The regtest chain could not do what was asked; the text says which part and why."""


def _until(check: Callable[[], T | None], deadline: float, what: str,
           proc: subprocess.Popen | None = None, log_file: Path | None = None) -> T:
    """Poll `check` until it gives a value; fail naming `what` when the deadline passes."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RegtestError(f"{what}: process exited with code {proc.returncode}"
                               + (f" (see {log_file})" if log_file else ""))
        try:
            value = check()
            if value is not None:
                return value
        except (requests.RequestException, RegtestError) as exc:
            last = exc
        time.sleep(0.05)
    raise RegtestError(f"{what}: not ready in time" + (f" (last error: {last})" if last else ""))


class Rpc:
    """A minimal JSON-RPC caller for monerod and monero-wallet-rpc (the chain's own use)."""

    def __init__(self, url: str, auth: HTTPDigestAuth | None = None) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.auth = auth

    def call(self, method: str, params: dict | None = None, timeout: float = 10.0) -> Any:
        body = {"jsonrpc": "2.0", "id": "0", "method": method, "params": params or {}}
        answer = self.session.post(self.url, json=body, timeout=timeout)
        answer.raise_for_status()
        data = answer.json()
        if "error" in data:
            err = data["error"]
            raise RegtestError(f"{method}: error {err.get('code')} {err.get('message')!r}")
        return data["result"]

    def close(self) -> None:
        self.session.close()


class WalletProcess:
    """One monero-wallet-rpc serving one wallet file, restartable on the same port."""

    def __init__(self, name: str, base: Path, daemon_port: int, port: int,
                 login: tuple[str, str] | None) -> None:
        self.name = name
        self.base = base
        self.daemon_port = daemon_port
        self.port = port
        self.login = login
        self.dir = base / "wallets" / name
        self.log_file = base / f"wallet-{name}.log"
        self.proc: subprocess.Popen | None = None
        auth = HTTPDigestAuth(*login) if login else None
        self.rpc = Rpc(f"http://{HOST}:{port}/json_rpc", auth)
        self.address = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self, deadline: float) -> None:
        self.spawn()
        self.wait_ready(deadline)

    def spawn(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            "monero-wallet-rpc", "--daemon-address", f"{HOST}:{self.daemon_port}",
            "--trusted-daemon", "--daemon-ssl", "disabled",
            "--wallet-dir", str(self.dir), "--rpc-bind-ip", HOST,
            "--rpc-bind-port", str(self.port), "--rpc-ssl", "disabled",
            "--non-interactive", "--no-dns",
            "--shared-ringdb-dir", str(self.base / "ringdb"),
            "--log-file", str(self.base / f"wallet-{self.name}.monero.log"),
        ]
        if self.login:
            args += ["--rpc-login", f"{self.login[0]}:{self.login[1]}"]
        else:
            args += ["--disable-rpc-login"]
        self.proc = _spawn(args, self.log_file, self.base)

    def wait_ready(self, deadline: float) -> None:
        _until(lambda: self.rpc.call("get_version", timeout=1.0), deadline,
               f"wallet-rpc {self.name} on port {self.port}", self.proc, self.log_file)

    def create(self, timeout: float) -> None:
        self.rpc.call("create_wallet", {"filename": self.name, "password": "",
                                        "language": "English"}, timeout=timeout)
        self.address = self.rpc.call("get_address", {"account_index": 0})["address"]

    def restore(self, seed: str, timeout: float) -> None:
        self.address = self.rpc.call("restore_deterministic_wallet", {
            "filename": self.name, "seed": seed, "password": "", "language": "English",
            "restore_height": 0}, timeout=timeout)["address"]

    def open(self, timeout: float) -> None:
        self.rpc.call("open_wallet", {"filename": self.name, "password": ""}, timeout=timeout)

    def refresh(self, timeout: float = 30.0) -> None:
        self.rpc.call("refresh", {}, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Save the wallet and end the process; kill it if it does not end in time."""
        if not self.running:
            return
        try:
            self.rpc.call("stop_wallet", timeout=min(timeout, 5.0))
        except (requests.RequestException, RegtestError, ValueError):
            pass  # a wallet stuck in a `transfer` ignores this; the kill below ends it
        _end(self.proc, timeout)
        self.proc = None
        self.rpc.session.close()  # no keep-alive connection to the old process


class RegtestChain:
    """monerod --regtest --offline + a provider and a payer wallet, under `base`."""

    def __init__(self, base: Path | str, user: str = "lthn",
                 password: str | None = None, daemon_port: int | None = None,
                 provider_port: int | None = None, payer_port: int | None = None,
                 transfer_timeout: float = 60.0, zmq_pub: bool = False) -> None:
        self.base = Path(base).absolute()
        self.user = user
        self.password = password if password is not None else secrets.token_hex(8)
        self.daemon_port = daemon_port or free_port()
        self.p2p_port = free_port()
        self.transfer_timeout = transfer_timeout
        # monerod's ZMQ publisher (chain_main with every block, txpool_add with every
        # pool tx) needs its ZMQ RPC server too: --no-zmq turns both off (measured)
        self.zmq_rpc_port = free_port() if zmq_pub else 0
        self.zmq_pub_port = free_port() if zmq_pub else 0
        self.provider = WalletProcess("provider", self.base, self.daemon_port,
                                      provider_port or free_port(), (self.user, self.password))
        self.payer = WalletProcess("payer", self.base, self.daemon_port,
                                   payer_port or free_port(), None)
        self.daemon_proc: subprocess.Popen | None = None
        self.daemon = Rpc(f"http://{HOST}:{self.daemon_port}/json_rpc")
        self.lock = threading.RLock()  # one payment or mining at a time: wallets are serial
        self.aborted = False

    # --- what users of the chain read ---

    @property
    def provider_url(self) -> str:
        return f"http://{HOST}:{self.provider.port}/json_rpc"

    @property
    def provider_address(self) -> str:
        return self.provider.address

    @property
    def zmq_pub_endpoint(self) -> str:
        """monerod's ZMQ pub endpoint, or "" when the chain runs without one."""
        return f"tcp://{HOST}:{self.zmq_pub_port}" if self.zmq_pub_port else ""

    def wallet_section(self, poll_interval: float | None = None, timeout: float = 5.0
                       ) -> dict:
        """The node config's `wallet:` section pointing at the provider wallet (and at
        monerod's ZMQ publisher when the chain has one); the poll interval is the
        config's default unless given."""
        section: dict = {"dialect": "monero", "url": self.provider_url, "user": self.user,
                         "password": self.password, "timeout": timeout}
        if poll_interval is not None:
            section["poll_interval"] = poll_interval
        if self.zmq_pub_endpoint:
            section["daemon_zmq"] = self.zmq_pub_endpoint
        return section

    # --- life cycle ---

    def start(self, timeout: float = 60.0) -> RegtestChain:
        """Start everything and fund the payer; on failure stop what was started."""
        started = time.monotonic()
        deadline = started + timeout
        self.base.mkdir(parents=True, exist_ok=True)
        try:
            # the three processes boot in parallel; each is waited for with the deadline
            self._spawn_daemon()
            self.provider.spawn()
            self.payer.spawn()
            if self.aborted:  # abort() came before the processes it would have killed
                self.abort()
                raise RegtestError("start aborted")
            self._wait_daemon(deadline)
            # the payer's address is known in advance (fixed seed), so the 100 blocks it
            # needs are mined while the wallets are still being created
            miner = _Background(lambda: self._mine_with(
                Rpc(self.daemon.url), MIN_BLOCKS_BEFORE_TRANSFER, PAYER_ADDRESS))
            self.provider.wait_ready(deadline)
            self.payer.wait_ready(deadline)
            self.provider.create(timeout=max(1.0, deadline - time.monotonic()))
            self.payer.restore(PAYER_SEED, timeout=max(1.0, deadline - time.monotonic()))
            if self.payer.address != PAYER_ADDRESS:
                raise RegtestError(f"payer wallet restored to {self.payer.address}, "
                                   f"expected {PAYER_ADDRESS}")
            miner.join(max(1.0, deadline - time.monotonic()))
            self._split_payer_outputs()
        except BaseException:
            self.stop()
            raise
        log.info("regtest: ready in %.1f s (daemon %d, provider wallet %d, payer wallet %d)",
                 time.monotonic() - started, self.daemon_port, self.provider.port,
                 self.payer.port)
        return self

    def _spawn_daemon(self) -> None:
        data = self.base / "monerod"
        data.mkdir(parents=True, exist_ok=True)
        args = [
            "monerod", "--regtest", "--offline", "--fixed-difficulty", "1",
            "--data-dir", str(data), "--non-interactive", "--no-igd",
            "--check-updates", "disabled", "--disable-dns-checkpoints",
            "--rpc-bind-ip", HOST, "--rpc-bind-port", str(self.daemon_port),
            "--rpc-ssl", "disabled", "--p2p-bind-ip", HOST,
            "--p2p-bind-port", str(self.p2p_port),
            "--log-file", str(self.base / "monerod.monero.log"),
        ]
        if self.zmq_pub_port:
            args += ["--zmq-rpc-bind-ip", HOST, "--zmq-rpc-bind-port", str(self.zmq_rpc_port),
                     "--zmq-pub", self.zmq_pub_endpoint]
        else:
            args += ["--no-zmq"]
        self.daemon_proc = _spawn(args, self.base / "monerod.log", self.base)

    def _wait_daemon(self, deadline: float) -> None:
        _until(lambda: self.daemon.call("get_info", timeout=1.0), deadline,
               f"monerod on port {self.daemon_port}", self.daemon_proc,
               self.base / "monerod.log")

    def _split_payer_outputs(self) -> None:
        """Split coinbases into many outputs so ~60+ payments can follow without mining.

        The wallet pairs a second input when it has one, so each payment may use two
        outputs; self-transfers with many destinations give that many cheaply.
        """
        self.payer.refresh()
        for _ in range(SPLIT_TRANSFERS):
            self._transfer([(self.payer.address, 10**12)] * SPLIT_OUTPUTS)
        self.mine(CHANGE_UNLOCK, to=self.payer.address)
        self.payer.refresh()

    def stop(self) -> None:
        """End every process this chain started; safe to call twice."""
        with self.lock:
            for wallet in (self.provider, self.payer):
                if wallet.running:
                    wallet.stop()
            if self.daemon_proc is not None and self.daemon_proc.poll() is None:
                try:
                    # stop_daemon is one of monerod's plain RPCs, not a json_rpc method
                    requests.post(f"http://{HOST}:{self.daemon_port}/stop_daemon", timeout=2.0)
                except requests.RequestException:
                    pass
                _end(self.daemon_proc, 10.0)
            self.daemon_proc = None
            self.daemon.close()

    def abort(self) -> None:
        """SIGKILL every process of the chain, waiting for nothing: safe in a signal
        handler. A start() under way then fails within moments (its processes are gone),
        and stop() finds nothing left to wait for. For a chain that is thrown away."""
        self.aborted = True
        for proc in (self.provider.proc, self.payer.proc, self.daemon_proc):
            if proc is not None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def __enter__(self) -> RegtestChain:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- the provider wallet going away and coming back (paymentd must survive it) ---

    def stop_provider_wallet(self) -> None:
        with self.lock:
            self.provider.stop()

    def start_provider_wallet(self, timeout: float = 30.0) -> None:
        """Same wallet file, same port, same login."""
        with self.lock:
            deadline = time.monotonic() + timeout
            self.provider.launch(deadline)
            self.provider.open(timeout=max(1.0, deadline - time.monotonic()))

    # --- chain actions ---

    def mine(self, blocks: int, to: str | None = None) -> int:
        """Mine `blocks` blocks (pool txs go in them); returns the new block count."""
        with self.lock:
            if not (to or self.payer.address):
                # an object made only to talk to a running chain (lthn-node demo-pay)
                self.payer.address = self.payer.rpc.call("get_address", {
                    "account_index": 0}, timeout=10.0)["address"]
            return self._mine_with(self.daemon, blocks, to or self.payer.address)

    @staticmethod
    def _mine_with(daemon: Rpc, blocks: int, address: str) -> int:
        height = -1
        left = blocks
        while left > 0:
            # a big request in one go can take longer than one HTTP timeout
            step = min(left, 50)
            result = daemon.call("generateblocks", {
                "amount_of_blocks": step, "wallet_address": address,
                "starting_nonce": 0}, timeout=120.0)
            height = int(result["height"])
            left -= step
        return height + 1  # the answer's height is the last block's index

    def height(self) -> int:
        return int(self.daemon.call("get_info", timeout=5.0)["height"])

    def pool_txids(self) -> list[str]:
        answer = requests.post(f"http://{HOST}:{self.daemon_port}/get_transaction_pool",
                               json={}, timeout=10.0)
        answer.raise_for_status()
        return [t["id_hash"] for t in answer.json().get("transactions", [])]

    def integrated_address(self, payment_id: str) -> str:
        if not PAYMENT_ID.match(payment_id):
            raise RegtestError(f"payment id {payment_id!r} is not 16 hex characters")
        return self.provider.rpc.call("make_integrated_address",
                                      {"payment_id": payment_id.lower()},
                                      timeout=10.0)["integrated_address"]

    def pay(self, authid: str, amount_atomic: int) -> str:
        """Pay the provider for `authid` (its payment id); returns the txid."""
        with self.lock:
            return self.pay_address(self.integrated_address(authid), amount_atomic)

    def pay_address(self, address: str, amount_atomic: int) -> str:
        """Pay an address (e.g. an integrated address made earlier, while the provider
        wallet was up); returns the txid. Needs only the payer wallet and the daemon."""
        if amount_atomic <= 0:
            raise RegtestError(f"amount must be positive (got {amount_atomic})")
        with self.lock:
            try:
                return self._transfer([(address, amount_atomic)])
            except RegtestError as exc:
                if "not enough" not in str(exc) and "-17" not in str(exc):
                    raise
            # change and split outputs are locked for 10 blocks: unlock more and retry once
            log.info("regtest: payer short of unlocked outputs; mining %d blocks",
                     CHANGE_UNLOCK)
            self.mine(CHANGE_UNLOCK)
            self.payer.refresh()
            return self._transfer([(address, amount_atomic)])

    def _transfer(self, destinations: list[tuple[str, int]]) -> str:
        try:
            result = self.payer.rpc.call("transfer", {
                "destinations": [{"address": a, "amount": n} for a, n in destinations],
                "get_tx_key": False}, timeout=self.transfer_timeout)
        except requests.Timeout:
            # a hung transfer never comes back and ignores stop_wallet: restart the payer
            self.payer.stop(timeout=2.0)
            self.payer.launch(time.monotonic() + 30.0)
            self.payer.open(timeout=30.0)
            raise RegtestError(f"transfer: no answer in {self.transfer_timeout} s; "
                               "payer wallet restarted") from None
        return str(result["tx_hash"])


class _Background:
    """Run one function in a thread; `join` re-raises what it raised."""

    def __init__(self, action: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(action,), daemon=True)
        self.thread.start()

    def _run(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except BaseException as exc:  # handed to the joining thread
            self.error = exc

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RegtestError(f"mining the first blocks took more than {timeout:.0f} s")
        if self.error is not None:
            raise self.error


def _spawn(args: list[str], log_file: Path, cwd: Path) -> subprocess.Popen:
    out = open(log_file, "ab")  # the child keeps its own copy; ours is closed below
    try:
        # own process group: a test runner's Ctrl-C does not reach these half-way
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(cwd),
                                start_new_session=True, preexec_fn=die_with_parent)
    finally:
        out.close()


def _end(proc: subprocess.Popen | None, timeout: float) -> None:
    """Wait for a process to end, SIGTERM then SIGKILL; reaps it either way."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.wait(timeout=min(timeout, 3.0))
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
