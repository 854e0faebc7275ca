"""Authids: 16 hex characters, the first two naming the service. Normalised to upper case."""

from __future__ import annotations

import re

AUTHID = re.compile(r"^[0-9A-Fa-f]{16}$")


class AuthidError(ValueError):
    """A malformed authid; the text says what is wrong with it."""


def parse_authid(text: str) -> str:
    """Return the canonical (upper-case) authid, or raise AuthidError."""
    if not isinstance(text, str):
        raise AuthidError("authid must be a string")
    if not AUTHID.match(text):
        shown = text[:40] + ("..." if len(text) > 40 else "")
        raise AuthidError(f"authid {shown!r} is not 16 hex characters")
    return text.upper()


def service_of(authid: str) -> str:
    return authid[:2].upper()


def short(authid: str) -> str:
    """For logs: enough to recognise, not the whole credential."""
    return authid[:8] + "..."
