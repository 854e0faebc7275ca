"""lthn-paymentd: polls the provider's wallet and credits authids (issue #3).

One poll: refresh the wallet, read its height, list incoming transfers (mined above the
scan height, and the pool), ask about watched payments the list no longer shows, then
apply it all in one ledger transaction (crediting.py). The daemon loop publishes the
queued messages after commit.

Wallet states (published as wallet.state, one log line per change):
  UNKNOWN -> UP      first good poll
  UP      -> DOWN    a poll failed (unreachable, slow, garbage); retry with backoff
  DOWN    -> UP      a poll worked again; the scan height makes it catch up
"""

from __future__ import annotations

import enum
import logging
import time

import zmq

from lthn import by_hand
from lthn.config import Config
from lthn.daemon import Daemon, run_daemon
from lthn.ledger import Ledger
from lthn.messages import WalletState
from lthn.requests import Grant, Topup
from services.paymentd.crediting import Crediting
from services.paymentd.wallet_rpc import Transfer, WalletClient, WalletError

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0


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
        self.state = Wallet.UNKNOWN
        self.failures = 0
        self.height = 0
        self.last_ok = 0.0      # unix time of the last good poll (lthnctl status)
        self.error = ""         # the last poll's error, "" after a good one
        # money in by hand (issue #19): paymentd owns credit
        self.control.answer(Topup, lambda req, asked: by_hand.topup(ledger, config, req, asked))
        self.control.answer(Grant, lambda req, asked: by_hand.grant(ledger, config, req, asked))

    def start(self) -> None:
        log.info("paymentd: watching %s wallet at %s every %.2f s, from block %d",
                 self.config.wallet.dialect, self.config.wallet.url,
                 self.config.wallet.poll_interval, self.crediting.scan_height(self.ledger) + 1)
        # the Publisher waited for the forwarder's subscribe-all, so the first poll's
        # messages are not lost to the slow-joiner effect (lthn.bus.Publisher)
        self.timers.after(0, self.poll)

    def stop(self) -> None:
        self.wallet.close()

    # --- one poll, then schedule the next ---

    def poll(self) -> None:
        self.poll_now()
        self.timers.after(self.next_delay(), self.poll)

    def poll_now(self) -> None:
        stats = self.control.stats
        try:
            self.poll_once()
        except WalletError as exc:
            stats.count("wallet_polls_total", {"result": "error"})
            self.wallet_down(str(exc))
        except Exception as exc:
            # a bug must not stop crediting for good: log it, back off, try again
            log.exception("paymentd: poll failed")
            stats.count("wallet_polls_total", {"result": "error"})
            self.wallet_down(f"internal error: {type(exc).__name__}")
        else:
            stats.count("wallet_polls_total", {"result": "ok"})
            self.last_ok, self.error = time.time(), ""
            self.wallet_up()
        stats.gauge("wallet_up", 1 if self.state is Wallet.UP else 0)
        stats.gauge("wallet_height", self.height)

    # --- lthnctl (issue #19) ---

    def status_details(self) -> dict:
        return {"wallet": self.state.value, "url": self.config.wallet.url,
                "height": self.height, "scanned": self.crediting.scan_height(self.ledger),
                "last_poll_ok": self.last_ok, "failures": self.failures,
                "error": self.error}

    def refresh(self) -> str:
        """Poll the wallet now (the next timed poll still comes when it was due)."""
        self.poll_now()
        if self.state is Wallet.UP:
            return f"paymentd: polled the wallet, height {self.height}"
        return f"paymentd: polled the wallet: {self.state.value.lower()} ({self.error})"

    def poll_once(self) -> None:
        self.wallet.refresh()
        height = self.wallet.get_height()
        transfers = self.wallet.get_transfers(self.crediting.query_height(self.ledger))
        vanished: list[str] = []
        extra: list[Transfer] = []
        missing = self.crediting.missing(self.ledger, transfers)
        if missing and height - 1 < self.crediting.scan_height(self.ledger):
            # the wallet is below blocks we already scanned (restored, still syncing): its
            # silence about a payment means nothing yet, so nothing is revoked this poll
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
        with self.ledger.transaction() as tx:
            outcome = self.crediting.apply(tx, transfers + extra, height, vanished)
        self.height = height
        outcome.log(log)

    def next_delay(self) -> float:
        interval = self.config.wallet.poll_interval
        if self.state is not Wallet.DOWN:
            return interval
        # 1, 2, 4 ... times the poll interval, capped: a wallet that comes back is seen soon
        return min(MAX_BACKOFF, interval * 2 ** min(self.failures - 1, 16))

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
        self.state, self.failures = Wallet.UP, 0
        self.publish(WalletState(up=True, height=self.height, error=""))

    def wallet_down(self, error: str) -> None:
        self.failures += 1
        self.error = error[:200]
        if self.state is Wallet.DOWN:
            log.debug("wallet %s: still down (%s)", self.config.wallet.url, error)
            return
        # UNKNOWN/UP -> DOWN
        self.state = Wallet.DOWN
        log.warning("wallet %s: down (%s); retrying with backoff up to %.0f s",
                    self.config.wallet.url, error, MAX_BACKOFF)
        self.publish(WalletState(up=False, height=self.height, error=error[:200]))


def main(argv: list[str] | None = None) -> int:
    return run_daemon(Paymentd, argv, description="Credit payments from the provider wallet.")


if __name__ == "__main__":
    raise SystemExit(main())
