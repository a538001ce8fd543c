"""
A topic's file name: C{<topic>.mq} as asim/mq names it when the topic is a
plain name, and never a path.

Bytes of the topic's UTF-8 outside C{[A-Za-z0-9._-]} are percent-encoded
(C{%2F} for C{/}, C{%25} for C{%}), and so are the names C{.} and C{..}
(C{%2E}, C{%2E%2E}); the encoding is one-to-one, so distinct topics get
distinct names.  A name that would pass L{MAX_NAME} bytes is cut and ends
in C{~} and a hash of the whole topic: C{~} is never part of an encoded
name, so a cut name cannot meet an uncut one, and the hash keeps cut names
apart.  Names stay well under the 255 bytes common file systems allow.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["file_name", "MAX_NAME", "SUFFIX"]

SUFFIX = ".mq"
MAX_NAME = 200  # bytes, the suffix included

_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_ALL_PLAIN = re.compile(r"[A-Za-z0-9._-]+")
_HASH_HEX = 32


def file_name(topic: str) -> str:
    """
    The name of C{topic}'s file in the persistence directory: one path
    component, never C{.} or C{..} or empty.
    """
    if topic in (".", ".."):
        encoded = "%2E" * len(topic)
    elif _ALL_PLAIN.fullmatch(topic):
        encoded = topic
    else:
        encoded = "".join(chr(b) if b in _PLAIN else f"%{b:02X}" for b in topic.encode("utf-8"))
    if len(encoded) + len(SUFFIX) > MAX_NAME:
        digest = hashlib.sha256(topic.encode("utf-8")).hexdigest()[:_HASH_HEX]
        keep = MAX_NAME - len(SUFFIX) - 1 - _HASH_HEX
        # Not inside a %XX escape: the cut name stays decodable up to the ~.
        cut = encoded[:keep]
        if "%" in cut[-2:]:
            cut = cut[: cut.rindex("%")]
        encoded = f"{cut}~{digest}"
    return encoded + SUFFIX
