"""
Tests for memmq.patterns: parsing topic patterns and matching topics with
them, checked against a brute-force matcher built on regular expressions.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from memmq.errors import InvalidPattern, InvalidTopic
from memmq.patterns import Pattern, parse_pattern

# Few distinct tokens, so generated topics and patterns often meet; a topic
# may hold empty tokens and the wildcard characters as plain tokens.
# Generous on a busy machine: no per-example deadline, no "generation is
# slow" failure, and no example database written into the test directory.
steady = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

_NAMES = ["a", "b", "ab", "é", "日本", " "]
topic_tokens = st.sampled_from([*_NAMES, "", "*", ">", "a*", "x>y"])
topics = st.lists(topic_tokens, min_size=1, max_size=5).map(".".join)
pattern_tokens = st.sampled_from([*_NAMES, "*", "*"])


@st.composite
def patterns(draw) -> str:
    tokens = draw(st.lists(pattern_tokens, min_size=1, max_size=5))
    if draw(st.booleans()):
        tokens[-1] = ">"
    return ".".join(tokens)


def brute_force(pattern: str, topic: str) -> bool:
    """
    Whether C{pattern} matches C{topic}, by a regular expression: C{*} is
    any run without a dot, a last C{>} is anything at all (one or more
    tokens, an empty one included).
    """
    parts = []
    for token in pattern.split("."):
        if token == "*":
            parts.append("[^.]*")
        elif token == ">":
            parts.append(".*")
        else:
            parts.append(re.escape(token))
    return re.fullmatch(r"\.".join(parts), topic, re.DOTALL) is not None


class ParseTests(SynchronousTestCase):
    def test_value(self) -> None:
        """
        A parsed pattern keeps its text and tokens, says whether it has a
        wildcard, and is an immutable value equal to another of the same text.
        """
        pattern = parse_pattern("orders.*.>")
        self.assertEqual(pattern.text, "orders.*.>")
        self.assertEqual(pattern.tokens, ("orders", "*", ">"))
        self.assertFalse(pattern.is_literal)
        self.assertTrue(parse_pattern("orders.new").is_literal)
        self.assertEqual(pattern, parse_pattern("orders.*.>"))
        self.assertEqual(hash(pattern), hash(Pattern("orders.*.>")))
        self.assertNotEqual(pattern, parse_pattern("orders.>"))
        with self.assertRaises(AttributeError):
            pattern.text = "x"  # type: ignore[misc]

    def assertRefused(self, text: str, why: str) -> None:
        with self.assertRaises(InvalidPattern) as caught:
            parse_pattern(text)
        reason = str(caught.exception)
        self.assertIn(why, reason)
        self.assertNotIn("\n", reason)

    def test_empty(self) -> None:
        """
        An empty pattern is refused.
        """
        self.assertRefused("", "empty pattern")

    def test_empty_token(self) -> None:
        """
        A pattern with an empty token is refused: a dot at either end or two
        in a row.
        """
        for text in [".", ".a", "a.", "a..b", "*..>", "a.b."]:
            self.assertRefused(text, "empty token")

    def test_many_not_last(self) -> None:
        """
        C{>} before the last token is refused.
        """
        for text in [">.a", "a.>.b", ">.>", ">.*"]:
            self.assertRefused(text, "'>' may only be the last token")

    def test_wildcard_inside_token(self) -> None:
        """
        C{*} or C{>} inside a longer token is refused, naming the token.
        """
        for text, token in [("a*", "a*"), ("a.*b", "*b"), ("a.b>", "b>"), ("**", "**"), ("a.>>", ">>")]:
            self.assertRefused(text, f"not part of {token!r}")

    def test_control_characters(self) -> None:
        """
        A pattern holding control characters is refused, in one line.
        """
        self.assertRefused("a.\nb", "control characters")

    def test_long_reason_stays_short(self) -> None:
        """
        The reason quotes at most the start of a very long pattern.
        """
        with self.assertRaises(InvalidPattern) as caught:
            parse_pattern("x" * 10_000 + "..")
        self.assertLess(len(str(caught.exception)), 200)

    def test_invalid_topic(self) -> None:
        """
        L{InvalidPattern} is an L{InvalidTopic}, so a front-end answers it as
        it answers a bad topic (HTTP 400).
        """
        self.assertTrue(issubclass(InvalidPattern, InvalidTopic))

    def test_not_a_string(self) -> None:
        """
        A pattern is a str: bytes are a programming error, not a bad pattern.
        """
        self.assertRaises(TypeError, parse_pattern, b"a.*")

    @steady
    @given(st.lists(st.text(min_size=1).filter(lambda t: "." not in t), min_size=1, max_size=4))
    def test_any_tokens(self, tokens: list[str]) -> None:
        """
        Any text is parsed or refused with L{InvalidPattern}, never another
        error; what is parsed splits back into the text.
        """
        text = ".".join(tokens)
        try:
            pattern = parse_pattern(text)
        except InvalidPattern:
            return
        self.assertEqual(".".join(pattern.tokens), text)


class MatchTests(SynchronousTestCase):
    def assertMatches(self, pattern: str, yes: list[str], no: list[str]) -> None:
        parsed = parse_pattern(pattern)
        for topic in yes:
            self.assertTrue(parsed.matches(topic), f"{pattern} should match {topic}")
            self.assertTrue(brute_force(pattern, topic))
        for topic in no:
            self.assertFalse(parsed.matches(topic), f"{pattern} should not match {topic}")
            self.assertFalse(brute_force(pattern, topic))

    def test_many_needs_a_token(self) -> None:
        """
        C{a.>} matches one or more tokens after C{a}, so not C{a} itself.
        """
        self.assertMatches("a.>", ["a.b", "a.b.c", "a.*", "a."], ["a", "b.a", "ab.c"])

    def test_one_per_star(self) -> None:
        """
        C{*.*} matches exactly two tokens, whatever they are.
        """
        self.assertMatches("*.*", ["a.b", "*.>", ".", "é.日本"], ["a", "a.b.c"])

    def test_many_alone(self) -> None:
        """
        C{>} alone matches every topic.
        """
        self.assertMatches(">", ["a", "a.b", "*", ">", "日本.x.y"], [])

    def test_literal(self) -> None:
        """
        A pattern without wildcards matches only the topic it spells.
        """
        self.assertMatches("a.b", ["a.b"], ["a", "a.b.c", "a.*", "a.>"])

    def test_topic_wildcards_are_tokens(self) -> None:
        """
        A topic's own C{*} or C{>} token is only a token: the pattern C{a.b}
        does not match the topic C{a.*}, and C{a.*} matches C{a.*} only as a
        wildcard does, along with C{a.b}.
        """
        self.assertMatches("a.*", ["a.*", "a.b", "a.>"], ["a.*.b"])
        self.assertMatches("a.b", [], ["a.*", "*.b", ">"])

    def test_unicode(self) -> None:
        """
        Tokens are compared as whole strings, in any script.
        """
        self.assertMatches("日本.*.é", ["日本.x.é", "日本.東京.é"], ["日本.x.e", "日.x.é"])

    @steady
    @given(patterns(), topics)
    def test_brute_force(self, pattern: str, topic: str) -> None:
        """
        L{Pattern.matches} agrees with the brute-force matcher.
        """
        self.assertEqual(parse_pattern(pattern).matches(topic), brute_force(pattern, topic))

    @steady
    @given(patterns(), st.data())
    def test_instances_match(self, pattern: str, data: st.DataObject) -> None:
        """
        A topic built from a pattern by filling in its wildcards (C{*} with
        one token, C{>} with one or more) is matched, by both matchers.
        """
        tokens = []
        for token in pattern.split("."):
            if token == "*":
                tokens.append(data.draw(topic_tokens))
            elif token == ">":
                tokens.extend(data.draw(st.lists(topic_tokens, min_size=1, max_size=3)))
            else:
                tokens.append(token)
        topic = ".".join(tokens)
        self.assertTrue(parse_pattern(pattern).matches(topic))
        self.assertTrue(brute_force(pattern, topic))
