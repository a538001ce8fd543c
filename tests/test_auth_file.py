"""
Tests for memmq.auth.authfile and memmq.auth.tokens: the auth file as a
person writes it, and what is refused, each in one line.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from memmq.auth.authfile import load_auth_file, parse_auth_file
from memmq.auth.errors import AuthConfigError
from memmq.auth.tokens import MIN_TOKEN_LENGTH, find_token, hash_token, new_token, parse_token_hash
from memmq.patterns import parse_pattern
from tests.support import write_file

TOKEN = "pub-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"

EXAMPLE = f"""\
# who may do what
[[user]]
name = "orders-service"
token = "{hash_token(TOKEN)}"   # the publisher
publish = ["orders.>"]

[[user]]
name = "prometheus"
token = ["{hash_token(ADMIN_TOKEN)}"]
admin = true

[[user]]
name = "edge-1"
certificate = ["edge-1.example.com", "edge-1"]
subscribe = ["telemetry.*"]

[anonymous]
subscribe = ["public.>"]
"""


class TokensTests(SynchronousTestCase):
    def test_new_token(self) -> None:
        """
        A new token is 43 URL-safe characters with no dots, different each time.
        """
        token = new_token()
        self.assertEqual(len(token), 43)
        self.assertNotIn(".", token)
        self.assertNotEqual(token, new_token())

    def test_hash_round_trip(self) -> None:
        """
        A hash is sha256: and 64 hex digits, parsed back to its digest, and
        found by find_token.
        """
        text = hash_token(TOKEN)
        self.assertRegex(text, r"\Asha256:[0-9a-f]{64}\Z")
        entries = [(parse_token_hash(hash_token(ADMIN_TOKEN)), "admin"), (parse_token_hash(text), "pub")]
        self.assertEqual(find_token(TOKEN, entries), "pub")
        self.assertIsNone(find_token(TOKEN + "x", entries))

    def test_short_token_refused(self) -> None:
        """
        A token shorter than MIN_TOKEN_LENGTH is refused, and the reason
        does not repeat it.
        """
        token = "s3cret"
        with self.assertRaises(ValueError) as raised:
            hash_token(token)
        self.assertNotIn(token, str(raised.exception))
        self.assertIn(str(MIN_TOKEN_LENGTH), str(raised.exception))

    def test_bad_hash(self) -> None:
        """
        A value that is not sha256: and 64 lowercase hex digits is refused.
        """
        for text in ("sha256:abc", TOKEN, "md5:" + "0" * 32, "sha256:" + "A" * 64):
            self.assertRaises(ValueError, parse_token_hash, text)


class LoadTests(SynchronousTestCase):
    def test_example(self) -> None:
        """
        The example loads: users by token (a list of hashes too) and by
        certificate name, and anonymous's permissions.
        """
        rules = load_auth_file(write_file(self.mktemp(), EXAMPLE))
        self.assertEqual([u.name for u in rules.users], ["orders-service", "prometheus", "edge-1"])
        publisher = rules.identify_token(TOKEN)
        self.assertEqual((publisher.name, publisher.source), ("orders-service", "token"))
        self.assertTrue(publisher.permissions.may_publish("orders.new"))
        self.assertIs(rules.identify_token(TOKEN), publisher)
        self.assertTrue(rules.identify_token(ADMIN_TOKEN).permissions.admin)
        self.assertIsNone(rules.identify_token("unknown-token-0123456789"))
        edge = rules.identify_certificate(["CN ignored", "edge-1"])
        self.assertEqual((edge.name, edge.source), ("edge-1", "certificate"))
        self.assertTrue(edge.permissions.may_subscribe(parse_pattern("telemetry.*")))
        self.assertIsNone(rules.identify_certificate(["EDGE-1"]))
        self.assertTrue(rules.anonymous.may_subscribe("public.news"))
        self.assertFalse(rules.anonymous.may_publish("public.news"))
        self.assertIn("3 users", rules.describe())

    def test_empty_file(self) -> None:
        """
        An empty file has no users, and anonymous may do nothing.
        """
        rules = parse_auth_file("# nobody yet\n")
        self.assertEqual(rules.users, ())
        self.assertEqual(rules.anonymous.describe(), "nothing")

    def test_readable_by_others(self) -> None:
        """
        A file that group or others may read or write is refused, like ssh
        refuses such a key, with the mode and the fix in one line.
        """
        for mode in (0o644, 0o640, 0o604, 0o620):
            path = write_file(self.mktemp(), EXAMPLE, mode)
            with self.assertRaises(AuthConfigError) as raised:
                load_auth_file(path)
            message = str(raised.exception)
            self.assertEqual(message, f"{path}: auth file is accessible by group or others "
                                      f"(mode {mode:04o}); run chmod 600 {path}")
        load_auth_file(write_file(self.mktemp(), EXAMPLE, 0o400))

    def test_missing(self) -> None:
        """
        A file that cannot be read is one line naming it.
        """
        path = self.mktemp()
        with self.assertRaises(AuthConfigError) as raised:
            load_auth_file(path)
        self.assertEqual(str(raised.exception), f"{path}: cannot read the auth file: No such file or directory")


class ErrorTests(SynchronousTestCase):
    """
    Each mistake is one line: the file, the line, what is wrong.
    """

    def assertError(self, text: str, expected: str) -> str:
        with self.assertRaises(AuthConfigError) as raised:
            parse_auth_file(text, "auth.toml")
        message = str(raised.exception)
        self.assertEqual(message, expected)
        self.assertNotIn("\n", message)
        return message

    def test_toml_syntax(self) -> None:
        """
        A TOML syntax error gives tomllib's line and column.
        """
        self.assertError('[[user]]\nname = "a"\ntoken = \n', "auth.toml:3: invalid value (column 9)")

    def test_unknown_key(self) -> None:
        """
        A misspelt key is an error on its line, not silently nothing.
        """
        self.assertError(
            f'[[user]]\nname = "a"\ntoken = "{hash_token(TOKEN)}"\n\n# typo\nsubcribe = ["x"]\n',
            "auth.toml:6: user 'a': unknown key 'subcribe' "
            "(expected one of admin, certificate, name, publish, subscribe, token)",
        )
        self.assertError('users = []\n', "auth.toml:1: unknown key 'users' (expected [[user]] or [anonymous])")
        self.assertError(
            '[anonymous]\ntoken = "x"\n',
            "auth.toml:2: anonymous: unknown key 'token' (expected one of admin, publish, subscribe)",
        )

    def test_bad_pattern(self) -> None:
        """
        A pattern that does not parse is an error on its line with the
        pattern's own reason; the second user's line is found.
        """
        self.assertError(
            EXAMPLE.replace('subscribe = ["telemetry.*"]', 'subscribe = ["telemetry.>.x"]'),
            "auth.toml:15: user 'edge-1': subscribe: pattern 'telemetry.>.x': '>' may only be the last token",
        )

    def test_raw_token(self) -> None:
        """
        A token pasted as is, rather than its hash, is refused without
        repeating it.
        """
        message = self.assertError(
            f'[[user]]\nname = "a"\ntoken = "{TOKEN}"\n',
            "auth.toml:3: user 'a': token: a token is stored as its hash, 'sha256:' and 64 hex digits "
            "(memmq auth hash prints it)",
        )
        self.assertNotIn(TOKEN, message)

    def test_raw_token_in_bad_syntax(self) -> None:
        """
        A token in a line TOML cannot read is not repeated either.
        """
        with self.assertRaises(AuthConfigError) as raised:
            parse_auth_file(f'[[user]]\nname = "a"\ntoken = {TOKEN}\n', "auth.toml")
        self.assertNotIn(TOKEN, str(raised.exception))
        self.assertTrue(str(raised.exception).startswith("auth.toml:3: "))

    def test_nothing_identifies(self) -> None:
        """
        A user with neither a token nor a certificate is an error at its header.
        """
        self.assertError(
            '# one\n[[user]]\nname = "a"\npublish = [">"]\n',
            "auth.toml:2: user 'a' has neither a token nor a certificate, so nothing can identify it",
        )

    def test_duplicates(self) -> None:
        """
        A name, a token hash or a certificate name given twice is an error.
        """
        digest = hash_token(TOKEN)
        self.assertError(
            f'[[user]]\nname = "a"\ntoken = "{digest}"\n[[user]]\nname = "a"\ncertificate = "x"\n',
            "auth.toml:5: user 'a' is listed twice",
        )
        self.assertError(
            f'[[user]]\nname = "a"\ntoken = "{digest}"\n[[user]]\nname = "b"\ntoken = "{digest}"\n',
            "auth.toml:6: user 'b': the same token hash is given to another user",
        )
        self.assertError(
            '[[user]]\nname = "a"\ncertificate = "x"\n[[user]]\nname = "b"\ncertificate = ["x"]\n',
            "auth.toml:6: user 'b': certificate name 'x' is given to user 'a' too",
        )

    def test_types(self) -> None:
        """
        Values of the wrong type are errors on their lines.
        """
        self.assertError(
            '[[user]]\nname = "a"\ncertificate = "x"\npublish = "orders.>"\n',
            "auth.toml:4: user 'a': publish must be a list of patterns, like [\"orders.>\"]",
        )
        self.assertError(
            '[[user]]\nname = "a"\ncertificate = "x"\nadmin = "yes"\n',
            "auth.toml:4: user 'a': admin must be true or false",
        )
        self.assertError('[[user]]\ncertificate = "x"\n', 'auth.toml:1: a [[user]] needs a name = "..."')
        self.assertError('user = 3\n', "auth.toml:1: 'user' must be tables written [[user]]")
