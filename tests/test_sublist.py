"""
Tests for memmq.sublist and memmq.groups: the subscription tree against a
brute-force matcher, its cache, and queue groups choosing one member per
message.
"""

from __future__ import annotations

import re
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from memmq.groups import QueueGroup
from memmq.patterns import Pattern, parse_pattern
from memmq.sublist import NO_MATCHES, Sublist

# Generous on a busy machine: no per-example deadline, no "generation is
# slow" failure, and no example database written into the test directory.
steady = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

_NAMES = ["a", "b", "é", "日本"]
topic_tokens = st.sampled_from([*_NAMES, "", "*", ">"])
topics = st.lists(topic_tokens, min_size=1, max_size=4).map(".".join)


@st.composite
def patterns(draw) -> Pattern:
    tokens = draw(st.lists(st.sampled_from([*_NAMES, "*"]), min_size=1, max_size=4))
    if draw(st.booleans()):
        tokens[-1] = ">"
    return parse_pattern(".".join(tokens))


subjects = st.one_of(topics, patterns())
groups = st.sampled_from([None, None, "g", "h"])
items = st.integers(0, 5)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), subjects, items, groups),
        st.tuples(st.just("remove"), subjects, items, groups),
        st.tuples(st.just("match"), topics),
    ),
    max_size=60,
)


def brute_force(subject: str | Pattern, topic: str) -> bool:
    """
    Whether a subscription to C{subject} takes C{topic}: a topic by
    equality, a pattern by a regular expression.
    """
    if isinstance(subject, str):
        return subject == topic
    parts = []
    for token in subject.tokens:
        parts.append({"*": "[^.]*", ">": ".*"}.get(token) or re.escape(token))
    return re.fullmatch(r"\.".join(parts), topic, re.DOTALL) is not None


class Member:
    """
    A queue group member that counts what it is given and has room while
    C{room} says so.
    """

    def __init__(self, name: str, room: bool = True) -> None:
        self.name = name
        self.room = room
        self.received = 0

    def __repr__(self) -> str:
        return f"<Member {self.name}>"

    def has_room(self) -> bool:
        return self.room


