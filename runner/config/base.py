"""What every config section shares: strict models (unknown keys fail) and sizes like 20GiB."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)


class _Strict(BaseModel):
    # allow_inf_nan=False: YAML reads `.inf` and `.nan` as floats; no setting means either.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def parse_size(value: str | int) -> int:
    """'20GiB' -> bytes. Raises ValueError naming the accepted units."""
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"unreadable size {value!r}: use e.g. 20GiB, 500MB, 64GB")
    units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    units |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    return int(float(match.group(1)) * units[match.group(2).lower()])
