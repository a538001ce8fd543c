"""
Tests for memmq.auth.authority, memmq.auth.off and memmq.auth.decisions:
the decisions every transport asks for, over the matrix of credentials, and
what a reload changes.
"""

from __future__ import annotations

import os
import re
import time

import jwt
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from memmq.auth import (
    OFF,
    AuthConfigError,
    Authority,
    Forbidden,
    IAuthority,
    Unauthenticated,
    hash_token,
    make_authority,
)
from memmq.auth.decisions import DecisionCache
from memmq.patterns import parse_pattern
from tests.support import logged_events, write_file

PUBLISHER = "publisher-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
SECRET = b"an HS256 secret of at least 32 bytes, random in real life"

RULES = f"""\
[[user]]
name = "publisher"
token = "{hash_token(PUBLISHER)}"
publish = ["orders.>"]
subscribe = ["orders.>"]

[[user]]
name = "reader"                  # may subscribe, not publish
token = "{hash_token(READER)}"
subscribe = ["orders.*", "news"]

[[user]]
name = "prometheus"
token = "{hash_token(ADMIN)}"
admin = true

[[user]]
name = "edge-1"
certificate = "edge-1.example.com"
publish = ["telemetry.edge-1"]
"""


def browser_token(exp: float | None = None, **memmq) -> str:
    """
    A JWT for a browser user, by default allowed to subscribe to chat.*.
    """
    claims = {
        "sub": "browser-7f3a",
        "exp": int(time.time() + 60 if exp is None else exp),
        "memmq": memmq or {"sub": ["chat.*"]},
    }
    return jwt.encode(claims, SECRET, "HS256")


