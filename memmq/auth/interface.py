"""
The questions every transport asks access control, whether it is on
(L{memmq.auth.authority.Authority}) or off (L{memmq.auth.off.OFF}), so a
front-end has one code path either way.

The front-end resolves an identity once per connection (C{identify_token}
with the token from C{Authorization: Bearer}, C{?token=} or gRPC
C{authorization} metadata; C{identify_certificate} with a verified client
certificate's CN and SANs); L{None} means the client gave no credentials and
is anonymous.  It then asks C{check_publish}, C{check_subscribe} or
C{check_read_stats} and turns the typed error into its own refusal at its
one error boundary.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IAuthority"]


class IAuthority(Interface):
    enabled = Attribute("True when access control is on.")

    def identify_token(token):
        """
        The identity C{token} (an auth-file token or a JWT) belongs to, or
        L{None} if C{token} is L{None} or empty (no credentials: anonymous).

        @raise memmq.auth.errors.Unauthenticated: a token that identifies no
            one, with the reason (never the token).
        """

    def identify_certificate(names):
        """
        The identity a verified client certificate's subject names (its CN
        and SANs) belong to, or L{None} if C{names} is empty.

        @raise memmq.auth.errors.Unauthenticated: no user has these names.
        """

    def may_publish(identity, topic):
        """
        Whether C{identity} (L{None}: anonymous) may publish to C{topic}.
        """

    def may_subscribe(identity, wanted):
        """
        Whether C{identity} may subscribe to C{wanted}: a topic (a L{str},
        never read as a pattern) or a L{memmq.patterns.Pattern}, allowed
        when one of its subscribe patterns covers it.
        """

    def may_read_stats(identity):
        """
        Whether C{identity} may read C{/stats} and C{/metrics}.
        """

    def check_publish(identity, topic):
        """
        Return if L{may_publish}, else raise the refusal.

        @raise memmq.auth.errors.Unauthenticated: anonymous, or an expired
            identity, refused (HTTP 401, gRPC UNAUTHENTICATED).
        @raise memmq.auth.errors.Forbidden: a known identity refused (HTTP
            403, gRPC PERMISSION_DENIED).
        """

    def check_subscribe(identity, wanted):
        """
        Return if L{may_subscribe}, else raise as L{check_publish} does.
        """

    def check_read_stats(identity):
        """
        Return if L{may_read_stats}, else raise as L{check_publish} does.
        """

    def reload():
        """
        Read the auth file (and JWT key) again.  On an error the previous
        rules stay.  Returns the one line it logs, saying which happened.
        """

    def describe():
        """
        One line for the start-up log saying what access control does.
        """
