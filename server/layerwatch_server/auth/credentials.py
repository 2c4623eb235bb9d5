"""Token secrets: made from 256 random bits, recognisable by their prefix, stored as hashes.

A plain SHA-256 is enough for a secret with 256 bits of entropy: nothing
can be guessed, so there is nothing for a slow or keyed hash to slow down,
and the lookup stays one indexed query that every server process can do
without sharing a key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

PREFIX = "lw_"
_SECRET = re.compile(r"lw_[A-Za-z0-9_-]{43}")  # token_urlsafe(32): 43 characters


def new_secret() -> str:
    """A fresh secret: ``lw_`` then 256 random bits, URL-safe base64."""
    return PREFIX + secrets.token_urlsafe(32)


def is_well_formed(secret: str) -> bool:
    return _SECRET.fullmatch(secret) is not None


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of the secret: what the database keeps."""
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_hash: str) -> bool:
    """Whether ``secret`` hashes to ``stored_hash``, compared in constant time."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)