class MatrixTests(SynchronousTestCase):
    """
    Each kind of credential against each question, with the typed refusal
    a transport turns into 401 or 403.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.auth_file = write_file(self.mktemp(), RULES)
        self.jwt_key = write_file(self.mktemp(), SECRET)
        self.authority = Authority(auth_file=self.auth_file, jwt_key=self.jwt_key, now=self.clock.seconds)

    def refusal(self, kind: type, call, *args) -> str:
        """
        Call C{call(*args)}; check it raises C{kind}; return its one line.
        """
        with self.assertRaises(kind) as raised:
            call(*args)
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        for token in (PUBLISHER, READER, ADMIN, SECRET.decode()):
            self.assertNotIn(token, message)
        return message

    def test_interface(self) -> None:
        """
        Both the authority and OFF provide IAuthority.
        """
        self.assertTrue(verifyObject(IAuthority, self.authority))
        self.assertTrue(verifyObject(IAuthority, OFF))

    def test_no_credentials(self) -> None:
        """
        No token (None or empty) is anonymous, who may do nothing by
        default: each refusal is Unauthenticated (401), saying so.
        """
        self.assertIsNone(self.authority.identify_token(None))
        self.assertIsNone(self.authority.identify_token(""))
        self.assertIsNone(self.authority.identify_certificate([]))
        self.assertFalse(self.authority.may_publish(None, "orders.new"))
        self.assertEqual(
            self.refusal(Unauthenticated, self.authority.check_publish, None, "orders.new"),
            "no credentials, and anonymous may not publish to 'orders.new'",
        )
        self.assertEqual(
            self.refusal(Unauthenticated, self.authority.check_subscribe, None, parse_pattern("orders.*")),
            "no credentials, and anonymous may not subscribe to the pattern 'orders.*'",
        )
        self.assertEqual(
            self.refusal(Unauthenticated, self.authority.check_read_stats, None),
            "no credentials, and anonymous may not read /stats and /metrics",
        )

    def test_bad_token(self) -> None:
        """
        A token in no one's hand is Unauthenticated, and the reason does not
        repeat it.
        """
        self.assertEqual(self.refusal(Unauthenticated, self.authority.identify_token, PUBLISHER[:-1] + "X"),
                         "unknown token")

    def test_allowed(self) -> None:
        """
        The publisher may publish and subscribe under orders.; the admin may
        read the figures; each check returns.
        """
        publisher = self.authority.identify_token(PUBLISHER)
        self.assertEqual(publisher.name, "publisher")
        self.authority.check_publish(publisher, "orders.new")
        self.authority.check_subscribe(publisher, "orders.new.eu")
        self.authority.check_subscribe(publisher, parse_pattern("orders.*"))
        self.authority.check_read_stats(self.authority.identify_token(ADMIN))
        self.assertEqual(
            self.refusal(Forbidden, self.authority.check_read_stats, publisher),
            "'publisher' may not read /stats and /metrics",
        )
        self.assertEqual(
            self.refusal(Forbidden, self.authority.check_publish, publisher, "order"),
            "'publisher' may not publish to 'order'",
        )

    def test_subscribe_not_publish(self) -> None:
        """
        The reader may subscribe to orders.* but not publish there: 403.
        """
        reader = self.authority.identify_token(READER)
        self.assertTrue(self.authority.may_subscribe(reader, "orders.new"))
        self.assertTrue(self.authority.may_subscribe(reader, "news"))
        self.assertEqual(
            self.refusal(Forbidden, self.authority.check_publish, reader, "orders.new"),
            "'reader' may not publish to 'orders.new'",
        )

    def test_pattern_edge_cases(self) -> None:
        """
        A pattern subscription is allowed only when covered: orders.* gives
        orders.* and orders.new but not orders.>, orders or orders.a.b; a
        topic (a str) is never read as a pattern.
        """
        reader = self.authority.identify_token(READER)
        self.assertTrue(self.authority.may_subscribe(reader, parse_pattern("orders.*")))
        self.assertTrue(self.authority.may_subscribe(reader, parse_pattern("orders.new")))
        self.assertFalse(self.authority.may_subscribe(reader, parse_pattern("orders.>")))
        self.assertFalse(self.authority.may_subscribe(reader, parse_pattern(">")))
        self.assertFalse(self.authority.may_subscribe(reader, "orders"))
        self.assertFalse(self.authority.may_subscribe(reader, "orders.a.b"))
        self.assertTrue(self.authority.may_subscribe(reader, "orders.>"))  # the topic named so
        self.assertFalse(self.authority.may_subscribe(reader, parse_pattern("news.>")))
        self.assertEqual(
            self.refusal(Forbidden, self.authority.check_subscribe, reader, parse_pattern("orders.>")),
            "'reader' may not subscribe to the pattern 'orders.>'",
        )

    def test_long_topic_quoted_short(self) -> None:
        """
        A refusal quotes a long topic's first 60 characters only.
        """
        reader = self.authority.identify_token(READER)
        message = self.refusal(Forbidden, self.authority.check_publish, reader, "x" * 1000)
        self.assertEqual(message, "'reader' may not publish to '" + "x" * 60 + "…'")

    def test_certificate(self) -> None:
        """
        A certificate name in the auth file identifies its user; an unknown
        one is Unauthenticated.
        """
        edge = self.authority.identify_certificate(["Edge One", "edge-1.example.com"])
        self.assertEqual((edge.name, edge.source), ("edge-1", "certificate"))
        self.authority.check_publish(edge, "telemetry.edge-1")
        self.assertEqual(
            self.refusal(Unauthenticated, self.authority.identify_certificate, ["stranger.example.com"]),
            "no user in the auth file has the certificate name 'stranger.example.com'",
        )

    def test_jwt(self) -> None:
        """
        A valid JWT identifies the browser user, who may subscribe to chat.*
        and not publish.
        """
        browser = self.authority.identify_token(browser_token())
        self.assertEqual((browser.name, browser.source), ("browser-7f3a", "jwt"))
        self.authority.check_subscribe(browser, parse_pattern("chat.*"))
        self.authority.check_subscribe(browser, "chat.room1")
        self.assertEqual(
            self.refusal(Forbidden, self.authority.check_publish, browser, "chat.room1"),
            "'browser-7f3a' may not publish to 'chat.room1'",
        )

    def test_jwt_refused(self) -> None:
        """
        Expired, not yet valid, badly signed and unsigned JWTs are
        Unauthenticated, each saying why.
        """
        now = time.time()
        for token, reason in [
            (browser_token(exp=now - 60), "JWT expired"),
            (jwt.encode({"sub": "x", "exp": now + 60, "nbf": now + 30}, SECRET, "HS256"),
             "JWT not valid yet (its nbf is in the future)"),
            (jwt.encode({"sub": "x", "exp": now + 60}, b"x" * 32, "HS256"),
             "JWT signature does not verify with the server's HS256 key"),
            (jwt.encode({"sub": "x", "exp": now + 60}, None, "none"),
             "JWT algorithm 'none' is not accepted; this server takes HS256"),
        ]:
            self.assertEqual(self.refusal(Unauthenticated, self.authority.identify_token, token), reason)

    def test_jwt_expires_while_connected(self) -> None:
        """
        An identity whose JWT expires after it was identified is refused
        from its expiry on, as Unauthenticated, even for a decision cached
        before.
        """
        browser = self.authority.identify_token(browser_token())
        self.assertTrue(self.authority.may_subscribe(browser, "chat.room1"))
        self.clock.advance(browser.expires - self.clock.seconds())
        self.assertFalse(self.authority.may_subscribe(browser, "chat.room1"))
        self.assertFalse(self.authority.may_read_stats(browser))
        self.assertEqual(
            self.refusal(Unauthenticated, self.authority.check_subscribe, browser, "chat.room1"),
            "the JWT for 'browser-7f3a' has expired",
        )

    def test_jwt_without_key(self) -> None:
        """
        A JWT given to a server with no JWT key is Unauthenticated, saying so.
        """
        authority = Authority(auth_file=self.auth_file)
        self.assertEqual(
            self.refusal(Unauthenticated, authority.identify_token, browser_token()),
            "a JWT was given, but this server is given no JWT key",
        )

    def test_anonymous_table(self) -> None:
        """
        [anonymous] gives clients without credentials what it lists.
        """
        write_file(self.auth_file, RULES + '[anonymous]\nsubscribe = ["public.>"]\n')
        self.authority.reload()
        self.authority.check_subscribe(None, "public.news")
        self.assertFalse(self.authority.may_publish(None, "public.news"))

    def test_describe(self) -> None:
        """
        describe() is the start-up line: on, with the file and the key.
        """
        self.assertEqual(
            self.authority.describe(),
            f"access control on: auth file {self.auth_file} (4 users; anonymous: nothing); "
            f"JWT HS256 key from {self.jwt_key}",
        )


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = write_file(self.mktemp(), RULES)
        self.authority = Authority(auth_file=self.path)

    def test_revoked_token(self) -> None:
        """
        After a reload without a user, its token is refused for new
        connections; an identity resolved before keeps its permissions.
        """
        before = self.authority.identify_token(READER)
        without_reader = re.sub(r'\[\[user\]\]\nname = "reader".*?\n\n', "", RULES, flags=re.S)
        write_file(self.path, without_reader)
        line = self.authority.reload()
        self.assertTrue(line.startswith("access control reloaded: auth file "), line)
        self.assertRaises(Unauthenticated, self.authority.identify_token, READER)
        self.assertEqual(self.authority.identify_token(ADMIN).name, "prometheus")
        self.assertTrue(self.authority.may_subscribe(before, "orders.new"))

    def test_bad_file_keeps_rules(self) -> None:
        """
        A reload from a file with an error keeps the previous rules and
        says so in one line, with the file and line.
        """
        write_file(self.path, RULES + "[[user]\n")
        line = self.authority.reload()
        self.assertEqual(
            line,
            f"access control not reloaded, keeping the previous rules: {self.path}:21: "
            "expected ']]' at the end of an array declaration (column 7)",
        )
        self.assertEqual(self.authority.identify_token(READER).name, "reader")
        os.chmod(self.path, 0o644)
        self.assertIn("accessible by group or others", self.authority.reload())
        self.assertEqual(self.authority.identify_token(READER).name, "reader")

    def test_bad_file_logged(self) -> None:
        """
        The line a reload returns is logged: a warning when it failed.
        """
        events = logged_events(self)
        write_file(self.path, "nonsense\n")
        line = self.authority.reload()
        self.assertEqual([(e["log_level"].name, e["line"]) for e in events if "line" in e], [("warn", line)])

    def test_cache_cleared(self) -> None:
        """
        A decision cached before a reload is taken again after it: anonymous
        refused, then allowed by a new [anonymous] table.
        """
        self.assertFalse(self.authority.may_subscribe(None, "public.news"))
        write_file(self.path, RULES + '[anonymous]\nsubscribe = ["public.>"]\n')
        self.authority.reload()
        self.assertTrue(self.authority.may_subscribe(None, "public.news"))

    def test_start_error(self) -> None:
        """
        At start, an unusable file raises AuthConfigError (the command exits 2).
        """
        os.chmod(self.path, 0o644)
        self.assertRaises(AuthConfigError, Authority, auth_file=self.path)
        self.assertRaises(AuthConfigError, make_authority, jwt_key=self.mktemp())


class OffTests(SynchronousTestCase):
    def test_allows_everything(self) -> None:
        """
        With no access-control option, OFF allows everything and identifies
        no one, whatever token is sent.
        """
        authority = make_authority()
        self.assertIs(authority, OFF)
        self.assertFalse(authority.enabled)
        self.assertIsNone(authority.identify_token(PUBLISHER))
        self.assertIsNone(authority.identify_certificate(["x"]))
        self.assertTrue(authority.may_publish(None, "a"))
        self.assertTrue(authority.may_subscribe(None, parse_pattern(">")))
        self.assertTrue(authority.may_read_stats(None))
        authority.check_publish(None, "a")
        authority.check_subscribe(None, "a")
        authority.check_read_stats(None)
        self.assertIn("access control off", authority.describe())
        self.assertEqual(authority.reload(), "access control is off: nothing to reload")


class DecisionCacheTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        """
        Past its size the cache forgets the decision used longest ago.
        """
        cache = DecisionCache(2)
        cache.put("a", True)
        cache.put("b", False)
        self.assertIs(cache.get("a"), True)
        cache.put("c", True)
        self.assertEqual(len(cache), 2)
        self.assertIsNone(cache.get("b"))
        self.assertIs(cache.get("a"), True)
        self.assertIs(cache.get("c"), True)
        cache.clear()
        self.assertIsNone(cache.get("a"))
