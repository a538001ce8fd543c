"""
The errors memmq raises inside; each transport turns them into its own
answer (an HTTP status, a WebSocket close code, a gRPC status) at one place.
"""

__all__ = [
    "BackplaneUnavailable",
    "BadQuery",
    "InvalidPattern",
    "InvalidTopic",
    "MemmqError",
    "MessageTooLarge",
    "PersistError",
    "PublishError",
    "ServersFailed",
    "SubscribeError",
]


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


class ServersFailed(MemmqError):
    """
    An operation on a topic that failed on some of the servers it went to.

    @ivar topic: the topic.
    @ivar failures: server -> one-line reason, for each server that failed.
    """

    #: How the message begins; the topic is put in with C{format}.
    doing = "{topic!r} failed on"

    def __init__(self, topic: str, failures: dict[str, str]) -> None:
        self.topic = topic
        self.failures = failures
        reasons = "; ".join(f"{server}: {why}" for server, why in failures.items())
        super().__init__(f"{self.doing.format(topic=topic)} {reasons}")


class PublishError(ServersFailed):
    """
    A publish that some selected server did not accept, even after retries.
    """

    doing = "publish to {topic!r} failed on"


class SubscribeError(ServersFailed):
    """
    A subscription that could not be opened on some selected server.
    """

    doing = "cannot subscribe to {topic!r} on"


class InvalidPattern(InvalidTopic):
    """
    A topic pattern that cannot be parsed: empty, with an empty token, with
    C{>} before its last token, or with C{*} or C{>} inside a token.
    """



class BackplaneUnavailable(MemmqError):
    """
    A publish that could not reach the server's other processes (its
    sibling workers, or the other nodes behind the backplane): refused
    rather than delivered locally only (HTTP 503).
    """
