# -*- test-case-name: tests.test_auth_model -*-
"""
When one topic pattern covers another: the rule that lets an identity
subscribe to a pattern.

A pattern C{allowed} I{covers} a pattern C{wanted} when every topic that
C{wanted} matches, C{allowed} matches too.  Patterns have no empty tokens,
and a wildcard matches any one token (C{*}) or any one or more (a last
C{>}), so this is decided token by token, with no topic in hand:

- C{allowed} ends in C{>} after the tokens C{a1 .. ak}: C{wanted} has more
  than C{k} tokens, and each of its first C{k} is covered by the C{ai} in
  its place; whatever follows (literal tokens, C{*}, a last C{>}) is one or
  more tokens, which the C{>} takes.
- Otherwise C{allowed} matches topics of exactly its length: C{wanted} has
  the same number of tokens, none of them C{>}, and each covered by the one
  in its place.
- One token covers another when it is C{*} and the other is not C{>}, or
  when both are the same literal token.  A literal never covers a wildcard
  (C{orders.new} does not cover C{orders.*}).

So C{orders.>} covers C{orders.*}, C{orders.*.eu}, C{orders.eu.>} and
C{orders.new}, but not C{orders} nor C{>}; C{orders.*} covers
C{orders.new} and itself, but not C{orders.>}; C{>} covers everything.
"""

from __future__ import annotations

from memmq.patterns import MANY, ONE, Pattern

__all__ = ["covers"]


def covers(allowed: Pattern, wanted: Pattern) -> bool:
    """
    Whether every topic C{wanted} matches is matched by C{allowed}.
    """
    if wanted.is_literal:
        return allowed.matches(wanted.text)
    have = allowed.text.split(".")
    want = wanted.text.split(".")
    if have[-1] == MANY:
        head = have[:-1]
        if len(want) <= len(head):
            return False
    else:
        head = have
        if len(want) != len(head):
            return False
    return all(_token_covers(a, w) for a, w in zip(head, want, strict=False))


def _token_covers(allowed: str, wanted: str) -> bool:
    if allowed == ONE:
        return wanted != MANY
    return allowed == wanted
