"""
Tests for memmq.auth.model and memmq.auth.coverage: what permissions give,
and when one pattern covers another.
"""

from __future__ import annotations

import itertools

from twisted.trial.unittest import SynchronousTestCase

from memmq.auth.coverage import covers
from memmq.auth.model import EVERYTHING, NOTHING, Identity, Permissions
from memmq.errors import InvalidPattern
from memmq.patterns import parse_pattern


def _covers(allowed: str, wanted: str) -> bool:
    return covers(parse_pattern(allowed), parse_pattern(wanted))


class CoversTests(SynchronousTestCase):
    def test_many(self) -> None:
        """
        C{a.>} covers every pattern whose topics all start with C{a.} and
        have at least one more token.
        """
        for wanted in ("orders.*", "orders.new", "orders.*.eu", "orders.eu.>", "orders.>", "orders.*.>"):
            self.assertTrue(_covers("orders.>", wanted), wanted)
        for wanted in ("orders", ">", "*", "*.new", "*.>", "ordersx.>", "order.*"):
            self.assertFalse(_covers("orders.>", wanted), wanted)

    def test_one(self) -> None:
        """
        C{a.*} covers itself and C{a.} with any one literal token, nothing
        longer, shorter or open-ended.
        """
        for wanted in ("orders.*", "orders.new"):
            self.assertTrue(_covers("orders.*", wanted), wanted)
        for wanted in ("orders.>", "orders", "orders.*.eu", "orders.new.eu", "*.new", ">"):
            self.assertFalse(_covers("orders.*", wanted), wanted)

    def test_everything(self) -> None:
        """
        C{>} covers every pattern, C{>} itself included.
        """
        for wanted in (">", "*", "a", "a.b.c", "*.>", "a.*.>"):
            self.assertTrue(_covers(">", wanted), wanted)

    def test_literal_never_covers_wildcard(self) -> None:
        """
        A literal token covers only itself: C{orders.new} covers neither
        C{orders.*} nor C{orders.>}, though they match C{orders.new}.
        """
        self.assertTrue(_covers("orders.new", "orders.new"))
        self.assertFalse(_covers("orders.new", "orders.*"))
        self.assertFalse(_covers("orders.new", "orders.>"))
        self.assertFalse(_covers("a.*", "*.b"))

    def test_middle_wildcards(self) -> None:
        """
        Wildcards in the middle are compared position by position.
        """
        self.assertTrue(_covers("*.*.eu", "orders.*.eu"))
        self.assertTrue(_covers("*.>", "orders.*.eu"))
        self.assertFalse(_covers("*.*.eu", "orders.*.>"))
        self.assertFalse(_covers("orders.*.eu", "orders.*.us"))

    def test_agrees_with_matching(self) -> None:
        """
        Over every pattern of up to three tokens from a small alphabet,
        C{covers(a, w)} holds exactly when every topic of up to four tokens
        that C{w} matches, C{a} matches too (the definition).  Topics are
        built from the same tokens plus one no pattern names.
        """
        tokens = ("a", "b", "*", ">")
        patterns = []
        for n in (1, 2, 3):
            for combination in itertools.product(tokens, repeat=n):
                try:
                    patterns.append(parse_pattern(".".join(combination)))
                except InvalidPattern:
                    pass
        topics = [".".join(c) for n in (1, 2, 3, 4) for c in itertools.product(("a", "b", "z"), repeat=n)]
        for allowed, wanted in itertools.product(patterns, repeat=2):
            expected = all(allowed.matches(t) for t in topics if wanted.matches(t))
            self.assertEqual(covers(allowed, wanted), expected, (allowed.text, wanted.text))


class PermissionsTests(SynchronousTestCase):
    def test_publish_topics(self) -> None:
        """
        A topic may be published to when a publish pattern matches it; a
        topic's C{*} is a character, matched by C{*} and C{>} patterns.
        """
        permissions = Permissions.from_texts(publish=["orders.>", "log"])
        self.assertTrue(permissions.may_publish("orders.new"))
        self.assertTrue(permissions.may_publish("orders.*"))
        self.assertTrue(permissions.may_publish("log"))
        self.assertFalse(permissions.may_publish("orders"))
        self.assertFalse(permissions.may_publish("log.x"))
        self.assertFalse(permissions.may_subscribe("orders.new"))

    def test_subscribe_topic_and_pattern(self) -> None:
        """
        A topic (a str) is allowed when a subscribe pattern matches it, even
        one that looks like a pattern; a Pattern only when one covers it.
        """
        permissions = Permissions.from_texts(subscribe=["chat.*"])
        self.assertTrue(permissions.may_subscribe("chat.room1"))
        self.assertTrue(permissions.may_subscribe("chat.>"))  # the topic named "chat.>"
        self.assertTrue(permissions.may_subscribe(parse_pattern("chat.*")))
        self.assertTrue(permissions.may_subscribe(parse_pattern("chat.room1")))
        self.assertFalse(permissions.may_subscribe(parse_pattern("chat.>")))
        self.assertFalse(permissions.may_subscribe("chat.room1.x"))
        self.assertFalse(permissions.may_publish("chat.room1"))

    def test_nothing_and_everything(self) -> None:
        """
        NOTHING allows nothing; EVERYTHING allows every topic, pattern and
        the figures.
        """
        self.assertFalse(NOTHING.may_publish("a"))
        self.assertFalse(NOTHING.may_subscribe(parse_pattern(">")))
        self.assertFalse(NOTHING.admin)
        self.assertTrue(EVERYTHING.may_publish("a.b"))
        self.assertTrue(EVERYTHING.may_subscribe(parse_pattern(">")))
        self.assertTrue(EVERYTHING.admin)

    def test_invalid_pattern(self) -> None:
        """
        A text that is not a pattern is refused with InvalidPattern.
        """
        self.assertRaises(InvalidPattern, Permissions.from_texts, publish=["a.>.b"])
        self.assertRaises(InvalidPattern, Permissions.from_texts, subscribe=["a..b"])

    def test_describe(self) -> None:
        """
        describe() is one line naming what is given.
        """
        self.assertEqual(NOTHING.describe(), "nothing")
        self.assertEqual(
            Permissions.from_texts(["a.>"], ["b.*"], True).describe(),
            "publish to a.>; subscribe to b.*; read /stats and /metrics",
        )


class IdentityTests(SynchronousTestCase):
    def test_compared_by_object(self) -> None:
        """
        Two identities with the same fields are different keys: each is
        made once and shared, so its decisions are found by object.
        """
        a = Identity("alice", NOTHING, "token")
        b = Identity("alice", NOTHING, "token")
        self.assertNotEqual(a, b)
        self.assertEqual(len({a, b, a}), 2)
        self.assertEqual(repr(a), "<Identity 'alice' from token>")
