"""What lthn-vpnd decides a login's source with (issues #17, #18): the operator's source
lists and the bans in force, as one lthn/source_policy.py SourcePolicy, the decision
haproxy's rules make in proxy mode (deny list, allow list, bans; the allow list's own
entries and `firewall.never_ban` are never banned).

- The lists (`src_deny.ips`, `src_allow.ips`: Config.list_path) are watched as firewalld
  watches them (lthn/list_files.py): `poll_lists` on a timer re-reads a file that
  changed; a malformed line is logged with file and line number and skipped, an
  unreadable file keeps the last good list.
- The bans are firewalld's ledger rows (an address or a network each, with an expiry),
  held in memory: `load_bans` at start, on every `ban.added` / `ban.lifted` and every
  RELOAD_SECONDS, so a login is checked without a query. The ledger decides, not the
  message.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from lthn.address_lists import ListKind, Network
from lthn.config import Config
from lthn.ledger import BanRow
from lthn.list_files import ListFiles
from lthn.refusals import Refusal
from lthn.source_policy import Rule, SourcePolicy

log = logging.getLogger(__name__)

RELOAD_SECONDS = 10.0       # bans re-read from the ledger (besides on ban.* messages)
LIST_POLL_SECONDS = 0.25    # list files stat'ed: a saved file applies within a second
SOURCE_LISTS = {"src_deny": ListKind.ADDRESSES, "src_allow": ListKind.ADDRESSES}
_LIST_OF_RULE = {Rule.DENIED: "src_deny", Rule.NOT_ALLOWED: "src_allow"}


class SourceRules:
    def __init__(self, config: Config) -> None:
        self.never_ban = tuple(config.firewall.never_ban)
        self.lists = ListFiles(config, SOURCE_LISTS)
        self.bans: dict[Network, BanRow] = {}
        self.policy = SourcePolicy()

    def poll_lists(self) -> bool:
        """Re-read the list files that changed; whether a list changed."""
        if not self.lists.poll():
            return False
        self._rebuild()
        return True

    def load_bans(self, rows: Iterable[BanRow]) -> None:
        bans = {}
        for row in rows:
            try:
                bans[ipaddress.ip_network(row.ip, strict=False)] = row
            except ValueError:
                continue   # firewalld stores canonical sources only (lthn/sources.py)
        self.bans = bans
        self._rebuild()

    def _rebuild(self) -> None:
        lists = self.lists.lists()
        policy = SourcePolicy.of(lists["src_deny"], lists["src_allow"], self.never_ban)
        self.policy = SourcePolicy(policy.deny, policy.allow, policy.never_ban,
                                   {network: row.expires for network, row in self.bans.items()})

    def refusal(self, source: str, now: float) -> tuple[Refusal, str] | None:
        """The refusal of a login from `source` at `now` and why (for the log), or None."""
        verdict = self.policy.verdict(source, now)
        if verdict is None:
            return None
        if verdict.ban is not None:
            return verdict.refusal, f"{source} {verdict.rule.value} " \
                f"({self.bans[verdict.ban].reason})"
        path = self.lists.files[_LIST_OF_RULE[verdict.rule]].path
        return verdict.refusal, f"{source} {verdict.rule.value} ({path.name})"
