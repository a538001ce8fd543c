"""
Access control: who may publish, subscribe and read the server's figures.

One place decides (L{IAuthority}: L{Authority} when on, L{OFF} when off) and
every transport asks it; see the README section "Access control".

- L{memmq.auth.model}: L{Identity} and L{Permissions}.
- L{memmq.auth.coverage}: when one pattern covers another.
- L{memmq.auth.tokens}: making, hashing and finding opaque tokens.
- L{memmq.auth.authfile}: the auth file.
- L{memmq.auth.webtokens}: JWTs and their key.
- L{memmq.auth.decisions}: the bounded cache of decisions.
- L{memmq.auth.authority}: the decisions, when access control is on.
- L{memmq.auth.off}: access control off.
- L{memmq.auth.command}: C{memmq auth}.
"""

from memmq.auth.authfile import AuthRules, load_auth_file
from memmq.auth.authority import Authority, make_authority
from memmq.auth.coverage import covers
from memmq.auth.errors import AuthConfigError, AuthError, Forbidden, Unauthenticated
from memmq.auth.interface import IAuthority
from memmq.auth.model import EVERYTHING, NOTHING, Identity, Permissions
from memmq.auth.off import OFF, AccessOff
from memmq.auth.tokens import hash_token, new_token
from memmq.auth.webtokens import LEEWAY, JwtKey, JwtVerifier, load_jwt_key

__all__ = [
    "IAuthority",
    "Authority",
    "AccessOff",
    "OFF",
    "make_authority",
    "Identity",
    "Permissions",
    "NOTHING",
    "EVERYTHING",
    "covers",
    "AuthRules",
    "load_auth_file",
    "JwtKey",
    "JwtVerifier",
    "load_jwt_key",
    "LEEWAY",
    "hash_token",
    "new_token",
    "AuthError",
    "Unauthenticated",
    "Forbidden",
    "AuthConfigError",
]
