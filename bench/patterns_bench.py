"""
Micro-benchmark of memmq.sublist: the cost of matching a published topic
with 10,000 pattern subscriptions registered that do not match it, against
none.  Run from anywhere: python3 bench/patterns_bench.py [--subscriptions N]

Three figures for each case, in nanoseconds per call:
- cached: the same topic published again and again (one dict lookup);
- uncached: a new topic every time, more topics than the cache holds, so
  every match walks the tree;
- insert: subscribing or unsubscribing one pattern while the cache is full
  (the cache entries it matches are dropped, so each cached topic is tested).
The two cases take turns and each figure is the best of several runs, so
that a busy machine weighs on both alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memmq.patterns import parse_pattern  # noqa: E402
from memmq.sublist import DEFAULT_CACHE_SIZE, Sublist  # noqa: E402

TOPICS = [f"orders.new.{n}" for n in range(DEFAULT_CACHE_SIZE * 4)]


def non_matching(count: int) -> list:
    """
    C{count} patterns none of which matches C{orders.new.<n>}: a fifth with
    a prefix of their own, the rest sharing tokens or wildcards with the
    published topics, so that a match has branches to try and leave.
    """
    shapes = ["other{}.*", "*.x{}", "orders.y{}.>", "orders.*.z{}", "*.new.w{}.>"]
    return [parse_pattern(shapes[n % len(shapes)].format(n)) for n in range(count)]


def build(count: int) -> Sublist:
    sublist: Sublist = Sublist()
    for number, pattern in enumerate(non_matching(count)):
        sublist.insert(pattern, number)
    # Someone does get the published messages.
    sublist.insert(parse_pattern("orders.new.*"), "subscriber")
    assert sublist.match("orders.new.1").plain == ("subscriber",)
    return sublist


def cached(sublist: Sublist) -> float:
    match = sublist.match
    calls = 100_000
    started = time.perf_counter()
    for _ in range(calls):
        match("orders.new.1")
    return (time.perf_counter() - started) / calls


def uncached(sublist: Sublist) -> float:
    match = sublist.match
    topics = TOPICS * 5
    started = time.perf_counter()
    for topic in topics:
        match(topic)
    return (time.perf_counter() - started) / len(topics)


def insert(sublist: Sublist) -> float:
    extra = parse_pattern("elsewhere.*")
    spent = 0.0
    rounds = 20
    for _ in range(rounds):
        for topic in TOPICS[:DEFAULT_CACHE_SIZE]:
            sublist.match(topic)
        started = time.perf_counter()
        sublist.insert(extra, "extra")
        sublist.remove(extra, "extra")
        spent += time.perf_counter() - started
    return spent / (2 * rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    sublists = (build(0), build(options.subscriptions))
    print(f"{'':10}{'0 patterns':>14}{f'{options.subscriptions:,} patterns':>18}{'ratio':>8}")
    for workload in (cached, uncached, insert):
        best = [float("inf")] * 2
        for _ in range(options.rounds):
            for side, sublist in enumerate(sublists):
                best[side] = min(best[side], workload(sublist))
        none, many = (seconds * 1e9 for seconds in best)
        print(f"{workload.__name__:10}{none:>11.0f} ns{many:>15.0f} ns{many / none:>8.2f}")
    print("ratio: the time with the patterns over the time without (1.00: flat).")


if __name__ == "__main__":
    main()
