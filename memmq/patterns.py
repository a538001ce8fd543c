# -*- test-case-name: tests.test_patterns -*-
"""
Topic patterns: the one syntax shared by pattern subscriptions and by
access-control permissions.

A topic is split on C{.} into tokens.  In a pattern, a token that is exactly
C{*} matches any one token, and a last token that is exactly C{>} matches one
or more tokens; every other token matches itself.  So C{orders.*} matches
C{orders.new} but neither C{orders} nor C{orders.new.eu}; C{orders.>} matches
both of the latter but not C{orders}; C{>} alone matches every topic.

A topic's own tokens are never wildcards: the topic C{a.*} is one more topic,
matched by the patterns C{a.*}, C{a.>} and C{>}, and by a subscription to the
topic itself, never read as a pattern.  Topics may hold empty tokens (asim/mq
takes any name), and a wildcard matches an empty token like any other:
C{a.*} matches C{a.}.  Patterns may not hold empty tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from memmq.errors import InvalidPattern

__all__ = ["Pattern", "parse_pattern", "tokens_match", "ONE", "MANY"]

ONE = "*"
MANY = ">"

_WILDCARDS = frozenset((ONE, MANY))

# The control characters topics refuse: nothing a one-line reason or a log
# line should carry.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

# How much of a token a reason quotes, so that the reason stays one short line.
_QUOTED = 40


def _quoted(token: str) -> str:
    if len(token) > _QUOTED:
        token = token[:_QUOTED] + "…"
    return repr(token)


@dataclass(frozen=True, slots=True)
class Pattern:
    """
    A parsed, valid topic pattern; build one with L{parse_pattern}.

    Two patterns are equal when their texts are.

    @ivar text: the pattern as given.
    @ivar tokens: C{text} split on C{.}.
    @ivar is_literal: C{True} when no token is a wildcard: the pattern
        matches exactly the topic C{text}.
    """

    text: str
    tokens: tuple[str, ...] = field(init=False, compare=False, repr=False)
    is_literal: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        tokens = tuple(_checked_tokens(self.text))
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "is_literal", _WILDCARDS.isdisjoint(tokens))

    def matches(self, topic: str) -> bool:
        """
        Whether C{topic} is one of the topics this pattern names.
        """
        if self.is_literal:
            return topic == self.text
        return tokens_match(self.tokens, topic.split("."))


def tokens_match(pattern: tuple[str, ...], topic: list[str] | tuple[str, ...]) -> bool:
    """
    Whether a valid pattern's tokens match a topic's tokens.
    """
    last = len(pattern) - 1
    if pattern[last] == MANY:
        if len(topic) <= last:
            return False
    elif len(topic) != len(pattern):
        return False
    for want, got in zip(pattern, topic, strict=False):
        if want == MANY:
            return True
        if want != ONE and want != got:
            return False
    return True


def _checked_tokens(text: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"a pattern is a str, not {type(text).__name__}")
    if not text:
        raise InvalidPattern("empty pattern: give one, for example orders.* or orders.>")
    if _CONTROL.search(text):
        raise InvalidPattern("pattern holds control characters")
    tokens = text.split(".")
    last = len(tokens) - 1
    for index, token in enumerate(tokens):
        if not token:
            raise InvalidPattern(
                f"pattern {_quoted(text)} has an empty token (a dot at an end, or two dots in a row)"
            )
        if token == MANY and index != last:
            raise InvalidPattern(f"pattern {_quoted(text)}: '>' may only be the last token")
        if token not in _WILDCARDS and (ONE in token or MANY in token):
            raise InvalidPattern(
                f"pattern {_quoted(text)}: '*' and '>' must be whole tokens, not part of {_quoted(token)}"
            )
    return tokens


def parse_pattern(text: str) -> Pattern:
    """
    Parse C{text} as a topic pattern.

    @raise InvalidPattern: C{text} is not a valid pattern; the message says
        why in one line.
    """
    return Pattern(text)
