"""The commented sample config, written from the schema itself (one source of truth)."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from lthn.config import Config
from lthn.schema import describe, type_name

SAMPLE_PROVIDER_ID = "0" * 64
SAMPLE_SERVICE = {
    "id": "1A", "name": "Proxy", "type": "proxy", "cost": "0.001",
    "firstPrePaidMinutes": 10, "firstVerificationsNeeded": 0,
    "subsequentPrePaidMinutes": 10, "subsequentVerificationsNeeded": 0,
}


def _emit(cls: type, indent: str, out: list[str], values: dict[str, Any],
          prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        hint = hints[field.name]
        doc = field.metadata.get("doc", "")
        path = f"{prefix}{field.name}"
        out.append(f"{indent}# {doc} ({type_name(hint)})")
        if dataclasses.is_dataclass(hint):
            out.append(f"{indent}{field.name}:")
            _emit(hint, indent + "  ", out, values, path + ".")
        elif field.name == "services":
            out.append(f"{indent}services:")
            first = True
            for key, value in SAMPLE_SERVICE.items():
                lead = "- " if first else "  "
                shown = f'"{value}"' if isinstance(value, str) else value
                out.append(f"{indent}  {lead}{key}: {shown}")
                first = False
        elif path in values:
            out.append(f"{indent}{field.name}: {json.dumps(values[path])}")
        else:
            default = field.default if field.default is not dataclasses.MISSING \
                else field.default_factory()  # type: ignore[misc]
            shown = "[]" if default == [] else describe(default)
            if isinstance(default, list) and default:
                shown = "[" + ", ".join(describe(v) for v in default) + "]"
            out.append(f"{indent}{field.name}: {shown}")


def sample(values: dict[str, Any] | None = None) -> str:
    """The commented config; `values` ({"provider.id": ..., "state_dir": ...}) replace the
    sample's values for those keys (what `lthn-node init` writes)."""
    out = ["# Lethean exit node config. Every key is optional unless marked required.",
           "# Check it with: lthnctl -c FILE config check", ""]
    _emit(Config, "", out, {"provider.id": SAMPLE_PROVIDER_ID} | (values or {}))
    return "\n".join(out) + "\n"
