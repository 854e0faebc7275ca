"""lthn-paymentd: watches the provider's wallet and credits authids (issues #3, #16).

The watch (schedule.py says when): a POOL step lists the wallet's pool several times a
second and credits new payments at 0 confirmations without refreshing the wallet; a SCAN
refreshes the wallet and lists what was mined above the scan height too, asks about
watched payments the list no longer shows, and stores the scan height. Scans run when a
block arrives (the daemon's ZMQ chain_main when `wallet.daemon_zmq` is set, otherwise a
refresh every `wallet.refresh_interval` that finds the height moved) and when a payment
leaves the pool. Each step applies what it found in one ledger transaction
(crediting.py); the daemon loop publishes the queued messages after commit.

Wallet states (published as wallet.state, one log line per change):
  UNKNOWN -> UP      first good step
  UP      -> DOWN    a step failed (unreachable, slow, garbage); retry with backoff
  DOWN    -> UP      a step worked again; the scan height makes it catch up
"""

from __future__ import annotations

import enum
import logging
import time

import zmq

from lthn import by_hand
from lthn.config import Config
from lthn.daemon import Daemon, run_daemon
from lthn.ledger import Ledger, LedgerNotWritable
from lthn.messages import WalletState
from lthn.requests import Grant, Topup
from services.paymentd.crediting import Crediting, Outcome
from services.paymentd.daemon_blocks import DaemonBlocks
from services.paymentd.schedule import MAX_BACKOFF, Step, WatchSchedule
from services.paymentd.wallet_rpc import Transfer, WalletClient, WalletError

log = logging.getLogger(__name__)

__all__ = ["MAX_BACKOFF", "Paymentd", "Wallet", "main"]


class Wallet(enum.Enum):
    UNKNOWN = "UNKNOWN"
    UP = "UP"
    DOWN = "DOWN"


