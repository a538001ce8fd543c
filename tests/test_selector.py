"""
Tests for memmq.client.selector: All gives every server, Shard the one the Go
client would pick.
"""

from __future__ import annotations

import zlib

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from memmq.client.selector import All, ISelector, NoServers, Shard
from memmq.errors import MemmqError

ONE = ["a:1"]
TWO = ["a:1", "b:2"]
THREE = ["a:1", "b:2", "c:3"]
FIVE = ["a:1", "b:2", "c:3", "d:4", "e:5"]

# (topic, CRC-32 IEEE of its UTF-8 bytes, servers, the server chosen).  Worked
# out once with zlib.crc32, binascii.crc32 and a bitwise CRC-32 written out,
# which agreed; the Go client computes crc32.ChecksumIEEE([]byte(topic)) %
# uint32(len(servers)), the same numbers.  Written literally so a change of
# hash or of indexing shows here rather than passing with itself.
SHARDS = [
    ("a", 0xE8B7BE43, ONE, "a:1"),
    ("a", 0xE8B7BE43, TWO, "b:2"),
    ("a", 0xE8B7BE43, THREE, "a:1"),
    ("a", 0xE8B7BE43, FIVE, "c:3"),
    ("news", 0x1DD39950, TWO, "a:1"),
    ("news", 0x1DD39950, THREE, "c:3"),
    ("news", 0x1DD39950, FIVE, "d:4"),
    ("nachrichten/ü", 0x1F8BE39D, ONE, "a:1"),
    ("nachrichten/ü", 0x1F8BE39D, TWO, "b:2"),
    ("nachrichten/ü", 0x1F8BE39D, THREE, "c:3"),
    ("nachrichten/ü", 0x1F8BE39D, FIVE, "e:5"),
    ("sensors/42/temp", 0xCBBDAAC9, THREE, "b:2"),
    ("sensors/42/temp", 0xCBBDAAC9, FIVE, "d:4"),
    ("chat", 0x659DF2AA, THREE, "b:2"),
    ("chat", 0x659DF2AA, FIVE, "a:1"),
    ("日本語", 0xA80B52E5, TWO, "b:2"),
    ("日本語", 0xA80B52E5, FIVE, "a:1"),
]


class AllTests(SynchronousTestCase):
    """
    Tests for L{All}.
    """

    def test_interface(self) -> None:
        """
        L{All} provides L{ISelector}.
        """
        self.assertTrue(verifyObject(ISelector, All()))

    def test_every_server_in_order(self) -> None:
        """
        C{get} returns every server, in the order they were given, whatever
        the topic.
        """
        selector = All("b:2", "a:1", "c:3")
        self.assertEqual(selector.get("news"), ["b:2", "a:1", "c:3"])
        self.assertEqual(selector.get("other"), ["b:2", "a:1", "c:3"])
        self.assertEqual(selector.servers, ("b:2", "a:1", "c:3"))

    def test_get_returns_a_copy(self) -> None:
        """
        Changing the list C{get} returned changes neither the selector nor
        the next answer.
        """
        selector = All("a:1", "b:2")
        first = selector.get("news")
        first.append("c:3")
        first.remove("a:1")
        self.assertEqual(selector.get("news"), ["a:1", "b:2"])
        self.assertIsNot(selector.get("news"), selector.get("news"))

    def test_set_replaces(self) -> None:
        """
        C{set} replaces the servers rather than adding to them.
        """
        selector = All("a:1", "b:2")
        selector.set("c:3")
        self.assertEqual(selector.get("news"), ["c:3"])

    def test_duplicates(self) -> None:
        """
        A server given twice is kept once, at its first position.
        """
        selector = All()
        selector.set("b:2", "a:1", "b:2", "c:3", "a:1")
        self.assertEqual(selector.get("news"), ["b:2", "a:1", "c:3"])

    def test_no_servers(self) -> None:
        """
        With no servers, C{get} raises L{NoServers}, a L{MemmqError} that
        says so; so does a C{set} with none.
        """
        error = self.assertRaises(NoServers, All().get, "news")
        self.assertIsInstance(error, MemmqError)
        self.assertEqual(str(error), "no servers to choose from")
        selector = All("a:1")
        selector.set()
        self.assertRaises(NoServers, selector.get, "news")


class ShardTests(SynchronousTestCase):
    """
    Tests for L{Shard}.
    """

    def test_interface(self) -> None:
        """
        L{Shard} provides L{ISelector}.
        """
        self.assertTrue(verifyObject(ISelector, Shard()))

    def test_table(self) -> None:
        """
        Each topic goes to the server the Go client picks for the same
        ordered list: the CRC-32 (IEEE) of the topic's UTF-8 bytes modulo the
        number of servers.
        """
        for topic, crc, servers, expected in SHARDS:
            self.assertEqual(zlib.crc32(topic.encode("utf-8")), crc, topic)
            self.assertEqual(Shard(*servers).get(topic), [expected], (topic, servers))

    def test_one_server_per_topic(self) -> None:
        """
        C{get} returns a list holding exactly one of the servers.
        """
        selector = Shard(*FIVE)
        for topic in ["a", "b", "c", "news", "chat", "x" * 255]:
            chosen = selector.get(topic)
            self.assertEqual(len(chosen), 1)
            self.assertIn(chosen[0], FIVE)

    def test_stable(self) -> None:
        """
        The same topic goes to the same server for as long as the list is the
        same: between calls, between selectors, and after setting the same
        list again.
        """
        selector = Shard(*THREE)
        first = selector.get("news")
        self.assertEqual(selector.get("news"), first)
        self.assertEqual(Shard(*THREE).get("news"), first)
        selector.set(*THREE)
        self.assertEqual(selector.get("news"), first)

    def test_changes_with_list(self) -> None:
        """
        The choice depends on the list: its order and its length, so the
        resolver must give the same addresses in the same order to keep it.
        """
        selector = Shard(*THREE)
        self.assertEqual(selector.get("news"), ["c:3"])
        selector.set(*reversed(THREE))
        self.assertEqual(selector.get("news"), ["a:1"])
        selector.set(*FIVE)
        self.assertEqual(selector.get("news"), ["d:4"])

    def test_duplicates(self) -> None:
        """
        Duplicates are dropped before choosing, so they do not shift the
        choice.
        """
        self.assertEqual(Shard("a:1", "b:2", "a:1", "c:3", "b:2").get("news"), ["c:3"])

    def test_no_servers(self) -> None:
        """
        With no servers, C{get} raises L{NoServers}.
        """
        self.assertRaises(NoServers, Shard().get, "news")
        selector = Shard("a:1")
        selector.set()
        self.assertRaises(NoServers, selector.get, "news")
