"""
The errors memmq raises inside; each transport turns them into its own
answer (an HTTP status, a WebSocket close code, a gRPC status) at one place.
"""

__all__ = ["MemmqError", "InvalidTopic", "MessageTooLarge", "PersistError", "BadQuery"]


class MemmqError(Exception):
    """
    Base of memmq's own errors.  C{str(error)} is a one-line reason fit to
    show a user.
    """


class InvalidTopic(MemmqError, ValueError):
    """
    A topic that is missing, too long or holds control characters.
    """


class MessageTooLarge(MemmqError, ValueError):
    """
    A payload over the configured maximum message size.
    """


class PersistError(MemmqError):
    """
    A message that could not be written to its topic's file (in durable
    mode, the publisher is told: HTTP 507).
    """


class BadQuery(MemmqError, ValueError):
    """
    A request parameter other than the topic that cannot be used as given
    (HTTP 400).
    """


class InvalidPattern(InvalidTopic):
    """
    A topic pattern that cannot be parsed: empty, with an empty token, with
    C{>} before its last token, or with C{*} or C{>} inside a token.
    """


# Kept next to the class so that this addition merges apart from the list above.
__all__ += ["InvalidPattern"]