class Paymentd(Daemon):
    name = "paymentd"
    prefixes: list[str] = []

    def __init__(self, config: Config, ctx: zmq.Context, ledger: Ledger) -> None:
        super().__init__(config, ctx, ledger)
        w = config.wallet
        self.wallet = WalletClient(w.url, w.user, w.password, w.dialect, w.timeout)
        self.crediting = Crediting(config)
        self.schedule = WatchSchedule(w.poll_interval, w.refresh_interval,
                                      self.timers.clock())
        self.blocks = DaemonBlocks(ctx, w.daemon_zmq) if w.daemon_zmq else None
        self.state = Wallet.UNKNOWN
        self.height = 0
        # what the last listing showed: a pool listing equal to it changes nothing
        self.pool: frozenset[Transfer] = frozenset()
        self.mined: frozenset[str] = frozenset()
        self.armed = 0
        self.spent = (0.0, 0.0, 0.0)   # the last transaction: write lock, apply, commit
        self.last_ok = 0.0      # unix time of the last good step (lthnctl status)
        self.error = ""         # the last step's error, "" after a good one
        # money in by hand (issue #19): paymentd owns credit
        self.control.answer(Topup, lambda req, asked: by_hand.topup(ledger, config, req, asked))
        self.control.answer(Grant, lambda req, asked: by_hand.grant(ledger, config, req, asked))

    @property
    def failures(self) -> int:
        return self.schedule.failures
    def reloaded(self, old: Config) -> None:
        """Services (prices, confirmations) from the new config; the wallet connection
        stays (its settings need a restart)."""
        self.crediting = Crediting(self.config)

    def start(self) -> None:
        # a debug line per wallet call, ten a second, would bury paymentd's own lines
        logging.getLogger("urllib3").setLevel(max(logging.INFO, log.getEffectiveLevel()))
        w = self.config.wallet
        blocks = f"blocks by refreshing every {w.refresh_interval:g} s"
        if self.blocks:
            blocks = f"blocks from the daemon's ZMQ publisher {w.daemon_zmq} ({blocks} " \
                     "until it is connected)"
        log.info("paymentd: watching %s wallet at %s: its pool every %g s, %s; from block %d",
                 w.dialect, w.url, w.poll_interval, blocks,
                 self.crediting.scan_height(self.ledger) + 1)
        if self.blocks:
            self.watch(self.blocks.socket, self.on_blocks)
            self.watch(self.blocks.monitor, self.on_daemon_link)
        # the Publisher waited for the forwarder's subscribe-all, so the first step's
        # messages are not lost to the slow-joiner effect (lthn.bus.Publisher)
        self.arm()

    def stop(self) -> None:
        if self.blocks:
            self.unwatch(self.blocks.socket)
            self.unwatch(self.blocks.monitor)
            self.blocks.close()
        self.wallet.close()

    # --- the schedule drives the wallet ---

    def arm(self) -> None:
        """One timer for the next due step; earlier timers become no-ops."""
        self.armed += 1
        token = self.armed
        delay = max(0.0, self.schedule.wake_at() - self.timers.clock())
        self.timers.after(delay, lambda: self.tick() if token == self.armed else None)

    def tick(self) -> None:
        step = self.schedule.due(self.timers.clock())
        if step is not None:
            self.run_step(step)
        self.arm()

    def run_step(self, step: Step) -> None:
        stats = self.control.stats
        try:
            if step is Step.SCAN:
                self.scan(refresh=True)
            elif step is Step.REFRESH:
                self.check_blocks()
            else:
                self.list_pool()
        except WalletError as exc:
            stats.count("wallet_polls_total", {"result": "error"})
            self.wallet_down(str(exc))
        except LedgerNotWritable:
            # the wallet answered; the ledger refused the write (disk full): the daemon
            # loop reports that, and the next poll credits the same transfers (#14)
            pass
        except Exception as exc:
            # a bug must not stop crediting for good: log it, back off, try again
            log.exception("paymentd: %s step failed", step.value)
            stats.count("wallet_polls_total", {"result": "error"})
            self.wallet_down(f"internal error: {type(exc).__name__}")
        else:
            stats.count("wallet_polls_total", {"result": "ok"})
            self.last_ok, self.error = time.time(), ""
            self.wallet_up()
            self.schedule.done(step, self.timers.clock())
        stats.gauge("wallet_up", 1 if self.state is Wallet.UP else 0)
        stats.gauge("wallet_height", self.height)

    def on_blocks(self) -> None:
        assert self.blocks is not None
        if self.blocks.drain():
            self.schedule.want_scan()
            self.tick()

    def on_daemon_link(self) -> None:
        assert self.blocks is not None
        changes = self.blocks.link_changes()
        if not changes:
            return
        connected = changes[-1]
        if connected != self.schedule.pushed:
            if connected:
                log.info("daemon ZMQ %s: connected; blocks are followed as they arrive",
                         self.blocks.endpoint)
            else:
                log.warning("daemon ZMQ %s: disconnected; refreshing every %g s until it "
                            "is back", self.blocks.endpoint, self.config.wallet.refresh_interval)
        self.schedule.daemon_pushes(connected, self.timers.clock())
        self.tick()

    # --- the steps ---

    def scan(self, refresh: bool, height: int | None = None) -> None:
        """Everything since the scan height: mined transfers, the pool, vanished ones."""
        if refresh:
            self.wallet.refresh()
        if height is None:
            height = self.wallet.get_height()
        asked = time.perf_counter()
        transfers = self.wallet.get_transfers(self.crediting.query_height(self.ledger))
        listed = time.perf_counter()
        vanished: list[str] = []
        extra: list[Transfer] = []
        missing = self.crediting.missing(self.ledger, transfers)
        if missing and height - 1 < self.crediting.scan_height(self.ledger):
            # the wallet is below blocks we already scanned (restored, still syncing): its
            # silence about a payment means nothing yet, so nothing is revoked this time
            log.debug("wallet at height %d is behind the scan height; %d missing payments "
                      "wait", height, len(missing))
            missing = []
        for txid in missing:
            # not listed any more: only the wallet's own word makes it gone (issue #3)
            found = self.wallet.get_transfer_by_txid(txid)
            if found:
                extra += found
            else:
                vanished.append(txid)
        outcome = self.apply(transfers + extra, height, tuple(vanished))
        self.height = height
        self.mined = frozenset(t.txid for t in transfers if not t.in_pool)
        self.pool = frozenset(t for t in transfers if t.in_pool and t.txid not in self.mined)
        self.report("scan", outcome, asked, listed)

    def check_blocks(self) -> None:
        """Read new blocks; scan when any came (or the wallet's own timer read some: the
        height moved), else list the pool as usual."""
        fetched = self.wallet.refresh()
        height = self.wallet.get_height()
        if fetched or height != self.height:
            self.scan(refresh=False, height=height)
        else:
            self.list_pool()

    def list_pool(self) -> None:
        """Credit what is new in the pool. Costs one wallet call and a set comparison
        when nothing changed, which is nearly always."""
        asked = time.perf_counter()
        transfers = self.wallet.get_pool_transfers()
        listed = time.perf_counter()
        # a stale pool entry must never turn a mined payment back into a pool one: only a
        # scan (after a refresh) says a mined payment went back to the pool (a reorg)
        pool = frozenset(t for t in transfers if t.txid not in self.mined)
        if pool == self.pool:
            return
        changed = {t.txid for t in pool ^ self.pool}
        gone = {t.txid for t in self.pool} - {t.txid for t in pool}
        # whole transactions: merge() adds up the parts of one txid, so pass them all
        fresh = [t for t in pool if t.txid in changed]
        if fresh:
            # the scan height stays what the last scan stored (self.height is from it)
            self.report("pool", self.apply(fresh, self.height), asked, listed)
        self.pool = pool
        if gone:
            # left the pool: mined, or dropped; only a refresh and a scan tell which
            self.schedule.want_scan()

    def apply(self, transfers: list[Transfer], height: int, vanished: tuple[str, ...] = ()
              ) -> Outcome:
        """One ledger transaction; the time of its parts kept for `report`."""
        began = time.perf_counter()
        with self.ledger.transaction() as tx:
            locked = time.perf_counter()
            outcome = self.crediting.apply(tx, transfers, height, vanished)
            applied = time.perf_counter()
        self.spent = (locked - began, applied - locked, time.perf_counter() - applied)
        return outcome

    def report(self, kind: str, outcome: Outcome, asked: float, listed: float) -> None:
        """Log what a step changed, after its commit; with the timings a bench reads."""
        if outcome.credited or outcome.confirmed or outcome.revoked or outcome.rejected:
            committed = time.perf_counter()
            wall = time.time()
            lock, work, commit = (x * 1000 for x in self.spent)
            log.debug("paymentd: %s listing took %.1f ms, applying and committing %.1f ms "
                      "(write lock %.1f, apply %.1f, commit %.1f) [listed at %.6f, "
                      "committed at %.6f]", kind, (listed - asked) * 1000,
                      (committed - listed) * 1000, lock, work, commit,
                      wall - (committed - listed), wall)
        outcome.log(log)

    # --- lthnctl (issue #19) ---

    def status_details(self) -> dict:
        return {"wallet": self.state.value, "url": self.config.wallet.url,
                "height": self.height, "scanned": self.crediting.scan_height(self.ledger),
                "last_poll_ok": self.last_ok, "failures": self.failures,
                "error": self.error}

    def refresh(self) -> str:
        """Scan the wallet now: refresh, mined and pool transfers (the schedule goes on)."""
        self.run_step(Step.SCAN)
        self.arm()
        if self.state is Wallet.UP:
            return f"paymentd: polled the wallet, height {self.height}"
        return f"paymentd: polled the wallet: {self.state.value.lower()} ({self.error})"

    # --- wallet state edges ---

    def wallet_up(self) -> None:
        if self.state is Wallet.UP:
            return
        if self.state is Wallet.DOWN:
            log.info("wallet %s: up again at height %d after %d failed polls",
                     self.config.wallet.url, self.height, self.failures)
        else:
            log.info("wallet %s: up at height %d", self.config.wallet.url, self.height)
        # UNKNOWN/DOWN -> UP
        self.state = Wallet.UP
        self.publish(WalletState(up=True, height=self.height, error=""))

    def wallet_down(self, error: str) -> None:
        self.schedule.failed(self.timers.clock())
        self.error = error[:200]
        if self.state is Wallet.DOWN:
            log.debug("wallet %s: still down (%s); next try in %.1f s",
                      self.config.wallet.url, error, self.schedule.backoff())
            return
        # UNKNOWN/UP -> DOWN
        self.state = Wallet.DOWN
        log.warning("wallet %s: down (%s); retrying with backoff up to %.1f s",
                    self.config.wallet.url, error, MAX_BACKOFF)
        self.publish(WalletState(up=False, height=self.height, error=error[:200]))


def main(argv: list[str] | None = None) -> int:
    return run_daemon(Paymentd, argv, description="Credit payments from the provider wallet.")


if __name__ == "__main__":
    raise SystemExit(main())
