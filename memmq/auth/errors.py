"""
The errors of access control, each one line fit to show the client it
refuses and to log: they name the identity, the topic and what is wrong,
never a token.

Each transport turns them into its own answer at its one error boundary:
L{Unauthenticated} is HTTP 401 (with C{WWW-Authenticate: Bearer}) and gRPC
C{UNAUTHENTICATED}; L{Forbidden} is HTTP 403 and gRPC C{PERMISSION_DENIED};
L{AuthConfigError} stops the server at start (exit 2) and is logged,
keeping the previous rules, on a reload.
"""

from __future__ import annotations

from memmq.errors import MemmqError

__all__ = ["AuthError", "Unauthenticated", "Forbidden", "AuthConfigError"]


class AuthError(MemmqError):
    """
    Base of the errors of access control.
    """


class Unauthenticated(AuthError):
    """
    No credentials where some are needed, or credentials that identify no
    one: an unknown token, a JWT that is expired, not valid yet, badly
    signed or signed with another algorithm, an unknown certificate subject.
    """


class Forbidden(AuthError):
    """
    A known identity asking for something its permissions do not give.
    """


class AuthConfigError(AuthError, ValueError):
    """
    An auth file or JWT key file that cannot be used: unreadable, readable
    by others, or not in the expected format.  The message names the file
    and, where it can, the line.
    """