class SublistTests(SynchronousTestCase):
    def check(self, sublist: Sublist, model: set, topic: str) -> None:
        """
        C{sublist} matches C{topic} as the brute force does over C{model},
        a set of C{(subject, item, group)}.
        """
        found = sublist.match(topic)
        want_plain = {item for subject, item, group in model if group is None and brute_force(subject, topic)}
        want_groups: dict[str, set] = {}
        for subject, item, group in model:
            if group is not None and brute_force(subject, topic):
                want_groups.setdefault(group, set()).add(item)
        self.assertEqual(sorted(found.plain), sorted(want_plain))
        self.assertEqual(len(found.plain), len(set(found.plain)))
        self.assertEqual({group.name: set(members) for group, members in found.groups}, want_groups)
        for _group, members in found.groups:
            self.assertEqual(len(members), len(set(members)))
        self.assertEqual(bool(found), bool(want_plain or want_groups))

    @settings(steady, max_examples=300)
    @given(operations, st.sampled_from([1, 3, 1024]))
    def test_brute_force(self, operations: list, cache_size: int) -> None:
        """
        Through any interleaving of inserts, removes and matches, with a
        cache small enough to evict or large enough to keep everything,
        every match agrees with the brute force over what is subscribed,
        and the counts agree too.
        """
        sublist: Sublist = Sublist(cache_size=cache_size)
        model: set = set()
        seen: list[str] = []
        for operation in operations:
            if operation[0] == "match":
                seen.append(operation[1])
                self.check(sublist, model, operation[1])
                continue
            kind, subject, item, group = operation
            # A pattern without wildcards is its text as a topic.
            key = subject.text if isinstance(subject, Pattern) and subject.is_literal else subject
            if kind == "insert":
                self.assertEqual(sublist.insert(subject, item, group), (key, item, group) not in model)
                model.add((key, item, group))
            else:
                self.assertEqual(sublist.remove(subject, item, group), (key, item, group) in model)
                model.discard((key, item, group))
            # Every topic matched so far, possibly cached, is still right.
            for topic in seen:
                self.check(sublist, model, topic)
        self.assertEqual(len(sublist), len(model))
        self.assertEqual(
            {group.name: group.size for group in sublist.groups()},
            dict(Counter(group for _, _, group in model if group is not None)),
        )
        self.assertEqual(
            dict(sublist.patterns()),
            dict(Counter(subject for subject, _, _ in model if isinstance(subject, Pattern))),
        )

    def test_exact_topic_is_not_a_pattern(self) -> None:
        """
        A subscription to the topic C{a.*} takes only that topic; the pattern
        C{a.*} takes it and others.
        """
        sublist: Sublist = Sublist()
        sublist.insert("a.*", "topic")
        sublist.insert(parse_pattern("a.*"), "pattern")
        self.assertEqual(set(sublist.match("a.*").plain), {"topic", "pattern"})
        self.assertEqual(sublist.match("a.b").plain, ("pattern",))

    def test_literal_pattern_is_its_topic(self) -> None:
        """
        A pattern without wildcards is the same subscription as its text.
        """
        sublist: Sublist = Sublist()
        self.assertTrue(sublist.insert(parse_pattern("a.b"), 1))
        self.assertFalse(sublist.insert("a.b", 1))
        self.assertEqual(list(sublist.patterns()), [])
        self.assertTrue(sublist.remove("a.b", 1))
        self.assertIs(sublist.match("a.b"), NO_MATCHES)

    def test_subject_type(self) -> None:
        """
        A subject is a str or a Pattern; bytes are refused.
        """
        self.assertRaises(TypeError, Sublist().insert, b"a", 1)

    def test_cache_kept_for_other_topics(self) -> None:
        """
        A repeated topic gets the same cached result; inserting or removing
        a pattern or topic that does not match it leaves it cached, one that
        matches it gives a new result.
        """
        sublist: Sublist = Sublist()
        sublist.insert(parse_pattern("a.>"), 1)
        first = sublist.match("a.b")
        self.assertIs(sublist.match("a.b"), first)
        sublist.insert(parse_pattern("b.*"), 2)
        sublist.insert("a.c", 3)
        sublist.remove("a.c", 3)
        self.assertIs(sublist.match("a.b"), first)
        sublist.insert(parse_pattern("*.b"), 4)
        self.assertEqual(set(sublist.match("a.b").plain), {1, 4})
        sublist.remove(parse_pattern("a.>"), 1)
        self.assertEqual(sublist.match("a.b").plain, (4,))

    def test_cache_bounded(self) -> None:
        """
        The cache keeps at most its size of topics.
        """
        sublist: Sublist = Sublist(cache_size=8)
        sublist.insert(parse_pattern(">"), 1)
        for number in range(100):
            self.assertEqual(sublist.match(f"t{number}").plain, (1,))
        self.assertEqual(len(sublist._cache), 8)

    def test_pruned(self) -> None:
        """
        Removing every subscription leaves an empty tree, however deep the
        patterns were.
        """
        sublist: Sublist = Sublist()
        subjects = ["a", "a.b", "a.*.c", "*.>", ">", "a.b.c.d.e.>", "*.*.*"]
        for number, text in enumerate(subjects):
            sublist.insert(parse_pattern(text), number, group="g" if number % 2 else None)
        for number, text in enumerate(subjects):
            self.assertTrue(sublist.remove(parse_pattern(text), number, group="g" if number % 2 else None))
        self.assertFalse(sublist._root)
        self.assertEqual((len(sublist), list(sublist.groups()), list(sublist.patterns())), (0, [], []))

    def test_remove_absent(self) -> None:
        """
        Removing what is not there, or is there under another group, is
        C{False} and changes nothing.
        """
        sublist: Sublist = Sublist()
        sublist.insert(parse_pattern("a.*"), 1, "g")
        self.assertFalse(sublist.remove(parse_pattern("a.*"), 1))
        self.assertFalse(sublist.remove(parse_pattern("a.*"), 1, "h"))
        self.assertFalse(sublist.remove(parse_pattern("a.*.b"), 1, "g"))
        self.assertFalse(sublist.remove(parse_pattern("a.>"), 1, "g"))
        self.assertFalse(sublist.remove("a.*", 1, "g"))
        self.assertEqual(len(sublist), 1)


