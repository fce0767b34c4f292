"""API keys: who a request is, from its `Authorization: Bearer KEY` header.

Keys come from a file (or the RUNNER_SERVE_API_KEYS variable, same text), one `KEY OWNER [admin]`
a line; `#` starts a comment. An owner may hold several keys (rotation); objects belong to the owner,
so a rotated key still sees its owner's batches. Every presented key is compared with every known
key through `hmac.compare_digest` over fixed-length digests, so neither the position of the first
differing byte nor which key matched shows in the response time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from runner.errors import ConfigError

ENV_VAR = "RUNNER_SERVE_API_KEYS"
MIN_KEY_LENGTH = 16


@dataclass(frozen=True)
class Principal:
    """The owner a key belongs to; an admin sees and cancels every owner's objects."""

    owner: str
    admin: bool = False

    def may_see(self, owner: str) -> bool:
        """Whether this principal may read or change an object owned by `owner`."""
        return self.admin or owner == self.owner


class Keys:
    """The known keys, kept as SHA-256 digests (the plain keys are not held after loading)."""

    def __init__(self, entries: list[tuple[str, Principal]]):
        if not entries:
            raise ConfigError("--api-keys: no keys (one `KEY OWNER [admin]` a line)")
        self._entries = [(_digest(key), who) for key, who in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of a `Bearer KEY` header, or None (missing, malformed or unknown key)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = _digest(token.strip())
        found = None
        for digest, who in self._entries:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(presented, digest):
                found = who
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys(text: str, where: str) -> Keys:
    """Keys from the file format; a bad line is a ConfigError naming `where` and the line number."""
    entries, seen = [], set()
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] != "admin"):
            raise ConfigError(f"{where}: line {number}: expected `KEY OWNER [admin]`")
        key, owner = fields[0], fields[1]
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"{where}: line {number}: the key is shorter than {MIN_KEY_LENGTH} characters")
        if key in seen:
            raise ConfigError(f"{where}: line {number}: the key is listed twice")
        seen.add(key)
        entries.append((key, Principal(owner, admin=len(fields) == 3)))
    return Keys(entries)


def load_keys(path: str | None) -> Keys:
    """Keys from `path`, else from RUNNER_SERVE_API_KEYS; neither is a ConfigError."""
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"--api-keys: file not found: {path}")
        return parse_keys(file.read_text(), f"--api-keys {path}")
    if os.environ.get(ENV_VAR):
        return parse_keys(os.environ[ENV_VAR], ENV_VAR)
    raise ConfigError(f"--api-keys: give a keys file (or set {ENV_VAR}); the server never runs without keys")
