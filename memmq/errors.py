"""
The errors memmq raises inside; each transport turns them into its own
answer (an HTTP status, a WebSocket close code, a gRPC status) at one place.
"""

__all__ = ["MemmqError", "InvalidTopic", "MessageTooLarge"]


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
