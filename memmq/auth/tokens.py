"""
Opaque tokens: making them, hashing them, and finding whose a token is
without a comparison whose time depends on how much of it was right.

An auth file stores a hash of each token (C{sha256:<hex>}), never the token,
so a copy of the file lets no one in.  A fast hash is enough here, unlike
for passwords: a token is 32 random bytes (L{new_token}), and no hash speed
makes 2**256 guesses feasible; slow hashes (scrypt, argon2) exist to protect
secrets that people choose and that are therefore guessable.  L{hash_token}
refuses short tokens so that a guessable one cannot sneak in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from typing import TypeVar

__all__ = ["MIN_TOKEN_LENGTH", "new_token", "hash_token", "parse_token_hash", "find_token"]

# A token from new_token is 43 characters; anything under 20 is too short
# to be random enough to stand behind a fast hash.
MIN_TOKEN_LENGTH = 20
_SCHEME = "sha256:"
_HASH = re.compile(r"sha256:[0-9a-f]{64}\Z")

T = TypeVar("T")


def new_token() -> str:
    """
    A new random token: 32 bytes from the system's CSPRNG, URL-safe base64
    (no dots, so it is never taken for a JWT, and safe in C{?token=}).
    """
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """
    The form an auth file stores C{token} in: C{sha256:<64 hex digits>}.

    @raise ValueError: C{token} is shorter than L{MIN_TOKEN_LENGTH} or holds
        whitespace (the message does not repeat the token).
    """
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"the token is {len(token)} characters; a token must be at least {MIN_TOKEN_LENGTH} "
            "random characters (memmq auth token makes one)"
        )
    if any(c.isspace() for c in token):
        raise ValueError("the token holds whitespace")
    return _SCHEME + _digest(token).hex()


def parse_token_hash(text: str) -> bytes:
    """
    The digest written in an auth file's C{token} value.

    @raise ValueError: C{text} is not C{sha256:} and 64 lowercase hex digits
        (a token pasted as is, for instance).
    """
    if not _HASH.match(text):
        raise ValueError("a token is stored as its hash, 'sha256:' and 64 hex digits (memmq auth hash prints it)")
    return bytes.fromhex(text[len(_SCHEME):])


def find_token(token: str, entries: Iterable[tuple[bytes, T]]) -> T | None:
    """
    The value paired with the digest of C{token}, or L{None}.

    Every digest is compared, in constant time, whether or not an earlier
    one matched, so the time taken says nothing about which entry, or how
    much of a digest, matched.
    """
    digest = _digest(token)
    found = None
    for stored, value in entries:
        if hmac.compare_digest(digest, stored):
            found = value
    return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
