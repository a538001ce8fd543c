# -*- test-case-name: tests.test_sublist -*-
"""
The subscription tree: which subscriptions a topic reaches.

After NATS's sublist.  Exact-topic subscriptions sit in one dict; pattern
subscriptions sit in a tree with one level per token, where each node has
its literal children by token, one child for C{*} and, for patterns ending
in C{>}, the subscriptions that take every longer topic.  Matching a topic
walks at most the literal and C{*} branches of its tokens, so its cost does
not grow with subscriptions that share no prefix with it, and a bounded
cache of topic -> result makes a repeated topic one dict lookup.  Inserting
or removing a pattern drops the cached results of the topics it matches;
inserting or removing an exact topic drops that topic's alone.

Items are opaque and hashable (the broker stores its subscription objects);
each is given with an optional queue group name.  Items in the same group
are pooled across every topic and pattern matching a message, as in NATS;
L{QueueGroup.choose} then takes one of them.  Pure: no reactor, no I/O.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

from memmq.groups import QueueGroup
from memmq.patterns import MANY, ONE, Pattern

__all__ = ["Matches", "Sublist", "NO_MATCHES", "DEFAULT_CACHE_SIZE"]

DEFAULT_CACHE_SIZE = 1024

T = TypeVar("T", bound=Hashable)


class Matches(Generic[T]):
    """
    What a topic reaches: an immutable snapshot, safe to keep while the
    tree changes.

    @ivar plain: the items outside groups, each once.
    @ivar groups: one C{(group, members)} pair for each queue group with a
        member matching, C{members} in a stable order (so that round-robin
        is fair), each member once.
    """

    __slots__ = ("plain", "groups")

    def __init__(self, plain: tuple[T, ...], groups: tuple[tuple[QueueGroup, tuple[T, ...]], ...]) -> None:
        self.plain = plain
        self.groups = groups

    def __bool__(self) -> bool:
        return bool(self.plain or self.groups)

    def __repr__(self) -> str:
        return f"<Matches plain={self.plain!r} groups={self.groups!r}>"

    def recipients(self) -> list[T]:
        """
        Who gets one message: every plain item, and one member of each group
        (L{QueueGroup.choose}: a group whose members are all full counts a
        drop instead).  Call once per message: each call moves the groups on.
        """
        chosen = list(self.plain)
        for group, members in self.groups:
            member = group.choose(members)  # type: ignore[type-var]
            if member is not None:
                chosen.append(member)
        return chosen


NO_MATCHES: Matches = Matches((), ())


class _Entries:
    """
    The items of one exact topic or one pattern: plain ones, and group
    members by group name; dicts as ordered sets.
    """

    __slots__ = ("plain", "groups")

    def __init__(self) -> None:
        self.plain: dict = {}
        self.groups: dict[str, dict] = {}

    def __bool__(self) -> bool:
        return bool(self.plain or self.groups)

    def add(self, item: Hashable, group: str | None) -> bool:
        members = self.plain if group is None else self.groups.setdefault(group, {})
        if item in members:
            return False
        members[item] = None
        return True

    def discard(self, item: Hashable, group: str | None) -> bool:
        if group is None:
            return self.plain.pop(item, self) is not self
        members = self.groups.get(group)
        if members is None or members.pop(item, self) is self:
            return False
        if not members:
            del self.groups[group]
        return True

    def count(self) -> int:
        return len(self.plain) + sum(map(len, self.groups.values()))


class _Node:
    """
    One token's place in the tree.
    """

    __slots__ = ("children", "star", "here", "rest")

    def __init__(self) -> None:
        # Literal tokens; C{*}; the patterns ending at this node; those
        # ending in C{>} right after it.
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.here: _Entries | None = None
        self.rest: _Entries | None = None

    def __bool__(self) -> bool:
        return bool(self.children or self.star or self.here or self.rest)


class Sublist(Generic[T]):
    """
    Subscriptions by exact topic or by L{Pattern}, each optionally in a
    queue group, and the matches of a topic.

    A C{str} subject is an exact topic, whatever it holds (an asim/mq topic
    C{a.*} is one topic); a L{Pattern} is a pattern, and a pattern without
    wildcards is the same as its text as a topic.
    """

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._topics: dict[str, _Entries] = {}
        self._root = _Node()
        self._patterns: dict[Pattern, int] = {}
        self._groups: dict[str, QueueGroup] = {}
        # Ordered so that the oldest entry goes first, in constant time.
        self._cache: OrderedDict[str, Matches[T]] = OrderedDict()
        self._cache_size = cache_size
        self._count = 0

    def __len__(self) -> int:
        """
        How many (subject, item, group) subscriptions are held.
        """
        return self._count

    def insert(self, subject: str | Pattern, item: T, group: str | None = None) -> bool:
        """
        Add C{item} to the subscriptions of C{subject}, in queue group
        C{group} if given.  Returns C{False} if it was already there.
        """
        topic, pattern = self._split(subject)
        if pattern is None:
            entries = self._topics.get(topic)
            if entries is None:
                entries = self._topics[topic] = _Entries()
        else:
            entries = self._entries(pattern)
        if not entries.add(item, group):
            return False
        self._added(topic, pattern, group)
        return True

    def remove(self, subject: str | Pattern, item: T, group: str | None = None) -> bool:
        """
        Take C{item} out of the subscriptions of C{subject} in C{group}.
        Returns C{False} if it was not there.
        """
        topic, pattern = self._split(subject)
        if pattern is None:
            entries = self._topics.get(topic)
            if entries is None or not entries.discard(item, group):
                return False
            if not entries:
                del self._topics[topic]
        elif not self._discard(self._root, pattern.tokens, 0, item, group):
            return False
        self._removed(topic, pattern, group)
        return True

    def match(self, topic: str) -> Matches[T]:
        """
        The subscriptions C{topic} reaches.
        """
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        plain: dict = {}
        groups: dict[str, dict] = {}
        entries = self._topics.get(topic)
        if entries is not None:
            _gather(entries, plain, groups)
        if self._patterns:
            _walk(self._root, topic.split("."), 0, plain, groups)
        if plain or groups:
            found = Matches(
                tuple(plain),
                tuple((self._groups[name], tuple(members)) for name, members in groups.items()),
            )
        else:
            found = NO_MATCHES
        cache = self._cache
        if len(cache) >= self._cache_size:
            # The oldest entry out: first in, first out, so that a hit costs
            # nothing more than the lookup.
            cache.popitem(last=False)
        cache[topic] = found
        return found

    def group(self, name: str) -> QueueGroup | None:
        """
        The queue group called C{name}, or L{None} if it has no members.
        """
        return self._groups.get(name)

    def groups(self) -> list[QueueGroup]:
        """
        Every queue group with at least one member (for the figures a
        broker reports).
        """
        return list(self._groups.values())

    def patterns(self) -> list[tuple[Pattern, int]]:
        """
        Every pattern with wildcards subscribed to, and how many items it
        has (for the figures a broker reports).
        """
        return list(self._patterns.items())

    def _split(self, subject: str | Pattern) -> tuple[str, Pattern | None]:
        """
        The topic, and the pattern if C{subject} has wildcards.
        """
        if isinstance(subject, Pattern):
            return subject.text, None if subject.is_literal else subject
        if isinstance(subject, str):
            return subject, None
        raise TypeError(f"a subject is a topic (str) or a Pattern, not {type(subject).__name__}")

    def _entries(self, pattern: Pattern) -> _Entries:
        """
        The entries of C{pattern}, made with the nodes leading to them if
        new.
        """
        node = self._root
        tokens = pattern.tokens
        if tokens[-1] == MANY:
            tokens = tokens[:-1]
            tail = True
        else:
            tail = False
        for token in tokens:
            if token == ONE:
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node()
                node = child
        if tail:
            if node.rest is None:
                node.rest = _Entries()
            return node.rest
        if node.here is None:
            node.here = _Entries()
        return node.here

    def _discard(self, node: _Node, tokens: tuple[str, ...], index: int, item: Hashable, group: str | None) -> bool:
        """
        Remove C{item} under C{tokens[index:]} from C{node}, pruning the
        nodes left empty on the way back.
        """
        last = len(tokens) - 1
        if index == last and tokens[index] == MANY:
            entries = node.rest
            if entries is None or not entries.discard(item, group):
                return False
            if not entries:
                node.rest = None
            return True
        if index > last:
            entries = node.here
            if entries is None or not entries.discard(item, group):
                return False
            if not entries:
                node.here = None
            return True
        token = tokens[index]
        child = node.star if token == ONE else node.children.get(token)
        if child is None or not self._discard(child, tokens, index + 1, item, group):
            return False
        if not child:
            if token == ONE:
                node.star = None
            else:
                del node.children[token]
        return True

    def _added(self, topic: str, pattern: Pattern | None, group: str | None) -> None:
        self._count += 1
        if group is not None:
            queue = self._groups.get(group)
            if queue is None:
                queue = self._groups[group] = QueueGroup(group)
            queue.size += 1
        if pattern is not None:
            self._patterns[pattern] = self._patterns.get(pattern, 0) + 1
        self._forget(topic, pattern)

    def _removed(self, topic: str, pattern: Pattern | None, group: str | None) -> None:
        self._count -= 1
        if group is not None:
            queue = self._groups[group]
            queue.size -= 1
            if not queue.size:
                del self._groups[group]
        if pattern is not None:
            left = self._patterns[pattern] - 1
            if left:
                self._patterns[pattern] = left
            else:
                del self._patterns[pattern]
        self._forget(topic, pattern)

    def _forget(self, topic: str, pattern: Pattern | None) -> None:
        """
        Drop the cached results a change to C{topic} or C{pattern} makes
        stale.
        """
        cache = self._cache
        if pattern is None:
            cache.pop(topic, None)
        elif cache:
            # One regular expression run over every cached topic in C: a
            # tenth of the time of splitting each and comparing tokens.
            for cached in list(filter(_regex(pattern).fullmatch, cache)):
                del cache[cached]


def _regex(pattern: Pattern) -> re.Pattern[str]:
    """
    A regular expression matching the topics C{pattern} matches.
    """
    parts = [_WILDCARD_REGEX.get(token) or re.escape(token) for token in pattern.tokens]
    return re.compile(r"\.".join(parts), re.DOTALL)


# C{*}: one token, so anything but a dot, empty included; C{>}: always last
# and one or more tokens, so anything at all.
_WILDCARD_REGEX = {ONE: "[^.]*", MANY: ".*"}


def _gather(entries: _Entries, plain: dict, groups: dict[str, dict]) -> None:
    if entries.plain:
        plain.update(entries.plain)
    for name, members in entries.groups.items():
        pooled = groups.get(name)
        if pooled is None:
            groups[name] = dict(members)
        else:
            pooled.update(members)


def _walk(node: _Node, tokens: list[str], index: int, plain: dict, groups: dict[str, dict]) -> None:
    """
    Gather what C{tokens[index:]} reaches from C{node}: the literal branch
    followed in a loop, the C{*} branches by recursion.
    """
    end = len(tokens)
    while index < end:
        if node.rest is not None:
            _gather(node.rest, plain, groups)
        if node.star is not None:
            _walk(node.star, tokens, index + 1, plain, groups)
        child = node.children.get(tokens[index])
        if child is None:
            return
        node = child
        index += 1
    if node.here is not None:
        _gather(node.here, plain, groups)
