"""How long a ban lasts, and when a source has offended enough to be banned (issue #17).
Pure: no sockets, no clock of its own.

Like fail2ban's tickets with a time and a count: the n-th ban of an address lasts
`ban_time * ban_factor ** (n - 1)`, at most `ban_max_time`. An address whose last ban ended
more than `ban_memory` seconds ago starts again at its first ban.
"""

from __future__ import annotations

from dataclasses import dataclass

from lthn.config import Firewall
from lthn.haproxy.contract import BANNING_KINDS
from lthn.ledger import BanRow
from lthn.refusals import RefusalKind


def threshold(settings: Firewall, kind: RefusalKind) -> int:
    """Offences of `kind` within `refusal_window` that ban their source (the same figures
    haproxy refuses at by itself: contract.offence_thresholds)."""
    if kind is RefusalKind.OVERLIMIT:
        return settings.overlimit_threshold
    return settings.refusal_threshold


def lowest_threshold(settings: Firewall) -> int:
    return min(threshold(settings, kind) for kind in BANNING_KINDS)


def offending_kind(settings: Firewall, counts: dict[RefusalKind, int]) -> RefusalKind | None:
    """The first kind whose count in the window reached its threshold, or None."""
    for kind in BANNING_KINDS:
        if counts.get(kind, 0) >= threshold(settings, kind):
            return kind
    return None


@dataclass(frozen=True)
class BanTerm:
    count: int        # this ban is the source's count-th (1: a first offence)
    seconds: float


def next_term(settings: Firewall, previous: BanRow | None, now: float) -> BanTerm:
    """The term of a new automatic ban, given the source's ban row (None: never banned)."""
    if previous is None or previous.expires + settings.ban_memory < now:
        count = 1
    else:
        count = previous.count + 1
    seconds = settings.ban_time * settings.ban_factor ** min(count - 1, 64)
    return BanTerm(count, min(seconds, settings.ban_max_time))
