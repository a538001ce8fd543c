# -*- test-case-name: tests.test_backplane_redis -*-
"""
What the other nodes on a Redis backplane follow, so that a publish to a
topic nobody elsewhere follows costs no Redis traffic (README: Redis
backplane).

Each node announces on a control channel the channels and patterns it is
subscribed to in Redis: C{add} once Redis has confirmed a subscription (so a
message sent after the announcement reaches it), C{remove} after the last
local subscriber has gone, C{hello} with everything it follows when it
(re)connects (the others answer with C{state}, everything they follow), a
C{state} every L{STATE_INTERVAL} seconds, and C{bye} when it stops. A node
not heard from for L{EXPIRY} seconds is forgotten. The table is pure: no
clock, no I/O; its owner hands it the time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

__all__ = ["RemoteInterest", "announcement", "parse_announcement", "STATE_INTERVAL", "EXPIRY"]

STATE_INTERVAL = 10.0
EXPIRY = 3.5 * STATE_INTERVAL

OPERATIONS = ("add", "remove", "hello", "state", "bye")


def announcement(node: bytes, op: str, channels: Iterable[str] = (), globs: Iterable[str] = ()) -> bytes:
    """
    A control message: which node, what it says, about which channels and
    Redis globs.
    """
    return json.dumps(
        {"node": node.decode("ascii"), "op": op, "channels": list(channels), "globs": list(globs)},
        separators=(",", ":"),
    ).encode("utf-8")


def parse_announcement(data: bytes) -> tuple[bytes, str, list[str], list[str]] | None:
    """
    (node, op, channels, globs) of a control message, or None if it is not
    one.
    """
    try:
        message = json.loads(data)
        node, op = message["node"].encode("ascii"), message["op"]
        channels, globs = list(message.get("channels", ())), list(message.get("globs", ()))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeError):
        return None
    if op not in OPERATIONS or not all(isinstance(x, str) for x in channels + globs):
        return None
    return node, op, channels, globs


def glob_regex(glob: str) -> re.Pattern:
    """
    What a Redis glob of the backplane's (C{*} and backslash escapes only)
    matches, as Redis matches it.
    """
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


class _Node:
    __slots__ = ("channels", "globs", "seen")

    def __init__(self, seen: float) -> None:
        self.channels: set[str] = set()
        self.globs: set[str] = set()
        self.seen = seen


class RemoteInterest:
    """
    The channels and globs the other nodes follow, by node, with counts for
    a quick answer to L{wants}.
    """

    def __init__(self) -> None:
        self._nodes: dict[bytes, _Node] = {}
        self._channels: dict[str, int] = {}
        self._globs: dict[str, list] = {}  # glob -> [regex, count]

    def wants(self, channel: str) -> bool:
        """
        Whether any other node follows C{channel}.
        """
        if channel in self._channels:
            return True
        return any(entry[0].fullmatch(channel) for entry in self._globs.values())

    def apply(self, node: bytes, op: str, channels: list[str], globs: list[str], now: float) -> None:
        """
        What node C{node} announced at time C{now}.
        """
        if op == "bye":
            self._forget(node)
            return
        entry = self._nodes.get(node)
        if entry is None:
            entry = self._nodes[node] = _Node(now)
        entry.seen = now
        if op in ("hello", "state"):
            self._drop(entry, list(entry.channels), list(entry.globs))
            self._add(entry, channels, globs)
        elif op == "add":
            self._add(entry, channels, globs)
        elif op == "remove":
            self._drop(entry, channels, globs)
        self.expire(now)

    def expire(self, now: float) -> None:
        """
        Forget the nodes not heard from for L{EXPIRY} seconds (they died
        without a word).
        """
        for node in [n for n, entry in self._nodes.items() if now - entry.seen > EXPIRY]:
            self._forget(node)

    @property
    def nodes(self) -> int:
        return len(self._nodes)

    def _forget(self, node: bytes) -> None:
        entry = self._nodes.pop(node, None)
        if entry is not None:
            self._drop(entry, list(entry.channels), list(entry.globs))

    def _add(self, entry: _Node, channels: list[str], globs: list[str]) -> None:
        for channel in channels:
            if channel not in entry.channels:
                entry.channels.add(channel)
                self._channels[channel] = self._channels.get(channel, 0) + 1
        for glob in globs:
            if glob not in entry.globs:
                entry.globs.add(glob)
                counted = self._globs.setdefault(glob, [glob_regex(glob), 0])
                counted[1] += 1

    def _drop(self, entry: _Node, channels: list[str], globs: list[str]) -> None:
        for channel in channels:
            if channel in entry.channels:
                entry.channels.discard(channel)
                left = self._channels[channel] - 1
                if left:
                    self._channels[channel] = left
                else:
                    del self._channels[channel]
        for glob in globs:
            if glob in entry.globs:
                entry.globs.discard(glob)
                counted = self._globs[glob]
                counted[1] -= 1
                if not counted[1]:
                    del self._globs[glob]
