"""
Tests for memmq.auth.webtokens: the JWT key file, and each way a JWT is
accepted or refused, with a reason that never holds the token.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.trial.unittest import SynchronousTestCase

from memmq.auth.errors import AuthConfigError, Unauthenticated
from memmq.auth.webtokens import JwtVerifier, load_jwt_key, looks_like_jwt
from memmq.patterns import parse_pattern
from tests.support import write_file

SECRET = b"an HS256 secret of at least 32 bytes, random in real life"


def claims(**extra) -> dict:
    """
    A browser user's claims: chat.* to subscribe, valid for a minute.
    """
    now = int(time.time())
    values = {"sub": "browser-7f3a", "exp": now + 60, "memmq": {"sub": ["chat.*"]}}
    values.update(extra)
    return {k: v for k, v in values.items() if v is not None}


def public_pem(private) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class KeyFileTests(SynchronousTestCase):
    def test_secret(self) -> None:
        """
        A file that is not PEM is an HS256 secret, its final newline dropped.
        """
        key = load_jwt_key(write_file(self.mktemp(), SECRET + b"\n"))
        self.assertEqual((key.algorithm, key.key), ("HS256", SECRET))

    def test_public_keys(self) -> None:
        """
        An RSA public key is for RS256; an EC key on P-256 for ES256, on
        P-384 for ES384.
        """
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.assertEqual(load_jwt_key(write_file(self.mktemp(), public_pem(rsa_key), 0o644)).algorithm, "RS256")
        p256 = ec.generate_private_key(ec.SECP256R1())
        self.assertEqual(load_jwt_key(write_file(self.mktemp(), public_pem(p256), 0o644)).algorithm, "ES256")
        p384 = ec.generate_private_key(ec.SECP384R1())
        self.assertEqual(load_jwt_key(write_file(self.mktemp(), public_pem(p384), 0o644)).algorithm, "ES384")

    def assertRefused(self, path: str, expected: str) -> None:
        with self.assertRaises(AuthConfigError) as raised:
            load_jwt_key(path)
        self.assertEqual(str(raised.exception), f"{path}: {expected}")

    def test_private_key_refused(self) -> None:
        """
        A private key is refused: memmq needs only the public half.
        """
        private = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.assertRefused(
            write_file(self.mktemp(), private),
            "holds a private key; give memmq the public key (the private key stays with whoever mints the tokens)",
        )

    def test_other_keys_refused(self) -> None:
        """
        A key of another kind, or PEM that is no key, is refused.
        """
        self.assertRefused(
            write_file(self.mktemp(), public_pem(ed25519.Ed25519PrivateKey.generate())),
            "a JWT key is an RSA key or an EC key on P-256, P-384 or P-521",
        )
        self.assertRefused(
            write_file(self.mktemp(), b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"),
            "not a PEM public key memmq can read",
        )

    def test_short_or_shared_secret_refused(self) -> None:
        """
        A secret under 32 bytes, or one its group or others may read, is refused.
        """
        self.assertRefused(
            write_file(self.mktemp(), b"short\n"),
            "an HS256 secret must be at least 32 bytes (it is 5); or give a PEM public key for RS256/ES256",
        )
        path = write_file(self.mktemp(), SECRET, 0o640)
        self.assertRefused(path, f"JWT secret is accessible by group or others (mode 0640); run chmod 600 {path}")


class VerifyTests(SynchronousTestCase):
    """
    A verifier with an HS256 key accepts the tokens it should, and refuses
    every other with one line that does not hold the token.
    """

    def setUp(self) -> None:
        self.verifier = JwtVerifier(load_jwt_key(write_file(self.mktemp(), SECRET)), leeway=5)

    def assertRefused(self, token: str, expected: str) -> None:
        with self.assertRaises(Unauthenticated) as raised:
            self.verifier.identify(token)
        message = str(raised.exception)
        self.assertEqual(message, expected)
        for part in token.split("."):
            if len(part) > 3:
                self.assertNotIn(part, message)

    def test_allowed(self) -> None:
        """
        A valid token gives its sub as the name, its memmq claim as the
        permissions, and records when it stops being accepted (exp + leeway).
        """
        values = claims(memmq={"pub": ["chat.room1"], "sub": ["chat.*"], "admin": True})
        identity = self.verifier.identify(jwt.encode(values, SECRET, "HS256"))
        self.assertEqual((identity.name, identity.source), ("browser-7f3a", "jwt"))
        self.assertEqual(identity.expires, values["exp"] + 5)
        self.assertTrue(identity.permissions.may_publish("chat.room1"))
        self.assertFalse(identity.permissions.may_publish("chat.room2"))
        self.assertTrue(identity.permissions.may_subscribe(parse_pattern("chat.*")))
        self.assertTrue(identity.permissions.admin)

    def test_no_memmq_claim(self) -> None:
        """
        A token with no memmq claim identifies someone who may do nothing.
        """
        identity = self.verifier.identify(jwt.encode(claims(memmq=None), SECRET, "HS256"))
        self.assertEqual(identity.permissions.describe(), "nothing")

    def test_expired(self) -> None:
        """
        A token past exp plus the leeway is refused; within the leeway, accepted.
        """
        now = int(time.time())
        self.assertRefused(jwt.encode(claims(exp=now - 10), SECRET, "HS256"), "JWT expired")
        self.verifier.identify(jwt.encode(claims(exp=now - 2), SECRET, "HS256"))

    def test_not_yet_valid(self) -> None:
        """
        A token whose nbf is ahead of now plus the leeway is refused.
        """
        token = jwt.encode(claims(nbf=int(time.time()) + 60), SECRET, "HS256")
        self.assertRefused(token, "JWT not valid yet (its nbf is in the future)")

    def test_wrong_signature(self) -> None:
        """
        A token signed with another secret is refused.
        """
        token = jwt.encode(claims(), b"another secret, 32 bytes or longer......", "HS256")
        self.assertRefused(token, "JWT signature does not verify with the server's HS256 key")

    def test_alg_none(self) -> None:
        """
        An unsigned token (alg none) is refused.
        """
        token = jwt.encode(claims(), None, "none")
        self.assertRefused(token, "JWT algorithm 'none' is not accepted; this server takes HS256")

    def test_other_algorithm(self) -> None:
        """
        A token for another algorithm than the key's is refused, even when
        it verifies: HS512 with the same secret.
        """
        token = jwt.encode(claims(), SECRET, "HS512")
        self.assertRefused(token, "JWT algorithm 'HS512' is not accepted; this server takes HS256")

    def test_key_confusion(self) -> None:
        """
        With an RS256 key, a token signed HS256 with the public key's PEM
        as the secret (the classic confusion) is refused.
        """
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = public_pem(private)
        verifier = JwtVerifier(load_jwt_key(write_file(self.mktemp(), pem, 0o644)))
        self.assertEqual(verifier.identify(jwt.encode(claims(), private, "RS256")).name, "browser-7f3a")
        header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
        payload = jwt.utils.base64url_encode(b'{"sub":"x","exp":%d}' % (time.time() + 60))
        signature = jwt.utils.base64url_encode(hmac.new(pem, header + b"." + payload, hashlib.sha256).digest())
        forged = b".".join((header, payload, signature)).decode()
        with self.assertRaises(Unauthenticated) as raised:
            verifier.identify(forged)
        self.assertEqual(str(raised.exception), "JWT algorithm 'HS256' is not accepted; this server takes RS256")

    def test_es256(self) -> None:
        """
        An ES256 key verifies ES256 tokens and refuses those of another key.
        """
        private = ec.generate_private_key(ec.SECP256R1())
        verifier = JwtVerifier(load_jwt_key(write_file(self.mktemp(), public_pem(private), 0o644)))
        self.assertEqual(verifier.identify(jwt.encode(claims(), private, "ES256")).name, "browser-7f3a")
        other = ec.generate_private_key(ec.SECP256R1())
        with self.assertRaises(Unauthenticated) as raised:
            verifier.identify(jwt.encode(claims(), other, "ES256"))
        self.assertEqual(str(raised.exception), "JWT signature does not verify with the server's ES256 key")

    def test_required_claims(self) -> None:
        """
        A token without exp, or without sub, is refused: memmq takes only
        tokens that expire and name someone.
        """
        self.assertRefused(jwt.encode(claims(exp=None), SECRET, "HS256"), "JWT has no exp claim")
        self.assertRefused(jwt.encode(claims(sub=None), SECRET, "HS256"), "JWT has no sub claim")

    def test_audience(self) -> None:
        """
        A token naming an audience is refused by a verifier given none, and
        by one given another; accepted by one given the same.
        """
        token = jwt.encode(claims(aud="memmq.example.com"), SECRET, "HS256")
        self.assertRefused(token, "JWT names an audience (aud) and this server is given none")
        key = self.verifier.key
        self.assertEqual(JwtVerifier(key, audience="memmq.example.com").identify(token).name, "browser-7f3a")
        self.verifier = JwtVerifier(key, audience="other")
        self.assertRefused(token, "JWT is for another audience (aud)")

    def test_malformed_claims(self) -> None:
        """
        A signed token whose memmq claim is malformed is refused, saying which part.
        """
        for memmq, expected in [
            ("all", "JWT for 'browser-7f3a': the memmq claim is not an object"),
            ({"sub": "chat.*"}, "JWT for 'browser-7f3a': memmq.sub is not a list of patterns"),
            ({"pub": [1]}, "JWT for 'browser-7f3a': memmq.pub is not a list of patterns"),
            ({"admin": "yes"}, "JWT for 'browser-7f3a': memmq.admin is not true or false"),
            ({"sub": ["chat.>.x"]}, "JWT for 'browser-7f3a': pattern 'chat.>.x': '>' may only be the last token"),
        ]:
            self.assertRefused(jwt.encode(claims(memmq=memmq), SECRET, "HS256"), expected)
        self.assertRefused(jwt.encode(claims(sub=7), SECRET, "HS256"), "not a valid JWT")

    def test_garbage(self) -> None:
        """
        Three dot-separated parts that are not a JWT are refused without
        quoting them.
        """
        self.assertRefused("eyJub3QganNvbg.eyJ9.c2ln", "not a valid JWT")
        self.assertRefused("a.b.c", "not a valid JWT")

    def test_looks_like_jwt(self) -> None:
        """
        A JWT has two dots; memmq's own tokens none.
        """
        self.assertTrue(looks_like_jwt(jwt.encode(claims(), SECRET, "HS256")))
        self.assertFalse(looks_like_jwt("pub-token-0123456789abcdef"))
