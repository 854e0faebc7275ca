"""JSON-RPC client for the provider's wallet: Monero `get_transfers`, Lethean
`get_vpn_transfers` (same parameters and answer shape; amounts in the coin's own units).

Every call has a timeout and HTTP digest auth when a user is configured. Answers are
parsed strictly into `Transfer` objects: anything that does not have the expected shape
raises `WalletAnswerError` naming the method, the field and what was wrong, and nothing
from that answer is used (issue #3: never credit from a malformed answer).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import requests
from requests.auth import HTTPDigestAuth

TXID = re.compile(r"^[0-9a-fA-F]{64}$")
# monero-wallet-rpc: WALLET_RPC_ERROR_CODE_WRONG_TXID ("Transaction not found.")
ERROR_TX_NOT_FOUND = -8
ERROR_METHOD_NOT_FOUND = -32601
# amounts are uint64 on the wire; the ledger's INTEGER is int64 (no real amount comes near)
MAX_AMOUNT = 2**63
TRANSFERS_METHOD = {"monero": "get_transfers", "lethean": "get_vpn_transfers"}


class WalletError(Exception):
    """The wallet could not be asked or did not answer usefully; paymentd backs off."""


class WalletUnreachable(WalletError):
    """Connection refused, timed out, or an HTTP error status."""


class WalletAnswerError(WalletError):
    """The wallet answered something that is not what the protocol says (garbage)."""


class WalletRpcError(WalletError):
    """The wallet answered with a JSON-RPC error object."""

    def __init__(self, method: str, code: int, message: str) -> None:
        self.method = method
        self.code = code
        self.message = message
        super().__init__(f"{method}: wallet error {code}: {message}")


@dataclass(frozen=True)
class Transfer:
    """One incoming transfer as the wallet lists it; amount in atomic units."""
    txid: str                # lower-case hex
    payment_id: str          # as the wallet gives it (16 hex for an integrated address)
    amount: int
    height: int              # block height; 0 while in the pool
    confirmations: int       # 0 while in the pool
    in_pool: bool
    double_spend_seen: bool
    subaddr: tuple[int, int] = (0, 0)
    unlock_time: int = 0     # non-zero: the payer locked the funds (block or time)


def _field(method: str, where: str, entry: dict, name: str, kind: type,
           required: bool = True, default: Any = None) -> Any:
    if name not in entry:
        if required:
            raise WalletAnswerError(f"{method}: {where}.{name}: missing")
        return default
    value = entry[name]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise WalletAnswerError(
            f"{method}: {where}.{name}: must be {kind.__name__} (got {_show(value)})")
    if kind is int and value < 0:
        raise WalletAnswerError(f"{method}: {where}.{name}: must not be negative (got {value})")
    return value


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text[:40] + ("..." if len(text) > 40 else "")


def parse_transfer(method: str, where: str, entry: Any, pool: bool) -> Transfer:
    """One entry of the `in` or `pool` list -> Transfer, or WalletAnswerError."""
    if not isinstance(entry, dict):
        raise WalletAnswerError(f"{method}: {where}: must be an object (got {_show(entry)})")
    txid = _field(method, where, entry, "txid", str)
    if not TXID.match(txid):
        raise WalletAnswerError(f"{method}: {where}.txid: not 64 hex characters "
                                f"(got {_show(txid)})")
    kind = _field(method, where, entry, "type", str, required=False,
                  default="pool" if pool else "in")
    if kind != ("pool" if pool else "in"):
        raise WalletAnswerError(f"{method}: {where}.type: {kind!r} in the "
                                f"{'pool' if pool else 'in'} list")
    payment_id = _field(method, where, entry, "payment_id", str)
    amount = _field(method, where, entry, "amount", int)
    height = _field(method, where, entry, "height", int)
    # a pool entry has no confirmations key (measured); a mined one must have it
    confirmations = 0 if pool else _field(method, where, entry, "confirmations", int)
    double_spend = _field(method, where, entry, "double_spend_seen", bool, required=False,
                          default=False)
    subaddr = _field(method, where, entry, "subaddr_index", dict, required=False,
                     default={"major": 0, "minor": 0})
    unlock_time = _field(method, where, entry, "unlock_time", int, required=False, default=0)
    if amount >= MAX_AMOUNT:
        raise WalletAnswerError(f"{method}: {where}.amount: {amount} is more than any coin's "
                                "supply")
    major = _field(method, f"{where}.subaddr_index", subaddr, "major", int)
    minor = _field(method, f"{where}.subaddr_index", subaddr, "minor", int)
    return Transfer(txid=txid.lower(), payment_id=payment_id, amount=amount,
                    height=0 if pool else height, confirmations=confirmations,
                    in_pool=pool, double_spend_seen=double_spend, subaddr=(major, minor),
                    unlock_time=unlock_time)


def parse_transfers(method: str, result: Any) -> list[Transfer]:
    """The `result` of get_transfers / get_vpn_transfers -> transfers (in, then pool).

    An empty answer is `{}` (no `in` key, measured); any other key is ignored.
    """
    if not isinstance(result, dict):
        raise WalletAnswerError(f"{method}: result must be an object (got {_show(result)})")
    out: list[Transfer] = []
    for key, pool in (("in", False), ("pool", True)):
        entries = result.get(key, [])
        if not isinstance(entries, list):
            raise WalletAnswerError(f"{method}: result.{key}: must be a list "
                                    f"(got {_show(entries)})")
        out += [parse_transfer(method, f"result.{key}[{i}]", e, pool)
                for i, e in enumerate(entries)]
    return out


class WalletClient:
    """Calls one wallet's JSON-RPC endpoint; one HTTP session, kept alive."""

    def __init__(self, url: str, user: str = "", password: str = "",
                 dialect: str = "monero", timeout: float = 5.0) -> None:
        if dialect not in TRANSFERS_METHOD:
            raise ValueError(f"unknown wallet dialect {dialect!r}")
        self.url = url
        self.dialect = dialect
        self.timeout = timeout
        self.session = requests.Session()
        if user:
            self.session.auth = HTTPDigestAuth(user, password)
        self.can_refresh = True
        self.ids = 0

    def close(self) -> None:
        self.session.close()

    def call(self, method: str, params: dict | None = None,
             timeout: float | None = None) -> Any:
        """One JSON-RPC call -> its `result`; raises a WalletError subclass otherwise."""
        self.ids += 1
        body = {"jsonrpc": "2.0", "id": str(self.ids), "method": method,
                "params": params or {}}
        try:
            answer = self.session.post(self.url, json=body, timeout=timeout or self.timeout)
        except requests.Timeout:
            raise WalletUnreachable(f"{method}: no answer within "
                                    f"{timeout or self.timeout} s") from None
        except requests.RequestException as exc:
            raise WalletUnreachable(f"{method}: cannot connect to {self.url} "
                                    f"({type(exc).__name__})") from None
        if answer.status_code != 200:
            raise WalletUnreachable(f"{method}: HTTP {answer.status_code} {answer.reason}")
        try:
            data = answer.json()
        except ValueError:
            raise WalletAnswerError(f"{method}: answer is not JSON "
                                    f"({_show(answer.text[:40])})") from None
        if not isinstance(data, dict):
            raise WalletAnswerError(f"{method}: answer is not a JSON-RPC object")
        if "error" in data:
            err = data["error"]
            if not isinstance(err, dict) or not isinstance(err.get("code"), int):
                raise WalletAnswerError(f"{method}: malformed error object {_show(err)}")
            raise WalletRpcError(method, err["code"], str(err.get("message", "")))
        if "result" not in data:
            raise WalletAnswerError(f"{method}: answer has neither result nor error")
        return data["result"]

    # --- the calls paymentd makes ---

    def refresh(self) -> int:
        """Make the wallet read new blocks now (it otherwise does so every 20 s); returns
        how many blocks it fetched (more than 0 also when a reorg replaced blocks at the
        same height).

        A wallet without a `refresh` method is asked once and then left to its own timer.
        """
        if not self.can_refresh:
            return 0
        try:
            result = self.call("refresh", {})
        except WalletRpcError as exc:
            if exc.code != ERROR_METHOD_NOT_FOUND:
                raise
            self.can_refresh = False
            return 0
        if not isinstance(result, dict):
            raise WalletAnswerError(f"refresh: result must be an object (got {_show(result)})")
        return _field("refresh", "result", result, "blocks_fetched", int, required=False,
                      default=0)

    def get_height(self) -> int:
        result = self.call("get_height")
        if not isinstance(result, dict):
            raise WalletAnswerError(f"get_height: result must be an object "
                                    f"(got {_show(result)})")
        return _field("get_height", "result", result, "height", int)

    def get_transfers(self, min_height: int) -> list[Transfer]:
        """Incoming transfers mined above `min_height` (exclusive) and all pool ones."""
        method = TRANSFERS_METHOD[self.dialect]
        result = self.call(method, {"in": True, "pool": True, "filter_by_height": True,
                                    "min_height": max(0, min_height)})
        return parse_transfers(method, result)

    def get_pool_transfers(self) -> list[Transfer]:
        """Incoming transfers in the pool only. Needs no `refresh` (the wallet asks the
        daemon's pool itself) and does not walk the wallet's mined history, so it is cheap
        enough to ask several times a second (issue #16)."""
        method = TRANSFERS_METHOD[self.dialect]
        result = self.call(method, {"in": False, "pool": True})
        return parse_transfers(method, result)

    def get_transfer_by_txid(self, txid: str) -> list[Transfer] | None:
        """Incoming transfers of one txid, or None when the wallet does not know it."""
        try:
            result = self.call("get_transfer_by_txid", {"txid": txid})
        except WalletRpcError as exc:
            if exc.code == ERROR_TX_NOT_FOUND:
                return None
            raise
        method = "get_transfer_by_txid"
        if not isinstance(result, dict):
            raise WalletAnswerError(f"{method}: result must be an object "
                                    f"(got {_show(result)})")
        entries = result.get("transfers")
        if entries is None:
            entries = [_field(method, "result", result, "transfer", dict)]
        if not isinstance(entries, list):
            raise WalletAnswerError(f"{method}: result.transfers: must be a list")
        out = []
        for i, entry in enumerate(entries):
            kind = entry.get("type") if isinstance(entry, dict) else None
            if kind in ("in", "pool"):
                out.append(parse_transfer(method, f"result.transfers[{i}]", entry,
                                          kind == "pool"))
            elif not isinstance(kind, str):
                raise WalletAnswerError(f"{method}: result.transfers[{i}].type: missing")
            # "out", "pending", "failed": not money received; a failed one counts as gone
        return out
