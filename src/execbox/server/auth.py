"""API keys: who is calling, at what rate, with which caps.

Keys are random (``ebx_`` + 43 url-safe characters), shown once at creation and stored as SHA-256 hashes
(a fast hash is right for high-entropy secrets). Keys from ``EXECBOX_API_KEY`` and the dev key live only
in memory and are compared in constant time.

Scopes: the ``admin`` scope opens /api/v1/admin (providers, the chain, breakers). Keys from
``EXECBOX_API_KEY`` and the dev key have it: they are the operator's own, set where the server is configured.
A stored key has it only when created so (``execbox keys create NAME --admin``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from execbox.models import Limits
from execbox.store import KeyRecord, SQLiteStore

KEY_PREFIX = "ebx_"
# Stored keys' names. Static keys (the environment's, the dev key) are named `env:N` and `dev:1`, with a colon
# no stored name can have, so a stored key can never share their executions.
KEY_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ADMIN = "admin"
SCOPES = frozenset({ADMIN})


@dataclass(frozen=True)
class Principal:
    """The caller: a key's name (never the key), its rate limit, its caps on limits and its scopes."""

    name: str
    rate_limit_per_min: float | None = None
    caps: Limits | None = None
    scopes: frozenset[str] = frozenset()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def create_key(store: SQLiteStore, name: str, rate_limit_per_min: float | None = None,
               caps: Limits | None = None, scopes: tuple[str, ...] = ()) -> tuple[str, KeyRecord]:
    """A new key (returned once, never stored in clear) and its record. ValueError for a bad name, rate or
    scope."""
    if unknown := sorted(set(scopes) - SCOPES):
        raise ValueError(f"unknown scope {unknown[0]!r}; known: {', '.join(sorted(SCOPES))}")
    if not KEY_NAME.fullmatch(name):
        raise ValueError("a key name is 1-64 letters, digits, '-' or '_'")
    if rate_limit_per_min is not None and not rate_limit_per_min > 0:
        raise ValueError("a rate limit is a positive number of requests per minute")
    key = new_key()
    caps_json = caps.model_dump(include=caps.model_fields_set) if caps is not None else None
    return key, store.add_key(name, hash_key(key), key[:8], rate_limit_per_min, caps_json or None,
                              tuple(sorted(set(scopes))))


class KeyRing:
    """Turns a presented key into a Principal, or None."""

    def __init__(self, store: SQLiteStore, static: dict[str, str], default_rate_per_min: float | None) -> None:
        self.store = store
        self._static = [(hash_key(k), name) for k, name in static.items()]
        self.default_rate = default_rate_per_min

    @staticmethod
    def static_names(keys: list[str]) -> dict[str, str]:
        """Names for keys given in the environment, by position (a hash of a weak key would leak it)."""
        return {k: f"env:{i}" for i, k in enumerate(keys, 1)}

    def principal_named(self, name: str) -> Principal:
        """The principal a job was submitted by (its key may have been revoked since: the job still runs,
        under the caps it was submitted with)."""
        record = self.store.key_by_name(name)
        if record is None:
            return Principal(name, self.default_rate)
        return self._principal(record)

    def _principal(self, record: KeyRecord) -> Principal:
        caps = Limits(**record.caps) if record.caps else None
        rate = record.rate_limit_per_min if record.rate_limit_per_min is not None else self.default_rate
        return Principal(record.name, rate, caps, frozenset(record.scopes))

    def lookup(self, key: str) -> Principal | None:
        if not key or len(key) > 512:
            return None
        h = hash_key(key)
        found = None
        for static_hash, name in self._static:  # no early exit: every comparison is made
            if hmac.compare_digest(static_hash, h):
                found = Principal(name, self.default_rate, scopes=SCOPES)  # the operator's own
        if found:
            return found
        record = self.store.key_by_hash(h)
        if record is None or not hmac.compare_digest(record.key_hash, h):
            return None
        return self._principal(record)