class GroupTests(SynchronousTestCase):
    def deliver(self, sublist: Sublist, topic: str, count: int) -> list:
        """
        Publish C{count} messages to C{topic}; each recipient counts one.
        """
        got = []
        for _ in range(count):
            recipients = sublist.match(topic).recipients()
            for member in recipients:
                member.received += 1
            got.append(recipients)
        return got

    def test_one_per_group(self) -> None:
        """
        Each message goes to every plain subscriber and to exactly one member
        of each group, members pooled across the topic and patterns matching.
        """
        sublist: Sublist = Sublist()
        plain = [Member("p1"), Member("p2")]
        g = [Member("g1"), Member("g2"), Member("g3")]
        h = [Member("h1"), Member("h2")]
        sublist.insert("orders.new", plain[0])
        sublist.insert(parse_pattern("orders.*"), plain[1])
        sublist.insert("orders.new", g[0], "g")
        sublist.insert(parse_pattern("orders.>"), g[1], "g")
        sublist.insert(parse_pattern("*.new"), g[2], "g")
        sublist.insert(parse_pattern(">"), h[0], "h")
        sublist.insert(parse_pattern("orders.new"), h[1], "h")
        for recipients in self.deliver(sublist, "orders.new", 600):
            self.assertEqual(len(recipients), 4)
            self.assertEqual(len([m for m in recipients if m in g]), 1)
            self.assertEqual(len([m for m in recipients if m in h]), 1)
        self.assertEqual([m.received for m in plain + g + h], [600, 600, 200, 200, 200, 300, 300])

    def test_balanced(self) -> None:
        """
        Over 10,000 messages, members that keep up get counts within 1.
        """
        for size in [1, 2, 3, 7]:
            sublist: Sublist = Sublist()
            members = [Member(str(n)) for n in range(size)]
            for member in members:
                sublist.insert(parse_pattern("t.*"), member, "g")
            self.deliver(sublist, "t.x", 10_000)
            counts = [member.received for member in members]
            self.assertEqual(sum(counts), 10_000)
            self.assertLessEqual(max(counts) - min(counts), 1, counts)

    def test_full_member_skipped(self) -> None:
        """
        A member without room is skipped while the others share its turn;
        nothing is dropped while one has room.
        """
        sublist: Sublist = Sublist()
        members = [Member("a"), Member("b", room=False), Member("c")]
        for member in members:
            sublist.insert("t", member, "g")
        self.deliver(sublist, "t", 1000)
        self.assertEqual([m.received for m in members], [500, 0, 500])
        members[1].room = True
        self.deliver(sublist, "t", 300)
        self.assertEqual([m.received for m in members], [600, 100, 600])
        self.assertEqual(sublist.groups()[0].dropped, 0)

    def test_member_leaves(self) -> None:
        """
        A member removed mid-stream gets nothing more; every message still
        goes to exactly one member, and the rest stay balanced.
        """
        sublist: Sublist = Sublist()
        members = [Member(str(n)) for n in range(4)]
        for member in members:
            sublist.insert(parse_pattern("t.>"), member, "g")
        self.deliver(sublist, "t.x", 5001)
        before = [m.received for m in members]
        sublist.remove(parse_pattern("t.>"), members[1], "g")
        for recipients in self.deliver(sublist, "t.x", 4999):
            self.assertEqual(len(recipients), 1)
            self.assertIsNot(recipients[0], members[1])
        self.assertEqual(members[1].received, before[1])
        self.assertEqual(sum(m.received for m in members), 10_000)
        after = [m.received - b for m, b in zip(members, before, strict=True)]
        del after[1]
        self.assertLessEqual(max(after) - min(after), 1, after)

    def test_all_full(self) -> None:
        """
        When every member is full the message is dropped for the group and
        counted there; plain subscribers still get it.
        """
        sublist: Sublist = Sublist()
        members = [Member("a", room=False), Member("b", room=False)]
        plain = Member("plain", room=False)
        for member in members:
            sublist.insert("t", member, "g")
        sublist.insert("t", plain)
        for recipients in self.deliver(sublist, "t", 5):
            self.assertEqual(recipients, [plain])
        group = sublist.groups()[0]
        self.assertEqual((group.name, group.size, group.dropped), ("g", 2, 5))
        members[1].room = True
        self.assertEqual(sublist.match("t").recipients(), [plain, members[1]])
        self.assertEqual(group.dropped, 5)

    def test_choose_alone(self) -> None:
        """
        L{QueueGroup.choose} alone: round-robin from after the last chosen,
        C{None} and a drop for no member with room or no member at all.
        """
        group = QueueGroup("g")
        a, b, c = Member("a"), Member("b"), Member("c")
        self.assertEqual([group.choose([a, b, c]) for _ in range(4)], [a, b, c, a])
        b.room = False
        self.assertEqual([group.choose([a, b, c]) for _ in range(3)], [c, a, c])
        self.assertIsNone(group.choose([b]))
        self.assertIsNone(group.choose([]))
        self.assertEqual(group.dropped, 2)
