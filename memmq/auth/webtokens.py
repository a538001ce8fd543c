# -*- test-case-name: tests.test_auth_jwt -*-
"""
JSON Web Tokens (C{--jwt_key}): identities that an application server mints
for its own users, checked with a key and no shared file.

The key file holds either an HS256 secret (at least 32 bytes; the file must
be private, like the auth file) or a PEM public key: RSA for RS256, an EC
key on P-256, P-384 or P-521 for ES256, ES384 or ES512.  Only the algorithm
the key is for is accepted, so C{alg: none} and a token signed with HS256
using the public key as a secret are both refused.

The claims memmq reads::

    {
      "sub": "browser-7f3a",                 # the identity's name (required)
      "exp": 1767225600,                      # expiry (required)
      "nbf": 1767222000,                      # not before (optional)
      "memmq": {                              # permissions (optional: none)
        "pub": ["chat.room1"],                # patterns it may publish to
        "sub": ["chat.*"],                    # patterns it may subscribe to
        "admin": false                        # may read /stats and /metrics
      }
    }

C{exp} and C{nbf} are honoured with a small leeway for clocks that differ
(L{LEEWAY} seconds by default).  A token with an C{aud} claim is refused
unless the verifier was given that audience.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from memmq.auth.errors import AuthConfigError, Unauthenticated
from memmq.auth.model import Identity, Permissions
from memmq.errors import InvalidPattern

__all__ = ["LEEWAY", "MIN_SECRET_LENGTH", "JwtKey", "JwtVerifier", "load_jwt_key", "looks_like_jwt"]

LEEWAY = 5.0  # seconds either side of exp and nbf, for clocks that differ
MIN_SECRET_LENGTH = 32  # bytes: RFC 7518 asks for a key as long as the hash

_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_CLAIM = "memmq"


@dataclass(frozen=True)
class JwtKey:
    """
    The key JWTs are checked with, and the one algorithm it is for.
    """

    algorithm: str
    key: Any
    path: str

    def describe(self) -> str:
        return f"{self.algorithm} key from {self.path}"


def looks_like_jwt(token: str) -> bool:
    """
    Whether C{token} has a JWT's three dot-separated parts; the tokens
    L{memmq.auth.tokens.new_token} makes have no dots.
    """
    return token.count(".") == 2


def load_jwt_key(path: str) -> JwtKey:
    """
    Read the key in the file at C{path}, and decide its algorithm from it.

    @raise AuthConfigError: the file cannot be read, holds a private key or
        a certificate, a key of another kind, or a secret that is too short
        or readable by group or others.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except OSError as e:
        raise AuthConfigError(f"{path}: cannot read the JWT key: {e.strerror or e}") from None
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        return JwtKey(_pem_algorithm(text, path), load_pem_public_key(text), path)
    if mode & 0o077:
        raise AuthConfigError(
            f"{path}: JWT secret is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run chmod 600 {path}"
        )
    if len(text) < MIN_SECRET_LENGTH:
        raise AuthConfigError(
            f"{path}: an HS256 secret must be at least {MIN_SECRET_LENGTH} bytes (it is {len(text)}); "
            "or give a PEM public key for RS256/ES256"
        )
    return JwtKey("HS256", text, path)


def _pem_algorithm(text: bytes, path: str) -> str:
    first = text.split(b"\n", 1)[0]
    if b"PRIVATE KEY" in first:
        raise AuthConfigError(
            f"{path}: holds a private key; give memmq the public key (the private key stays with whoever "
            "mints the tokens)"
        )
    if b"CERTIFICATE" in first:
        raise AuthConfigError(f"{path}: holds a certificate; give its public key (openssl x509 -pubkey -noout)")
    try:
        key = load_pem_public_key(text)
    except ValueError:
        raise AuthConfigError(f"{path}: not a PEM public key memmq can read") from None
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVES:
        return _CURVES[key.curve.name]
    raise AuthConfigError(f"{path}: a JWT key is an RSA key or an EC key on P-256, P-384 or P-521")


class JwtVerifier:
    """
    Turns a JWT into an L{Identity}, or says in one line why not.
    """

    def __init__(
        self,
        key: JwtKey,
        leeway: float = LEEWAY,
        audience: str | None = None,
    ) -> None:
        self.key = key
        self.leeway = leeway
        self.audience = audience

    def identify(self, token: str) -> Identity:
        """
        The identity C{token} names, with its permissions and expiry.

        @raise Unauthenticated: the token is not a valid JWT for this key,
            is expired or not valid yet, or its claims are malformed.  The
            reason never holds the token.
        """
        try:
            claims = jwt.decode(
                token,
                self.key.key,
                algorithms=[self.key.algorithm],
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as e:
            raise Unauthenticated(self._reason(e, token)) from None
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        name = claims["sub"]
        if not isinstance(name, str) or not name:
            raise Unauthenticated("JWT's sub claim is not a name")
        granted = claims.get(_CLAIM, {})
        if not isinstance(granted, dict):
            raise Unauthenticated(f"JWT for {name!r}: the {_CLAIM} claim is not an object")
        lists = {}
        for key in ("pub", "sub"):
            value = granted.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise Unauthenticated(f"JWT for {name!r}: {_CLAIM}.{key} is not a list of patterns")
            lists[key] = value
        admin = granted.get("admin", False)
        if not isinstance(admin, bool):
            raise Unauthenticated(f"JWT for {name!r}: {_CLAIM}.admin is not true or false")
        try:
            permissions = Permissions.from_texts(lists["pub"], lists["sub"], admin)
        except InvalidPattern as e:
            raise Unauthenticated(f"JWT for {name!r}: {e}") from None
        return Identity(name, permissions, "jwt", expires=float(claims["exp"]) + self.leeway)

    def _reason(self, error: jwt.PyJWTError, token: str) -> str:
        # PyJWT's own messages may quote parts of the token (a header that is
        # not JSON), so each reason is written here.
        if isinstance(error, jwt.ExpiredSignatureError):
            return "JWT expired"
        if isinstance(error, jwt.ImmatureSignatureError):
            return "JWT not valid yet (its nbf is in the future)"
        if isinstance(error, jwt.InvalidIssuedAtError):
            return "JWT issued in the future (its iat)"
        if isinstance(error, jwt.MissingRequiredClaimError):
            return f"JWT has no {error.claim} claim"
        if isinstance(error, jwt.InvalidAudienceError):
            if self.audience is None:
                return "JWT names an audience (aud) and this server is given none"
            return "JWT is for another audience (aud)"
        if isinstance(error, jwt.InvalidAlgorithmError):
            return f"JWT algorithm {self._algorithm_of(token)} is not accepted; this server takes {self.key.algorithm}"
        if isinstance(error, jwt.InvalidSignatureError):
            return f"JWT signature does not verify with the server's {self.key.algorithm} key"
        return "not a valid JWT"

    @staticmethod
    def _algorithm_of(token: str) -> str:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            return "(unreadable)"
        if not isinstance(algorithm, str):
            return "(none given)"
        return repr(algorithm[:16])
