"""Changes of money and access made by hand (lthnctl), answered by the daemon that owns
each (issue #19; docs/design.md "Who owns what"):

    paymentd   credit.topup, access.grant     money in
    sessiond   credit.spend, access.revoke    money out, cutting what may not run

Each is one ledger transaction with its audit line (the actor is `lthnctl:<unix user>`,
with the operator's reason) and its bus messages, through `lthn.access`. A mistake the
operator can fix (unknown authid or service, more than the balance) is `Refused` with one
line saying so.
"""

from __future__ import annotations

import logging

from lthn import access
from lthn.authid import AuthidError, parse_authid, service_of, short
from lthn.config import Config, Service
from lthn.control import Asked, Refused
from lthn.ledger import AuthidRow, Ledger
from lthn.requests import AuthidChanged, Grant, Revoke, Spend, Topup

log = logging.getLogger(__name__)


def _authid(config: Config, text: str) -> tuple[str, Service]:
    try:
        authid = parse_authid(text)
    except AuthidError as exc:
        raise Refused(str(exc)) from None
    service = config.service(service_of(authid))
    if service is None:
        raise Refused(f"authid {authid}: service {service_of(authid)} is not in the config")
    return authid, service


def _positive(amount: int) -> None:
    if amount <= 0:
        raise Refused(f"the amount must be more than 0 atomic units (got {amount})")


def _changed(row: AuthidRow, changed: bool = True) -> AuthidChanged:
    return AuthidChanged(authid=row.authid, state=row.state, credit=row.credit,
                         spent=row.spent, balance=row.balance, changed=changed)


def grant(ledger: Ledger, config: Config, req: Grant, asked: Asked) -> AuthidChanged:
    authid, service = _authid(config, req.authid)
    rules = access.rules_for(config, service)
    amount = req.amount or rules.cost * max(1, service.firstPrePaidMinutes)
    _positive(amount)
    with ledger.transaction() as tx:
        row = access.grant(tx, authid, service.key, amount, req.reason, asked.actor)
    log.info("authid %s: granted %d by %s (%s)", short(authid), amount, asked.actor,
             req.reason)
    return _changed(row)


def topup(ledger: Ledger, config: Config, req: Topup, asked: Asked) -> AuthidChanged:
    authid, service = _authid(config, req.authid)
    _positive(req.amount)
    with ledger.transaction() as tx:
        row = access.topup(tx, authid, service.key, req.amount,
                           access.rules_for(config, service), req.reason, asked.actor)
    log.info("authid %s: topped up %d by %s (%s)", short(authid), req.amount, asked.actor,
             req.reason)
    return _changed(row)


def spend(ledger: Ledger, config: Config, req: Spend, asked: Asked) -> AuthidChanged:
    authid, service = _authid(config, req.authid)
    _positive(req.amount)
    with ledger.transaction() as tx:
        row = tx.authid(authid)
        if row is None:
            raise Refused(f"authid {authid}: not in the ledger")
        if req.amount > row.balance:
            raise Refused(f"authid {authid}: the balance is {row.balance} atomic units, "
                          f"less than {req.amount}")
        row = access.spend_by_hand(tx, row, req.amount, access.rules_for(config, service),
                                   req.reason, asked.actor)
    log.info("authid %s: %d spent by hand by %s (%s)", short(authid), req.amount,
             asked.actor, req.reason)
    return _changed(row)


def revoke(ledger: Ledger, config: Config, req: Revoke, asked: Asked) -> AuthidChanged:
    authid, _ = _authid(config, req.authid)
    with ledger.transaction() as tx:
        row = tx.authid(authid)
        if row is None:
            raise Refused(f"authid {authid}: not in the ledger")
        if row.state == access.State.REVOKED.value:
            return _changed(row, changed=False)
        row = access.revoke(tx, row, req.reason, asked.actor)
    log.info("authid %s: revoked by %s (%s)", short(authid), asked.actor, req.reason)
    return _changed(row)
