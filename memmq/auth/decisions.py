# -*- test-case-name: tests.test_auth_authority -*-
"""
The decisions already taken, so that a connection publishing to the same
topic again costs one dictionary look-up rather than a walk of its patterns.

Bounded: past C{size} decisions, the one used longest ago is forgotten.
Not thread-safe: the reactor thread alone asks (the gRPC module crosses
threads in one place).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["DecisionCache", "DECISION_CACHE_SIZE"]

DECISION_CACHE_SIZE = 10_000


class DecisionCache:
    """
    A bounded map from (identity, action, topic) to allowed or not, the
    least recently used dropped first.
    """

    def __init__(self, size: int = DECISION_CACHE_SIZE) -> None:
        self._size = size
        self._decisions: OrderedDict[Hashable, bool] = OrderedDict()

    def __len__(self) -> int:
        return len(self._decisions)

    def get(self, key: Hashable) -> bool | None:
        """
        The decision taken for C{key}, or L{None} if there is none.
        """
        decision = self._decisions.get(key)
        if decision is not None:
            self._decisions.move_to_end(key)
        return decision

    def put(self, key: Hashable, decision: bool) -> None:
        """
        Remember C{decision} for C{key}, forgetting the oldest if full.
        """
        self._decisions[key] = decision
        if len(self._decisions) > self._size:
            self._decisions.popitem(last=False)

    def clear(self) -> None:
        """
        Forget every decision (the rules changed).
        """
        self._decisions.clear()
